"""Continuous mode: ``run_local.py --every`` measured from outside, in two parts.

    python bench/bench_every.py speed [--articles 1200 --outlets 100 --later 200 --interval 30s] [--workers N]
    python bench/bench_every.py soak [--polls 20] [--interval 1s]

``speed`` (reads ../shared/data through bench/newsworld.py): one ``--every`` process over a loopback world
of ``--outlets`` hosts at the default 1 s politeness. Poll 1 takes ``--articles`` articles; poll 2 finds
nothing new (the fixed cost of a poll); before polls 3 and 4 the world publishes ``--later`` more articles
(spread over the outlets); poll 5 is again a no-op. In the idle time between polls the CPU of every process
of the tree is sampled (psutil, over 5 s). Afterwards, with the ``--every`` process gone, the physical limit
of the same pages is measured in this process as bench/bench_pipeline.py does (raw trafilatura + raw
Stanza CPU / usable CPUs). Reported per poll: its seconds (the run's own clock, from its manifest), model
load seconds (summed over the worker processes), articles, limit / seconds, and for the polls with new
articles limit / (seconds - the no-op poll's seconds), the ratio on their work.

``soak``: the world grows by one article every 10 polls, so most polls are conditional-GET no-ops; the RSS
of the whole process tree (driver and worker processes) after each poll.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.pages import rss_feed, wordpress_page  # noqa: E402
from warta.pipeline.loopback import LoopbackServer, Route  # noqa: E402
from warta.pipeline.options import parse_duration, usable_cpus  # noqa: E402

CORES = usable_cpus()


def tree(proc: psutil.Process) -> list[psutil.Process]:
    return [proc, *proc.children(recursive=True)]


def tree_rss_mb(proc: psutil.Process) -> float:
    total = 0
    for p in tree(proc):
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return round(total / 2**20, 1)


def tree_cpu_s(proc: psutil.Process) -> float:
    return sum(cpu_of(p) for p in tree(proc))


def cpu_of(p: psutil.Process) -> float:
    try:
        t = p.cpu_times()
        return t.user + t.system
    except psutil.Error:
        return 0.0


def idle_cpu(proc: psutil.Process, seconds: float = 5.0) -> dict:
    """CPU seconds the whole process tree (and each process of it) used over ``seconds`` of wall time."""
    procs = tree(proc)
    c0, t0 = [cpu_of(p) for p in procs], time.monotonic()
    time.sleep(seconds)
    used = [round(cpu_of(p) - c, 3) for p, c in zip(procs, c0)]
    wall = time.monotonic() - t0
    return {"idle_window_s": round(wall, 2), "idle_cpu_s": round(sum(used), 3),
            "idle_cpu_percent": round(100 * sum(used) / wall, 2), "per_process_cpu_s": used}


def summaries(log: Path) -> int:
    """Summary lines the --every process has logged (each comes after its poll's commit and compaction)."""
    return log.read_text(errors="replace").count("INFO warta: warta run ")


def manifests(out: Path) -> list[dict]:
    runs = out / "_state" / "runs"
    if not runs.exists():
        return []
    found = []
    for f in sorted(runs.glob("*.json")):
        try:
            found.append(json.loads(f.read_text()))
        except ValueError:  # being written
            pass
    return found


def start_every(feeds: Path, out: Path, interval: str, extra: list[str], cfg: Path | None = None):
    args = [sys.executable, str(ROOT / "run_local.py"), "--feeds", str(feeds), "--output", str(out),
            "--every", interval, *(["--config", str(cfg)] if cfg else []), *extra]
    log = open(out.parent / "every.log", "w")
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log, text=True), log


