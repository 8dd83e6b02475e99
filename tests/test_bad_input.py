"""The bad-input catalogue: every CLI answers a user's mistake with one line that names the fix,
exit code 2, and writes nothing (no file, no folder, no half-made store)."""

from __future__ import annotations

import importlib
import json
import os
import pickle
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_BASE, write_space
from fakedata import write_cifar

ENTRY = {
    "search": "tuning.search",
    "train": "derd.train",
    "evaluate": "derd.evaluate",
    "teachers": "derd.teachers",
    "export": "analysis.export",
    "pareto": "analysis.pareto",
    "report": "analysis.report",
    "relocate": "analysis.relocate",
}


class Payload:
    """Unpickling this would run code."""

    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


@pytest.fixture()
def inputs(tmp_path, teacher_args):
    """Files a careless user might pass, in a folder the test watches for new files."""
    d = tmp_path / "in"
    d.mkdir()
    (d / "text.pt").write_text("hello, I am not a checkpoint\n")
    (d / "empty.pt").write_bytes(b"")
    (d / "notes.txt").write_text("not a database\n")
    torch.save({"x": Payload()}, d / "evil.pt")
    with open(d / "plain.pkl", "wb") as f:
        pickle.dump({"x": Payload()}, f)
    plain = torch.load(teacher_args[1], weights_only=True)["state_dict"]
    torch.save(
        {k.removeprefix("net."): v for k, v in plain.items() if k.startswith("net.")}, d / "statedict.pt"
    )
    (d / "bad.yaml").write_text("stage1: [1, 2\n")
    (d / "space_objective.yaml").write_text(
        yaml.safe_dump(
            yaml.safe_load(write_space(d / "s0.yaml").read_text())
            | {"objectives": [{"metric": "val/nonexistent_acc", "mode": "max"}]}
        )
    )
    write_space(
        d / "space_method.yaml", space={"method": {"distribution": "categorical", "choices": ["derd", "gan"]}}
    )
    write_space(
        d / "space_range.yaml",
        space={"stage1.lambda_adv": {"distribution": "loguniform", "low": 2, "high": 1}},
    )
    write_space(d / "space_key.yaml", space={"stage9.x": {"distribution": "uniform", "low": 0, "high": 1}})
    write_space(
        d / "space_log.yaml", space={"stage1.lambda_adv": {"distribution": "loguniform", "low": 0, "high": 1}}
    )
    write_space(d / "space_top.yaml", sampler="tpe")
    write_cifar(d / "c10", "cifar10")
    (d / "folder").mkdir()
    (d / "empty_search").mkdir()
    (d / "reference").mkdir()  # a paper-tables reference row: a table.json without a run config
    (d / "reference" / "table.json").write_text('{"test": {"clean_acc": 90.0}}')
    (d / "old_run").mkdir()  # a run folder written by an older version
    torch.save({"format": "derd-run/1", "config": {}}, d / "old_run" / "run.pt")
    write_space(d / "space_base.yaml", base=[4, 8])
    write_space(
        d / "space_int.yaml", space={"stage2.pgd_steps": {"distribution": "uniform", "low": 3, "high": 10}}
    )
    write_space(
        d / "space_bound.yaml", space={"stage2.lambda_nat": {"distribution": "uniform", "low": -1, "high": 1}}
    )
    # round three: files of the wrong shape, alias bombs, numbers outside their domain
    (d / "binary.yaml").write_bytes(b"\x80\x81\xfe\xff" * 64)
    write_space(d / "space_presets.yaml", presets=5)
    write_space(d / "space_objectives.yaml", objectives=5)
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
    )
    (d / "bomb.yaml").write_text(bomb)
    (d / "empty.yaml").write_text("# nothing to change\n")
    write_space(d / "space_reduction.yaml", search={"num_trials": 3, "reduction_factor": float("inf")})
    write_space(d / "space_seed.yaml", search={"num_trials": 3, "seed": -5})
    write_space(d / "space_rungs.yaml", search={"num_trials": 3, "scheduler": "moasha", "grace_period": 3})
    write_space(d / "space_nan.yaml", base={**TINY_BASE, "stage1.lambda_adv": float("nan")})
    write_space(
        d / "space_memory.yaml",
        base={**TINY_BASE, "student.generator_width": 8192},
        space={"student.latent_dim": {"distribution": "int", "low": 16, "high": 65536}},
    )
    state = torch.load(teacher_args[1], weights_only=True)
    torch.save({**state, "meta": ["digits_cnn_small"]}, d / "meta_list.pt")
    torch.save({**state, "state_dict": 5}, d / "state_five.pt")
    for name, test in (("table_list", [1, 2]), ("table_text", {"clean_acc": "abc"})):
        (d / name).mkdir()
        (d / name / "table.json").write_text(json.dumps({"config": {}, "test": test}))
    for name, content in (
        ("truncated_run", b"PK\x03\x04 truncated"),
        ("code_run", (d / "evil.pt").read_bytes()),
    ):
        (d / name).mkdir()
        (d / name / "run.pt").write_bytes(content)
    return {"dir": d, "teachers": teacher_args, "nat": teacher_args[1]}


