"""The synthetic validation set (derd/validation.py): made from the teachers alone, labelled by their
agreement, balanced, deterministic, stored and read back safely; what a run is scored on."""

from __future__ import annotations

import pytest
import torch
from conftest import train_quick

from derd.config import apply_overrides, preset
from derd.data import DatasetInfo, dataset_info
from derd.errors import UserError
from derd.experts import Experts
from derd.validation import (
    load_validation_set,
    make_validation_set,
    save_validation_set,
    snapshot_steps,
    validation_data,
)

INFO = dataset_info("digits")


def _recipe(**overrides):
    return apply_overrides(
        preset("digits"),
        {
            "synthetic_val.per_class": 6,
            "synthetic_val.steps": 30,
            **{f"synthetic_val.{k}": v for k, v in overrides.items()},
        },
    ).synthetic_val


@pytest.fixture(scope="module")
def experts() -> Experts:
    return Experts(train_quick(seed=1, epochs=3), train_quick(seed=2, epochs=3))


@pytest.mark.parametrize("procedure", ["inversion", "robust", "both"])
def test_every_kept_image_is_labelled_as_drawn_by_every_teacher_and_classes_interleave(experts, procedure):
    made = make_validation_set(experts, INFO, _recipe(procedure=procedure), seed=0)
    n = made.stats["n_images"]
    assert n > 0.5 * made.stats["n_drawn"] and made.stats["n_drawn"] == 60
    assert made.images.shape == (n, *INFO.image_shape) and 0 <= made.images.min() and made.images.max() <= 1
    for teacher in (experts.natural, experts.robust):
        assert torch.equal(teacher(made.images).argmax(1), made.labels)
    assert torch.bincount(made.labels, minlength=10).tolist() == made.stats["class_counts"]
    first = made.labels[:10].tolist()  # each class once before any twice (all ten kept at least once)
    if min(made.stats["class_counts"]) > 0:
        assert sorted(first) == list(range(10))
    again = make_validation_set(experts, INFO, _recipe(procedure=procedure), seed=0)
    assert torch.equal(again.images, made.images)  # a fixed seed makes the same set
    other = make_validation_set(experts, INFO, _recipe(procedure=procedure), seed=1)
    assert not torch.equal(other.images[: min(n, len(other.images))], made.images[: len(other.images)])


def test_snapshots_keep_earlier_steps_too(experts):
    assert snapshot_steps(_recipe(snapshots=1)) == [30]
    assert snapshot_steps(_recipe(snapshots=3)) == [2, 7, 30]  # 30/20, 30/sqrt(20), 30
    made = make_validation_set(experts, INFO, _recipe(snapshots=3), seed=0)
    assert made.stats["n_drawn"] == 180


def test_the_stored_set_reads_back_as_it_was_and_a_wrong_file_is_one_line(experts, tmp_path):
    made = make_validation_set(experts, INFO, _recipe(), seed=0)
    path = tmp_path / "synthetic_val.pt"
    save_validation_set(made, INFO, path)
    back = load_validation_set(path, INFO)
    assert torch.equal(back.labels, made.labels) and torch.allclose(back.images, made.images, atol=0.5 / 255)
    cfg = apply_overrides(preset("digits"), {"eval.validation": "synthetic", "synthetic_val.file": str(path)})
    assert len(validation_data(cfg, INFO)) == len(made.labels)
    with pytest.raises(UserError, match="made for 'digits', not colour_x"):
        load_validation_set(path, DatasetInfo("colour_x", 10, (1, 8, 8), 0.2, (0.5,), (0.5,)))
    torch.save(
        {
            "format": "derd-synthetic-val-1",
            "dataset": "digits",
            "images": torch.zeros(3, 1, 8, 8),
            "labels": torch.zeros(3, dtype=torch.long),
        },
        path,
    )  # float images: not what we write
    with pytest.raises(UserError, match="is not a synthetic validation set of digits.*delete"):
        load_validation_set(path, INFO)
    with pytest.raises(UserError, match="needs synthetic_val.file"):
        validation_data(apply_overrides(preset("digits"), {"eval.validation": "synthetic"}), INFO)


def test_the_robust_procedure_needs_the_robust_teacher(experts):
    with pytest.raises(UserError, match="needs T_rob; use 'inversion'"):
        make_validation_set(Experts(experts.natural, None), INFO, _recipe(procedure="robust"), seed=0)