def speed(args) -> dict:
    from bench.bench_pipeline import physical_limit
    from bench.newsworld import build_world
    later = [args.later, args.later]
    total = args.articles + sum(later)
    outlets, _ = build_world(total, args.outlets)
    per_outlet = lambda n: [n // args.outlets + (1 if i < n % args.outlets else 0) for i in range(args.outlets)]  # noqa: E731
    published = [0] * args.outlets
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        servers = []
        for o, (routes, _items) in enumerate(outlets):
            server = LoopbackServer(host=f"127.0.0.{o + 2}").__enter__()
            server.routes.update(routes)
            servers.append(server)

        def publish(n: int) -> list[str]:
            """Publish ``n`` more articles over the outlets; their URLs."""
            urls = []
            for o, extra in enumerate(per_outlet(n)):
                server, items = servers[o], outlets[o][1]
                new = items[published[o]:published[o] + extra]
                published[o] += extra
                urls += [server.base + it["link"] for it in new]
                shown = [{**it, "link": server.base + it["link"]} for it in items[:published[o]]]
                server.routes["/feed.xml"] = Route(rss_feed(title=f"Outlet {o}", link=server.base + "/", items=shown),
                                                   "application/rss+xml")
            return urls

        batches = [publish(args.articles)]
        feeds = Path(tmp, "feeds.yaml")
        feeds.write_text("feeds:\n" + "".join(f"  - name: outlet{o:03d}\n    url: {s.url('/feed.xml')}\n"
                                              f"    language: id\n" for o, s in enumerate(servers)))
        out = Path(tmp, "lake")
        out.mkdir()
        # the budget of a poll is the interval (at least 1 m) unless set: the first poll must not stop early
        extra = ["--max-run-time", "30m", *(["--workers", str(args.workers)] if args.workers else [])]
        started = time.monotonic()
        proc, log = start_every(feeds, out, args.interval, extra)
        stack.callback(lambda: proc.poll() is None and (proc.send_signal(signal.SIGTERM), proc.wait(300)))
        ps = psutil.Process(proc.pid)
        peak, idle = [0.0], []

        def sample():
            while proc.poll() is None:
                peak[0] = max(peak[0], tree_rss_mb(ps))
                time.sleep(0.5)

        threading.Thread(target=sample, daemon=True).start()
        first_commit_s = None
        cpu_at = [0.0]  # CPU seconds of the whole tree when each poll's summary line was seen
        # what to publish after each poll (published as soon as the poll's summary line is out, before the
        # next poll starts even when this one overran the interval); idle CPU is sampled after polls 2-4, in
        # windows with no poll in flight (no _state/LOCK, no new summary line)
        plan = [0, later[0], later[1], 0, None]
        lock = out / "_state" / "LOCK"
        for poll, add in enumerate(plan, 1):
            while len(manifests(out)) < poll or summaries(Path(log.name)) < poll:
                if proc.poll() is not None:
                    raise RuntimeError(f"--every exited with {proc.returncode}: see {log.name}")
                time.sleep(0.1)
            cpu_at.append(tree_cpu_s(ps))
            if poll == 1:
                first_commit_s = round(time.monotonic() - started, 2)
            if add is not None:
                batches.append(publish(add) if add else [])
            if 1 < poll < len(plan):
                time.sleep(0.5)
                sample = {"after_poll": poll, **idle_cpu(ps)}
                if not lock.exists() and summaries(Path(log.name)) == poll and poll == len(manifests(out)):
                    idle.append(sample)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=300)
        log.close()
        runs = manifests(out)
        # the physical limit of the same pages, measured here with the --every process gone
        from warta.config.settings import HttpSettings
        from warta.net.http import HttpClient
        client = HttpClient(HttpSettings(host_delay=0.0))
        polls = []
        noop = None
        for i, run in enumerate(runs[:len(plan)]):
            s = run["summary"]
            cpu = cpu_at[i + 1] - cpu_at[i]  # poll 1: also the start of the process and its pool
            row = {"poll": i + 1, "seconds": s["seconds"], "model_load_s": s.get("model_load_s"),
                   "articles": s["articles_written"], "pages_fetched": s["pages_fetched"],
                   "tree_cpu_s": round(cpu, 2), "machine_share": round(cpu / (s["seconds"] * CORES), 3)}
            urls = batches[i] if i < len(batches) else []
            if urls:
                pages = [{"url": u, "final_url": u, "html": client.get(u).body, "status": 200} for u in urls]
                limit = physical_limit(pages, True, lean=False)
                row.update(limit_wall_s=limit["limit_wall_s"], limit_cpu_s=limit["limit_cpu_s"],
                           ratio_to_limit=round(limit["limit_wall_s"] / s["seconds"], 3),
                           limit_cpu_over_tree_cpu=round(limit["limit_cpu_s"] / cpu, 3))
                if noop is not None and s["seconds"] > noop:
                    row["ratio_on_work"] = round(limit["limit_wall_s"] / (s["seconds"] - noop), 3)
            elif i > 0:
                noop = s["seconds"] if noop is None else noop
            polls.append(row)
        for s in servers:
            s.__exit__(None, None, None)
    return {"articles": args.articles, "outlets": args.outlets, "later": args.later, "interval": args.interval,
            "workers": args.workers or "default", "first_commit_wall_s": first_commit_s,
            "peak_rss_mb": peak[0], "exit_code": proc.returncode, "polls": polls, "idle": idle}


