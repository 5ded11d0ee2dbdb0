"""Extraction quality and speed on ../shared/data/extraction (121 pages with ground truth) and on the
real publisher pages of ../shared/data/extraction-real (143 pages, body + title + date + authors).

    python bench/bench_extraction.py [--data ../shared/data] [--json bench/results/extraction.json]
                                     [--real-json bench/results/extraction_real.json] [--only real]

Compares our extraction stage (trafilatura with our settings + boilerplate clean-up) with trafilatura's
defaults and ``favor_precision`` (and newspaper4k when it is installed), all on the same pages in the same
process. Speed is pages/s on one core (this process is single-threaded). On the real pages the whole
stage runs (``extract_article``, no feed metadata, no per-site profile); the body is scored with the same
metric, the title by exact match, the published time within an hour, the author list by exact match, and
every score is given for the two halves (alternate publishers) as well, so a rule tuned on one half
shows up as a gap.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import trafilatura  # noqa: E402

from bench.metric import corpus_scores, page_counts  # noqa: E402
from bench.shared import require  # noqa: E402
from warta.transforms.extract import extract_article, extract_body  # noqa: E402


def load_pages(data: Path) -> list[tuple[str, str, str]]:
    truth = json.loads((data / "extraction" / "ground-truth.json").read_text())
    pages = []
    for pid in sorted(truth):
        html = gzip.decompress((data / "extraction" / "html" / f"{pid}.html.gz").read_bytes()).decode("utf-8")
        pages.append((html, truth[pid].get("url") or "", truth[pid]["articleBody"]))
    return pages


def load_real_pages(data: Path) -> list[dict]:
    """The real publisher pages: each a dict of key, html and the gold fields."""
    folder = data / "extraction-real"
    gold = json.loads((folder / "gold.json").read_text())
    return [{"key": key, "html": gzip.decompress((folder / "html" / f"{key}.html.gz").read_bytes()).decode("utf-8"),
             **gold[key]} for key in sorted(gold)]


def _same_text(a: str | None, b: str | None) -> bool:
    return " ".join((a or "").split()) == " ".join((b or "").split())


def _within_hour(found: datetime | None, gold: str | None) -> bool:
    if not gold:
        return found is None
    want = datetime.fromisoformat(gold)
    want = want if want.tzinfo else want.replace(tzinfo=timezone.utc)
    return found is not None and abs((found - want).total_seconds()) <= 3600


def ours_real(page: dict) -> dict:
    fetched = datetime.fromisoformat(page["crawl_date"]).replace(tzinfo=timezone.utc)
    try:
        row = extract_article({"url": page["url"], "feed_url": "", "source": page["publisher"],
                               "html": page["html"], "fetched_at": fetched}, min_chars=0)
    except ValueError:
        return {"text": "", "title": None, "published_at": None, "authors": []}
    return row


def traf_real(page: dict) -> dict:
    doc = trafilatura.bare_extraction(page["html"], url=page["url"], with_metadata=True)
    doc = doc.as_dict() if doc is not None else {}
    authors = [a.strip() for a in (doc.get("author") or "").split(";") if a.strip()]
    return {"text": doc.get("text") or "", "title": doc.get("title"), "authors": authors,
            "published_at": None}


def score_real(rows: list[dict], pages: list[dict]) -> dict:
    body = corpus_scores([(r["text"], p["articleBody"]) for r, p in zip(rows, pages)])
    n = len(pages)
    return {**{k: round(v, 4) for k, v in body.items() if k != "pages"}, "pages": n,
            "empty_where_gold_has_text": sum(1 for r, p in zip(rows, pages) if p["articleBody"] and not r["text"]),
            "title_exact": round(sum(_same_text(r["title"], p["title"]) for r, p in zip(rows, pages)) / n, 4),
            "published_within_1h": round(sum(_within_hour(r["published_at"], p["publishing_date"])
                                             for r, p in zip(rows, pages)) / n, 4),
            "authors_exact": round(sum([" ".join(a.split()) for a in r["authors"]] == (p["authors"] or [])
                                       for r, p in zip(rows, pages)) / n, 4)}


def page_f1(pred: str, truth: str) -> float:
    tp, fp, fn = page_counts(pred, truth)
    return tp / (tp + (fp + fn) / 2) if tp else 0.0


def run_real(name: str, fn, pages: list[dict]) -> dict:
    t0, cpu0 = time.perf_counter(), time.process_time()
    rows = [fn(p) for p in pages]
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    publishers = sorted({p["publisher"] for p in pages})
    halves = {}
    for half in (0, 1):
        keep = {pub for i, pub in enumerate(publishers) if i % 2 == half}
        idx = [i for i, p in enumerate(pages) if p["publisher"] in keep]
        halves[f"half_{'ab'[half]}"] = score_real([rows[i] for i in idx], [pages[i] for i in idx])
    per_page = {p["key"]: round(page_f1(r["text"], p["articleBody"]), 3) for r, p in zip(rows, pages)}
    return {"extractor": name, **score_real(rows, pages), "pages_per_s": round(len(pages) / wall, 1),
            "pages_per_cpu_s": round(len(pages) / cpu, 1), **halves, "per_page_f1": per_page}


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
    from datetime import datetime, timezone

    import psutil

    from warta.transforms.extract import _ExtractFn
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
    ap.add_argument("--real-json", type=Path, default=ROOT / "bench" / "results" / "extraction_real.json")
    ap.add_argument("--memory-pages", type=int, default=0, help="also track RSS over this many pages (e.g. 10000)")
    ap.add_argument("--only", choices=["benchmark", "real"], help="run one of the two page sets")
    args = ap.parse_args(argv)
    if args.only != "benchmark":
        real = load_real_pages(require(args.data / "extraction-real", "bench_extraction").parent)
        for page in real[:3]:  # warm-up: imports, language model, caches
            ours_real(page)
        results = [run_real("warta (ours)", ours_real, real), run_real("trafilatura defaults", traf_real, real)]
        print(f"{'real pages':22} {'P':>7} {'R':>7} {'F1':>7} {'F1 a/b':>13} {'empty':>5} {'title':>6} "
              f"{'date1h':>6} {'authors':>7} {'pages/s':>8} {'pages/cpu-s':>11}")
        for r in results:
            print(f"{r['extractor']:22} {r['precision']:7.4f} {r['recall']:7.4f} {r['f1']:7.4f} "
                  f"{r['half_a']['f1']:6.4f}/{r['half_b']['f1']:6.4f} {r['empty_where_gold_has_text']:5d} "
                  f"{r['title_exact']:6.3f} {r['published_within_1h']:6.3f} {r['authors_exact']:7.3f} "
                  f"{r['pages_per_s']:8.1f} {r['pages_per_cpu_s']:11.1f}")
        args.real_json.parent.mkdir(parents=True, exist_ok=True)
        args.real_json.write_text(json.dumps({"pages": len(real), "results": results}, indent=1))
        if args.only == "real":
            return 0
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
