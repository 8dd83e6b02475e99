"""The checkpoint cadence (derd/cadence.py): which epochs write run.pt, on the CPU and by time."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_BASE, train_quick

from derd.cadence import CheckpointCadence, checkpoint_every_s
from derd.checkpoints import save_checkpoint
from derd.config import apply_overrides, preset
from derd.run import DistillationRun
from derd.settings import ConfigError


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_every_epoch_on_the_cpu_five_minutes_on_cuda_unless_set():
    assert checkpoint_every_s(None, torch.device("cpu")) == 0.0
    assert checkpoint_every_s(None, torch.device("cuda", 0)) == 300.0
    assert checkpoint_every_s(60, torch.device("cuda", 0)) == 60.0


def test_a_write_is_due_at_val_epochs_the_end_and_after_the_interval_only():
    clock = Clock()
    cadence = CheckpointCadence(300, clock)
    plain, scored = {"epoch": 1, "loss/G": 0.1}, {"epoch": 5, "val/aa_acc": 40.0}
    assert not cadence.due(plain, total_epochs=50)
    assert cadence.due(scored, total_epochs=50)  # the epochs the schedulers decide on
    assert cadence.due({"epoch": 50}, total_epochs=50)  # the end
    clock.now = 299.0
    assert not cadence.due(plain, total_epochs=50)
    clock.now = 300.0
    assert cadence.due(plain, total_epochs=50)
    cadence.wrote(7)
    assert (cadence.writes, cadence.saved_epoch) == (1, 7) and not cadence.due(plain, total_epochs=50)
    every = CheckpointCadence(0, clock)
    assert every.due(plain, total_epochs=50)


def test_a_negative_interval_is_refused_with_the_key_named():
    with pytest.raises(ConfigError, match="train.checkpoint_every_s"):
        apply_overrides(preset("digits"), {"train.checkpoint_every_s": -1})


@pytest.fixture(scope="module")
def teacher_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teachers")
    for kind, seed in (("natural", 1), ("robust", 2)):
        save_checkpoint(
            folder / f"{kind}.pt",
            train_quick(seed=seed, epochs=2),
            {"arch": "digits_cnn_small", "num_classes": 10, "kind": kind},
        )
    return {"teachers.natural": str(folder / "natural.pt"), "teachers.robust": str(folder / "robust.pt")}


def test_the_final_training_writes_run_pt_at_the_val_epochs_with_an_hours_interval(
    tmp_path, monkeypatch, teacher_files
):
    """derd.train with train.checkpoint_every_s 3600: run.pt is written at the val epochs (2, 4) only
    (the search's trainable uses the same cadence; tests/test_cluster_logs.py kills one between writes)."""
    from derd import train as train_module

    cfg = apply_overrides(preset("digits"), {**TINY_BASE, "train.checkpoint_every_s": 3600, **teacher_files})
    saves: list[int] = []
    save = DistillationRun.save

    def counted(run: DistillationRun, path) -> None:
        saves.append(run.epoch)
        save(run, path)

    monkeypatch.setattr(DistillationRun, "save", counted)
    train_module.train(cfg, tmp_path / "out", progress=False, test_protocol="search")
    assert saves == [2, 4]
    assert torch.load(tmp_path / "out" / "run.pt", weights_only=True)["epoch"] == 4
