"""Every score carries its protocol: derd.train's table.json, the final run's MLflow tags, the exported
config's origin, and reports that never put two protocols in one table."""

from __future__ import annotations

import csv
import io
import json

import pytest
import torch
from conftest import TINY_BASE, working_tree_paths
from mlflow.tracking import MlflowClient

from derd.evaluate import describe_protocol, infer_protocol, protocol_record, same_protocol
from tuning.records import Tag, protocol_of_tags, protocol_tags


def _sections(text: str) -> dict[str, str]:
    """A report's tables by their heading (a heading line, a blank line, the table's lines)."""
    out, heading = {}, None
    for block in text.split("\n\n"):
        if block.startswith("|") and heading is not None:
            out[heading] = block
            heading = None
        else:
            heading = block.strip()
    return out


def test_a_protocol_record_names_its_eps_and_attacks_and_survives_the_tags():
    search, full = protocol_record("search", 0.2), protocol_record("full", 8 / 255)
    assert search["name"] == "search" and search["eps"] == 0.2 and search["max_images"] == 1000
    assert [a.split(":")[0] for a in search["attacks"]] == ["Clean", "PGD_S", "AA"]
    assert "PGD_S: 20 steps of 0.05" in search["attacks"][1]  # 2/255 scaled to eps 0.2 (step eps/4)
    assert "FAB-T" in full["attacks"][-1] and "FAB-T" not in search["attacks"][-1]
    assert "search protocol, eps 0.2; AA = APGD-CE + APGD-T" in describe_protocol(search)
    assert describe_protocol(None) == "protocol not recorded"
    assert protocol_of_tags(protocol_tags(search)) == search and protocol_of_tags({}) is None
    assert (
        protocol_of_tags({**protocol_tags(full), Tag.EPS: "wide"}) is None
    )  # an edited tag: as good as none
    assert not same_protocol(search, protocol_record("full", 0.2)) and not same_protocol(
        full, protocol_record("full", 0.2)
    )
    assert same_protocol(None, None) and not same_protocol(None, full)
    assert infer_protocol(["clean_acc", "pgd_acc", "aa_acc"]) == "search"
    assert (
        infer_protocol(["clean_acc", "fgsm_acc", "pgd_acc", "pgd_t_acc", "cw_acc", "aa_acc", "ave_acc"])
        == "full"
    )
    assert infer_protocol(["clean_acc"]) is None


def test_a_search_protocol_training_is_reported_apart_from_full_protocol_ones(
    tmp_path, teacher_args, capsys, monkeypatch
):
    """``derd.train --protocol search`` records its protocol; ``report.py --add-training`` tags the run with
    it and prints its row in a search-protocol table, never under the full protocol's heading; a table
    written before tables recorded a protocol is placed by its columns."""
    from analysis.report import main as report_main
    from derd import attacks
    from derd.config import apply_overrides, preset, save_yaml
    from derd.train import main as train_main

    # what is tested is where the scores go, not AutoAttack (minutes on 2 busy cores): it attacks nothing here
    monkeypatch.setattr(attacks, "autoattack", lambda model, x, y, **kw: x)

    cfg = apply_overrides(preset("digits"), {**TINY_BASE, "budget.epochs": 2, "stage1.epochs": 1})
    save_yaml(cfg, tmp_path / "c.yaml")
    quick = tmp_path / "quick"
    train_main(
        ["--config", str(tmp_path / "c.yaml"), "--out", str(quick), "--protocol", "search", *teacher_args]
    )
    table = json.loads((quick / "table.json").read_text())
    assert table["protocol"] == protocol_record("search", 0.2)
    columns = ("clean_acc", "pgd_acc", "aa_acc")  # each with its worst-class accuracy
    assert set(table["test"]) == {f"test/{p}{c}" for c in columns for p in ("", "worst_")}
    assert (
        (quick / "table.md")
        .read_text()
        .startswith("Test split, search protocol, eps 0.2; AA = APGD-CE + APGD-T")
    )
    capsys.readouterr()

    old = tmp_path / "old-full"  # a full-protocol table from before tables recorded their protocol
    old.mkdir()
    full_scores = {
        f"test/{c}": 50.0
        for c in ("clean_acc", "fgsm_acc", "pgd_acc", "pgd_t_acc", "cw_acc", "aa_acc", "ave_acc")
    }
    (old / "table.json").write_text(json.dumps({"config": table["config"], "test": full_scores}))

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).create_experiment("protocols", artifact_location=(tmp_path / "mlartifacts").as_uri())
    result = report_main(
        [
            "--experiment",
            "protocols",
            "--tracking-uri",
            uri,
            "--add-training",
            str(quick),
            str(old),
            "--out",
            str(tmp_path / "report"),
        ]
    )
    client = MlflowClient(uri)
    finals = {
        r.data.tags[Tag.TRAIN_DIR]: r
        for r in client.search_runs(
            [client.get_experiment_by_name("protocols").experiment_id], f"tags.`{Tag.KIND}` = 'final'"
        )
    }
    tags = finals[str(quick.resolve())].data.tags
    assert tags[Tag.PROTOCOL] == "search" and float(tags[Tag.EPS]) == 0.2 and "APGD-T" in tags[Tag.ATTACKS]
    assert (
        finals[str(old.resolve())].data.tags[Tag.PROTOCOL] == "full"
    )  # not recorded: told by its six columns

    sections = _sections((tmp_path / "report" / "report.md").read_text())
    full = [
        s
        for h, s in sections.items()
        if h.startswith("Final trainings on digits (test split, full protocol, eps 0.2")
    ]
    search = [
        s
        for h, s in sections.items()
        if h.startswith(
            "Final trainings on digits (test split, search protocol, eps 0.2; AA = APGD-CE + APGD-T"
        )
    ]
    assert len(full) == 1 and len(search) == 1, list(sections)
    assert "| model | Clean | PGD_S | AA (APGD-CE+T) |" in search[0] and search[0].count("| final: ") == 1
    assert "AA (standard)" in full[0] and full[0].count("| final: ") == 1 and "| 50.00 |" in full[0]
    assert [p["name"] for p, _ in result["finals"]] == ["full", "search"]
    rows = list(csv.DictReader(io.StringIO((tmp_path / "report" / "report.csv").read_text())))
    assert sorted((r["protocol"], r["eps"]) for r in rows) == [("full", "0.2"), ("search", "0.2")]


