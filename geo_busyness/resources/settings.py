"""Process-wide defaults that need no setup: a data directory and the environment variables that move it."""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "GEO_BUSYNESS_DATA_DIR"


def default_data_dir() -> Path:
    """``$GEO_BUSYNESS_DATA_DIR``, else ``data/`` in a source checkout, else ``~/.geo_busyness``.

    Never the current working directory by accident: running a command from another
    directory must not scatter data there.
    """
    configured = os.environ.get(DATA_DIR_ENV)
    if configured:
        return Path(configured).expanduser().resolve()
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file() and (checkout / "geo_busyness").is_dir():
        return checkout / "data"
    return Path.home() / ".geo_busyness"
