"""The lake over a month: files before/after compaction, DuckDB query times, compaction speed, state load.

    python bench/bench_lake.py [--days 30] [--outlets 50] [--polls-per-day 8] [--per-outlet-day 40]
                               [--keys 1000000 10000000]

1. A simulated month of polls for 50 outlets, through the real write and commit path (rows staged as the
   write stage stages them, ``lake.commit.commit``, index parts and index compaction; no network, no NER).
   Scaled: ``--polls-per-day`` polls (default 8, every 3 h) instead of 96 (every 15 min), with the same
   articles per outlet per day; each poll writes one file per touched partition, so the file count of a
   real 15-minute schedule is about 12x the one measured (reported as ``files_at_15min``).
2. Three DuckDB queries (count by source and day; top entities of a week; one article by URL, also with
   its source) over the raw lake, the compacted lake (``**`` glob with ``union_by_name``, and a fixed-depth
   glob without it), and the same rows in one file (median of 15 warm runs; 1 on the raw lake). The same rows
   committed with the ``date`` and the ``month`` layouts and compacted; the ``month`` layout has no ``date``
   column, so its queries (and the single file's, for its ratios) use the article's day
   ``coalesce(published_at, fetched_at)::date`` (UTC) instead.
3. ``warta compact``'s work (``lake.compact.compact``): seconds, and seconds per GB of input.
4. Per-run state load at 1M and 10M keys (folded keys file): seconds and RSS growth in a fresh process,
   and the time of 2,000 lookups (half known) as polling and dedup make them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import duckdb  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.dataset as ds  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from warta.lake.commit import commit  # noqa: E402
from warta.lake.compact import Policy, compact  # noqa: E402
from warta.lake.metrics import DAY  # noqa: E402
from warta.lake.state import index_table, key64  # noqa: E402
from warta.lake.store import Store  # noqa: E402
from warta.transforms.write import ARTICLE_SCHEMA, ERROR_SCHEMA, partition_of, rows_table, staging_dir  # noqa: E402

START = datetime(2024, 10, 1, tzinfo=timezone.utc)
WORDS = ("pemerintah presiden rakyat ekonomi harga pasar kota desa sekolah banjir jalan polisi hakim partai "
         "menteri anggaran rumah sakit warga daerah").split()
NAMES = [f"{a} {b}" for a in ("Joko", "Sri", "Budi", "Ani", "Dewi", "Agus", "Rina", "Hadi", "Tono", "Lina")
         for b in ("Widodo", "Mulyani", "Santoso", "Lestari", "Saputra", "Wijaya", "Hidayat", "Kusuma")]
PLACES = ["Jakarta", "Surabaya", "Bandung", "Medan", "Makassar", "Semarang", "Palembang", "Denpasar"]


def synthetic_article(rnd: random.Random, n: int, source: str, when: datetime) -> dict:
    published = when - timedelta(minutes=rnd.randint(0, 600))  # some land in the previous day
    text = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(250, 600)))
    ents = [{"mention": rnd.choice(NAMES if i % 2 else PLACES), "label": "PER" if i % 2 else "LOC",
             "start_char": i * 10, "end_char": i * 10 + 8} for i in range(rnd.randint(2, 8))]
    url = f"https://{source}.example/berita/{n}"
    return {"article_id": f"{n:024x}", "url": url, "canonical_url": url, "source": source,
            "feed_url": f"https://{source}.example/rss", "title": f"Berita {n}", "authors": ["Redaksi"],
            "published_at": published, "fetched_at": when, "language": "id", "text": text,
            "content_hash": f"{n:016x}", "duplicate_of": None, "entities": ents, "image_url": None}


def poll(store: Store, run_id: str, arts: list[dict], errs: list[dict], layout: str = "date_source") -> dict:
    """Stage as transforms.write does (one file per partition), then the real commit."""
    for dataset, rows, schema, key in (("articles", arts, ARTICLE_SCHEMA, "article_id"),
                                       ("errors", errs, ERROR_SCHEMA, "url")):
        parts: dict[str, list] = {}
        for r in rows:
            parts.setdefault(partition_of(r, dataset, layout), []).append(r)
        for part, rs in parts.items():
            store.write_table(f"{staging_dir(run_id)}/{dataset}/{part}/part-{run_id}.parquet", rows_table(rs, schema, key))
    store.write_table(f"{staging_dir(run_id)}/index.parquet", index_table([
        {"article_id": a["article_id"], "url_key": key64(a["url"]), "exact_keys": [key64(a["content_hash"])],
         "duplicate_of": None, "kind": "article", "seen_at": a["fetched_at"], "minhash": None} for a in arts]))
    return commit(store, run_id, {}, 7)


def simulate(out: Path, days: int, outlets: int, polls: int, per_day: int) -> dict:
    store = Store(str(out))
    rnd = random.Random(0)
    sources = [f"outlet{i:02d}" for i in range(outlets)]
    n, t0 = 0, time.monotonic()
    for d in range(days):
        for p in range(polls):
            when = START + timedelta(days=d, minutes=p * 1440 // polls + 7)
            arts = []
            for s in sources:
                for _ in range(rnd.randint(0, 2 * per_day // polls)):
                    arts.append(synthetic_article(rnd, n, s, when))
                    n += 1
            errs = [{"url": f"https://{s}.example/x{n}", "feed_url": None, "source": s, "stage": "fetch",
                     "error": "HTTP 404", "status": 404, "at": when} for s in rnd.sample(sources, 2)]
            poll(store, f"{when:%Y%m%dT%H%M%S}-sim", arts, errs)
    return {"articles": n, "seconds": round(time.monotonic() - t0, 1)}


def relayout(table: pa.Table, out: Path, layout: str) -> dict:
    """Commit the simulated rows again, poll by poll (grouped by fetch time), with ``layout``; then compact."""
    store = Store(str(out))
    polls: dict[datetime, list[dict]] = {}
    for row in table.drop_columns(["date"]).to_pylist():
        polls.setdefault(row["fetched_at"], []).append(row)
    for when, arts in sorted(polls.items()):
        poll(store, f"{when:%Y%m%dT%H%M%S}-{layout}", arts, [], layout=layout)
    size = sum(p.stat().st_size for p in lake_files(out))
    t = time.perf_counter()
    stats = compact(store, Policy())
    secs = time.perf_counter() - t
    return {**stats, "seconds": round(secs, 2), "input_mb": round(size / 1e6, 1),
            "seconds_per_gb": round(secs / (size / 1e9), 1),
            "bytes_after": sum(p.stat().st_size for p in lake_files(out))}


def lake_files(out: Path) -> list[Path]:
    return [p for d in ("articles", "errors") for p in (out / d).rglob("*.parquet")]


QUERIES = {
    "count_by_source_day": "select source, {day} as day, count(*) from {src} group by all",
    "top_entities_week": "select e.mention, count(*) as c from (select unnest(entities) as e from {src} "
                         "where {day} between DATE '2024-10-07' and DATE '2024-10-13') group by 1 order by c desc limit 20",
    "article_by_url": "select title, published_at from {src} where url = '{url}'",
    "article_by_url_and_source": "select title, published_at from {src} where source = '{source}' and url = '{url}'",
}


def time_queries(src: str, url: str, repeat: int = 15, day: str = "date") -> dict:
    """``day``: the column or expression of the article's day (the ``date`` partition column by default)."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    out = {}
    for name, q in QUERIES.items():
        sql = q.format(src=src, url=url, source=url.split("//")[1].split(".")[0], day=day)
        t = time.perf_counter()
        first = con.sql(sql).fetchall()
        cold = time.perf_counter() - t
        runs = []
        for _ in range(repeat):
            t = time.perf_counter()
            con.sql(sql).fetchall()
            runs.append(time.perf_counter() - t)
        out[name] = {"first_s": round(cold, 4), "median_s": round(statistics.median(runs), 4), "rows": len(first)}
        if name.startswith("article_by_url"):
            assert len(first) == 1
    return out


