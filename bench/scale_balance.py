"""Balance across workers (issue #23, benchmark b): the same work on a local dask.distributed cluster with
1, 2 and 3 worker processes; the CPU seconds each worker process spent on it.

    python bench/scale_balance.py [--articles 240] [--outlets 24] [--workers 1 2 3] [--no-ner]

The work: ``bench/newsworld.py``'s loopback news world (``--articles`` pages over ``--outlets`` hosts; it reads
sentences from ../shared/data and says so when that is missing), polled, fetched, extracted, tagged (unless
``--no-ner``), deduplicated and committed by ``run_local.py --runner dask --dask-address …`` into a fresh
lake each time. The cluster (``LocalCluster``, one thread per worker process, no nanny restarts) is started
here; each worker process's CPU (user + system, via psutil, including any processes it started) is read
before and after the run. Reported per worker count: wall seconds, articles written, CPU seconds per
worker, and ``max/min`` of those (balanced within 2x: ``max_over_min <= 2``). ``--parallelism auto``
sets ``parallelism`` (host shards, fetch groups, NER groups) to the number of workers; ``none`` leaves it
to the runner's default. Results: bench/results/scale_balance.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.newsworld import feeds_yaml, serve_world  # noqa: E402


def cpu_of(pid: int) -> float:
    p = psutil.Process(pid)
    t = p.cpu_times()
    total = t.user + t.system + t.children_user + t.children_system
    for child in p.children(recursive=True):
        try:
            ct = child.cpu_times()
            total += ct.user + ct.system
        except psutil.Error:
            pass
    return total


def one(n_workers: int, feeds: Path, tmp: Path, use_ner: bool, parallelism: str) -> dict:
    from distributed import Client, LocalCluster

    settings: dict = {"http": {"host_delay": 0.05}}
    if parallelism == "auto":
        settings["parallelism"] = n_workers
        settings["ner"] = {"parallelism": n_workers}
    if not use_ner:
        settings.setdefault("ner", {})["enabled"] = False
    config = tmp / f"settings{n_workers}.yaml"
    config.write_text(json.dumps(settings))
    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        pids = client.run(os.getpid)  # worker address -> pid
        before = {addr: cpu_of(pid) for addr, pid in pids.items()}
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, str(ROOT / "run_local.py"), "--feeds", str(feeds), "--output",
                              str(tmp / f"lake{n_workers}"), "--config", str(config), "--runner", "dask",
                              "--dask-address", cluster.scheduler_address], cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if res.returncode != 0:
            raise RuntimeError(res.stderr[-3000:])
        after = {addr: cpu_of(pid) for addr, pid in pids.items()}
    cpu = sorted(round(after[a] - before[a], 2) for a in pids)
    summary = [line for line in res.stderr.splitlines() if "warta run" in line][-1]
    return {"workers": n_workers, "wall_s": round(wall, 2),
            "articles": int(summary.split("rows written=")[1].split()[0]),
            "cpu_s_per_worker": cpu, "cpu_s_total": round(sum(cpu), 2),
            "max_over_min": round(max(cpu) / max(min(cpu), 1e-9), 2), "summary": summary.split("INFO warta: ")[-1]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--articles", type=int, default=240)
    ap.add_argument("--outlets", type=int, default=24)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--no-ner", action="store_true")
    ap.add_argument("--parallelism", choices=["auto", "none"], default="auto")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "scale_balance.json")
    args = ap.parse_args(argv)
    rows = []
    with serve_world(args.articles, args.outlets) as (feeds, _texts), tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        path = feeds_yaml(feeds, tmp / "feeds.yaml")
        for n in args.workers:
            rows.append(one(n, path, tmp, not args.no_ner, args.parallelism))
            print(json.dumps(rows[-1]), flush=True)
    result = {"conditions": f"{os.cpu_count()} CPU cores shared with other engineers' jobs (load average "
                            f"{os.getloadavg()[0]:.1f} at the end); one LocalCluster per row, 1 thread per worker",
              "scale": {k: v for k, v in vars(args).items() if k != "json"}, "rows": rows,
              "balanced_within_2x": all(r["max_over_min"] <= 2 for r in rows)}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
