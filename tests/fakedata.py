"""Small files in the real on-disk formats of the datasets, written by the tests."""

from __future__ import annotations

import pickle

import numpy as np


def write_cifar(root, name: str, n_train: int = 40, n_test: int = 20) -> None:
    """Files in torchvision's on-disk CIFAR format (pickled dicts of uint8 rows)."""
    rng = np.random.RandomState(0)
    if name == "cifar10":
        folder = root / "cifar-10-batches-py"
        train_files, test_files, label_key = (
            [f"data_batch_{i}" for i in range(1, 6)],
            ["test_batch"],
            "labels",
        )
        meta_file, meta_key, classes = "batches.meta", "label_names", [f"c{i}" for i in range(10)]
    else:
        folder = root / "cifar-100-python"
        train_files, test_files, label_key = ["train"], ["test"], "fine_labels"
        meta_file, meta_key, classes = "meta", "fine_label_names", [f"c{i}" for i in range(100)]
    folder.mkdir(parents=True)
    n_cls = len(classes)
    for files, n in ((train_files, n_train), (test_files, n_test)):
        for f in files:
            entry = {
                "data": rng.randint(0, 256, (n, 3072), dtype=np.uint8),
                label_key: [i % n_cls for i in range(n)],
            }
            with open(folder / f, "wb") as fh:
                pickle.dump(entry, fh)
    with open(folder / meta_file, "wb") as fh:
        pickle.dump({meta_key: classes}, fh)