def state_load(n: int, tmp: Path) -> dict:
    """Write a folded keys file of n keys (a third with holders), then load it in a fresh process."""
    from warta.lake.state import INDEX_DIR, write_keys

    store = Store(str(tmp / f"state{n}"))
    rng = np.random.default_rng(n)
    keys = np.unique(rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64))
    hexchars = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    data = hexchars[rng.integers(0, 16, 24 * len(keys))].tobytes()
    offsets = np.arange(0, 24 * (len(keys) + 1), 24, dtype=np.int32)
    validity = np.arange(len(keys)) % 3 == 0
    holders = pa.StringArray.from_buffers(len(keys), pa.py_buffer(offsets), pa.py_buffer(data))
    holders = pa.compute.if_else(pa.array(validity), holders, pa.nulls(len(keys), pa.string()))
    write_keys(store, f"{INDEX_DIR}/keys-bench.parquet", keys, holders)
    probe = np.concatenate([keys[:: max(1, len(keys) // 1000)][:1000], rng.integers(0, 2**63, 1000).astype(np.uint64)])
    np.save(tmp / f"probe{n}.npy", probe)
    code = f"""
import json, time, sys, numpy as np, psutil
sys.path.insert(0, {str(ROOT)!r})
from warta.lake.state import load_index
from warta.lake.store import Store
proc = psutil.Process(); store = Store({str(store.url)!r}); probe = [int(k) for k in np.load({str(tmp / f'probe{n}.npy')!r})]
rss0 = proc.memory_info().rss; t = time.perf_counter()
snap = load_index(store, window_days=7)
load = time.perf_counter() - t; rss1 = proc.memory_info().rss; t = time.perf_counter()
known = sum(k in snap.url_keys for k in probe); held = sum(k in snap.exact for k in probe)
look = time.perf_counter() - t
print(json.dumps({{"load_s": round(load, 3), "rss_growth_mb": round((rss1 - rss0) / 2**20, 1),
                  "rss_after_lookups_mb": round(proc.memory_info().rss / 2**20, 1),
                  "lookups": len(probe), "lookups_s": round(look, 3), "known": known, "exact_hits": held}}))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    size = sum(p.stat().st_size for p in (tmp / f"state{n}").rglob("*.parquet"))
    return {"keys": len(keys), "file_mb": round(size / 2**20, 1), **json.loads(res.stdout.strip().splitlines()[-1])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--outlets", type=int, default=50)
    ap.add_argument("--polls-per-day", type=int, default=8)
    ap.add_argument("--per-outlet-day", type=int, default=40, help="articles per outlet per day (on average)")
    ap.add_argument("--keys", type=int, nargs="*", default=[1_000_000, 10_000_000])
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "lake.json")
    ap.add_argument("--state-only", action="store_true", help="measure only the state load; update the JSON")
    args = ap.parse_args(argv)
    if args.state_only:
        result = json.loads(args.json.read_text())
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmpdir:
            result["state_load"] = [state_load(n, Path(tmpdir)) for n in args.keys]
        args.json.write_text(json.dumps(result, indent=1, default=str) + "\n")
        print(json.dumps(result["state_load"], indent=1))
        return 0
    result = {"conditions": f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start; local disk",
              "scale": vars(args) | {"json": None}}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmpdir:
        tmp = Path(tmpdir)
        out = tmp / "lake"
        result["simulation"] = simulate(out, args.days, args.outlets, args.polls_per_day, args.per_outlet_day)
        files = lake_files(out)
        size = sum(p.stat().st_size for p in files)
        result["files_before"] = len(files)
        result["files_at_15min"] = round(len(files) * 96 / args.polls_per_day)
        result["bytes_before"] = size
        glob = f"read_parquet('{out}/articles/**/*.parquet', hive_partitioning=true, union_by_name=true)"
        probe = duckdb.sql(f"select url from {glob} order by article_id limit 1 offset {result['simulation']['articles'] // 2}").fetchall()[0][0]
        result["queries_raw"] = time_queries(glob, probe, repeat=1)  # seconds each: one repeat
        single = tmp / "single.parquet"
        table = ds.dataset(str(out / "articles"), format="parquet", partitioning="hive").to_table()
        table = table.sort_by("published_at")
        pq.write_table(table.set_column(table.schema.get_field_index("date"), "date",
                                        pa.compute.strptime(table.column("date"), "%Y-%m-%d", "s").cast(pa.date32())),
                       single, compression="zstd")
        result["queries_single_file"] = time_queries(f"read_parquet('{single}')", probe)
        t = time.perf_counter()
        stats = compact(Store(str(out)), Policy())
        secs = time.perf_counter() - t
        files = lake_files(out)
        result["compaction"] = {**stats, "seconds": round(secs, 2), "input_gb": round(size / 1e9, 3),
                                "seconds_per_gb": round(secs / (size / 1e9), 1),
                                "bytes_after": sum(p.stat().st_size for p in files)}
        result["files_after"] = len(files)
        result["queries_compacted"] = time_queries(glob, probe)
        # the same files read the fastest way DuckDB allows while every file has the same schema
        result["queries_compacted_fixed_depth"] = time_queries(
            f"read_parquet('{out}/articles/*/*/*.parquet', hive_partitioning=true)", probe)
        for variant in ("compacted", "compacted_fixed_depth", "raw"):
            result[f"{variant}_vs_single"] = {q: round(result[f"queries_{variant}"][q]["median_s"]
                                                       / max(1e-9, result["queries_single_file"][q]["median_s"]), 1)
                                              for q in QUERIES}
        # the same rows, in the same polls, with the `date` layout (source a column), committed and compacted
        result["date_layout_compaction"] = relayout(table, tmp / "by_date", "date")
        result["files_date_layout"] = len(lake_files(tmp / "by_date"))
        result["queries_date_layout"] = time_queries(
            f"read_parquet('{tmp}/by_date/articles/*/*.parquet', hive_partitioning=true)", probe)
        result["date_layout_vs_single"] = {q: round(result["queries_date_layout"][q]["median_s"]
                                                    / max(1e-9, result["queries_single_file"][q]["median_s"]), 1)
                                           for q in QUERIES}
        # and with the `month` layout (one partition a month, the day a query expression): same rows
        result["month_layout_compaction"] = relayout(table, tmp / "by_month", "month")
        result["files_month_layout"] = len(lake_files(tmp / "by_month"))
        result["queries_month_layout"] = time_queries(
            f"read_parquet('{tmp}/by_month/articles/*/*.parquet', hive_partitioning=true)", probe, day=DAY)
        result["queries_single_file_day_expr"] = time_queries(f"read_parquet('{single}')", probe, day=DAY)
        single_day_expr = result["queries_single_file_day_expr"]
        result["month_layout_vs_single"] = {q: round(result["queries_month_layout"][q]["median_s"]
                                                     / max(1e-9, single_day_expr[q]["median_s"]), 1) for q in QUERIES}
        if args.keys:
            result["state_load"] = [state_load(n, tmp) for n in args.keys]
        elif args.json.exists():  # not measured this time: keep the last measurement
            result["state_load"] = json.loads(args.json.read_text()).get("state_load")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