def _cases(i: dict) -> list[tuple[str, list[str], str]]:
    d, t = i["dir"], i["teachers"]
    out = str(d.parent / "out")
    return [
        # tuning/search.py
        ("search", ["--dataset", "svhn", "--out", out], "unknown dataset 'svhn'"),
        ("search", ["--dataset", "cifar10", "--out", out], "needs a data root: pass --data-root"),
        (
            "search",
            ["--dataset", "cifar10", "--data-root", str(d / "nothing"), "--out", out],
            "cifar10 not found",
        ),
        (
            "search",
            ["--dataset", "cifar10", "--data-root", str(d / "c10"), "--out", out],
            "needs teacher checkpoints",
        ),
        (
            "search",
            [
                "--dataset",
                "cifar10",
                "--data-root",
                str(d / "c10"),
                "--teacher-natural",
                "nat.pt",
                "--teacher-robust",
                "rob.pt",
                "--out",
                out,
            ],
            "does not exist",
        ),
        (
            "search",
            ["--teacher-natural", str(d / "text.pt"), "--teacher-robust", t[3], "--out", out],
            "corrupt or not a PyTorch file",
        ),
        (
            "search",
            ["--teacher-natural", str(d / "empty.pt"), "--teacher-robust", t[3], "--out", out],
            "is an empty file",
        ),
        (
            "search",
            ["--teacher-natural", str(d / "statedict.pt"), "--teacher-robust", t[3], "--out", out],
            "--teacher-natural-arch",
        ),
        (
            "search",
            [
                "--teacher-natural",
                str(d / "statedict.pt"),
                "--teacher-natural-arch",
                "digits_cnn",
                "--teacher-robust",
                t[3],
                "--out",
                out,
            ],
            "does not fit a digits_cnn",
        ),
        ("search", ["--address", "127.0.0.1:1", *t, "--out", out], "no Ray cluster answers at 127.0.0.1:1"),
        ("search", ["--mlflow-uri", "http://127.0.0.1:1", *t, "--out", out], "unreachable"),
        (
            "search",
            ["--mlflow-uri", f"sqlite:///{d / 'notes.txt'}", *t, "--out", out],
            "is not an SQLite database",
        ),
        ("search", ["--resume"], "--resume needs the search's folder"),
        ("search", ["--resume", "--out", str(d / "empty_search")], "nothing to resume"),
        ("search", [*t, "--out", str(d / "notes.txt")], "is a file, not a folder"),
        (
            "search",
            ["--space", str(d / "space_objective.yaml"), *t, "--out", out],
            "'val/nonexistent_acc' is not computed",
        ),
        ("search", ["--space", str(d / "space_method.yaml"), *t, "--out", out], "'gan' is not a method"),
        (
            "search",
            ["--space", str(d / "space_range.yaml"), *t, "--out", out],
            "low (2.0) must be below high (1.0)",
        ),
        (
            "search",
            ["--space", str(d / "space_key.yaml"), *t, "--out", out],
            "space.stage9.x: unknown config key",
        ),
        ("search", ["--space", str(d / "space_log.yaml"), *t, "--out", out], "a log range needs low > 0"),
        ("search", ["--space", str(d / "space_top.yaml"), *t, "--out", out], "unknown key 'sampler'"),
        ("search", ["--space", str(d / "space_base.yaml"), *t, "--out", out], "base: expected a mapping"),
        (
            "search",
            ["--space", str(d / "space_int.yaml"), *t, "--out", out],
            "takes whole numbers: use distribution int",
        ),
        ("search", ["--space", str(d / "space_bound.yaml"), *t, "--out", out], "-1.0 is not accepted"),
        ("search", ["--method", "gan", *t, "--out", out], "'gan' is not one of derd"),
        ("search", ["--num-trials", "0", *t, "--out", out], "--num-trials 0: must be at least 1"),
        # derd.train
        ("train", ["--config", str(d / "missing.yaml"), "--out", out], "does not exist"),
        ("train", ["--config", str(d / "bad.yaml"), "--out", out], "not valid YAML"),
        ("train", ["--preset", "digits", "--set", "stage2.epochs", "--out", out], "expected KEY=VALUE"),
        ("train", ["--preset", "digits", "--set", "stage9.x=1", "--out", out], "stage9.x: unknown key"),
        ("train", ["--preset", "digits", "--out", str(d / "notes.txt")], "is a file, not a folder"),
        (
            "train",
            ["--preset", "cifar10", "--data-root", str(d / "c10"), "--out", out],
            "pass --teacher-natural",
        ),
        ("train", ["--preset", "digits", "--method", "gan", "--out", out], "method: 'gan' is not one of"),
        (
            "train",
            ["--preset", "digits", "--set", "device=cuda:7", "--out", out],
            "not available on this machine",
        ),
        (
            "train",
            ["--preset", "digits", "--set", "stage2.epochs=[1", "--out", out],
            "is not a valid YAML value",
        ),
        (
            "train",
            [
                "--preset",
                "digits",
                "--teacher-natural",
                t[1],
                "--set",
                f"teachers.robust={d / 'moved.pt'}",
                "--set",
                "teachers.robust_sha256=ab12",
                "--out",
                out,
            ],
            "does not exist",
        ),
        (
            "train",
            ["--preset", "digits", *t, "--out", str(d / "old_run")],
            "not a run checkpoint of this version",
        ),
        # derd.evaluate
        ("evaluate", ["--dataset", "digits", "--checkpoint", str(d / "missing.pt")], "does not exist"),
        (
            "evaluate",
            ["--dataset", "digits", "--checkpoint", str(d / "evil.pt"), "--arch", "digits_cnn"],
            "refusing",
        ),
        (
            "evaluate",
            ["--dataset", "digits", "--checkpoint", str(d / "plain.pkl"), "--arch", "digits_cnn"],
            "is a plain pickle",
        ),
        ("evaluate", ["--dataset", "digits", "--checkpoint", str(d / "empty.pt")], "is an empty file"),
        (
            "evaluate",
            ["--dataset", "digits", "--checkpoint", i["nat"], "--batch-size", "0"],
            "--batch-size 0",
        ),
        (
            "evaluate",
            ["--dataset", "digits", "--checkpoint", i["nat"], "--device", "cuda"],
            "not available on this machine",
        ),
        # derd.teachers
        (
            "teachers",
            ["--dataset", "digits", "--kind", "natural", "--epochs", "-1", "--out", str(d / "t.pt")],
            "--epochs -1: a teacher needs at least 1 epoch",
        ),
        ("teachers", ["--dataset", "digits", "--kind", "natural", "--out", str(d / "folder")], "is a folder"),
        ("teachers", ["--dataset", "cifar10", "--kind", "natural", "--out", str(d / "t.pt")], "--data-root"),
        (
            "teachers",
            ["--dataset", "digits", "--kind", "natural", "--arch", "resnet7", "--out", str(d / "t.pt")],
            "unknown architecture 'resnet7'",
        ),
        # analysis
        (
            "export",
            ["--experiment", "x", "--select", "knee", "--out", out, "--tracking-uri", "http://127.0.0.1:1"],
            "unreachable",
        ),
        (
            "pareto",
            ["--experiment", "x", "--tracking-uri", f"sqlite:///{d / 'notes.txt'}"],
            "is not an SQLite database",
        ),
        (
            "export",
            [
                "--experiment",
                "x",
                "--select",
                "knee",
                "--out",
                out,
                "--tracking-uri",
                f"sqlite:///{d / 'none.db'}",
            ],
            "no MLflow store",
        ),
        (
            "export",
            ["--experiment", "x", "--select", "knee", "--out", str(d / "notes.txt")],
            "is a file, not a folder",
        ),
        (
            "report",
            ["--experiment", "x", "--add-training", str(d / "folder"), "--out", out],
            "not a derd.train output folder",
        ),
        ("report", [], "pass --experiment NAME"),
        (
            "report",
            ["--experiment", "x", "--add-training", str(d / "reference"), "--out", out],
            "not a derd.train output folder",
        ),
        ("report", ["--paper-tables", "--dataset", "svhn", "--out", out], "--dataset 'svhn' is not one of"),
        ("relocate", ["--out", str(d / "folder")], "is not a search folder"),
        # round three. Files of the wrong shape:
        ("search", ["--space", str(d / "binary.yaml"), *t, "--out", out], "is not a text file"),
        ("train", ["--config", str(d / "binary.yaml"), "--out", out], "is not a text file"),
        (
            "search",
            ["--space", str(d / "space_presets.yaml"), *t, "--out", out],
            "presets: expected a list, got int",
        ),
        (
            "search",
            ["--space", str(d / "space_objectives.yaml"), *t, "--out", out],
            "objectives: expected a list",
        ),
        (
            "evaluate",
            ["--dataset", "digits", "--checkpoint", str(d / "meta_list.pt")],
            "is damaged: its meta is a list",
        ),
        (
            "evaluate",
            ["--dataset", "digits", "--checkpoint", str(d / "state_five.pt")],
            "its state_dict is a int",
        ),
        (
            "report",
            ["--experiment", "x", "--add-training", str(d / "table_list"), "--out", out],
            "test: expected a mapping, got list",
        ),
        (
            "report",
            ["--experiment", "x", "--add-training", str(d / "table_text"), "--out", out],
            "test.clean_acc: expected an integer or a finite number, got str",
        ),
        # bounded YAML
        ("search", ["--space", str(d / "bomb.yaml"), *t, "--out", out], "aliases expand to more than"),
        ("train", ["--config", str(d / "bomb.yaml"), "--out", out], "aliases expand to more than"),
        # numbers outside their domain
        (
            "train",
            ["--preset", "digits", "--set", "stage2.lr_s=inf", "--out", out],
            "stage2.lr_s: inf is not a finite",
        ),
        (
            "train",
            ["--preset", "digits", "--set", "stage1.lambda_adv=.nan", "--out", out],
            "nan is not a finite",
        ),
        (
            "train",
            ["--preset", "digits", "--set", f"seed={10**20}", "--out", out],
            "seed: 100000000000000000000 is above",
        ),
        (
            "train",
            ["--preset", "digits", "--set", "budget.batch_size=1000000000", "--out", out],
            "budget.batch_size: 1000000000 is above its maximum 65536",
        ),
        (
            "train",
            ["--preset", "digits", "--set", "student.latent_dim=100000000", "--out", out],
            "is above its maximum",
        ),
        (
            "train",
            ["--preset", "imagenet100", "--set", "budget.batch_size=65536", "--out", out],
            "budget.batch_size: this run needs at least",
        ),
        (
            "search",
            ["--space", str(d / "space_memory.yaml"), *t, "--out", out],
            "the largest trial: student.latent_dim (with student.generator_width): this run needs",
        ),
        (
            "search",
            ["--space", str(d / "space_reduction.yaml"), *t, "--out", out],
            "search.reduction_factor: must be",
        ),
        (  # val is scored at epochs 2 and 4: a rung at 3 would judge values held over from epoch 2
            "search",
            ["--space", str(d / "space_rungs.yaml"), *t, "--out", out],
            "search.grace_period: the moasha rungs at epochs 3 fall between val evaluations (eval.every 2",
        ),
        (
            "search",
            ["--space", str(d / "space_seed.yaml"), *t, "--out", out],
            "search.seed: must be an integer in [0,",
        ),
        (
            "search",
            ["--seed", str(2**32), *t, "--out", out],
            "search.seed: must be an integer in [0, 4294967295]",
        ),
        (
            "search",
            ["--space", str(d / "space_nan.yaml"), *t, "--out", out],
            "stage1.lambda_adv: nan is not a finite",
        ),
        (
            "evaluate",
            ["--dataset", "digits", "--checkpoint", i["nat"], "--seed", str(10**20)],
            "--seed 1000000000000",
        ),
        (
            "teachers",
            ["--dataset", "digits", "--kind", "natural", "--seed", str(10**20), "--out", str(d / "t.pt")],
            "--seed 100000000000000000000: must be in [0, 4294967295]",
        ),
        # an empty config, a run.pt that is truncated or holds code
        (
            "train",
            ["--config", str(d / "empty.yaml"), "--out", out],
            "is empty; write the config keys to change",
        ),
        (
            "train",
            ["--preset", "digits", *t, "--out", str(d / "truncated_run")],
            "corrupt or not a PyTorch file",
        ),
        ("train", ["--preset", "digits", *t, "--out", str(d / "code_run")], "holds pickled code or objects"),
        # flags that say nothing or contradict
        ("search", ["--dataset", "", *t, "--out", out], "--dataset '' names no dataset"),
        (
            "search",
            ["--dataset", "cifar10", "--space", str(d / "s0.yaml"), *t, "--out", out],
            "--dataset cifar10 contradicts the search space",
        ),
        ("report", ["--paper-tables", "--seeds", "-1", "--out", out], "--seeds -1: must be in [0,"),
        ("report", ["--paper-tables", "--seeds", "0", "0", "--out", out], "a seed is given twice"),
        (
            "teachers",
            ["--dataset", "digits", "--kind", "natural", "--image-size", "0", "--out", str(d / "t.pt")],
            "--image-size 0: must be in [8, 1024]",
        ),
    ]


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


