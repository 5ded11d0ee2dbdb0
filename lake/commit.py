"""Exactly-once publication of a run, and the lock that keeps two runs apart.

A run's pipeline writes only into ``_state/pending/<run_id>/`` (see :mod:`transforms.write`). Then:

1. ``COMMIT`` marker written (one atomic PUT listing the staged files) — the commit point;
2. staged data files copied to ``articles/…`` and ``errors/…`` under deterministic names
   (each copy atomic for readers: PUT on object stores, temp file + rename locally);
3. state advanced: index part, feed validators, backfill progress, run manifest ``_state/runs/<run_id>.json``;
4. the staging folder removed.

A run killed before 1 leaves only staging, which the next run deletes: nothing was visible, no state
moved, the work is redone. Killed after 1, the next run replays 2–4 first (idempotent: same names,
same bytes), so the lake ends as one clean run would have left it. This needs no atomic rename and
works on S3, GCS and local disks alike.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any

from lake import faults
from lake.state import FEEDS_FILE, INDEX_DIR, compact_index
from lake.store import Store
from transforms.write import staging_dir

log = logging.getLogger(__name__)
PENDING = "_state/pending"
RUNS = "_state/runs"
LOCK = "_state/LOCK"


class LockedError(RuntimeError):
    """Another live run holds the output's lock."""


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """A lease file at ``_state/LOCK``; refreshed by a heartbeat thread while held.

    Taken over when stale: its holder's process is gone (same host), or it missed heartbeats for
    ``ttl`` seconds (any host). Local disks create it exclusively (O_EXCL); object stores write it and
    read it back to confirm ownership.
    """

    def __init__(self, store: Store, run_id: str, ttl: float = 3600.0):
        self.store, self.run_id, self.ttl = store, run_id, ttl
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time()}

    def _stale(self, held: dict[str, Any]) -> bool:
        if held.get("host") == socket.gethostname() and not _pid_alive(int(held.get("pid", -1))):
            return True
        return time.time() - float(held.get("heartbeat", 0)) > self.ttl

    def acquire(self) -> None:
        for _ in range(3):
            held = self.store.read_json(LOCK)
            if held is not None:
                if not self._stale(held):
                    raise LockedError(
                        f"output is in use by run {held.get('run_id')} (host {held.get('host')}, pid {held.get('pid')}); "
                        f"wait for it to finish, or remove {self.store.full_url(LOCK)} if you are sure it is dead")
                log.warning("taking over a stale lock from run %s", held.get("run_id"))
                self.store.remove(LOCK)
            data = json.dumps(self._record()).encode()
            if self.store.is_local:
                self.store.fs.makedirs(self.store.path("_state"), exist_ok=True)
                try:
                    fd = os.open(self.store.path(LOCK), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    continue
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
            else:
                self.store.write_bytes(LOCK, data)
                time.sleep(0.2)
                if (self.store.read_json(LOCK) or {}).get("run_id") != self.run_id:
                    continue
            self._thread = threading.Thread(target=self._beat, name="warta-lock", daemon=True)
            self._thread.start()
            return
        raise LockedError("could not take the output's lock: another run is starting at the same moment")

    def _beat(self) -> None:
        while not self._stop.wait(max(1.0, self.ttl / 4)):
            try:
                self.store.write_bytes(LOCK, json.dumps(self._record()).encode())
            except Exception:  # a missed heartbeat only makes the lock look older
                log.warning("lock heartbeat failed", exc_info=True)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:  # a heartbeat in flight must not re-create the lock after removal
            self._thread.join(timeout=30)
        if (self.store.read_json(LOCK) or {}).get("run_id") == self.run_id:
            self.store.remove(LOCK)

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def staged_files(store: Store, run_id: str) -> list[str]:
    base = staging_dir(run_id) + "/"
    return [p[len(base):] for p in store.list(staging_dir(run_id)) if p.startswith(base)]


def summarize_staged(store: Store, run_id: str) -> dict[str, Any]:
    """Run counts (and the articles' languages) read back from the staged files: the same on every
    runner, metrics or not."""
    stage = staging_dir(run_id)
    c = dict.fromkeys(("feeds_polled", "feeds_unchanged", "feeds_failed", "entries_new", "pages_fetched",
                       "pages_extracted", "duplicates_exact", "duplicates_near", "entities", "articles_written",
                       "errors_written"), 0)
    languages: set[str] = set()
    feeds = json.loads(store.read_bytes(f"{stage}/feeds.json")) if store.exists(f"{stage}/feeds.json") else []
    c["feeds_polled"] = len(feeds)
    c["feeds_unchanged"] = sum(f["status"] == "unchanged" for f in feeds)
    c["feeds_failed"] = sum(f["status"] == "failed" for f in feeds)
    c["entries_new"] = sum(f.get("entries_new", 0) for f in feeds)
    for rel in staged_files(store, run_id):
        if rel.startswith("articles/") and rel.endswith(".parquet"):
            t = store.read_table(f"{stage}/{rel}").select(["entities", "duplicate_of", "language"])
            languages |= {str(v) for v in t.column("language").to_pylist()}
            c["articles_written"] += t.num_rows
            c["entities"] += sum(len(e or ()) for e in t.column("entities").to_pylist())
            c["duplicates_near"] += t.num_rows - t.column("duplicate_of").null_count
        elif rel.startswith("errors/") and rel.endswith(".parquet"):
            stages = store.read_table(f"{stage}/{rel}").column("stage").to_pylist()
            c["errors_written"] += len(stages)
            c["pages_fetched"] += stages.count("extract") + stages.count("ner")
    if store.exists(f"{stage}/index.parquet"):
        kinds = store.read_table(f"{stage}/index.parquet").column("kind").to_pylist()
        c["duplicates_exact"] = kinds.count("duplicate")
        c["pages_extracted"] = kinds.count("article") + kinds.count("duplicate")
    c["pages_fetched"] += c["pages_extracted"]
    return {**c, "languages": sorted(languages)}


def commit(store: Store, run_id: str, summary: dict[str, Any], window_days: int) -> dict[str, Any]:
    """Make a finished run's staged output visible, then advance the state. Returns the manifest."""
    files = [f for f in staged_files(store, run_id) if f != "COMMIT"]
    manifest = {"run_id": run_id, "files": sorted(files), "summary": summary,
                "committed_at": datetime.now(timezone.utc).isoformat()}
    faults.point("staged")
    store.write_json(f"{staging_dir(run_id)}/COMMIT", manifest)  # the commit point
    publish(store, run_id, manifest, window_days)
    return manifest


def publish(store: Store, run_id: str, manifest: dict[str, Any], window_days: int) -> None:
    """Steps 2–4 of the protocol; safe to repeat any number of times."""
    stage = staging_dir(run_id)
    for rel in manifest["files"]:
        if rel.startswith(("articles/", "errors/")) and store.exists(f"{stage}/{rel}"):
            store.copy(f"{stage}/{rel}", rel)
            faults.point("publish")
    faults.point("state")
    if store.exists(f"{stage}/index.parquet"):
        store.copy(f"{stage}/index.parquet", f"{INDEX_DIR}/part-{run_id}.parquet")
    if store.exists(f"{stage}/feeds.json"):
        merge_feed_state(store, json.loads(store.read_bytes(f"{stage}/feeds.json")), run_id)
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
        entry.update(source=s["source"], last_status=s["status"], last_run=run_id)
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
    return replayed
