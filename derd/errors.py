"""User-facing errors: one clear line that names the fix, exit code 2."""
from __future__ import annotations

import functools
import sys
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