def test_every_bad_input_gives_one_line_exit_2_and_writes_nothing(inputs, capsys):
    cases = _cases(inputs)
    assert len(cases) >= 25 and len({tuple(a) for _, a, _ in cases}) == len(cases)  # distinct
    watched = inputs["dir"].parent
    failures = []
    for cli, argv, message in cases:
        before = _files(watched)
        main = importlib.import_module(ENTRY[cli]).main
        with pytest.raises(SystemExit) as exc:
            main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        written = _files(watched) - before
        ok = (
            exc.value.code == 2
            and len(err) == 1
            and err[0].startswith("error:")
            and message in err[0]
            and not written
        )
        if not ok:
            failures.append((cli, argv, exc.value.code, err, sorted(map(str, written))))
    assert not failures, "\n".join(map(str, failures))


class Marker:
    """Unpickling this would create the marker file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.mark.parametrize("cli", ["search", "teachers", "evaluate"])
def test_a_cifar_batch_holding_code_is_refused_and_its_code_never_runs(tmp_path, cli, teacher_args, capsys):
    """Every path that reads CIFAR reads the batches with the restricted unpickler."""
    write_cifar(tmp_path / "c10", "cifar10")
    marker = tmp_path / "pwned"
    folder = tmp_path / "c10" / "cifar-10-batches-py"
    with open(folder / "data_batch_2", "wb") as f:
        pickle.dump({"data": Marker(marker), "labels": [0]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": Marker(marker)}, f)
    root = str(tmp_path / "c10")
    checkpoint = tmp_path / "cifar_model.pt"
    if cli == "evaluate":
        from derd.checkpoints import save_checkpoint
        from derd.models import create_model

        save_checkpoint(
            checkpoint,
            create_model("digits_cnn_small", 10, in_channels=3),
            {"arch": "digits_cnn_small", "num_classes": 10, "kind": "natural"},
        )
    argv = {
        "search": ["--dataset", "cifar10", "--data-root", root, "--out", str(tmp_path / "s"), *teacher_args],
        "teachers": [
            "--dataset",
            "cifar10",
            "--kind",
            "natural",
            "--data-root",
            root,
            "--out",
            str(tmp_path / "t.pt"),
        ],
        "evaluate": [
            "--dataset",
            "cifar10",
            "--data-root",
            root,
            "--checkpoint",
            str(checkpoint),
            "--split",
            "val",
        ],
    }[cli]
    with pytest.raises(SystemExit) as exc:
        importlib.import_module(ENTRY[cli]).main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        exc.value.code == 2
        and len(err) == 1
        and err[0].startswith("error:")
        and "system: a CIFAR file holds data, never code" in err[0]
    )
    assert not marker.exists() and not (tmp_path / "s").exists() and not (tmp_path / "t.pt").exists()


def test_the_restricted_unpickler_reads_a_real_format_batch_and_refuses_other_globals(tmp_path):
    import numpy as np

    from derd.cifar_files import MalformedBatch, load_batch

    data = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    for protocol in (2, pickle.HIGHEST_PROTOCOL):  # the real files are Python 2 pickles (protocol 2)
        with open(tmp_path / "b", "wb") as f:
            pickle.dump(
                {
                    "batch_label": "training batch 1 of 5",
                    "data": data,
                    "labels": [3, 7],
                    "filenames": ["a.png", "b.png"],
                },
                f,
                protocol=protocol,
            )
        images, labels = load_batch(tmp_path / "b", "labels")
        assert images.shape == (2, 32, 32, 3) and labels == [3, 7]
        assert (images[1].transpose(2, 0, 1).reshape(-1) == data[1]).all()
    with open(tmp_path / "b", "wb") as f:
        pickle.dump({"data": data, "labels": [3, 7], "x": Path("/")}, f)
    with pytest.raises(MalformedBatch, match="pathlib"):
        load_batch(tmp_path / "b", "labels")


@pytest.mark.parametrize("cli", ["search", "train", "teachers"])
@pytest.mark.parametrize("value", ["file", ""])
def test_a_derd_cache_that_is_empty_or_a_file_is_one_line(
    tmp_path, cli, value, teacher_args, monkeypatch, capsys
):
    (tmp_path / "file").write_text("not a folder\n")
    monkeypatch.setenv("DERD_CACHE", str(tmp_path / "file") if value else "")
    argv = {
        "search": ["--out", str(tmp_path / "s")],
        "train": ["--preset", "digits", "--out", str(tmp_path / "s")],
        "teachers": ["--dataset", "digits", "--kind", "natural"],
    }[cli]
    with pytest.raises(SystemExit) as exc:
        importlib.import_module(ENTRY[cli]).main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    expected = "DERD_CACHE" if value else "DERD_CACHE is set but empty"
    assert exc.value.code == 2 and len(err) == 1 and err[0].startswith("error:") and expected in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_the_bounded_yaml_reader_reads_aliases_within_bounds_and_refuses_recursion():
    from derd.errors import UserError
    from derd.inputs import MAX_YAML_NODES, parse_yaml

    assert parse_yaml("a: &x [1, 2]\nb: *x\n", "t") == {
        "a": [1, 2],
        "b": [1, 2],
    }  # ordinary aliases still load
    with pytest.raises(UserError, match="aliases expand"):
        parse_yaml("a: &x [*x]\n", "t")
    wide = (
        "a: &a ["
        + ", ".join(["1"] * 1000)
        + "]\nb: ["
        + ", ".join(["*a"] * (MAX_YAML_NODES // 1000 + 1))
        + "]\n"
    )
    with pytest.raises(UserError, match="aliases expand"):
        parse_yaml(wide, "t")


def test_every_numeric_config_key_has_a_finite_range():
    import dataclasses
    import math

    from derd.config import section_classes

    for name, cls in section_classes().items():
        for f in dataclasses.fields(cls):
            lo, hi = f.metadata.get("lo"), f.metadata.get("hi")
            if lo is not None or isinstance(f.default, (int, float)) and not isinstance(f.default, bool):
                assert hi is not None and math.isfinite(lo) and math.isfinite(hi), f"{name}.{f.name}"
    from derd.settings import SEED_MAX

    assert dataclasses.fields(section_classes()[""])[1].metadata["hi"] == SEED_MAX == 2**32 - 1
