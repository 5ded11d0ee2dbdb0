"""The run lock under races, on a local disk and on the S3 API (moto on loopback, with conditional requests)."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from warta.lake.commit import LockedError, RunLock, commit
from warta.lake.lock import LOCK, LockLost
from warta.lake.schema import staging_dir
from warta.lake.store import Store


@pytest.fixture(params=["local", "s3"])
def stores(request, tmp_path):
    """A factory of Store objects on one output; each has its own filesystem client, as separate runs would."""
    if request.param == "local":
        return lambda: Store(str(tmp_path / "lake"))
    env = request.getfixturevalue("s3")
    options = {"endpoint_url": env["FSSPEC_S3_ENDPOINT_URL"], "key": "test", "secret": "test",
               "client_kwargs": {"region_name": "us-east-1"}, "skip_instance_cache": True}
    return lambda: Store("s3://lake/out", options)


def stale_lock(store: Store) -> None:
    store.write_json(LOCK, {"run_id": "dead", "host": "elsewhere", "pid": 1, "heartbeat": time.time() - 7200})


def acquire_in_thread(lock: RunLock, outcome: dict) -> threading.Thread:
    def target():
        try:
            lock.acquire()
            outcome[lock.run_id] = "held"
        except LockedError as e:
            outcome[lock.run_id] = str(e)
    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t


def test_two_runs_taking_over_a_stale_lock_at_once_one_wins(stores):
    stale_lock(stores())
    slow, fast = RunLock(stores(), "slow"), RunLock(stores(), "fast")
    judge = slow._stale

    def slow_judge(held):  # "slow" read the stale lock first, then stalls before taking it over
        time.sleep(0.6)
        return judge(held)
    slow._stale = slow_judge
    outcome: dict[str, str] = {}
    threads = [acquire_in_thread(slow, outcome)]
    time.sleep(0.1)
    threads.append(acquire_in_thread(fast, outcome))
    for t in threads:
        t.join(30)
    try:
        assert outcome["fast"] == "held"
        assert "in use by run fast" in outcome["slow"]  # its takeover of the version it judged stale failed
        assert stores().read_json(LOCK)["run_id"] == "fast"
    finally:
        fast.release()
        slow.release()
    assert not stores().exists(LOCK)


def test_many_runs_starting_at_once_one_holds_the_lock(stores):
    locks = [RunLock(stores(), f"run{i}") for i in range(5)]
    outcome: dict[str, str] = {}
    for t in [acquire_in_thread(lock, outcome) for lock in locks]:
        t.join(30)
    try:
        assert sorted(outcome.values()).count("held") == 1
        winner = next(k for k, v in outcome.items() if v == "held")
        assert stores().read_json(LOCK)["run_id"] == winner
    finally:
        for lock in locks:
            lock.release()


def test_a_run_whose_lock_was_taken_over_stops_beating_and_cannot_commit(stores):
    store = stores()
    frozen = RunLock(store, "frozen", ttl=2)
    frozen.acquire()
    impatient = RunLock(stores(), "impatient", ttl=0)  # judges every lock stale: as if "frozen" missed its beats
    impatient.acquire()
    try:
        with pytest.raises(LockLost, match="now held by impatient"):
            frozen.check()
        store.write_bytes(f"{staging_dir('frozen')}/errors/x.parquet", b"PAR1")
        with pytest.raises(LockLost):
            commit(store, "frozen", {}, 7, fence=frozen.check)
        assert store.list(staging_dir("frozen")) == []  # nothing passed the commit point; staging dropped
        frozen._thread.join(10)  # its next beat finds the lock no longer its own, and the heartbeat stops
        assert not frozen._thread.is_alive()
        frozen.release()  # must not remove the new holder's lock
        assert store.read_json(LOCK)["run_id"] == "impatient"
        impatient.check()
    finally:
        impatient.release()
    assert not store.exists(LOCK)


def test_heartbeat_keeps_a_live_lock_fresh(stores):
    lock = RunLock(stores(), "live", ttl=2)  # beats every second
    lock.acquire()
    try:
        first = stores().read_json(LOCK)["heartbeat"]
        deadline = time.monotonic() + 10
        while stores().read_json(LOCK)["heartbeat"] == first and time.monotonic() < deadline:
            time.sleep(0.1)
        assert stores().read_json(LOCK)["heartbeat"] > first
        lock.check()
    finally:
        lock.release()


def test_s3_compatible_store_without_conditional_writes_falls_back(s3):
    options = {"endpoint_url": s3["FSSPEC_S3_ENDPOINT_URL"], "key": "test", "secret": "test",
               "client_kwargs": {"region_name": "us-east-1"}, "skip_instance_cache": True}
    store = Store("s3://lake/plain", options)
    call = store.fs.call_s3

    def no_conditions(method, **kw):  # like a store answering 501 NotImplemented to If-Match/If-None-Match
        if {"IfMatch", "IfNoneMatch"} & kw.keys():
            error = OSError("not implemented")
            error.__cause__ = type("ClientError", (Exception,), {"response": {"Error": {"Code": "NotImplemented"}}})()
            raise error
        return call(method, **kw)
    store.fs.call_s3 = no_conditions
    lock = RunLock(store, "plain", ttl=2)
    lock.acquire()
    with pytest.raises(LockedError, match="in use by run plain"):
        RunLock(Store("s3://lake/plain", options), "other").acquire()
    lock.check()
    lock.release()
    assert not store.exists(LOCK)


def staged_articles(store: Store, run_id: str, n_files: int = 2, per_file: int = 3) -> None:
    from test_compact import DAY, article

    from warta.transforms.write import ARTICLE_SCHEMA, rows_table
    for f in range(n_files):
        arts = [article(f * per_file + i, "kabar", DAY) for i in range(per_file)]
        store.write_table(f"{staging_dir(run_id)}/articles/date=2024-11-12/source=kabar/part-{run_id}-{f}.parquet",
                          rows_table(arts, ARTICLE_SCHEMA, "article_id"))


def article_ids(store: Store) -> list[str]:
    import pyarrow.parquet as pq
    ids = []
    for rel in store.list("articles", ".parquet"):
        ids += pq.read_table(store.path(rel)).column("article_id").to_pylist()
    return sorted(ids)


def test_holder_paused_past_the_ttl_mid_publish_stops_and_no_row_is_duplicated(tmp_path, monkeypatch):
    """A holder pauses between reading a staged file and writing it (its heartbeat paused too, as in a stopped
    process); another run takes the lock over, replays the commit and compacts the partition; the first one
    wakes up and must not put the compacted file's rows back."""
    from warta.lake import compact as lc
    from warta.lake import faults
    from warta.lake.commit import recover

    store = Store(str(tmp_path / "lake"))
    staged_articles(store, "A")
    paused, resume, real_point = threading.Event(), threading.Event(), faults.point

    def point(name):
        if name == "publish_read" and threading.current_thread().name.startswith("holder-A") and not paused.is_set():
            first._stop.set()  # the whole process stops: its heartbeat too
            paused.set()
            resume.wait(30)
        real_point(name)
    monkeypatch.setattr(faults, "point", point)
    first = RunLock(store, "A", ttl=1.0)
    first.acquire()
    outcome = {}

    def publish_a():
        try:
            outcome["A"] = commit(store, "A", {}, 7, lock=first)
        except LockLost as e:
            outcome["A"] = e
    holder = threading.Thread(target=publish_a, name="holder-A", daemon=True)
    holder.start()
    assert paused.wait(10)
    time.sleep(1.3)  # past the ttl without a heartbeat
    second = RunLock(Store(str(tmp_path / "lake")), "B", ttl=1.0)
    second.acquire()  # takes over the stale lock
    try:
        assert second.epoch == first.epoch + 1
        assert recover(store, 7, second) == ["A"]  # the first run's commit, replayed by the new holder
        stats = lc.compact(store, lc.Policy(), fence=second.check)
        assert stats["partitions_rewritten"] == 1
        resume.set()
        holder.join(10)
        assert article_ids(store) == sorted(f"kabar-{i:05d}" for i in range(6))  # each row exactly once
        assert isinstance(outcome["A"], LockLost)
        assert len(store.list("articles", ".parquet")) == 1
        assert store.read_json("_state/FENCE")["epoch"] == second.epoch
    finally:
        resume.set()
        second.release()
        first.release()


