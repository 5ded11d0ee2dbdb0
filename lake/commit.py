"""Exactly-once publication of a run (the lock that keeps two runs apart is in :mod:`lake.lock`).

A run's pipeline writes only into ``_state/pending/<run_id>/`` (see :mod:`transforms.write`). Then:

1. ``COMMIT`` marker written (one atomic PUT listing the staged files) — the commit point;
2. staged data files copied to ``articles/…`` and ``errors/…`` under deterministic names
   (each copy atomic for readers: PUT on object stores, temp file + rename locally);
3. state advanced: index part, feed validators, backlog (entries not fetched within the run's budget:
   ``_state/backlog/<run_id>.json`` added, the backlog files the run took removed), backfill progress, run
   manifest ``_state/runs/<run_id>.json``;
4. the staging folder removed.

A run killed before 1 leaves only staging, which the next run deletes: nothing was visible, no state
moved, the work is redone. Killed after 1, the next run replays 2–4 first (idempotent: same names,
same bytes), so the lake ends as one clean run would have left it. This needs no atomic rename and
works on S3, GCS and local disks alike.

Fencing (with the run's :class:`~lake.lock.RunLock`): the marker records the lock's ``epoch``; every publish
step first calls :meth:`RunLock.fence`, so a run paused past the lock's ttl stops publishing once it wakes
(the run that took over has replayed or will replay its marker); recovery replays a marker only when its epoch
is not older than ``_state/FENCE`` (the last holder that finished recovering): an older one was written by a
run that had already lost the output, and is dropped. A marker that cannot be read (empty after a power loss
on a disk without fsync, cut, edited) counts as no commit point: its staging is dropped, with a warning
naming it, and the run's work is redone.
"""

from __future__ import annotations

import json
import logging
import posixpath
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa

from warta.lake import faults
from warta.lake.compact import recover_compactions
from warta.lake.failures import merge_failures
from warta.lake.lock import FENCE, LockedError, LockLost, RunLock  # noqa: F401  (LockedError: re-exported)
from warta.lake.schema import new_run_id, staging_dir  # noqa: F401  (new_run_id: re-exported)
from warta.lake.state import FEEDS_FILE, INDEX_DIR, compact_index
from warta.lake.store import Store

log = logging.getLogger(__name__)
PENDING = "_state/pending"
BACKLOG = "_state/backlog"  # entries polled but not fetched yet: taken first by the next run
RUNS = "_state/runs"
SUMMARY = "summary"  # staged per-file / per-shard counts (transforms.write)
INPUT = "input"  # what the launcher hands the pipeline (the feeds list), and the START marker
PUBLISH_THREADS = 16


def staged_files(store: Store, run_id: str) -> list[str]:
    base = staging_dir(run_id) + "/"
    return [p[len(base):] for p in store.list(staging_dir(run_id)) if p.startswith(base)]


def backlog_files(store: Store) -> list[str]:
    """The committed backlog files (names under ``_state/backlog/``), oldest first; the pipeline reads them."""
    return sorted(p.rsplit("/", 1)[1] for p in store.list(BACKLOG) if p.endswith(".json"))


def backlog_entries(store: Store, name: str) -> list[dict[str, Any]]:
    """One backlog file's entries, marked ``backlog``."""
    entries = []
    for e in json.loads(store.read_bytes(f"{BACKLOG}/{name}")):
        published = e.get("feed_published_at")
        entries.append({**e, "backlog": True,
                        "feed_published_at": datetime.fromisoformat(published) if published else None})
    return entries


def read_backlog(store: Store) -> tuple[list[str], list[dict[str, Any]]]:
    """The committed backlog files and their entries (marked ``backlog``), oldest first."""
    files = backlog_files(store)
    return files, [e for name in files for e in backlog_entries(store, name)]


COUNTS = ("feeds_polled", "feeds_unchanged", "feeds_failed", "entries_new", "entries_backlog", "pages_fetched",
          "pages_extracted", "duplicates_exact", "duplicates_near", "entities", "articles_written",
          "errors_written", "entries_pending")


def summarize_staged(store: Store, run_id: str) -> dict[str, Any]:
    """Run counts (and the articles' languages) summed from the small summaries the pipeline staged next
    to each file and shard (``summary/``): the same on every runner, metrics or not, without reading
    the data back."""
    c: dict[str, Any] = dict.fromkeys(COUNTS, 0)
    languages: dict[str, int] = {}  # articles per language
    for rel in store.list(f"{staging_dir(run_id)}/{SUMMARY}", ".json"):
        for key, value in (store.read_json(rel) or {}).items():
            if key == "languages":
                for lang, n in value.items():
                    languages[lang] = languages.get(lang, 0) + n
            else:
                c[key] = c.get(key, 0) + value
    c["pages_fetched"] += c["pages_extracted"]
    return {**c, "languages": dict(sorted(languages.items()))}


