"""Datasets and their fixed, seeded splits.

Every dataset has three disjoint splits:

* ``teacher``: used only to train the teachers (DERD's student never sees a real image);
* ``val``: scores search trials (held out from the training data);
* ``test``: final reports only.

All images are float tensors in [0, 1]; models normalise inside themselves.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from derd.errors import UserError
from derd.registry import Registry

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


# (split, root, image side, augment, download) -> the split's (image, label) pairs
Loader = Callable[[str, "Path | None", int, bool, bool], Dataset]


@dataclass(frozen=True)
class DatasetSpec:
    """Everything the project knows about one dataset, in one place.

    * ``info``: classes, shape, the evaluation's eps, normalisation statistics;
    * ``load``: reads a split (``teacher``, ``val`` or ``test``) from ``root``;
    * ``teacher_arch`` / ``teacher_epochs``: what ``derd.teachers`` trains by default (and the
      architecture whose cached teachers are found first: ``derd.teachers.find_cached_teacher``);
    * ``budget``: run-config values of a full-length final training (``derd.config.preset``),
      required: at least ``REQUIRED_BUDGET`` (a dataset never silently takes another's length);
    * ``needs_root``, ``downloadable``, ``resizable``: whether it reads ``--data-root`` (one that
      does not is *embedded*: its data ships with the code, so its teachers are trained on first
      use), whether ``--download`` can fetch it, whether ``data.image_size`` may change its side.

    Methods' published weights per dataset are the methods' own (``Method.presets``), not here.
    """

    info: DatasetInfo
    load: Loader
    teacher_arch: str
    teacher_epochs: int
    budget: dict[str, Any]
    needs_root: bool = True
    downloadable: bool = False
    resizable: bool = False

    def __post_init__(self) -> None:
        missing = [k for k in REQUIRED_BUDGET if k not in self.budget]
        if missing:
            raise ValueError(
                f"dataset {self.info.name}: its budget must set {', '.join(missing)} (a full-length "
                f"final training: derd.config.preset)"
            )


# What every dataset's budget states: every method's length and the student it trains.
REQUIRED_BUDGET = ("budget.epochs", "budget.iters_per_epoch", "budget.batch_size", "student.arch")


_DATASETS: Registry[DatasetSpec] = Registry("dataset")  # in the order of registration


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Make a dataset available by ``spec.info.name`` (to every CLI, config and search space); a name taken
    already is refused. A module outside the package that calls this is found through ``$DERD_PLUGINS``
    (``derd.registry.load_plugins``)."""
    return _DATASETS.add(spec.info.name, spec)


def unregister_dataset(name: str) -> None:
    """Remove a dataset (for tests that register one of their own)."""
    _DATASETS.remove(name)


def available_datasets() -> list[str]:
    return _DATASETS.names()


def dataset_spec(name: str) -> DatasetSpec:
    return _DATASETS.get(name)


IMAGE_SIZES = (8, 1024)  # the side a resizable dataset may be given (data.image_size, --image-size)


def dataset_info(name: str, image_size: int | None = None) -> DatasetInfo:
    """Look up a dataset; ``image_size`` overrides a resizable dataset's side (ImageNet-100: 224)."""
    spec = dataset_spec(name)
    if image_size is not None and spec.resizable:
        return dataclasses.replace(spec.info, image_shape=(spec.info.image_shape[0], image_size, image_size))
    return spec.info


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
    spec = dataset_spec(name)
    info = dataset_info(name, image_size)
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if spec.needs_root and root is None:
        raise UserError(f"dataset {name} needs a data root: pass --data-root DIR")
    folder = Path(root).expanduser() if root is not None else None
    return spec.load(split, folder, info.image_shape[1], augment, download)


def download(name: str, root: str | os.PathLike | None) -> None:
    """Fetch a downloadable dataset into ``root`` (only ever on the user's request)."""
    if not dataset_spec(name).downloadable:
        fetchable = ", ".join(n for n in available_datasets() if dataset_spec(n).downloadable)
        raise UserError(f"--download fetches {fetchable} only; {name} must already be on disk")
    if root is None:
        raise UserError(f"dataset {name} needs a data root: pass --data-root DIR")
    load_split(name, "test", root, download=True)


# ---- the datasets ---------------------------------------------------------------------------


def digits_split_indices() -> dict[str, np.ndarray]:
    """The fixed digits split over scikit-learn's 1,797 images: 60% teacher, 20% val, 20% test."""
    from sklearn.datasets import load_digits

    targets = load_digits().target
    rest, test = stratified_split(targets, 0.2)
    teacher_pos, val_pos = stratified_split(targets[rest], 0.25, seed=SPLIT_SEED + 1)
    return {"teacher": rest[teacher_pos], "val": rest[val_pos], "test": test}


def _digits(split: str, root: Path | None, size: int, augment: bool, download: bool) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    idx = torch.as_tensor(digits_split_indices()[split])
    images = torch.tensor(bunch.images / 16.0, dtype=torch.float32).unsqueeze(1)
    return TensorDataset(images[idx], torch.tensor(bunch.target, dtype=torch.long)[idx])


class _CIFARFiles(Dataset):
    """CIFAR's python batches under ``root`` as (PIL image, label) pairs, read by the restricted
    unpickler of ``derd.cifar_files`` (a batch file that holds code is refused, never run)."""

    def __init__(self, folder: Path, files: list[str], label_key: str) -> None:
        from derd.cifar_files import load_batch

        parts = [load_batch(folder / f, label_key) for f in files]
        self.data = np.concatenate([images for images, _ in parts])
        self.targets = [label for _, labels in parts for label in labels]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        from PIL import Image

        return Image.fromarray(self.data[i]), self.targets[i]


def _cifar(
    name: str, val_per_class: int, split: str, root: Path, size: int, augment: bool, download: bool
) -> Dataset:
    from torchvision import datasets, transforms

    from derd.cifar_files import MalformedBatch, load_classes

    base_cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    folder = root / base_cls.base_folder
    files = [f for f, _ in (base_cls.train_list if split != "test" else base_cls.test_list)]
    expected = ", ".join(f for f, _ in base_cls.train_list + base_cls.test_list)
    try:
        if download:  # torchvision fetches and checks the archive's md5; reading stays ours
            from torchvision.datasets.utils import download_and_extract_archive

            if not all((folder / f).is_file() for f, _ in base_cls.train_list + base_cls.test_list):
                download_and_extract_archive(
                    base_cls.url, str(root), filename=base_cls.filename, md5=base_cls.tgz_md5
                )
        missing = [f for f in files + [base_cls.meta["filename"]] if not (folder / f).is_file()]
        if missing:
            raise FileNotFoundError(f"missing {folder / missing[0]}")
        load_classes(folder / base_cls.meta["filename"], base_cls.meta["key"])
        base = _CIFARFiles(folder, files, "labels" if name == "cifar10" else "fine_labels")
    except (MalformedBatch, OSError, RuntimeError) as err:
        raise UserError(
            f"{name} not found or malformed under {folder} ({err}); expected torchvision's "
            f"files {expected}, {base_cls.meta['filename']}; pass --download to fetch them"
        ) from None
    to_tensor = transforms.ToTensor()
    if split == "test":
        return _Transformed(base, np.arange(len(base)), to_tensor)
    teacher_idx, val_idx = stratified_split(base.targets, val_per_class)
    if split == "val":
        return _Transformed(base, val_idx, to_tensor)
    tf = transforms.Compose(
        [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), to_tensor]
    )
    return _Transformed(base, teacher_idx, tf if augment else to_tensor)


