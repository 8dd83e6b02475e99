"""Datasets and their fixed, seeded splits.

Every dataset has three disjoint splits:

* ``teacher``: used only to train the teachers (DERD's student never sees a real image);
* ``val``: scores search trials (held out from the training data);
* ``test``: final reports only.

All images are float tensors in [0, 1]; models normalise inside themselves.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from derd.errors import UserError

SPLITS = ("teacher", "val", "test")
SPLIT_SEED = 0  # fixed: splits never change between calls, runs or machines


@dataclass(frozen=True)
class DatasetInfo:
    """What every other module needs to know about a dataset."""

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]  # (C, H, W)
    eps: float  # L-inf radius of the robustness evaluation, in [0, 1] pixel units
    mean: tuple[float, ...]
    std: tuple[float, ...]


# digits: 8x8 images with 17 grey levels. At eps = 0.2 (about 3 grey levels; the digits stay
# readable) a natural CNN falls to 0% under PGD_S while a PGD-trained one keeps about 60% at
# the same clean accuracy; at 0.1 even the natural CNN keeps 40%, at 0.3 adversarial
# training no longer converges on this little data. README shows both teachers' tables.
DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo("digits", 10, (1, 8, 8), 0.2, (0.3,), (0.4,)),
    "cifar10": DatasetInfo(
        "cifar10", 10, (3, 32, 32), 8 / 255, (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616),
    ),
    "cifar100": DatasetInfo(
        "cifar100", 100, (3, 32, 32), 8 / 255, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
    ),
    "imagenet100": DatasetInfo(
        "imagenet100", 100, (3, 224, 224), 8 / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
    ),
}

# Held-out validation size per class, taken from the training data.
VAL_PER_CLASS = {"cifar10": 500, "cifar100": 50, "imagenet100": 50}


def dataset_info(name: str, image_size: int | None = None) -> DatasetInfo:
    """Look up a dataset; ``image_size`` overrides ImageNet-100's resolution (224 by default)."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    info = DATASETS[name]
    if image_size is not None and name == "imagenet100":
        info = dataclasses.replace(info, image_shape=(3, image_size, image_size))
    return info


def imagenet100_classes() -> list[str]:
    """The 100 WordNet ids of ImageNet-100 (the list used across the literature)."""
    text = resources.files("derd").joinpath("data_files/imagenet100_classes.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def stratified_split(
    targets: Sequence[int], holdout: int | float, seed: int = SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (kept, held_out), stratified by class and seeded.

    ``holdout`` is a fraction of each class (float) or a count per class (int); a class too
    small for the count gives up a fifth of its images instead (at least one).
    """
    targets = np.asarray(targets)
    rng = np.random.RandomState(seed)
    kept, held = [], []
    for cls in np.unique(targets):
        idx = np.flatnonzero(targets == cls)
        idx = idx[rng.permutation(len(idx))]
        if isinstance(holdout, float):
            n_hold = max(1, int(round(len(idx) * holdout)))
        else:
            n_hold = min(holdout, max(1, len(idx) // 5))
        held.append(idx[:n_hold])
        kept.append(idx[n_hold:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))


class _Transformed(Dataset):
    """A subset of a base dataset with its own transform (teacher split augments, others not)."""

    def __init__(self, base: Dataset, indices: np.ndarray, transform) -> None:
        self.base, self.indices, self.transform = base, indices, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        img, target = self.base[int(self.indices[i])]
        return self.transform(img), target


def load_split(
    name: str,
    split: str,
    root: str | os.PathLike | None = None,
    *,
    image_size: int | None = None,
    augment: bool = False,
    download: bool = False,
) -> Dataset:
    """Return one split of a dataset as (image in [0, 1], label) pairs.

    ``augment`` adds the usual random crop and flip (used for teacher training only).
    ``download`` lets torchvision fetch CIFAR when the user asks for it; never in tests.
    """
    info = dataset_info(name, image_size)
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if name == "digits":
        return _digits(split)
    if root is None:
        raise UserError(f"dataset {name} needs a data root: pass --data-root DIR")
    root = Path(root).expanduser()
    if name in ("cifar10", "cifar100"):
        return _cifar(name, split, root, augment, download)
    return _imagenet100(split, root, info.image_shape[1], augment)


def digits_split_indices() -> dict[str, np.ndarray]:
    """The fixed digits split over scikit-learn's 1,797 images: 60% teacher, 20% val, 20% test."""
    from sklearn.datasets import load_digits

    targets = load_digits().target
    rest, test = stratified_split(targets, 0.2)
    teacher_pos, val_pos = stratified_split(targets[rest], 0.25, seed=SPLIT_SEED + 1)
    return {"teacher": rest[teacher_pos], "val": rest[val_pos], "test": test}


def _digits(split: str) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    idx = torch.as_tensor(digits_split_indices()[split])
    images = torch.tensor(bunch.images / 16.0, dtype=torch.float32).unsqueeze(1)
    return TensorDataset(images[idx], torch.tensor(bunch.target, dtype=torch.long)[idx])


def _cifar(name: str, split: str, root: Path, augment: bool, download: bool) -> Dataset:
    from torchvision import datasets, transforms

    base_cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100

    class LocalCIFAR(base_cls):  # type: ignore[misc, valid-type]
        """torchvision's CIFAR reader; integrity means the files exist (md5 only on download)."""

        def _check_integrity(self) -> bool:
            folder = Path(self.root) / self.base_folder
            return all((folder / f).is_file() for f, _ in self.train_list + self.test_list)

        def _load_meta(self) -> None:
            path = Path(self.root) / self.base_folder / self.meta["filename"]
            if not path.is_file():
                raise RuntimeError(f"missing {path}")
            with open(path, "rb") as f:
                self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    folder = root / base_cls.base_folder
    try:
        base = LocalCIFAR(str(root), train=split != "test", download=download)
    except (RuntimeError, OSError, KeyError, ValueError, EOFError, pickle.UnpicklingError) as err:
        files = ", ".join(f for f, _ in base_cls.train_list + base_cls.test_list)
        raise UserError(
            f"{name} not found or malformed under {folder} ({err}); expected torchvision's "
            f"files {files}, {base_cls.meta['filename']}; pass --download to fetch them"
        ) from None
    to_tensor = transforms.ToTensor()
    if split == "test":
        return _Transformed(base, np.arange(len(base)), to_tensor)
    teacher_idx, val_idx = stratified_split(base.targets, VAL_PER_CLASS[name])
    if split == "val":
        return _Transformed(base, val_idx, to_tensor)
    tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), to_tensor])
    return _Transformed(base, teacher_idx, tf if augment else to_tensor)


