"""Where derd keeps what it makes once and reuses: trained digits teachers and compiled kernels."""

from __future__ import annotations

import os
from pathlib import Path

from derd.errors import UserError, check_output_folder


def cache_dir() -> Path:
    """``$DERD_CACHE``, else ``~/.cache/derd`` (on a cluster: each node's own); a value that is empty,
    names a file, or lies under one is one clear line, before anything is trained or written."""
    value = os.environ.get("DERD_CACHE")
    if value is None:
        return Path.home() / ".cache" / "derd"
    if not value.strip():
        raise UserError(
            "DERD_CACHE is set but empty; unset it (the cache is then ~/.cache/derd) or point it at a folder"
        )
    return check_output_folder(Path(value), flag="DERD_CACHE")
