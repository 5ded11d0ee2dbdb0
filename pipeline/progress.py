"""What a run shows on the console: our messages (Beam's and the libraries' chatter filtered), and
progress you can watch. Workers count what passes a few points of the graph into small files in a
local directory (one JSON file per worker process); the driver sums them into one line every few seconds.

Model loading is timed the same way: ``transforms.ner`` calls :func:`note_model_load` after each load in a
worker (0 s when a poll finds the models loaded), counted as ``model_load_ms`` (summed over the worker
processes) into the directory that process is counting into. A load that outlives the run that started it
(a worker with nothing else to do in that run) is counted in neither run.

Runner-agnostic and best effort: on workers that cannot see the driver's directory (a remote cluster) the
counts are simply not written, and the line shows only the elapsed time.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from typing import Any

from warta.transforms.ner import on_model_load

OUR_LOGGERS = ("warta",)  # our module loggers are all under warta.*
EVERY = 5.0  # seconds between progress lines (a bar on a TTY is redrawn every second)
FLUSH = 1.0  # seconds between a worker's writes of its counts

_counts: dict[str, dict[str, int]] = {}  # progress directory -> counter -> count, in this process
_dirty: set[str] = set()
_lock = threading.Lock()
_write_lock = threading.Lock()  # one writer at a time, so the newest counts are written last
_flusher: list[threading.Thread] = []
_current: list[str] = []  # the directory this process counted into last (a worker serves one run at a time)
_pending_ms: list[tuple[float, int]] = []  # (epoch start, ms) of model loads timed before this process knew the run's directory
STARTED = "started"  # file in a run's directory: the run's start (epoch seconds)


class QuietFilter(logging.Filter):
    """Our own messages at the chosen level; Beam's and the libraries' (worker chatter relayed by the
    DirectRunner, per-page notices) only when they are errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or record.name.split(".")[0] in OUR_LOGGERS


def count(element: Any, directory: str | None, name: str, amount: int = 1) -> Any:
    """Pass ``element`` through, counting it under ``name`` (use as ``beam.Map(count, directory, name)``)."""
    if directory:
        with _lock:
            if _current[-1:] != [directory]:
                _switch_to(directory)
            counts = _counts.setdefault(directory, {})
            counts[name] = counts.get(name, 0) + amount
            _dirty.add(directory)
            if not _flusher:
                _flusher.append(threading.Thread(target=_flush_forever, name="warta-progress", daemon=True))
                _flusher[0].start()
    return element


def _switch_to(directory: str) -> None:
    """A new run's directory (under ``_lock``): forget the counts of runs whose directory is gone (a
    long-lived worker serves many), and count model loads timed before the directory was known."""
    for old in [d for d in _counts if d != directory and not os.path.isdir(d)]:
        _counts.pop(old, None)
        _dirty.discard(old)
    _current[:] = [directory]
    if _pending_ms:  # loads that started in this run (not those an earlier run started and outlived)
        try:
            with open(os.path.join(directory, STARTED)) as fh:
                run_start = float(fh.read())
        except (OSError, ValueError):
            run_start = 0.0
        counts = _counts.setdefault(directory, {})
        counts["model_load_ms"] = counts.get("model_load_ms", 0) + sum(ms for t, ms in _pending_ms if t >= run_start)
        _pending_ms.clear()


def note_model_load(lang: str, seconds: float) -> None:
    """A NER model load took ``seconds`` in this process (0: a run found it loaded): counted, and written
    at once, into the directory of the run this process serves (or the next one it counts into)."""
    ms = round(seconds * 1000)
    with _lock:
        directory = _current[-1] if _current and os.path.isdir(_current[-1]) else None
        if directory is None:
            _pending_ms.append((time.time() - seconds, ms))
            return
    count(None, directory, "model_load_ms", ms)
    _write(directory)


def _flush_forever() -> None:
    """Write this process's counts (``<dir>/<pid>.json``) about once a second while they change."""
    while True:
        time.sleep(FLUSH)
        with _lock:
            todo = list(_dirty)
        for directory in todo:
            _write(directory)


def _write(directory: str) -> None:
    with _write_lock:
        with _lock:
            _dirty.discard(directory)
            data = json.dumps(_counts.get(directory, {}))
        path = os.path.join(directory, f"{os.getpid()}.json")
        try:
            with open(path + ".tmp", "w") as fh:
                fh.write(data)
            os.replace(path + ".tmp", path)
        except OSError:  # the driver's directory is gone or not visible from this worker: no harm
            pass


