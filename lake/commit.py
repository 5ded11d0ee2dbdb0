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
"""

from __future__ import annotations

import json
import logging
import posixpath
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa

from warta.lake import faults
from warta.lake.compact import recover_compactions
from warta.lake.failures import merge_failures
from warta.lake.lock import LockedError, LockLost, RunLock  # noqa: F401  (LockedError, RunLock: re-exported)
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


def copy_file(store: Store, src: str, dst: str) -> None:
    """Publish one file: server-side on object stores (one PUT-like copy, atomic for readers), through
    the store's temp-and-rename write locally."""
    if store.is_local:
        store.copy(src, dst)
    else:
        store.fs.copy(store.path(src), store.path(dst))


def publish_files(store: Store, stage: str, files: list[str]) -> None:
    """Copy the staged data files into the lake, several at a time."""
    def one(rel: str) -> None:
        if store.exists(f"{stage}/{rel}"):
            copy_file(store, f"{stage}/{rel}", rel)
            faults.point("publish")

    with ThreadPoolExecutor(max(1, min(PUBLISH_THREADS, len(files)))) as pool:
        list(pool.map(one, files))  # list(): re-raise the first failure


def commit(store: Store, run_id: str, summary: dict[str, Any], window_days: int,
           backlog_taken: list[str] = (), fence: Callable[[], None] | None = None) -> dict[str, Any]:
    """Make a finished run's staged output visible, then advance the state. Returns the manifest.
    ``backlog_taken``: the backlog files this run read (their entries were fetched or are staged again).
    ``fence`` (the run lock's :meth:`~lake.lock.RunLock.check`) runs right before the commit point and raises
    :class:`LockLost` when this run no longer holds the output (its staging is then removed)."""
    files = [f for f in staged_files(store, run_id)
             if f != "COMMIT" and posixpath.dirname(f).split("/", 1)[0] not in (SUMMARY, INPUT)]
    manifest = {"run_id": run_id, "files": sorted(files), "summary": summary, "backlog_taken": list(backlog_taken),
                "committed_at": datetime.now(timezone.utc).isoformat()}
    faults.point("staged")
    if fence is not None:
        try:
            fence()
        except LockLost:  # another run holds the output now: this run's staging is dropped, unpublished
            store.remove(staging_dir(run_id), recursive=True)
            raise
    store.write_json(f"{staging_dir(run_id)}/COMMIT", manifest)  # the commit point
    publish(store, run_id, manifest, window_days)
    return manifest


def publish(store: Store, run_id: str, manifest: dict[str, Any], window_days: int) -> None:
    """Steps 2–4 of the protocol; safe to repeat any number of times."""
    stage = staging_dir(run_id)
    publish_files(store, stage, [rel for rel in manifest["files"] if rel.startswith(("articles/", "errors/"))])
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


def recover(store: Store, window_days: int) -> list[str]:
    """Finish runs that passed their commit point; drop staging of runs that did not. Returns replayed ids."""
    replayed = []
    store.remove_temp_files()
    runs = sorted({p.split("/")[2] for p in store.list(PENDING)})
    for run_id in runs:
        marker = store.read_json(f"{staging_dir(run_id)}/COMMIT")
        if marker:
            log.warning("completing run %s, which was interrupted after its commit point", run_id)
            publish(store, run_id, marker, window_days)
            replayed.append(run_id)
        else:
            log.warning("discarding uncommitted output of interrupted run %s", run_id)
            store.remove(staging_dir(run_id), recursive=True)
    recover_compactions(store)
    return replayed
