"""``--every`` on its long-lived worker pool: the same worker processes (and loaded NER models) serve every
poll; a worker killed during a poll is replaced and the poll retried, exactly once; idle between polls."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow.dataset as ds
import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow


def start(feeds, out, config, *args, env=None):
    return subprocess.Popen([sys.executable, str(ROOT / "run_local.py"), "--feeds", str(feeds), "--output", str(out),
                             "--config", str(config), "--workers", "2", *args],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def stop(proc) -> str:
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr[-3000:]
    return stderr


def runs(out: Path) -> int:
    return len(list((out / "_state" / "runs").glob("*.json"))) if (out / "_state" / "runs").exists() else 0


def wait_for(condition, timeout=180.0, proc=None):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        assert proc is None or proc.poll() is None, proc.stderr.read()[-3000:] if proc else ""
        time.sleep(0.1)


def workers(proc) -> set[int]:
    return {c.pid for c in psutil.Process(proc.pid).children() if "warta.pipeline.worker" in " ".join(c.cmdline())}


def summaries(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "INFO warta: warta run " in line]


def test_the_same_worker_processes_serve_every_poll_and_load_the_models_once(world, tmp_path, fast_config):
    feeds = world.feeds_yaml(tmp_path / "feeds.yaml", "patroli")
    out = tmp_path / "lake"
    proc = start(feeds, out, fast_config, "--every", "1s")
    try:
        wait_for(lambda: runs(out) >= 1, proc=proc)
        pool = workers(proc)
        assert len(pool) == 2  # one per worker, not a new set per poll
        wait_for(lambda: runs(out) >= 3, proc=proc)
        assert workers(proc) == pool
    finally:
        stderr = stop(proc)
    loads = [float(re.search(r"\| model load ([\d.]+)s \|", line).group(1)) for line in summaries(stderr)]
    assert len(loads) >= 3 and loads[0] > 0  # the first poll loaded the models (in each worker process) ...
    assert loads[1:] == [0.0] * (len(loads) - 1), loads  # ... later polls found them loaded
    assert "entities=0 " not in summaries(stderr)[0]  # and tagged with them


def test_a_worker_killed_during_a_poll_is_replaced_and_the_poll_retried_exactly_once(world, tmp_path, fast_config):
    feeds = world.feeds_yaml(tmp_path / "feeds.yaml", "patroli", "kabar", "en")
    out, progress = tmp_path / "lake", tmp_path / "tmp"
    progress.mkdir()
    proc = start(feeds, out, fast_config, "--every", "10m", "--no-ner", env={"TMPDIR": str(progress)})
    try:
        wait_for(lambda: len(workers(proc)) == 2, proc=proc)
        pool = workers(proc)
        # a worker process has counted progress of the poll: it is working on it (the slow page keeps it going)
        busy = lambda: [p for p in pool for d in progress.glob("warta-progress-*") if (d / f"{p}.json").exists()]  # noqa: E731
        wait_for(busy, proc=proc)
        victim = busy()[0]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: runs(out) >= 1, proc=proc)
        replaced = workers(proc)
    finally:
        stderr = stop(proc)
    assert "a worker process died" in stderr and "retrying with a new one" in stderr, stderr[-3000:]
    assert victim not in replaced and len(replaced) == 2
    assert runs(out) == 1 and not list((out / "_state" / "pending").glob("*"))
    urls = ds.dataset(str(out / "articles"), format="parquet", partitioning="hive").to_table().column("url").to_pylist()
    assert len(urls) == len(set(urls)) >= 5  # every article of the retried poll, once


def test_between_polls_the_process_tree_uses_no_cpu(world, tmp_path, fast_config):
    feeds = world.feeds_yaml(tmp_path / "feeds.yaml", "patroli")
    out = tmp_path / "lake"
    proc = start(feeds, out, fast_config, "--every", "10m", "--no-ner")
    try:
        wait_for(lambda: runs(out) >= 1, proc=proc)
        time.sleep(3)  # the summary line, compaction and harness shutdown come after the commit
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        assert len(tree) == 3  # the driver and its two worker processes, still there

        def cpu():
            return sum(sum(p.cpu_times()[:2]) for p in tree)

        before = cpu()
        time.sleep(4)
        used = cpu() - before
    finally:
        stop(proc)
    assert used < 0.05, f"{used:.3f} CPU seconds in 4 s of idling"
