"""Where the engine keeps things between runs."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The engine's cache (tiny models, prior caches, tet grids): $HEADSCULPT_CACHE_DIR, else
    ~/.cache/headsculpt."""
    root = os.environ.get("HEADSCULPT_CACHE_DIR") or Path.home() / ".cache" / "headsculpt"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
