"""Failed entries and pages, remembered with a retry time: ``_state/failures/failures.parquet``.

Every failure of an entry or page (not of a whole feed: feeds are polled every run anyway) is one record per
URL: attempts, last error, next retry time. Retries back off (1 h, 6 h, 1 d, then every 7 d); a page that
answered 404/410 or was not HTML ``FINAL_AFTER`` times in a row is final (``retry_at`` null). Polling skips a
URL whose retry time is in the future and offers it again after. An entry-level poll error is written to
``errors/`` once, and again only when it changes or its retry time has passed.

The run stages its new records (``failures.parquet`` in its staging folder); the commit merges them, and
drops the records of URLs the run stored (its index rows): see :func:`merge_failures`. ``warta errors
retry`` makes matching records due now (:func:`retry_now`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pyarrow as pa

from warta.lake.state import key64
from warta.lake.store import Store
from warta.net.urls import normalize_url

FAILURES_FILE = "_state/failures/failures.parquet"
BACKOFF = (timedelta(hours=1), timedelta(hours=6), timedelta(days=1), timedelta(days=7))
FINAL_AFTER = 3
TS = pa.timestamp("us", tz="UTC")
SCHEMA = pa.schema([
    ("key", pa.uint64()), ("url", pa.string()), ("feed_url", pa.string()), ("source", pa.string()),
    ("stage", pa.string()), ("error", pa.string()), ("status", pa.int32()), ("attempts", pa.int32()),
    ("first_at", TS), ("last_at", TS), ("retry_at", TS),  # retry_at null: final, never retried
])


def failure_key(err: dict[str, Any]) -> int | None:
    """The record key of an errors/ row: its normalised URL (``failure_key`` set by polling for entries
    without a usable link); None for feed-level failures, which are not remembered."""
    if err.get("failure_key") is not None:
        return err["failure_key"]
    if not err.get("url") or err.get("url") == err.get("feed_url"):
        return None
    return key64(normalize_url(err["url"]))


def is_final(err: dict[str, Any]) -> bool:
    """Failures that will not change by retrying: the page is gone, or it is not HTML."""
    return err.get("status") in (404, 410) or "is not HTML" in (err.get("error") or "")


@dataclass
class Failures:
    """The failure records as polling and the failure-record step see them."""

    records: dict[int, dict[str, Any]] = field(default_factory=dict)
    _next_retry: dict[str, datetime] | None = field(default=None, repr=False, compare=False)

    def waiting(self, key: int | None, now: datetime) -> bool:
        """Is this URL failed and not yet due for a retry?"""
        rec = self.records.get(key) if key is not None else None
        return rec is not None and (rec["retry_at"] is None or rec["retry_at"] > now)

    def due_in(self, feed_url: str, now: datetime) -> bool:
        """Has this feed an entry or page due for a retry? (Then it is polled in full, without validators:
        an unchanged feed would otherwise answer 304 and its failed items would wait for its next change.)"""
        if self._next_retry is None:  # per feed, its earliest retry time (built once; records do not change)
            first: dict[str, datetime] = {}
            for r in self.records.values():
                if r["retry_at"] is not None and r["feed_url"]:
                    first[r["feed_url"]] = min(r["retry_at"], first.get(r["feed_url"], r["retry_at"]))
            self._next_retry = first
        when = self._next_retry.get(feed_url)
        return when is not None and when <= now

    def already_recorded(self, key: int, error: str, now: datetime) -> bool:
        """Is this exact failure on record and not expired (so its errors/ row need not be written again)?"""
        return self.waiting(key, now) and self.records[key]["error"] == error

    def record(self, err: dict[str, Any]) -> dict[str, Any] | None:
        """The record that follows this errors/ row (attempts counted on from the previous one)."""
        key = failure_key(err)
        if key is None:
            return None
        prev = self.records.get(key)
        attempts = (prev["attempts"] if prev else 0) + 1
        final = is_final(err) and attempts >= FINAL_AFTER
        retry_at = None if final else err["at"] + BACKOFF[min(attempts, len(BACKOFF)) - 1]
        return {"key": key, "url": err.get("url"), "feed_url": err.get("feed_url"), "source": err.get("source"),
                "stage": err["stage"], "error": err["error"], "status": err.get("status"), "attempts": attempts,
                "first_at": prev["first_at"] if prev else err["at"], "last_at": err["at"],
                "retry_at": retry_at}


def failures_table(records: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(sorted(records, key=lambda r: r["key"]), schema=SCHEMA)


def read_records(store: Store, rel: str = FAILURES_FILE) -> list[dict[str, Any]]:
    return store.read_table(rel).to_pylist() if store.exists(rel) else []


def load_failures(store: Store) -> Failures:
    return Failures({r["key"]: r for r in read_records(store)})


def merge_failures(store: Store, staged: str, stored_keys: set[int]) -> None:
    """Commit step: the run's new records replace older ones; URLs the run stored are no longer failed.
    Idempotent (the staged records hold absolute values), so a replayed commit gives the same file."""
    new = read_records(store, staged)
    current = {r["key"]: r for r in read_records(store)}
    if not new and not stored_keys & current.keys():
        return
    current.update((r["key"], r) for r in new)
    store.write_table(FAILURES_FILE, failures_table([r for k, r in current.items() if k not in stored_keys]))


def matching(records: list[dict], stage: str | None = None, source: str | None = None) -> list[dict]:
    return [r for r in records if (not stage or r["stage"] == stage) and (not source or r["source"] == source)]


def retry_now(store: Store, now: datetime, stage: str | None = None, source: str | None = None) -> list[dict]:
    """Make the matching records due now, attempts reset; returns them."""
    records = read_records(store)
    hits = matching(records, stage, source)
    for r in hits:
        r.update(retry_at=now, attempts=0)
    if hits:
        store.write_table(FAILURES_FILE, failures_table(records))
    return hits
