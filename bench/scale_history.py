"""Issue #23 (a) History: a 1,200-article run on a lake with a long history vs on an empty lake.

    python bench/scale_history.py [--keys 10000000] [--window 1000000] [--articles 1200] [--outlets 100]
                                  [--repeat 2] [--json bench/results/scale_history.json]

The history is written through warta's own state code: index parts (``lake.state.index_table``) with
``--keys`` URL/exact keys in all, ``--window`` of them articles inside the dedup window with a random
128-perm MinHash signature, folded by ``lake.state.compact_index`` into range-split keys, band index and
window files (their LSH band keys computed by the fold). Then ``run_local.py`` (the command a new user
types; DirectRunner) runs over the benchmark news world (``bench/newsworld.py``, needs ../shared/data)
into a copy of that lake and into an empty lake, alternately, ``--repeat`` times each. Reported: wall
seconds and peak RSS of the run's process tree (it holds the workers), the ratios, the history's size on
disk and fold time, and what the run read of the folded index (row groups its keys needed, replayed).
Goal (issue #23): ratio <= 1.25 and peak RSS + <= 300 MB.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_pipeline import timed_run  # noqa: E402
from bench.newsworld import feeds_yaml, serve_world  # noqa: E402
from warta.lake import state  # noqa: E402
from warta.lake.store import Store  # noqa: E402

CHUNK = 250_000  # rows per synthetic index part


def hex_ids(rng: np.random.Generator, n: int) -> pa.Array:
    chars = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    data = chars[rng.integers(0, 16, 24 * n)].tobytes()
    return pa.StringArray.from_buffers(n, pa.py_buffer(np.arange(0, 24 * (n + 1), 24, dtype=np.int32)),
                                       pa.py_buffer(data))


def part(rng, n: int, seen: np.ndarray, sig: bool, extra_keys: int) -> pa.Table:
    keys = rng.integers(0, 2**64 - 1, size=(n, 1 + extra_keys), dtype=np.uint64)
    exact = pa.ListArray.from_arrays(pa.array(np.arange(0, n * extra_keys + 1, extra_keys, dtype=np.int32)),
                                     pa.array(keys[:, 1:].ravel(), pa.uint64()))
    sigs = rng.integers(0, 2**32 - 1, size=(n, 128), dtype=np.uint32)
    minhash = (pa.FixedSizeBinaryArray.from_buffers(pa.binary(512), n, [None, pa.py_buffer(sigs.tobytes())])
               .cast(pa.binary()) if sig else pa.nulls(n, pa.binary()))
    return pa.table({"article_id": hex_ids(rng, n), "url_key": pa.array(keys[:, 0], pa.uint64()), "exact_keys": exact,
                     "duplicate_of": pa.nulls(n, pa.string()), "kind": pa.array(["article"] * n),
                     "seen_at": pa.array(seen, pa.timestamp("us", tz="UTC")), "minhash": minhash,
                     "bands": pa.nulls(n, pa.list_(pa.uint64()))}, schema=state.INDEX_SCHEMA)


def build_history(lake: Path, keys: int, window: int, seed: int = 0) -> dict:
    """Index parts with ``keys`` keys (window rows: url + content hash; older rows: url, final URL,
    content hash) folded once; returns sizes and the fold's time and peak RSS growth."""
    rng = np.random.default_rng(seed)
    store = Store(str(lake))
    now = datetime.now(timezone.utc)
    old_rows = max(0, (keys - 2 * window) // 3)
    n = 0
    for start in range(0, old_rows, CHUNK):
        m = min(CHUNK, old_rows - start)
        seen = np.full(m, np.datetime64((now - timedelta(days=60)).replace(tzinfo=None), "us"))
        store.write_table(f"{state.INDEX_DIR}/part-h{n:05d}.parquet", part(rng, m, seen, False, 2))
        n += 1
    for start in range(0, window, CHUNK):
        m = min(CHUNK, window - start)
        ago = rng.uniform(0.1, 6.5, m) * 86400e6  # inside the 7-day window
        seen = (np.datetime64(now.replace(tzinfo=None), "us") - ago.astype("timedelta64[us]"))
        store.write_table(f"{state.INDEX_DIR}/part-w{n:05d}.parquet", part(rng, m, np.sort(seen), True, 1))
        n += 1
    proc = psutil.Process()
    rss0, t0 = proc.memory_info().rss, time.perf_counter()
    state.compact_index(store, "history", window_days=7, keep_parts=0)
    fold_s = time.perf_counter() - t0
    doc = store.read_json(f"{state.INDEX_DIR}/fold-history/FOLD.json")
    sizes = {name: round(sum(p.stat().st_size for p in (lake / state.INDEX_DIR / "fold-history" / name).glob("*"))
                         / 2**20, 1) for name in state.SETS}
    return {"keys": doc["rows"]["keys"], "window_rows": doc["rows"]["window"], "band_rows": doc["rows"]["bands"],
            "files": {k: 2 ** v for k, v in doc["bits"].items()}, "mb_on_disk": sizes, "fold_s": round(fold_s, 1),
            "fold_rss_growth_mb": round((proc.memory_info().rss - rss0) / 2**20)}


def bytes_read(lake: Path, run_part: str) -> dict:
    """Replay the run's lookups (its exact keys, band keys and id keys; its entry URL keys as polling asks)
    against the folded index: row groups touched and their bytes on disk."""
    from warta.transforms.dedup import id_key
    store = Store(str(lake))
    t = store.read_table(run_part)
    index = state.open_index(store, window_days=7)
    exact = [k for ks in t.column("exact_keys").to_pylist() for k in ks or ()]
    bands = [b for bs in t.column("bands").to_pylist() for b in bs or ()] + [id_key(a) for a in
                                                                            t.column("article_id").to_pylist()]
    index.holders(exact)
    hits = index.bands.lookup(bands, ["aid_key"])
    index.window_rows(hits.column("aid_key").to_pylist())
    for k in t.column("url_key").to_pylist():
        _ = k in index.url_keys
    out = {}
    import pyarrow.parquet as pq
    for name, files in (("keys", index.keys.files), ("bands", index.bands), ("window", index.window)):
        total = 0
        for i, g in files.touched:
            with store.fs.open(store.path(files.files[i]), "rb") as fh:
                total += pq.ParquetFile(fh).metadata.row_group(g).total_byte_size
        out[name] = {"row_groups": len(files.touched), "mb": round(total / 2**20, 1)}
    out["band_hits"] = hits.num_rows
    return out


def run_once(feeds_file: Path, lake: Path, host_delay: float) -> tuple[float, float, str]:
    args = [sys.executable, str(ROOT / "run_local.py"), "--feeds", str(feeds_file), "--output", str(lake)]
    if host_delay != 1.0:
        cfg = lake.parent / f"{lake.name}.settings.yaml"
        cfg.write_text(json.dumps({"http": {"host_delay": host_delay}}))
        args += ["--config", str(cfg)]
    wall, peak, stderr = timed_run(args)
    return wall, peak, [line for line in stderr.splitlines() if "warta run" in line][-1].split("INFO warta: ")[-1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=10_000_000)
    ap.add_argument("--window", type=int, default=1_000_000)
    ap.add_argument("--articles", type=int, default=1200)
    ap.add_argument("--outlets", type=int, default=100)
    ap.add_argument("--host-delay", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "scale_history.json")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        history = build_history(tmp / "history", args.keys, args.window)
        print(json.dumps({"history": history}), flush=True)
        runs = {"empty": [], "history": []}
        with serve_world(args.articles, args.outlets) as (feeds, _):
            feeds_file = feeds_yaml(feeds, tmp / "feeds.yaml")
            for r in range(args.repeat):
                for kind in ("empty", "history"):
                    lake = tmp / f"{kind}{r}"
                    if kind == "history":
                        shutil.copytree(tmp / "history", lake)
                    wall, peak, summary = run_once(feeds_file, lake, args.host_delay)
                    runs[kind].append({"wall_s": round(wall, 2), "peak_rss_mb": round(peak, 1), "summary": summary})
                    print(kind, json.dumps(runs[kind][-1]), flush=True)
                    if kind == "history" and r == 0:
                        part = [p for p in Store(str(lake)).list(state.INDEX_DIR) if "/part-" in p]
                        history["run_read"] = bytes_read(lake, part[0]) if part else None
                    shutil.rmtree(lake)
    med = {k: {"wall_s": statistics.median(x["wall_s"] for x in v),
               "peak_rss_mb": statistics.median(x["peak_rss_mb"] for x in v)} for k, v in runs.items()}
    result = {"conditions": {"keys": args.keys, "window": args.window, "articles": args.articles,
                             "outlets": args.outlets, "host_delay": args.host_delay, "repeat": args.repeat,
                             "runner": "DirectRunner (run_local.py defaults)", "cpus": psutil.cpu_count()},
              "history": history, "runs": runs, "median": med,
              "wall_ratio": round(med["history"]["wall_s"] / med["empty"]["wall_s"], 3),
              "rss_rise_mb": round(med["history"]["peak_rss_mb"] - med["empty"]["peak_rss_mb"], 1)}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(f"| lake | wall s (median of {args.repeat}) | peak RSS MB |\n|---|---|---|")
    for k in ("empty", "history"):
        print(f"| {k} | {med[k]['wall_s']} | {med[k]['peak_rss_mb']} |")
    print(f"wall ratio {result['wall_ratio']} (goal <= 1.25), RSS rise {result['rss_rise_mb']} MB (goal <= 300)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
