"""Benchmarks and model training read third-party data from ``../shared/data`` (tests never do)."""

from __future__ import annotations

import sys
from pathlib import Path


def require(path: Path, needed_by: str) -> Path:
    """``path``, or exit with a clear message when the shared data is not beside this checkout."""
    if not path.exists():
        sys.exit(f"{needed_by}: {path} is missing. It needs the data in ../shared/data (see its README); "
                 "pass another location with its --data/--split flag. Tests do not need it.")
    return path
