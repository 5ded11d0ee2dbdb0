"""Benchmarks and model training read third-party data from ``../shared/data`` (tests never do)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path


def require(path: Path, needed_by: str) -> Path:
    """``path``, or exit with a clear message when the shared data is not beside this checkout."""
    if not path.exists():
        sys.exit(f"{needed_by}: {path} is missing. It needs the data in ../shared/data (see its README); "
                 "pass another location with its --data/--split flag. Tests do not need it.")
    return path


def wait_sampled(proc: subprocess.Popen, sample: Callable[[], None]) -> tuple[float, str]:
    """Wait for ``proc`` while ``sample()`` (a loop that ends with the process) watches it from a thread:
    wall seconds and stderr; RuntimeError with the end of stderr when the process failed."""
    t0 = time.perf_counter()
    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    _, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    watcher.join()
    if proc.returncode != 0:
        raise RuntimeError(stderr[-3000:])
    return wall, stderr