def _parts(store: Store, stage: str, kind: str) -> list[str]:
    return store.list(f"{stage}/{kind}")


def gather_state(store: Store, stage: str) -> None:
    """Merge the per-shard state deltas (``index/``, ``failures/``, ``feeds/``, ``backlog/`` parts) into one
    staged file each, as the state steps below read them. Deterministic, so a replay writes the same bytes."""
    for kind, sort_key in (("index", "article_id"), ("failures", "key")):
        parts = [p for p in _parts(store, stage, kind) if p.endswith(".parquet")]
        if parts:
            table = pa.concat_tables([store.read_table(p) for p in parts]).sort_by(sort_key)
            store.write_table(f"{stage}/{kind}.parquet", table)
    for kind, sort_key in (("feeds", "feed_url"), ("backlog", "url")):
        parts = [p for p in _parts(store, stage, kind) if p.endswith(".json")]
        if parts:
            rows = sorted((r for p in parts for r in json.loads(store.read_bytes(p))), key=lambda r: r[sort_key])
            store.write_bytes(f"{stage}/{kind}.json", json.dumps(rows, default=str).encode())


def publish_files(store: Store, stage: str, files: list[str], step: Callable[[], None]) -> None:
    """Copy the staged data files into the lake, several at a time: server-side on object stores (one
    PUT-like copy, atomic for readers), read and durably rewritten locally. ``step`` runs right before each
    write: a run paused since its read must not put back a file that compaction has since replaced."""
    def one(rel: str) -> None:
        src = f"{stage}/{rel}"
        try:
            data = None if not store.is_local else store.read_bytes(src)
        except FileNotFoundError:  # published and staging removed by an earlier replay
            return
        faults.point("publish_read")
        step()
        if data is not None:
            store.write_bytes(rel, data, durable=True)
        else:
            try:
                store.fs.copy(store.path(src), store.path(rel))
            except FileNotFoundError:
                return
        faults.point("publish")

    with ThreadPoolExecutor(max(1, min(PUBLISH_THREADS, len(files))),
                            thread_name_prefix=threading.current_thread().name) as pool:
        list(pool.map(one, files))  # list(): re-raise the first failure


def commit(store: Store, run_id: str, summary: dict[str, Any], window_days: int,
           backlog_taken: list[str] = (), fence: Callable[[], None] | None = None,
           lock: RunLock | None = None) -> dict[str, Any]:
    """Make a finished run's staged output visible, then advance the state. Returns the manifest.
    ``backlog_taken``: the backlog files this run read (their entries were fetched or are staged again).
    ``fence`` (default: the ``lock``'s :meth:`~lake.lock.RunLock.check`) runs right before the commit point and
    raises :class:`LockLost` when this run no longer holds the output (its staging is then removed); with a
    ``lock``, the marker records its epoch and each publish step checks :meth:`~lake.lock.RunLock.fence`."""
    if fence is None and lock is not None:
        fence = lock.check
    files = [f for f in staged_files(store, run_id)
             if f != "COMMIT" and posixpath.dirname(f).split("/", 1)[0] not in (SUMMARY, INPUT)]
    manifest = {"run_id": run_id, "files": sorted(files), "summary": summary, "backlog_taken": list(backlog_taken),
                "committed_at": datetime.now(timezone.utc).isoformat(),
                "lock_epoch": lock.epoch if lock is not None else None}
    faults.point("staged")
    if fence is not None:
        try:
            fence()
        except LockLost:  # another run holds the output now: this run's staging is dropped, unpublished
            store.remove(staging_dir(run_id), recursive=True)
            raise
    store.write_json(f"{staging_dir(run_id)}/COMMIT", manifest)  # the commit point
    publish(store, run_id, manifest, window_days, step=lock.fence if lock is not None else None)
    return manifest


