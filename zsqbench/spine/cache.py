"""Where zsqbench keeps what it can rebuild: synthetic image sets and the FP teacher's reference evaluation."""
from __future__ import annotations

import os
from pathlib import Path

ENV_CACHE_DIR = "ZSQBENCH_CACHE_DIR"


def cache_base(cache_dir: str | None = None) -> Path:
    """``--cache-dir``, else ``$ZSQBENCH_CACHE_DIR``, else ``~/.cache/zsqbench``."""
    return Path(cache_dir or os.environ.get(ENV_CACHE_DIR) or "~/.cache/zsqbench").expanduser()