def test_commit_marker_records_the_epoch_and_a_zombie_marker_is_not_replayed(tmp_path):
    from warta.lake.commit import recover
    store = Store(str(tmp_path / "lake"))
    with RunLock(store, "old") as old:
        recover(store, 7, old)
    with RunLock(store, "new") as new:
        assert new.epoch == old.epoch + 1
        recover(store, 7, new)
        # a run of the old epoch that wrote its marker after the new holder had recovered the output
        staged_articles(store, "zombie")
        store.write_json(f"{staging_dir('zombie')}/COMMIT", {"run_id": "zombie", "files": [
            f"articles/date=2024-11-12/source=kabar/part-zombie-{f}.parquet" for f in range(2)],
            "lock_epoch": old.epoch})
        staged_articles(store, "legit")
        manifest = commit(store, "legit", {}, 7, lock=new)
        assert manifest["lock_epoch"] == new.epoch
    with RunLock(store, "next") as nxt:
        assert recover(store, 7, nxt) == []
    assert store.list(staging_dir("zombie")) == []
    assert article_ids(store) == sorted(f"kabar-{i:05d}" for i in range(6))  # the legit run's rows only


@pytest.mark.parametrize("content", [b"", b'{"run_id": "cut', b"[1, 2]"], ids=["empty", "cut", "not-a-marker"])
def test_an_unreadable_commit_marker_is_no_commit_point_not_a_crash_loop(tmp_path, caplog, content):
    from warta.lake.commit import recover
    caplog.set_level(logging.WARNING, logger="warta")  # whatever level an earlier in-process run left on it
    store = Store(str(tmp_path / "lake"))
    staged_articles(store, "torn")
    store.write_bytes(f"{staging_dir('torn')}/COMMIT", content)
    assert recover(store, 7) == []
    assert store.list("_state/pending") == [] and article_ids(store) == []
    assert f"{staging_dir('torn')}/COMMIT is unreadable" in caplog.text or "is not a commit marker" in caplog.text
    assert recover(store, 7) == []  # and the next run goes on


def test_same_host_dead_pid_in_another_pid_namespace_is_not_taken_over(tmp_path):
    from warta.lake.lock import process_namespace
    store = Store(str(tmp_path / "lake"))
    here = process_namespace()
    dead = 2**22 + 12345  # no such pid here; in another PID namespace it may be a live run
    store.write_json(LOCK, {**here, "run_id": "container", "pid": dead, "pid_ns": "pid:[4026531999]",
                            "heartbeat": time.time()})
    with pytest.raises(LockedError, match="in use by run container"):
        RunLock(store, "mine").acquire()
    store.write_json(LOCK, {**here, "run_id": "rebooted", "pid": dead, "boot_id": "another-boot",
                            "heartbeat": time.time()})
    with pytest.raises(LockedError, match="in use by run rebooted"):
        RunLock(store, "mine").acquire()
    store.write_json(LOCK, {**here, "run_id": "gone", "pid": dead, "heartbeat": time.time()})
    lock = RunLock(store, "mine")
    lock.acquire()  # same host, boot and namespace, process gone: stale
    lock.release()
