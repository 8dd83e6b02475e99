"""A new dataset is two files, written here outside the package: its DatasetSpec (a module named in
$DERD_PLUGINS) and its search space. Its teachers are found in the cache by dataset and kind, so a
search runs with no --teacher-* flag; a dataset that is not embedded is never trained for silently."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_BASE

NAME = "colour_digits"

# The dataset's one Python file: a colour variant of digits, read from a tensor file under --data-root.
DATASET = textwrap.dedent('''
    """``colour_digits``: scikit-learn's digits, each tinted with a colour, as a (N, 3, 8, 8) tensor file."""
    from pathlib import Path

    import torch
    from torch.utils.data import TensorDataset

    from derd.data import DatasetInfo, DatasetSpec, register_dataset, stratified_split
    from derd.errors import UserError


    def load(split, root, size, augment, download):
        path = Path(root) / "colour_digits.pt"
        if not path.is_file():
            raise UserError(f"colour_digits: no {path}")
        data = torch.load(path, weights_only=True)
        rest, test = stratified_split(data["labels"].tolist(), 0.2)
        teacher, val = stratified_split(data["labels"][rest].tolist(), 0.25, seed=1)
        idx = {"teacher": rest[teacher], "val": rest[val], "test": test}[split]
        return TensorDataset(data["images"][idx].float() / 255, data["labels"][idx])


    register_dataset(DatasetSpec(
        DatasetInfo("colour_digits", 10, (3, 8, 8), 0.2, (0.3, 0.3, 0.3), (0.4, 0.4, 0.4)), load,
        teacher_arch="digits_cnn_small", teacher_epochs=2,
        budget={"budget.epochs": 4, "budget.iters_per_epoch": 2, "budget.batch_size": 16, "stage1.epochs": 2,
                "student.arch": "digits_cnn_small"}))
