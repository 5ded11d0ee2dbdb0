"""The run lock under races, on a local disk and on the S3 API (moto on loopback, with conditional requests)."""

from __future__ import annotations

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
