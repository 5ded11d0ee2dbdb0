"""Exactly-once under crashes, and the run lock: the CLI killed at several points, then rerun."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone

import pyarrow.dataset as ds
import pytest
from conftest import ROOT

from warta.lake.commit import BACKLOG, LockedError, RunLock, commit, read_backlog, recover, summarize_staged
from warta.lake.schema import staging_dir
from warta.lake.store import Store
from warta.transforms.write import write_state

pytestmark = pytest.mark.slow
COMPARE = ["article_id", "url", "canonical_url", "source", "title", "published_at", "language", "text",
           "content_hash", "duplicate_of"]


def cli(feeds, out, config, env_extra=None, wait=True):
    env = {**os.environ, **(env_extra or {})}
    args = [sys.executable, str(ROOT / "run_local.py"), "--feeds", str(feeds), "--output", str(out),
            "--config", str(config), "--no-ner", "--workers", "1"]  # in-process: a kill point kills the run
    if not wait:
        return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def lake_rows(out, dataset="articles", cols=COMPARE):
    path = out / dataset
    if not path.exists():
        return []
    table = ds.dataset(str(path), format="parquet", partitioning="hive").to_table()
    return sorted(tuple(r[c] for c in cols) for r in table.to_pylist())


def state_files(out):
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())


@pytest.mark.parametrize("point", ["fetch", "staged", "publish", "state"])
def test_killed_run_then_rerun_equals_one_clean_run(world, tmp_path, fast_config, point):
    feeds = world.feeds_yaml(tmp_path / "feeds.yaml", "patroli", "kabar", "en")
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    res = cli(feeds, clean, fast_config)
    assert res.returncode == 0, res.stderr[-2000:]

    killed = cli(feeds, crashed, fast_config, {"WARTA_KILL_AT": point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    if point in ("fetch", "staged"):
        assert lake_rows(crashed) == []  # nothing visible before the commit point
    rerun = cli(feeds, crashed, fast_config)
    assert rerun.returncode == 0, rerun.stderr[-2000:]

    assert lake_rows(crashed) == lake_rows(clean)
    assert len(lake_rows(crashed)) == len(set(r[0] for r in lake_rows(crashed)))  # no duplicate article rows
    err_cols = ["url", "stage", "status"]
    assert lake_rows(crashed, "errors", err_cols) == lake_rows(clean, "errors", err_cols)
    files = state_files(crashed)
    assert not any("/pending/" in f or f.endswith(".tmp") for f in files), files  # no orphans
    assert not (crashed / "_state" / "LOCK").exists()
    # and a further run on the recovered lake adds nothing
    again = cli(feeds, crashed, fast_config)
    assert again.returncode == 0 and lake_rows(crashed) == lake_rows(clean)


def test_commit_replay_is_idempotent(tmp_path):
    store = Store(str(tmp_path / "lake"))
    run_id = "20240101T000000-abc"
    stage = staging_dir(run_id)
    store.write_bytes(f"{stage}/articles/date=2024-01-01/source=x/part-{run_id}.parquet", b"PAR1fake")
    store.write_bytes(f"{stage}/feeds.json", b"[]")
    manifest = commit(store, run_id, {}, 7)
    assert store.exists(f"articles/date=2024-01-01/source=x/part-{run_id}.parquet")
    # replaying a finished commit (as recovery would) changes nothing
    store.write_json(f"{stage}/COMMIT", manifest)
    assert recover(store, 7) == [run_id]
    assert store.list("articles") == [f"articles/date=2024-01-01/source=x/part-{run_id}.parquet"]
    assert store.list("_state/pending") == []


def test_backlog_is_replaced_through_the_commit_and_survives_an_uncommitted_run(tmp_path):
    store = Store(str(tmp_path / "lake"))
    when = datetime(2024, 11, 12, 3, tzinfo=timezone.utc)
    store.write_json(f"{BACKLOG}/r0.json", [{"url": "http://a/1", "feed_published_at": str(when)},
                                            {"url": "http://a/2", "feed_published_at": None}])
    taken, entries = read_backlog(store)
    assert taken == ["r0.json"] and [e["url"] for e in entries] == ["http://a/1", "http://a/2"]
    assert entries[0]["feed_published_at"] == when and all(e["backlog"] for e in entries)
    # a run that dies before its commit point leaves the backlog as it was
    write_state("backlog", [{"url": "http://a/2"}], store, "r1")
    recover(store, 7)
    assert read_backlog(store)[0] == ["r0.json"]
    # a committed run replaces the files it took with what it left (staged in shards)
    write_state("backlog", [{"url": "http://a/2"}], store, "r2", 1)
    assert summarize_staged(store, "r2")["entries_pending"] == 1
    commit(store, "r2", {}, 7, backlog_taken=taken)
    assert read_backlog(store)[0] == ["r2.json"]
    # and one that fetched everything leaves no backlog
    write_state("backlog", [], store, "r3")
    commit(store, "r3", {}, 7, backlog_taken=["r2.json"])
    assert read_backlog(store) == ([], [])


def test_uncommitted_staging_is_discarded(tmp_path):
    store = Store(str(tmp_path / "lake"))
    store.write_bytes(f"{staging_dir('r1')}/articles/date=2024-01-01/source=x/part-r1.parquet", b"x")
    assert recover(store, 7) == []
    assert store.list("") == []


def test_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path):
    store = Store(str(tmp_path / "lake"))
    with RunLock(store, "first"):
        with pytest.raises(LockedError, match="in use by run first"):
            RunLock(store, "second").acquire()
    # a lock left by a killed process on this host is stale
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store.write_json("_state/LOCK", {"run_id": "ghost", "host": os.uname().nodename, "pid": dead.pid,
                                    "heartbeat": time.time()})
    lock = RunLock(store, "third")
    lock.acquire()
    assert store.read_json("_state/LOCK")["run_id"] == "third"
    lock.release()
    assert not store.exists("_state/LOCK")


def test_two_runs_at_once_one_is_refused_with_a_clear_message(world, server, tmp_path, fast_config):
    slow = fast_config.parent / "slow.yaml"
    slow.write_text(fast_config.read_text().replace("host_delay: 0", "host_delay: 0.5"))
    feeds = world.feeds_yaml(tmp_path / "feeds.yaml", "patroli")
    out = tmp_path / "lake"
    first = cli(feeds, out, slow, wait=False)
    deadline = time.monotonic() + 60
    while not (out / "_state" / "LOCK").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    second = cli(feeds, out, fast_config)
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr[-2000:]
    assert second.returncode == 3
    assert "output is in use by run" in second.stderr
    rows = lake_rows(out)
    assert len(rows) == len(set(r[0] for r in rows)) > 0
