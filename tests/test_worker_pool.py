"""pipeline.worker.WorkerPool: long-lived worker processes that serve one pipeline run after another
(their per-process caches stay warm); a process that dies fails the run in flight and is replaced."""

from __future__ import annotations

import os
import signal
import threading
import time

import apache_beam as beam
import psutil
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from warta.pipeline.worker import DirectFnRunner, WorkerPool

_RUNS: list[int] = []  # in each worker process: one entry per element it saw, over all runs


def where(x: int, pause: float = 0.0) -> tuple[int, int]:
    """(the worker process's id, how many elements that process had seen before this one, in any run)."""
    time.sleep(pause)
    _RUNS.append(x)
    return os.getpid(), len(_RUNS) - 1


def run(pool: WorkerPool, n: int = 20, pause: float = 0.0) -> list[tuple[int, int]]:
    options = PipelineOptions(["--direct_num_workers", str(pool.size), "--direct_running_mode", "multi_processing"])
    p = beam.Pipeline(runner=DirectFnRunner(pool=pool), options=options)
    (p | beam.Create(range(n)) | beam.Reshuffle() | beam.Map(where, pause) | beam.combiners.ToList()
     | beam.Map(lambda rows, path: open(path, "w").write(repr(rows)), str(pool.scratch)))
    p.run().wait_until_finish()
    return eval(open(pool.scratch).read())


@pytest.fixture
def pool(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.path.dirname(__file__))  # the workers unpickle this module's functions
    with WorkerPool(2) as pool:
        pool.scratch = tmp_path / "out.txt"
        yield pool


def test_the_same_processes_serve_every_run_and_keep_their_state(pool):
    pids = set(pool.pids())
    assert len(pids) == 2 and all(psutil.Process(p).ppid() == os.getpid() for p in pids)
    first = run(pool)
    second = run(pool)
    assert {pid for pid, _ in first} <= pids and {pid for pid, _ in second} <= pids
    assert set(pool.pids()) == pids
    # what a process keeps in memory (as shared_tagger keeps the NER models) is still there in the next run
    last_of_first = {pid: max(n for p, n in first if p == pid) for pid, _ in first}
    for pid, n in second:
        if pid in last_of_first:
            assert n > last_of_first[pid]
    assert all(not p.handlers for p in pool.processes)  # every harness of both runs was stopped


def test_a_process_killed_during_a_run_fails_that_run_and_is_replaced(pool):
    process = pool.processes[0]
    victim = process.proc.pid

    def kill_once_busy():
        while not process.handlers:
            time.sleep(0.01)
        time.sleep(1.0)
        os.kill(victim, signal.SIGKILL)

    threading.Thread(target=kill_once_busy, daemon=True).start()
    with pytest.raises(Exception):
        run(pool, n=60, pause=0.2)  # ~6 s of work over two processes: the kill lands in the middle
    assert pool.deaths == 1
    pool.ensure()
    assert victim not in pool.pids() and len(pool.pids()) == 2
    assert len(run(pool)) == 20  # the next run works, on the replacement


def test_a_process_killed_between_runs_is_replaced_before_the_next(pool):
    run(pool)
    victim = pool.pids()[1]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while pool.deaths == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    pool.ensure()
    assert victim not in pool.pids()
    assert len(run(pool)) == 20


def test_pool_processes_exit_with_the_pool(tmp_path):
    with WorkerPool(2) as pool:
        procs = [psutil.Process(p) for p in pool.pids()]
    gone, alive = psutil.wait_procs(procs, timeout=15)
    assert not alive