def soak(args) -> dict:
    from bench.newsworld import indonesian_sentences
    sents = indonesian_sentences()
    items: list[dict] = []
    with LoopbackServer() as server, tempfile.TemporaryDirectory() as tmp:
        def add_article(n: int) -> None:
            paras = [" ".join(sents[(n * 17 + k * 5 + j) % len(sents)] for j in range(3)) for k in range(5)]
            server.routes[f"/a{n}.html"] = Route(wordpress_page(title=f"Berita {n}", paragraphs=paras,
                                                                url=f"/a{n}.html", published=None, author=None))
            items.insert(0, {"title": f"Berita {n}", "link": server.url(f"/a{n}.html")})
            server.routes["/feed.xml"] = Route(rss_feed(title="soak", link=server.base, items=items),
                                               "application/rss+xml")

        add_article(0)
        feeds = Path(tmp, "feeds.yaml")
        feeds.write_text(f"feeds:\n  - name: soak\n    url: {server.url('/feed.xml')}\n    language: id\n")
        cfg = Path(tmp, "settings.yaml")
        cfg.write_text("http:\n  host_delay: 0\n")
        out = Path(tmp, "lake")
        out.mkdir()
        extra = ["--workers", str(args.workers)] if args.workers else []
        proc, log = start_every(feeds, out, args.interval, extra, cfg)
        ps = psutil.Process(proc.pid)
        points = []
        done = 0
        while done < args.polls and proc.poll() is None:
            n_runs = len(manifests(out))
            if n_runs > done:
                done = n_runs
                points.append({"poll": done, "rss_mb": tree_rss_mb(ps), "processes": len(tree(ps)),
                               "threads": sum(p.num_threads() for p in tree(ps))})
                if done % 10 == 0:
                    add_article(len(items))
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=300)
        log.close()
        loads = [r["summary"].get("model_load_s") for r in manifests(out)]
    rss = [p["rss_mb"] for p in points]
    base = rss[1] if len(rss) > 1 else rss[0]  # after poll 2: every worker has loaded its models
    return {"polls": len(points), "interval": args.interval, "workers": args.workers or "default",
            "articles_added": len(items), "processes": points[-1]["processes"], "rss_first_mb": rss[0],
            "rss_after_2_mb": base, "rss_last_mb": rss[-1], "rss_max_mb": max(rss),
            "rss_max_after_2_over_after_2": round(max(rss[1:] or rss) / base, 3),
            "threads_first": points[0]["threads"], "threads_last": points[-1]["threads"],
            "model_load_s_per_poll": loads, "exit_code": proc.returncode, "points": points}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["speed", "soak"])
    ap.add_argument("--articles", type=int, default=1200)
    ap.add_argument("--outlets", type=int, default=100)
    ap.add_argument("--later", type=int, default=200)
    ap.add_argument("--polls", type=int, default=20)
    ap.add_argument("--interval", default=None, help="--every (default: 30s for speed, 1s for soak)")
    ap.add_argument("--workers", type=int, default=None, help="--workers (default: warta's default)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    args.interval = args.interval or ("30s" if args.part == "speed" else "1s")
    parse_duration(args.interval)
    results = []
    for _ in range(args.repeat):
        load0 = os.getloadavg()[0]
        result = (speed if args.part == "speed" else soak)(args)
        result["load_avg_1m"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
        results.append(result)
        print(json.dumps({k: v for k, v in result.items() if k != "points"}), flush=True)
    if args.part == "speed":
        summary = {f"first_poll_{key}": statistics.median(r["polls"][0][key] for r in results)
                   for key in ("ratio_to_limit", "seconds", "limit_wall_s", "model_load_s")}
        summary["later_ratio_on_work"] = statistics.median(
            p["ratio_on_work"] for r in results for p in r["polls"] if "ratio_on_work" in p)
        summary["later_model_load_s_max"] = max(p["model_load_s"] for r in results for p in r["polls"][1:])
        summary["first_poll_machine_share"] = statistics.median(r["polls"][0]["machine_share"] for r in results)
        summary["first_poll_limit_cpu_over_tree_cpu"] = statistics.median(
            r["polls"][0]["limit_cpu_over_tree_cpu"] for r in results)
        summary["idle_cpu_percent_max"] = max(i["idle_cpu_percent"] for r in results for i in r["idle"])
        print(json.dumps({"median": summary}))
        results = {"median": summary, "runs": results}
    path = args.json or ROOT / "bench" / "results" / f"every_{args.part}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
