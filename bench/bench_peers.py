"""Peer extractors on the extraction benchmark, run in their own virtualenv (they conflict with ours).

    python3 -m venv /tmp/peers && /tmp/peers/bin/pip install newspaper4k news-please
    /tmp/peers/bin/python bench/bench_peers.py            # -> bench/results/peers.json

Needs only the standard library plus the peers; scores with bench/metric.py (same metric as ours).
"""

import gzip
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))
from metric import corpus_scores  # noqa: E402

from bench.shared import require  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "extraction"


def newspaper4k(html, url):
    import newspaper
    art = newspaper.Article(url or "http://example.com/", fetch_images=False, request_timeout=1)
    art.download(input_html=html)
    art.parse()
    return art.text or ""


def news_please(html, url):
    from newsplease import NewsPlease
    return NewsPlease.from_html(html, url=url or None, fetch_images=False).maintext or ""


def main():
    truth = json.loads((require(DATA, "bench_peers") / "ground-truth.json").read_text())
    pages = [(gzip.decompress((DATA / "html" / f"{k}.html.gz").read_bytes()).decode("utf-8"), v.get("url") or "",
              v["articleBody"]) for k, v in sorted(truth.items())]
    results = []
    for name, fn in (("newspaper4k", newspaper4k), ("news-please", news_please)):
        try:
            fn(pages[0][0], pages[0][1])
        except ImportError:
            print(f"{name}: not installed, skipped")
            continue
        t0 = time.perf_counter()
        preds = []
        for html, url, _ in pages:
            try:
                preds.append(fn(html, url))
            except Exception:  # a peer failing on a page scores as empty
                preds.append("")
        wall = time.perf_counter() - t0
        s = corpus_scores([(p, t) for p, (_, _, t) in zip(preds, pages)])
        row = {"extractor": name, **{k: round(v, 4) for k, v in s.items()},
               "pages_per_s": round(len(pages) / wall, 1), "s_per_page": round(wall / len(pages), 4)}
        results.append(row)
        print(json.dumps(row))
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "peers.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
