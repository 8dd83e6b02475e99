"""User-facing errors: one clear line that names the fix, exit code 2."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Callable, TypeVar

EXIT_USER_ERROR = 2

F = TypeVar("F", bound=Callable[..., object])


class UserError(Exception):
    """An error the user caused and can fix (bad data, bad YAML, wrong checkpoint, ...)."""


def cli_errors(main: F) -> F:
    """Wrap a CLI ``main`` so a :class:`UserError` prints one line and exits with code 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(EXIT_USER_ERROR) from None

    return wrapper  # type: ignore[return-value]


def check_output_folder(path: str | os.PathLike, flag: str = "--out") -> Path:
    """A folder a CLI will write into: it may exist (as a folder) or be creatable; checked before any work."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file, not a folder; pass a folder path")
    _check_parent(path, flag)
    return path


def check_output_file(path: str | os.PathLike, flag: str = "--out") -> Path:
    """A file a CLI will write: not a folder, and its folder creatable; checked before any work."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder; pass a file path such as {path / 'model.pt'}")
    _check_parent(path.parent, flag)
    return path


def _check_parent(path: Path, flag: str) -> None:
    for ancestor in [path, *path.parents]:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise UserError(f"{flag} {path}: {ancestor} is a file, so nothing can be written under it")
            if not os.access(ancestor, os.W_OK):
                raise UserError(f"{flag} {path}: {ancestor} is not writable")
            return