def read_counts(directory: str) -> dict[str, int]:
    """The sum of every worker's counts."""
    total: dict[str, int] = {}
    try:
        names = [n for n in os.listdir(directory) if n.endswith(".json")]
    except OSError:
        return total
    for name in names:
        try:
            with open(os.path.join(directory, name)) as fh:
                for k, v in json.load(fh).items():
                    total[k] = total.get(k, 0) + v
        except (OSError, ValueError):
            continue
    return total


def clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


def progress_text(c: dict[str, int], feeds: int, elapsed: float, left: float | None = None,
                  rate: float | None = None) -> tuple[str, float | None]:
    """The progress line and the fraction of the planned pages done (None while feeds are being polled).
    ``left``: seconds of budget left; ``rate``: pages per second lately (for the estimate)."""
    entries, fetched, deferred = c.get("entries", 0), c.get("fetched", 0), c.get("deferred", 0)
    pending = max(0, entries - fetched - deferred)
    polled = c.get("feeds", 0)
    text = (f"feeds polled {polled}/{feeds} | pages fetched {fetched}, pending {pending}"
            + (f", deferred {deferred}" if deferred else "")
            + f" | articles tagged {c.get('tagged', 0)}"
            + (f" | model load {c['model_load_ms'] / 1000:.1f}s" if "model_load_ms" in c else "")
            + f" | {clock(elapsed)} elapsed")
    fraction = None
    if polled >= feeds and entries:
        fraction = min(1.0, (fetched + deferred) / entries)
        if rate and pending:
            eta = pending / rate
            text += f", ~{clock(min(eta, left) if left is not None else eta)} left"
    return text, fraction


class ProgressLine:
    """``with ProgressLine(feeds, deadline) as p:`` run the pipeline with ``p.directory``; a progress line on
    stderr every few seconds (a bar redrawn in place on a TTY), cleared before the summary."""

    def __init__(self, feeds: int, deadline: float | None = None, stream=None):
        self.feeds, self.deadline = feeds, deadline
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._stop = threading.Event()
        self._first_fetch: tuple[float, int] | None = None  # (when, pages) the driver first saw pages fetched

    def __enter__(self) -> ProgressLine:
        self.directory = tempfile.mkdtemp(prefix="warta-progress-")
        with open(os.path.join(self.directory, STARTED), "w") as fh:
            fh.write(repr(time.time()))
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="warta-progress", daemon=True)
        self._thread.start()
        return self

    def line(self) -> tuple[str, float | None]:
        now = time.monotonic()
        counts = read_counts(self.directory)
        fetched = counts.get("fetched", 0)
        if fetched and self._first_fetch is None:
            self._first_fetch = (now, fetched)
        rate = None
        if self._first_fetch and fetched > self._first_fetch[1]:
            rate = (fetched - self._first_fetch[1]) / (now - self._first_fetch[0])
        left = max(0.0, self.deadline - time.time()) if self.deadline else None
        return progress_text(counts, self.feeds, now - self.started, left, rate)

    def _loop(self) -> None:
        while not self._stop.wait(1.0 if self.tty else EVERY):
            text, fraction = self.line()
            if self.tty:
                bar = "" if fraction is None else f"[{'#' * int(20 * fraction):<20}] {100 * fraction:3.0f}% "
                self.stream.write(f"\r\x1b[2K{bar}{text}")
            else:
                self.stream.write(f"progress: {text}\n")
            self.stream.flush()

    @property
    def model_load_s(self) -> float:
        """Seconds the worker processes spent loading NER models in this run (summed over them)."""
        return round(self.final.get("model_load_ms", 0) / 1000, 1)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.final = read_counts(self.directory)
        if self.tty:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()
        shutil.rmtree(self.directory, ignore_errors=True)
        with _lock:  # counts of an in-process worker
            _counts.pop(self.directory, None)
            _dirty.discard(self.directory)


on_model_load(note_model_load)


def setup_logging(level: str, verbose: bool) -> None:
    logging.basicConfig(level=getattr(logging, level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    if not verbose:
        for handler in logging.getLogger().handlers:
            handler.addFilter(QuietFilter())