''')


@pytest.fixture()
def colour_digits(tmp_path, monkeypatch):
    """The dataset's module in $DERD_PLUGINS and its data under a root, both written here."""
    from sklearn.datasets import load_digits

    from derd.data import available_datasets, dataset_info, unregister_dataset
    from derd.registry import PLUGINS_ENV

    module = tmp_path / "colour_digits.py"
    module.write_text(DATASET)
    bunch = load_digits()
    grey = torch.tensor(bunch.images / 16.0, dtype=torch.float32).unsqueeze(1)[:600]
    tint = torch.rand(len(grey), 3, 1, 1, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.5
    root = tmp_path / "data"
    root.mkdir()
    torch.save(
        {"images": (grey * tint * 255).to(torch.uint8), "labels": torch.tensor(bunch.target[:600])},
        root / "colour_digits.pt",
    )
    monkeypatch.setenv(PLUGINS_ENV, str(module))
    assert NAME in available_datasets()
    yield dataset_info(NAME), root
    unregister_dataset(NAME)


def _cache_teachers(info, root: Path) -> None:
    """A natural and a robust-named teacher in the cache, where ``python -m derd.teachers`` puts them."""
    from derd.checkpoints import build_model, save_checkpoint
    from derd.data import load_split, make_loader
    from derd.teachers import teacher_path

    loader = make_loader(load_split(NAME, "teacher", root), 64, shuffle=True)
    for kind, seed in (("natural", 1), ("robust", 2)):
        torch.manual_seed(seed)
        model = build_model("digits_cnn_small", info)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(3):
            for x, y in loader:
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
        save_checkpoint(
            teacher_path(info, kind, "digits_cnn_small"),
            model.eval(),
            {"arch": "digits_cnn_small", "dataset": NAME, "num_classes": 10, "kind": kind},
        )


def test_a_dataset_from_outside_is_searched_with_its_teachers_found_in_the_cache(colour_digits, tmp_path):
    from mlflow.tracking import MlflowClient

    from derd.config import apply_overrides, preset
    from derd.errors import UserError
    from derd.experts import load_experts
    from tuning.search import run_search

    info, root = colour_digits
    cfg = apply_overrides(preset(NAME), {"data.root": str(root)})
    assert (
        cfg.budget.epochs == 4 and cfg.stage1.lambda_ie == 5
    )  # its stated budget; DERD's weights (no preset here)
    with pytest.raises(
        UserError,
        match=rf"^{NAME} needs teacher checkpoints: no natural teacher in .*python -m "
        rf"derd.teachers --dataset {NAME} --kind natural",
    ):
        load_experts(cfg)  # not embedded: never trained behind the user's back
    _cache_teachers(info, root)
    experts = load_experts(cfg)
    assert experts.natural is not None and experts.robust is not None
    assert (
        load_experts(apply_overrides(cfg, {"method": "dafl"})).natural is None
    )  # only what the method needs
    assert (
        load_experts(apply_overrides(cfg, {"method": "nature"})).robust is None
    )  # the undefended one: T_nat only

    space = tmp_path / "space.yaml"
    space.write_text(
        yaml.safe_dump(
            {
                "dataset": NAME,
                "base": {**TINY_BASE, "data.val_batch_size": 32},
                "space": {"stage2.lambda_nat": {"distribution": "loguniform", "low": 0.05, "high": 5.0}},
                "presets": ["paper"],
                "search": {"num_trials": 1, "max_concurrent": 1, "scheduler": "none"},
            }
        )
    )
    out = tmp_path / "search"
    summary = run_search(
        ["--space", str(space), "--out", str(out), "--data-root", str(root)]
    )  # no --teacher-* flag
    assert summary["trials_finished"] == 1
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name(f"derd-{NAME}")
    trials = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("derd.kind") == "trial"]
    assert len(trials) == 1 and trials[0].info.status == "FINISHED"
    assert trials[0].data.params["data.dataset"] == NAME and "val/aa_acc" in trials[0].data.metrics


def test_a_dataset_must_state_its_budget():
    from derd.data import DatasetInfo, DatasetSpec

    with pytest.raises(ValueError, match="its budget must set budget.epochs, budget.iters_per_epoch"):
        DatasetSpec(
            DatasetInfo("x", 2, (1, 8, 8), 0.1, (0.5,), (0.5,)),
            lambda *a: None,
            "digits_cnn_small",
            1,
            budget={"student.arch": "digits_cnn_small"},
        )


def test_a_search_with_synthetic_validation_reads_no_real_image(colour_digits, tmp_path):
    """``--validation synthetic``: the set is made from the teachers alone before any trial, stored and
    logged, every trial is scored on it, and the dataset's images are never read: here they are deleted
    before the search starts."""
    from mlflow.tracking import MlflowClient

    from derd.errors import UserError
    from derd.validation import load_validation_set
    from tuning.records import Tag
    from tuning.search import run_search

    info, root = colour_digits
    _cache_teachers(info, root)
    (root / "colour_digits.pt").unlink()  # no real image left to read
    space = tmp_path / "space.yaml"
    space.write_text(
        yaml.safe_dump(
            {
                "dataset": NAME,
                "base": {
                    **TINY_BASE,
                    "data.val_batch_size": 32,
                    "synthetic_val.per_class": 4,
                    "synthetic_val.steps": 6,
                },
                "space": {"stage2.lambda_nat": {"distribution": "loguniform", "low": 0.05, "high": 5.0}},
                "presets": ["paper"],
                "search": {"num_trials": 2, "max_concurrent": 1, "scheduler": "none"},
            }
        )
    )
    out = tmp_path / "search"
    summary = run_search(
        ["--space", str(space), "--out", str(out), "--data-root", str(root), "--validation", "synthetic"]
    )
    assert summary["trials_finished"] == 2 and summary["validation"] == "synthetic"
    assert "synthetic validation set" in summary["markdown"]
    made = load_validation_set(out / "synthetic_val.pt", info)
    n = made.stats["n_images"]
    assert 0 < n <= 40 and sum(made.stats["class_counts"]) == n and made.stats["n_drawn"] == 40
    record = json.loads((out / "search.json").read_text())
    assert record["validation"]["kind"] == "synthetic" and record["validation"]["n_images"] == n
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name(f"derd-{NAME}")
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags.get(Tag.KIND) == "search")
    assert parent.data.tags[Tag.VALIDATION] == "synthetic" and parent.data.metrics["validation/n_images"] == n
    trials = [r for r in runs if r.data.tags.get(Tag.KIND) == "trial"]
    assert len(trials) == 2 and all(
        r.info.status == "FINISHED"
        and r.data.tags[Tag.VALIDATION] == "synthetic"
        and r.data.metrics["val/n_images"] == n
        for r in trials
    )
    # a resume may not switch what the trials are scored on
    with pytest.raises(UserError, match="--validation cannot change when resuming"):
        run_search(["--out", str(out), "--resume", "--validation", "real"])
