"""The launcher's own cost over many feeds (issue #23, benchmark c): CPU and peak memory of the process that
starts the job and commits it, not of its workers.

    python bench/scale_launcher.py [--feeds 20000] [--hosts 20] [--workers 2] [--label after]

A loopback world of tiny feeds: ``--feeds`` empty RSS channels spread over ``--hosts`` loopback addresses
(127.0.0.2, 127.0.0.3, …), answering 304 when asked with their ETag. Two ``run_local.py --no-ner`` runs over
one lake: ``first`` (every feed answers 200 with an empty channel; validators are stored) and ``again``
(every feed answers 304). For each run: wall seconds; the launcher's CPU seconds (user + system of the
launcher process alone, sampled every 0.1 s, so up to 0.1 s of its last moment can be missed) and its
peak RSS (``VmHWM`` from /proc, exact); the workers' CPU seconds and peak RSS summed over the launcher's
child processes, for scale. To compare with another checkout, run this file with ``PYTHONPATH`` pointing
at a directory whose ``warta`` is that checkout (the launcher and its workers inherit it) and another
``--label``. Results: bench/results/scale_launcher.json (rows appended per label, the latest kept).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.shared import wait_sampled  # noqa: E402
from tests.pages import rss_feed  # noqa: E402  (a test page builder; no test data)
from warta.pipeline.loopback import LoopbackServer, Route  # noqa: E402


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def measured_run(args: list[str], env: dict) -> dict:
    """One launcher run: its own CPU and peak RSS, and its workers' (children's)."""
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    launcher = psutil.Process(proc.pid)
    seen = {"cpu": 0.0, "rss": 0.0, "workers": {}}

    def sample():
        while proc.poll() is None:
            try:
                t = launcher.cpu_times()
                seen["cpu"] = t.user + t.system
                seen["rss"] = max(seen["rss"], peak_rss_mb(proc.pid))
                for child in launcher.children(recursive=True):
                    try:
                        ct = child.cpu_times()
                        prev = seen["workers"].get(child.pid, (0.0, 0.0))
                        seen["workers"][child.pid] = (ct.user + ct.system, max(prev[1], peak_rss_mb(child.pid)))
                    except (psutil.Error, OSError):
                        pass
            except (psutil.Error, OSError):
                pass
            time.sleep(0.1)

    wall, stderr = wait_sampled(proc, sample)
    summary = [line for line in stderr.splitlines() if "warta run" in line][-1]
    return {"wall_s": round(wall, 2), "launcher_cpu_s": round(seen["cpu"], 2),
            "launcher_peak_rss_mb": round(seen["rss"], 1),
            "worker_processes": len(seen["workers"]),
            "workers_cpu_s": round(sum(c for c, _ in seen["workers"].values()), 2),
            "workers_peak_rss_mb": round(sum(r for _, r in seen["workers"].values()), 1),
            "summary": summary.split("INFO warta: ")[-1]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--feeds", type=int, default=20_000)
    ap.add_argument("--hosts", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--label", default="after", help="row label (e.g. before/after, with PYTHONPATH)")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "scale_launcher.json")
    args = ap.parse_args(argv)
    import warta.pipeline
    code = str(Path(warta.pipeline.__file__).resolve().parents[1])  # the checkout the launcher runs
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        servers = [stack.enter_context(LoopbackServer(f"127.0.0.{h + 2}")) for h in range(args.hosts)]
        body = rss_feed(title="kosong", link="http://example.test/", items=[])
        lines = ["feeds:"]
        for i in range(args.feeds):
            server = servers[i % args.hosts]
            server.routes[f"/f{i}.xml"] = Route(body, "application/rss+xml")
            lines.append(f"  - name: feed{i:05d}\n    url: {server.url(f'/f{i}.xml')}")
        feeds = Path(tmp) / "feeds.yaml"
        feeds.write_text("\n".join(lines) + "\n")
        config = Path(tmp) / "settings.yaml"
        config.write_text(json.dumps({"http": {"host_delay": 0, "retries": 0, "total_timeout": 30}}))
        cmd = [sys.executable, str(ROOT / "run_local.py"), "--feeds", str(feeds), "--output", f"{tmp}/lake",
               "--config", str(config), "--no-ner", "--workers", str(args.workers), "--max-run-time", "30m"]
        env = {**os.environ, "STANZA_RESOURCES_DIR": str(Path(tmp) / "no-models")}
        rows = {"first": measured_run(cmd, env), "again": measured_run(cmd, env)}
        requests = sum(len(s.paths_requested()) for s in servers)
    result = {"label": args.label, "code": code, "feeds": args.feeds, "hosts": args.hosts, "workers": args.workers,
              "requests": requests, "cpus": os.cpu_count(), "load_avg_at_end": os.getloadavg()[0], **rows}
    print(json.dumps(result, indent=1))
    old = json.loads(args.json.read_text()) if args.json.exists() else {}
    old.setdefault("conditions", "2 CPU cores shared with other engineers' jobs (load average in each row); "
                                 "loopback feeds, --no-ner, host_delay 0")
    old.setdefault("runs", {})[args.label] = result
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(old, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
