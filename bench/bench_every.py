"""Continuous mode soak: ``run_local.py --every`` over many polls; RSS of the process tree per poll.

    python bench/bench_every.py [--polls 100] [--interval 1s]

The world grows by one article every 10 polls, so most polls are conditional-GET no-ops and some
carry new work (fetch, extract, NER). Reports the RSS of the process tree after each poll.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.newsworld import indonesian_sentences  # noqa: E402
from tests.pages import rss_feed, wordpress_page  # noqa: E402
from warta.pipeline.loopback import LoopbackServer, Route  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--polls", type=int, default=100)
    ap.add_argument("--interval", default="1s")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "every.json")
    args = ap.parse_args(argv)
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
        proc = subprocess.Popen([sys.executable, str(ROOT / "run_local.py"), "--feeds", str(feeds), "--output",
                                 str(out), "--config", str(cfg), "--every", args.interval],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        ps = psutil.Process(proc.pid)
        points = []
        runs_dir = out / "_state" / "runs"
        done = 0
        while done < args.polls and proc.poll() is None:
            n_runs = len(list(runs_dir.glob("*.json"))) if runs_dir.exists() else 0
            if n_runs > done:
                done = n_runs
                rss = sum(p.memory_info().rss for p in [ps, *ps.children(recursive=True)])
                points.append({"poll": done, "rss_mb": round(rss / 2**20, 1)})
                if done % 10 == 0:
                    add_article(len(items))
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=300)
    first, last = points[0]["rss_mb"], points[-1]["rss_mb"]
    result = {"polls": len(points), "interval": args.interval, "articles_added": len(items),
              "rss_first_mb": first, "rss_after_10_mb": points[min(9, len(points) - 1)]["rss_mb"],
              "rss_last_mb": last, "rss_max_mb": max(p["rss_mb"] for p in points), "exit_code": proc.returncode,
              "points": points}
    print(json.dumps({k: v for k, v in result.items() if k != "points"}))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