def _imagenet100(split: str, root: Path, size: int, augment: bool) -> Dataset:
    """ImageNet-100 from a full ImageNet train/val tree or a prepared 100-class tree."""
    from torchvision import datasets, transforms

    wnids = imagenet100_classes()
    sub = "val" if split == "test" else "train"
    folder = root / sub
    if not folder.is_dir():
        raise UserError(
            f"imagenet100: no folder {folder}; expected {root}/train/<wnid>/*.JPEG and "
            f"{root}/val/<wnid>/*.JPEG (a full ImageNet tree or the 100 classes only)"
        )
    missing = [w for w in wnids if not (folder / w).is_dir()]
    if missing:
        raise UserError(
            f"imagenet100: {len(missing)} of the 100 class folders are missing under {folder} "
            f"(first: {missing[0]}); expected one folder per WordNet id"
        )

    class ImageNet100Folder(datasets.ImageFolder):
        """ImageFolder restricted to the 100 classes, indexed in the shipped list's order."""

        def find_classes(self, directory):
            return wnids, {w: i for i, w in enumerate(wnids)}

    try:
        base = ImageNet100Folder(str(folder))
    except (FileNotFoundError, OSError) as err:
        raise UserError(f"imagenet100: cannot read {folder}: {err}") from None
    resize = int(round(size * 256 / 224))
    plain = transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(size), transforms.ToTensor()])
    if split == "test":
        return _Transformed(base, np.arange(len(base)), plain)
    teacher_idx, val_idx = stratified_split(base.targets, VAL_PER_CLASS["imagenet100"])
    if split == "val":
        return _Transformed(base, val_idx, plain)
    aug = transforms.Compose(
        [transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(), transforms.ToTensor()]
    )
    return _Transformed(base, teacher_idx, aug if augment else plain)


def download(name: str, root: str | os.PathLike | None) -> None:
    """Fetch CIFAR-10/100 into ``root`` with torchvision (only ever on the user's request)."""
    if name not in ("cifar10", "cifar100"):
        raise UserError(f"--download fetches cifar10 and cifar100 only; {name} must already be on disk")
    if root is None:
        raise UserError(f"dataset {name} needs a data root: pass --data-root DIR")
    load_split(name, "test", root, download=True)


def make_loader(
    dataset: Dataset, batch_size: int, *, shuffle: bool = False, seed: int = 0, workers: int = 0
) -> DataLoader:
    """A seeded DataLoader (the shuffle order depends only on ``seed``)."""
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=gen, num_workers=workers)


def first_n(dataset: Dataset, n: int | None) -> Dataset:
    """The first ``n`` items (the search protocol scores a fixed prefix of the val split)."""
    if n is None or n >= len(dataset):
        return dataset
    return Subset(dataset, range(n))
