"""CIFAR's on-disk batches read without running code: a restricted unpickler.

torchvision's CIFAR reader calls ``pickle.load`` on every batch file, so a batch file that holds a
pickled ``os.system`` call runs it before anything can report the folder as malformed. The real
format is a dict of strings or bytes, lists of ints and one uint8 numpy array (Python 2 pickles,
read as latin-1). ``load_batch`` accepts exactly that: the unpickler resolves only numpy's
array and dtype reconstructors (no other global: no callable from a data file ever runs), and
the result's shape is checked key by key. Anything else is ``MalformedBatch``, naming the file.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

# The only globals a CIFAR batch needs: numpy rebuilding an array and its dtype (numpy 1 and 2 names).
# None can run anything but that: an array's class argument is itself resolved here (ndarray only).
_ALLOWED = {
    (module, name)
    for package in ("numpy.core", "numpy._core")
    for module, name in (
        (f"{package}.multiarray", "_reconstruct"),
        (f"{package}.multiarray", "scalar"),
        (f"{package}.numeric", "_frombuffer"),
    )
} | {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}  # Python 3's protocol-2 pickles write bytes as encode(str, "latin1"): data, not code
MAX_BATCH_BYTES = 512 * 2**20  # a real batch is 31 MB (CIFAR-10) or 155 MB (CIFAR-100's train file)


class MalformedBatch(ValueError):
    """A CIFAR file that is not in the real format (the message names the file and why)."""


class _DataOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"it would call {module}.{name}: a CIFAR file holds data, never code; refused"
        )


def load_pickle(path: Path) -> Any:
    """The data of a CIFAR pickle, refusing any global but numpy's array reconstructors."""
    size = path.stat().st_size
    if size > MAX_BATCH_BYTES:
        raise MalformedBatch(f"{path} is {size / 2**20:.0f} MB, larger than any CIFAR batch")
    try:
        with open(path, "rb") as f:
            return _DataOnly(io.BytesIO(f.read()), encoding="latin1").load()
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        MemoryError,
    ) as err:
        raise MalformedBatch(f"{path} is not a CIFAR batch ({type(err).__name__}: {err})") from None


def load_batch(path: Path, label_key: str) -> tuple[np.ndarray, list[int]]:
    """(images N x 32 x 32 x 3 uint8, labels) of one batch file."""
    entry = load_pickle(path)
    if not isinstance(entry, dict):
        raise MalformedBatch(f"{path} holds a {type(entry).__name__}, not a CIFAR batch's dict")
    data, labels = entry.get("data"), entry.get(label_key)
    if not (
        isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072
    ):
        raise MalformedBatch(f"{path}: 'data' is not an N x 3072 uint8 array")
    if not (isinstance(labels, list) and len(labels) == len(data) and all(type(v) is int for v in labels)):
        raise MalformedBatch(f"{path}: {label_key!r} is not a list of {len(data)} ints")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def load_classes(path: Path, key: str) -> list[str]:
    """The class names of a CIFAR meta file."""
    meta = load_pickle(path)
    names = meta.get(key) if isinstance(meta, dict) else None
    if not (isinstance(names, list) and names and all(isinstance(n, (str, bytes)) for n in names)):
        raise MalformedBatch(f"{path}: {key!r} is not a list of class names")
    return [n.decode("latin1") if isinstance(n, bytes) else n for n in names]