def publish(store: Store, run_id: str, manifest: dict[str, Any], window_days: int,
            step: Callable[[], None] | None = None) -> None:
    """Steps 2–4 of the protocol; safe to repeat any number of times. ``step`` (the lock's
    :meth:`~lake.lock.RunLock.fence`) runs before each write and raises when this run must stop."""
    step = step or (lambda: None)
    stage = staging_dir(run_id)
    publish_files(store, stage, [rel for rel in manifest["files"] if rel.startswith(("articles/", "errors/"))], step)
    step()
    faults.point("state")
    gather_state(store, stage)
    if store.exists(f"{stage}/index.parquet"):
        store.copy(f"{stage}/index.parquet", f"{INDEX_DIR}/part-{run_id}.parquet")
    stored = store.read_table(f"{stage}/index.parquet").column("url_key").to_pylist() \
        if store.exists(f"{stage}/index.parquet") else []
    merge_failures(store, f"{stage}/failures.parquet", set(stored))
    if store.exists(f"{stage}/feeds.json"):
        merge_feed_state(store, json.loads(store.read_bytes(f"{stage}/feeds.json")), run_id)
    if store.exists(f"{stage}/backlog.json") and json.loads(store.read_bytes(f"{stage}/backlog.json")):
        store.copy(f"{stage}/backlog.json", f"{BACKLOG}/{run_id}.json")
    for name in manifest.get("backlog_taken", ()):
        if name != f"{run_id}.json":
            store.remove(f"{BACKLOG}/{name}")
    for rel in manifest["files"]:  # backfill progress (discovery state, pending URLs), per source
        if rel.startswith("backfill/") and store.exists(f"{stage}/{rel}"):
            store.copy(f"{stage}/{rel}", f"_state/{rel}")
    store.write_json(f"{RUNS}/{run_id}.json", manifest)
    store.remove(stage, recursive=True)
    compact_index(store, run_id, window_days)


def merge_feed_state(store: Store, states: list[dict[str, Any]], run_id: str) -> None:
    current = store.read_json(FEEDS_FILE, default={}) or {}
    for s in states:
        entry = dict(current.get(s["feed_url"], {}))
        entry.update(source=s["source"], last_status=s["status"], last_run=run_id, entries_new=s.get("entries_new", 0))
        if s["status"] != "failed":
            entry["last_success"] = run_id
        if s["status"] in ("ok", "capped"):
            entry.update(etag=s.get("etag"), last_modified=s.get("last_modified"))
        current[s["feed_url"]] = entry
    store.write_json(FEEDS_FILE, current)


def read_marker(store: Store, rel: str) -> dict[str, Any] | None:
    """A COMMIT marker; None when absent or unreadable (an unreadable one is logged with its path)."""
    try:
        marker = store.read_json(rel)
    except (ValueError, UnicodeDecodeError) as e:
        log.warning("%s is unreadable (%s): treated as no commit point, that output is dropped and its work "
                    "redone", store.full_url(rel), e)
        return None
    if marker is not None and not (isinstance(marker, dict) and isinstance(marker.get("files", []), list)):
        log.warning("%s is not a commit marker: treated as no commit point", store.full_url(rel))
        return None
    return marker or None


def fenced_epoch(store: Store) -> int:
    try:
        return int((store.read_json(FENCE) or {}).get("epoch") or 0)
    except (ValueError, TypeError, AttributeError):
        return 0


def recover(store: Store, window_days: int, lock: RunLock | None = None) -> list[str]:
    """Finish runs that passed their commit point; drop staging of runs that did not, and of markers written
    by a run that had already lost the output (epoch older than ``_state/FENCE``). Returns replayed ids.
    With the ``lock``, each step is fenced and ``_state/FENCE`` advances to its epoch at the end."""
    replayed = []
    store.remove_temp_files()
    fenced = fenced_epoch(store)
    step = lock.fence if lock is not None else None
    runs = sorted({p.split("/")[2] for p in store.list(PENDING)})
    for run_id in runs:
        marker = read_marker(store, f"{staging_dir(run_id)}/COMMIT")
        epoch = marker.get("lock_epoch") if marker else None
        if marker and isinstance(epoch, int) and epoch < fenced:
            log.warning("dropping run %s: its commit marker (lock epoch %s) was written after it lost the output "
                        "(epoch %s recovered it)", run_id, epoch, fenced)
            store.remove(staging_dir(run_id), recursive=True)
        elif marker:
            log.warning("completing run %s, which was interrupted after its commit point", run_id)
            publish(store, run_id, marker, window_days, step=step)
            replayed.append(run_id)
        else:
            log.warning("discarding uncommitted output of interrupted run %s", run_id)
            store.remove(staging_dir(run_id), recursive=True)
    recover_compactions(store)
    if lock is not None:
        lock.recovered()
    return replayed
