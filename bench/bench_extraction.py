"""Extraction quality and speed on ../shared/data/extraction (121 pages with ground truth).

    python bench/bench_extraction.py [--data ../shared/data] [--json bench/results/extraction.json]

Compares our extraction stage (trafilatura with our settings + Indonesian boilerplate clean-up)
with trafilatura's defaults and ``favor_precision`` (and newspaper4k when it is installed), all on
the same pages in the same process. Speed is pages/s on one core (this process is single-threaded).
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.shared import require  # noqa: E402

import trafilatura  # noqa: E402

from bench.metric import corpus_scores  # noqa: E402
from transforms.extract import extract_body  # noqa: E402


def load_pages(data: Path) -> list[tuple[str, str, str]]:
    truth = json.loads((data / "extraction" / "ground-truth.json").read_text())
    pages = []
    for pid in sorted(truth):
        html = gzip.decompress((data / "extraction" / "html" / f"{pid}.html.gz").read_bytes()).decode("utf-8")
        pages.append((html, truth[pid].get("url") or "", truth[pid]["articleBody"]))
    return pages


def ours(html: str, url: str) -> str:
    return extract_body(html, url)


def traf_default(html: str, url: str) -> str:
    return trafilatura.extract(html, url=url) or ""


def traf_precision(html: str, url: str) -> str:
    return trafilatura.extract(html, url=url, favor_precision=True) or ""


def newspaper(html: str, url: str) -> str:
    import newspaper  # newspaper4k
    art = newspaper.Article(url or "http://example.com/")
    art.download(input_html=html)
    art.parse()
    return art.text or ""


def run(name: str, fn, pages) -> dict:
    t0, cpu0 = time.perf_counter(), time.process_time()
    preds = [fn(h, u) for h, u, _ in pages]
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    scores = corpus_scores([(p, t) for p, (_, _, t) in zip(preds, pages)])
    return {"extractor": name, **{k: round(v, 4) for k, v in scores.items()},
            "pages_per_s": round(len(pages) / wall, 1), "pages_per_cpu_s": round(len(pages) / cpu, 1),
            "cpu_s_per_page": round(cpu / len(pages), 4)}


def memory_profile(pages, total: int) -> list[dict]:
    """RSS every 1,000 pages while the extraction stage (extract_article) runs over ``total`` pages."""
    import psutil
    from datetime import datetime, timezone

    from transforms.extract import _ExtractFn
    fn = _ExtractFn(200, None)
    proc = psutil.Process()
    points = []
    fetched = datetime.now(timezone.utc)
    for i in range(total):
        html, url, _ = pages[i % len(pages)]
        list(fn.process({"url": url or f"http://x/{i}", "feed_url": "f", "source": "s", "html": html,
                         "fetched_at": fetched}))
        if (i + 1) % 1000 == 0:
            points.append({"pages": i + 1, "rss_mb": round(proc.memory_info().rss / 2**20, 1)})
    return points


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "extraction.json")
    ap.add_argument("--memory-pages", type=int, default=0, help="also track RSS over this many pages (e.g. 10000)")
    args = ap.parse_args(argv)
    require(args.data / "extraction", "bench_extraction")
    pages = load_pages(args.data)
    for h, u, _ in pages[:5]:  # warm-up: imports, lxml, caches
        ours(h, u)
    candidates = [("warta (ours)", ours), ("trafilatura defaults", traf_default),
                  ("trafilatura favor_precision", traf_precision)]
    try:
        import newspaper  # noqa: F401
        candidates.append(("newspaper4k", newspaper))
    except ImportError:
        pass
    results = [run(n, f, pages) for n, f in candidates]
    print(f"{'extractor':30} {'P':>7} {'R':>7} {'F1':>7} {'pages/s':>8} {'pages/cpu-s':>11}")
    for r in results:
        print(f"{r['extractor']:30} {r['precision']:7.4f} {r['recall']:7.4f} {r['f1']:7.4f} {r['pages_per_s']:8.1f}"
              f" {r['pages_per_cpu_s']:11.1f}")
    memory = memory_profile(pages, args.memory_pages) if args.memory_pages else []
    for point in memory:
        print(f"after {point['pages']:6d} pages: RSS {point['rss_mb']} MB")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"pages": len(pages), "results": results, "memory": memory}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