def _imagenet100(split: str, root: Path, size: int, augment: bool, download: bool) -> Dataset:
    """ImageNet-100 from a full ImageNet train/val tree or a prepared 100-class tree; val holds out
    50 images per class of train, test is ImageNet's val."""
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
    plain = transforms.Compose(
        [transforms.Resize(resize), transforms.CenterCrop(size), transforms.ToTensor()]
    )
    if split == "test":
        return _Transformed(base, np.arange(len(base)), plain)
    teacher_idx, val_idx = stratified_split(base.targets, 50)
    if split == "val":
        return _Transformed(base, val_idx, plain)
    aug = transforms.Compose(
        [transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(), transforms.ToTensor()]
    )
    return _Transformed(base, teacher_idx, aug if augment else plain)


# Full-length budgets (the paper's are not at hand). CIFAR: batch 512 (25,600 pseudo images per
# epoch, as 256 x 100 before), the batch that runs fastest on a GPU; ImageNet-100 stays at 128
# (the measurements: docs/speed-and-scale.md, "Batch sizes of the full-length budgets").
_CIFAR_BUDGET = {
    "student.arch": "resnet18",
    "stage1.epochs": 40,
    "budget.epochs": 200,
    "budget.iters_per_epoch": 50,
    "budget.batch_size": 512,
    "student.latent_dim": 256,
}

# digits: 8x8 images with 17 grey levels. At eps = 0.2 (about 3 grey levels; the digits stay
# readable) a natural CNN falls to 0% under PGD_S while a PGD-trained one keeps about 60% at
# the same clean accuracy; at 0.1 even the natural CNN keeps 40%, at 0.3 adversarial
# training no longer converges on this little data. Its budget is the run config's defaults
# (30 epochs of 30 iterations at batch 128, 10 of them DERD's stage I). docs/results-digits.md shows both teachers' tables.
register_dataset(
    DatasetSpec(
        DatasetInfo("digits", 10, (1, 8, 8), 0.2, (0.3,), (0.4,)),
        _digits,
        teacher_arch="digits_cnn",
        teacher_epochs=30,
        budget={
            "student.arch": "digits_cnn_small",
            "stage1.epochs": 10,
            "budget.epochs": 30,
            "budget.iters_per_epoch": 30,
            "budget.batch_size": 128,
        },
        needs_root=False,
    )
)
register_dataset(
    DatasetSpec(
        DatasetInfo("cifar10", 10, (3, 32, 32), 8 / 255, (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
        functools.partial(_cifar, "cifar10", 500),
        teacher_arch="wrn_34_10",
        teacher_epochs=100,
        budget=_CIFAR_BUDGET,
        downloadable=True,
    )
)
register_dataset(
    DatasetSpec(
        DatasetInfo(
            "cifar100", 100, (3, 32, 32), 8 / 255, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
        ),
        functools.partial(_cifar, "cifar100", 50),
        teacher_arch="wrn_34_10",
        teacher_epochs=100,
        budget=_CIFAR_BUDGET,
        downloadable=True,
    )
)
register_dataset(
    DatasetSpec(
        DatasetInfo("imagenet100", 100, (3, 224, 224), 8 / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        _imagenet100,
        teacher_arch="tv_resnet50",
        teacher_epochs=100,
        budget={
            "student.arch": "tv_resnet18",
            "stage1.epochs": 40,
            "budget.epochs": 200,
            "budget.iters_per_epoch": 100,
            "budget.batch_size": 128,
            "student.latent_dim": 256,
        },
        resizable=True,
    )
)


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
