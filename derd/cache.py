"""Where derd keeps what it makes once and reuses: trained digits teachers and compiled kernels."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$DERD_CACHE``, else ``~/.cache/derd`` (on a cluster: each node's own)."""
    return Path(os.environ.get("DERD_CACHE", Path.home() / ".cache" / "derd"))
