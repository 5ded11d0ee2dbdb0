"""Fault injection for crash tests: ``WARTA_KILL_AT=<point>`` makes the process SIGKILL itself there.

Points: ``fetch`` (inside the fetch stage), ``staged`` (data staged, before the commit point),
``publish`` (after the first published data file), ``state`` (data published, state not yet advanced).
"""

import os
import signal


def point(name: str) -> None:
    if os.environ.get("WARTA_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def kill_point(element, name: str):
    """``point(name)`` as a pass-through step of a pipeline (the ``fetch`` point: the first fetched page)."""
    point(name)
    return element
