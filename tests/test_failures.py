"""lake.failures: failures expire and back off; the commit merges them; `warta errors list|retry`."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from warta.lake.commit import RunLock
from warta.lake.failures import (
    BACKOFF,
    FAILURES_FILE,
    Failures,
    failures_table,
    load_failures,
    merge_failures,
    read_records,
)
from warta.lake.state import FEEDS_FILE, key64
from warta.lake.store import Store
from warta.net.urls import normalize_url
from warta.pipeline.cli import dispatch

T = datetime(2024, 11, 12, tzinfo=timezone.utc)


def err(url="https://x.example/a", stage="fetch", error="HTTP 503", status=503, at=T, source="x"):
    return {"url": url, "feed_url": "https://x.example/feed", "source": source, "stage": stage, "error": error,
            "status": status, "at": at}


def test_retries_back_off_and_only_gone_or_not_html_pages_become_final():
    f = Failures()
    at = T
    for attempt, wait in enumerate(BACKOFF + BACKOFF[-1:], start=1):
        rec = f.record(err(at=at))
        assert (rec["attempts"], rec["retry_at"] - at) == (attempt, wait)
        f.records[rec["key"]] = rec
        assert f.waiting(rec["key"], at) and not f.waiting(rec["key"], rec["retry_at"])  # due at its retry time
        at = rec["retry_at"]
    for gone in (err(status=404, error="HTTP 404"), err(status=410, error="HTTP 410"),
                 err(status=200, error="content type 'application/pdf' is not HTML")):
        f = Failures()
        for _ in range(3):
            rec = f.record(gone)
            f.records[rec["key"]] = rec
        assert rec["attempts"] == 3 and rec["retry_at"] is None and f.waiting(rec["key"], T + timedelta(days=999))
    robots = Failures().record(err(stage="robots", error="disallowed by robots.txt", status=None))
    assert robots["retry_at"] == T + BACKOFF[0]  # robots may change: never final
    assert Failures().record(err(url="https://x.example/feed")) is None  # feed-level: not remembered


def test_commit_merge_replaces_records_and_forgets_urls_stored_since(tmp_path):
    store = Store(str(tmp_path))
    a, b = err(url="https://x.example/a"), err(url="https://x.example/b")
    f = Failures()
    store.write_table("_state/pending/r1/failures.parquet", failures_table([f.record(a), f.record(b)]))
    merge_failures(store, "_state/pending/r1/failures.parquet", set())
    merge_failures(store, "_state/pending/r1/failures.parquet", set())  # a replayed commit changes nothing
    assert sorted(r["url"] for r in read_records(store)) == ["https://x.example/a", "https://x.example/b"]
    # the next run stored b and failed a again
    f = load_failures(store)
    store.write_table("_state/pending/r2/failures.parquet", failures_table([f.record(a)]))
    merge_failures(store, "_state/pending/r2/failures.parquet", {key64(normalize_url(b["url"]))})
    assert [(r["url"], r["attempts"]) for r in read_records(store)] == [("https://x.example/a", 2)]


def test_errors_list_and_retry_command(tmp_path, capsys):
    store = Store(str(tmp_path))
    f = Failures()
    at = datetime.now(timezone.utc)
    recs = [f.record(err(url="https://x.example/a", status=404, error="HTTP 404", at=at)),
            f.record(err(url="https://x.example/b", stage="robots", error="robots.txt answered 503", status=503, at=at)),
            f.record(err(url="https://y.example/c", source="y", at=at))]
    recs[0].update(retry_at=None, attempts=3)  # final
    store.write_table(FAILURES_FILE, failures_table(recs))
    store.write_json(FEEDS_FILE, {"https://x.example/feed": {"etag": "e1", "last_modified": "m1"}})
    assert dispatch(["errors", "list", "--output", str(tmp_path), "--source", "x"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 2 and "never" in listed[0] and listed[0].startswith("fetch\tx\t3")
    assert dispatch(["errors", "retry", "--output", str(tmp_path), "--stage", "fetch", "--source", "x"]) == 0
    after = {r["url"]: r for r in read_records(store)}
    now = datetime.now(timezone.utc)
    assert not load_failures(store).waiting(recs[0]["key"], now) and after["https://x.example/a"]["attempts"] == 0
    assert load_failures(store).waiting(recs[1]["key"], now)  # other stage: untouched
    assert load_failures(store).waiting(recs[2]["key"], now)  # other source: untouched
    assert json.loads(store.read_bytes(FEEDS_FILE))["https://x.example/feed"]["etag"] is None  # polled in full next run
    assert dispatch(["errors", "retry", "--output", str(tmp_path), "--bogus"]) == 2
    with RunLock(store, "other-run"):
        assert dispatch(["errors", "retry", "--output", str(tmp_path)]) == 3
