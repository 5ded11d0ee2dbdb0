"""Dedup cost per article and state size for 10k, 100k and 1M indexed articles.

    python bench/bench_dedup.py [--sizes 10000 100000 1000000] [--new 1000]

For each size: an index of that many articles (random 128-perm signatures, all inside the window) is
written as the pipeline writes it; we measure its size on disk, the time to load it and build the LSH
(once per worker per run), and the cost per new article of a decision (exact keys + LSH query + verify),
with 10 % of the new articles being syndicated near-copies of indexed ones.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from warta.config.settings import DedupSettings  # noqa: E402
from warta.lake.state import index_table, load_index  # noqa: E402
from warta.lake.store import Store  # noqa: E402
from warta.transforms.dedup import NearDuplicateIndex  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--new", type=int, default=1000)
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "dedup.json")
    args = ap.parse_args(argv)
    settings = DedupSettings()
    rng = np.random.default_rng(0)
    now = datetime.now(timezone.utc)
    results = []
    for n in args.sizes:
        sigs = rng.integers(0, 2**32 - 1, size=(n, settings.num_perm), dtype=np.uint32)
        with tempfile.TemporaryDirectory() as tmp:
            store = Store(tmp)
            chunk = 100_000
            for part, start in enumerate(range(0, n, chunk)):
                rows = [{"article_id": f"a{i:010d}", "url_key": int(i), "exact_keys": [int(i) + 2**40, int(i) + 2**41],
                         "duplicate_of": None, "kind": "article", "seen_at": now, "minhash": sigs[i].tobytes()}
                        for i in range(start, min(n, start + chunk))]
                store.write_table(f"_state/index/part-{part:04d}.parquet", index_table(rows))
            size = sum(p.stat().st_size for p in Path(tmp, "_state/index").glob("*.parquet"))
            rss0 = psutil.Process().memory_info().rss
            t0 = time.perf_counter()
            snap = load_index(store, window_days=settings.window_days)
            t_load = time.perf_counter() - t0
            t0 = time.perf_counter()
            index = NearDuplicateIndex(snap, settings)
            t_build = time.perf_counter() - t0
            rss = psutil.Process().memory_info().rss - rss0
            new_sigs = rng.integers(0, 2**32 - 1, size=(args.new, settings.num_perm), dtype=np.uint32)
            copies = rng.choice(n, size=args.new // 10, replace=False)
            for j, src in enumerate(copies):  # near-copies: 90 % of the signature shared
                new_sigs[j] = sigs[src]
                new_sigs[j, : settings.num_perm // 10] = rng.integers(0, 2**32 - 1, settings.num_perm // 10)
            t0 = time.perf_counter()
            near = 0
            for j in range(args.new):
                art = {"article_id": f"n{j}", "url": f"https://new.example/{j}", "canonical_url": None,
                       "content_hash": f"h{j}"}
                kind, _ = index.decide(art, new_sigs[j], [])
                near += kind == "near"
            per_article = (time.perf_counter() - t0) / args.new
        row = {"indexed": n, "state_mb": round(size / 2**20, 1), "bytes_per_article": round(size / n, 1),
               "load_s": round(t_load, 2), "build_lsh_s": round(t_build, 2), "memory_mb": round(rss / 2**20, 1),
               "decide_ms_per_article": round(per_article * 1000, 3), "near_found": near,
               "near_planted": len(copies)}
        results.append(row)
        print(json.dumps(row), flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"num_perm": settings.num_perm, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
