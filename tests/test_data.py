"""Datasets: the digits splits, torchvision's CIFAR format, ImageNet-100 trees, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fakedata import write_cifar as _write_cifar
from PIL import Image

from derd.data import dataset_info, digits_split_indices, imagenet100_classes, load_split, stratified_split
from derd.errors import UserError


def test_shipped_class_list_has_100_unique_wordnet_ids():
    wnids = imagenet100_classes()
    assert len(wnids) == 100 and len(set(wnids)) == 100
    assert all(w.startswith("n") and len(w) == 9 for w in wnids)


def test_digits_splits_are_disjoint_stable_and_in_unit_range():
    idx = digits_split_indices()
    assert sum(len(v) for v in idx.values()) == 1797
    assert len(set().union(*map(set, idx.values()))) == 1797  # disjoint and covering
    assert all(np.array_equal(idx[k], digits_split_indices()[k]) for k in idx)
    for split in ("teacher", "val", "test"):
        ds = load_split("digits", split)
        assert torch.equal(ds.tensors[0], load_split("digits", split).tensors[0])
        assert ds.tensors[0].min() >= 0 and ds.tensors[0].max() <= 1
        assert ds.tensors[0].shape[1:] == dataset_info("digits").image_shape
        assert set(ds.tensors[1].tolist()) == set(range(10))


def test_stratified_split_holds_out_per_class_and_is_seeded():
    targets = np.repeat(np.arange(4), 50)
    kept, held = stratified_split(targets, 5)
    assert len(set(kept) & set(held)) == 0 and len(kept) + len(held) == 200
    assert np.bincount(targets[held]).tolist() == [5, 5, 5, 5]
    kept2, held2 = stratified_split(targets, 5)
    assert np.array_equal(held, held2)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_loader_reads_torchvision_format_with_disjoint_splits(tmp_path, name):
    _write_cifar(tmp_path, name, n_train=200 if name == "cifar10" else 500)
    teacher = load_split(name, "teacher", tmp_path)
    val = load_split(name, "val", tmp_path)
    test = load_split(name, "test", tmp_path)
    x, y = val[0]
    assert x.shape == (3, 32, 32) and 0 <= x.min() and x.max() <= 1
    assert set(teacher.indices) & set(val.indices) == set()
    assert len(teacher) + len(val) == len(teacher.base) and len(test) == 20
    assert np.array_equal(val.indices, load_split(name, "val", tmp_path).indices)


def test_cifar_missing_or_malformed_names_the_expected_files(tmp_path):
    with pytest.raises(UserError, match="cifar-10-batches-py.*data_batch_1"):
        load_split("cifar10", "val", tmp_path)
    _write_cifar(tmp_path, "cifar10")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="malformed"):
        load_split("cifar10", "val", tmp_path)


def _write_imagenet_tree(root, wnids, per_class: int, extra: tuple[str, ...] = ()) -> None:
    rng = np.random.RandomState(0)
    for sub, n in (("train", per_class), ("val", 2)):
        for w in list(wnids) + list(extra):
            d = root / sub / w
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.randint(0, 256, (20, 24, 3), dtype=np.uint8)).save(d / f"{w}_{i}.JPEG")


@pytest.mark.parametrize("extra", [(), ("n99999999", "n99999998")], ids=["prepared-100", "full-tree"])
def test_imagenet100_reads_imagefolder_tree_in_shipped_class_order(tmp_path, extra):
    wnids = imagenet100_classes()
    _write_imagenet_tree(tmp_path, wnids, per_class=5, extra=extra)
    val = load_split("imagenet100", "val", tmp_path, image_size=16)
    teacher = load_split("imagenet100", "teacher", tmp_path, image_size=16)
    test = load_split("imagenet100", "test", tmp_path, image_size=16)
    assert len(val) == 100 and len(teacher) == 400 and len(test) == 200  # extra classes ignored
    x, y = test[0]
    assert x.shape == (3, 16, 16) and y == wnids.index(sorted(wnids)[0])  # labels follow the list
    assert test.base.classes == wnids
    assert set(val.indices).isdisjoint(teacher.indices)


def test_imagenet100_missing_classes_named(tmp_path):
    _write_imagenet_tree(tmp_path, imagenet100_classes()[:98], per_class=1)
    with pytest.raises(UserError, match="2 of the 100 class folders are missing"):
        load_split("imagenet100", "val", tmp_path)
    with pytest.raises(UserError, match="no folder"):
        load_split("imagenet100", "val", tmp_path / "nowhere")


def test_unknown_dataset_and_missing_root():
    with pytest.raises(UserError, match="unknown dataset 'mnist'"):
        load_split("mnist", "val")
    with pytest.raises(UserError, match="--data-root"):
        load_split("cifar10", "val")


def test_download_is_only_for_cifar_and_needs_a_root(tmp_path):
    from derd.data import download

    with pytest.raises(UserError, match="fetches cifar10, cifar100 only"):
        download("imagenet100", tmp_path)
    with pytest.raises(UserError, match="--data-root"):
        download("cifar10", None)