def test_paper_tables_refuse_a_row_scored_under_another_protocol(tmp_path):
    from analysis.paper_tables import read_full
    from derd.errors import UserError

    folder = tmp_path / "derd" / "seed0"
    folder.mkdir(parents=True)
    scores = {"test/clean_acc": 60.0, "test/pgd_acc": 20.0, "test/aa_acc": 10.0}
    (folder / "table.json").write_text(
        json.dumps({"protocol": protocol_record("search", 0.2), "test": scores})
    )
    with pytest.raises(UserError, match="search protocol, eps 0.2.*not the full protocol.*delete"):
        read_full(folder / "table.json", "digits")
    (folder / "table.json").write_text(json.dumps({"test": scores}))  # older: told by its columns
    with pytest.raises(UserError, match="not the full protocol"):
        read_full(folder / "table.json", "digits")
    full = {f"test/{c}": 1.0 for c in ("clean_acc", "fgsm_acc", "pgd_acc", "pgd_t_acc", "cw_acc", "aa_acc")}
    (folder / "table.json").write_text(json.dumps({"protocol": protocol_record("full", 0.2), "test": full}))
    assert read_full(folder / "table.json", "digits")["test"] == full


def test_the_working_tree_check_sees_a_new_path(tmp_path):
    """The suite's after-check (conftest): a path a test leaves in the repository is seen."""
    (tmp_path / "kept.txt").write_text("")
    before = working_tree_paths(tmp_path)
    (tmp_path / "mlruns").mkdir()
    assert working_tree_paths(tmp_path) - before == {"mlruns/"}


class _WeakOnClassTwo(torch.nn.Module):
    """A made-up 3-class model: it reads the class off the first pixel (0, 0.5, 1) and always calls class 2
    class 1, so its worst class is 2 (0 %) whatever the attack, and under an attack that moves the first
    pixel by 0.3 class 1's images (0.5) stay classified as class 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x.flatten(1)[:, :1]
        centres = torch.tensor([[0.0, 0.5, 1.0]])
        logits = -((v - centres) ** 2) * 50
        return torch.cat(
            [logits[:, :1], torch.maximum(logits[:, 1:2], logits[:, 2:3]) + 1e-3, logits[:, 2:3] - 1e3], 1
        )


def test_every_evaluation_records_the_worst_class_accuracy_under_each_attack():
    from torch.utils.data import DataLoader, TensorDataset

    from derd.evaluate import Protocol, evaluate, markdown_table

    x = torch.tensor([0.0, 0.5, 1.0]).repeat(5).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).contiguous()
    y = torch.tensor([0, 1, 2]).repeat(5)
    table = evaluate(
        _WeakOnClassTwo(),
        DataLoader(TensorDataset(x, y), batch_size=4),
        Protocol("t", ("clean_acc", "pgd_acc"), None, "fast"),
        eps=0.3,
    )
    assert table["clean_acc"] == pytest.approx(200 / 3) and table["worst_clean_acc"] == 0.0
    assert table["worst_pgd_acc"] == 0.0 and table["pgd_acc"] <= table["clean_acc"]
    assert "worst-class AA" not in markdown_table({"m": table})
    assert "| worst-class AA |" in markdown_table({"m": {**table, "aa_acc": 1.0, "worst_aa_acc": 0.0}})


def test_worst_class_skips_classes_the_scored_images_do_not_hold():
    from torch.utils.data import DataLoader, TensorDataset

    from derd.evaluate import Protocol, evaluate

    x = torch.tensor([0.0, 0.5]).repeat(3).view(-1, 1, 1, 1)
    y = torch.tensor([0, 1]).repeat(3)  # no image of class 2, the one the model never gets right
    table = evaluate(
        _WeakOnClassTwo(),
        DataLoader(TensorDataset(x, y), batch_size=6),
        Protocol("t", ("clean_acc",), None, "fast"),
        eps=0.0,
    )
    assert table == {"clean_acc": 100.0, "worst_clean_acc": 100.0}
