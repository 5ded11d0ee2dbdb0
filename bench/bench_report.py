"""Time ``warta report`` and ``warta stats`` on a synthetic lake written through the real writer.

    python bench/bench_report.py [--articles 10000] [--outlets 30] [--days 30] [--runs-per-day 1 24]

The lake: ``--articles`` articles over ``--days`` days from ``--outlets`` outlets (Zipf-like sizes, two
outlets silent for a few days), Indonesian-like text of ~2.5 KB with 6–20 entity mentions each (offsets
valid), 5 % near-copies (``duplicate_of`` an earlier article of another outlet), error rows, run manifests
and feed state. Each run writes one file per (date, source) it touches, through ``transforms.write``
(``partition_of``, ``rows_table``) and ``Store.write_table``, as the pipeline does: 1 run a day gives a
compact lake, 24 a day the many small files of an uncompacted hourly poll. Each size is timed as a user
would run it: ``run_local.py report`` / ``stats`` in a fresh process (imports included), best of 3.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from warta.lake.store import Store  # noqa: E402
from warta.transforms.write import ARTICLE_SCHEMA, ERROR_SCHEMA, partition_of, rows_table  # noqa: E402

WORDS = ("pemerintah daerah warga kota jalan baru rapat sidang anggaran dana proyek pembangunan harga beras naik "
         "turun pasar petani nelayan hujan banjir sekolah siswa guru rumah sakit pasien dokter polisi kasus "
         "pengadilan hakim saksi menteri presiden gubernur bupati camat desa kampung pantai gunung laut pulau "
         "listrik air bersih internet jaringan pelabuhan kapal bandara pesawat kereta bus angkutan umum").split()
FIRST = "Joko Sri Budi Agus Dewi Siti Ahmad Rudi Eko Ratna Hendra Wati Bambang Yanti Dedi Lestari Andi Putri".split()
LAST = "Widodo Mulyani Santoso Susanto Lestari Hidayat Nugroho Wijaya Saputra Kurniawan Pratama Sari".split()
PLACES = ("Jakarta Bandung Surabaya Medan Makassar Semarang Palembang Denpasar Padang Manado Ambon Jayapura Kupang "
          "Pontianak Balikpapan Yogyakarta Malang Bogor Batam Mataram").split()
ORGS = ["Bank Indonesia", "Kementerian Keuangan", "DPR", "KPK", "Pertamina", "PLN", "Polda Metro Jaya", "BMKG",
        "Mahkamah Konstitusi", "Badan Pusat Statistik", "Garuda Indonesia", "Telkom", "BPJS Kesehatan", "TNI"]
STAGES = [("fetch", 404), ("fetch", 500), ("fetch", None), ("extract", None), ("robots", None), ("poll", 503)]


def zipf_pick(rng: random.Random, items: list, s: float = 1.1):
    weights = [1 / (i + 1) ** s for i in range(len(items))]
    return rng.choices(items, weights)[0]


def article_text(rng: random.Random) -> tuple[str, list[dict]]:
    people = [f"{a} {b}" for a in FIRST for b in LAST]
    parts, entities, pos = [], [], 0
    for _ in range(8):  # paragraphs
        for _ in range(rng.randint(1, 3)):
            label = rng.choice(("PER", "LOC", "ORG"))
            name = zipf_pick(rng, {"PER": people, "LOC": PLACES, "ORG": ORGS}[label])
            lead = " ".join(rng.choices(WORDS, k=rng.randint(8, 20))).capitalize() + " "
            parts.append(lead)
            pos += len(lead)
            entities.append({"text": name, "label": label, "start_char": pos, "end_char": pos + len(name)})
            parts.append(name)
            pos += len(name)
            tail = " " + " ".join(rng.choices(WORDS, k=rng.randint(10, 25))) + ". "
            parts.append(tail)
            pos += len(tail)
        parts.append("\n")
        pos += 1
    return "".join(parts).rstrip(), entities


def synthetic_lake(root: str, articles: int, outlets: int, days: int, runs_per_day: int, seed: int = 0) -> dict:
    rng = random.Random(seed)
    store = Store(root)
    prefixes = ("kabar", "suara", "warta", "berita", "pos")
    sources = [f"{prefixes[(i // len(PLACES) + i) % 5]}{PLACES[i % len(PLACES)].lower()}" for i in range(outlets)]
    feeds = {f"https://{s}.example/feed/": {"source": s, "last_status": "ok", "etag": None} for s in sources}
    start = datetime(2024, 11, 1, tzinfo=timezone.utc)
    run_times = [start + timedelta(days=d, hours=24 * r / runs_per_day) for d in range(days) for r in range(runs_per_day)]
    silent = {sources[3]: range(10, 14), sources[7]: range(20, 30)}  # gaps that must show
    done, recent, files = 0, [], 0
    for k, at in enumerate(run_times):
        run_id = at.strftime("%Y%m%dT%H%M%S") + f"-{k:08x}"
        n = articles * (k + 1) // len(run_times) - done
        rows, errors = [], []
        for i in range(n):
            source = zipf_pick(rng, sources, 0.6)
            day = (at - start).days
            if day in silent.get(source, ()):
                source = sources[0]
            text, ents = article_text(rng)
            aid = f"{done + i:024x}"
            dup = rng.choice(recent) if recent and rng.random() < 0.05 else None
            rows.append({"article_id": aid, "url": f"https://{source}.example/{aid}", "canonical_url": None,
                         "source": source, "feed_url": f"https://{source}.example/feed/", "title": text[:60],
                         "authors": ["Redaksi"], "published_at": at - timedelta(minutes=rng.randint(0, 600)),
                         "fetched_at": at, "language": "id", "text": text, "content_hash": aid,
                         "duplicate_of": dup[0] if dup and dup[1] != source else None, "entities": ents,
                         "image_url": None})
            recent = (recent + [(aid, source)])[-200:]
        for _ in range(rng.randint(0, 4)):
            stage, status = rng.choice(STAGES)
            source = rng.choice(sources)
            feed = f"https://{source}.example/feed/"
            errors.append({"url": feed if stage == "poll" else f"https://{source}.example/x{rng.random()}",
                           "feed_url": feed, "source": source, "stage": stage, "error": f"{stage} failed",
                           "status": status, "at": at})
        done += n
        for dataset, data, schema, key in (("articles", rows, ARTICLE_SCHEMA, "article_id"),
                                           ("errors", errors, ERROR_SCHEMA, "url")):
            parts: dict[str, list] = {}
            for r in data:
                parts.setdefault(partition_of(r, dataset), []).append(r)
            for partition, part_rows in parts.items():
                store.write_table(f"{dataset}/{partition}/part-{run_id}.parquet", rows_table(part_rows, schema, key))
                files += 1
        summary = {"articles_written": len(rows), "errors_written": len(errors), "entries_new": len(rows) + len(errors),
                   "seconds": round(5 + len(rows) * 0.02, 2), "feeds_failed": 0, "duplicates_near": 0}
        store.write_json(f"_state/runs/{run_id}.json", {"run_id": run_id, "summary": summary, "files": [],
                                                         "committed_at": (at + timedelta(seconds=30)).isoformat()})
        for s in feeds.values():
            s["last_run"] = run_id
    feeds[f"https://{sources[-1]}.example/feed/"]["last_status"] = "failed"
    store.write_json("_state/feeds.json", feeds)
    return {"articles": done, "files": files, "runs": len(run_times)}


def timed(*args: str, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "run_local.py"), *args], cwd=ROOT, check=True,
                       capture_output=True)
        best = min(best, time.perf_counter() - t0)
    return round(best, 2)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--articles", type=int, default=10_000)
    ap.add_argument("--outlets", type=int, default=30)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--runs-per-day", type=int, nargs="+", default=[1, 24])
    ap.add_argument("--keep", type=Path, help="also write the last page here (e.g. for a screenshot)")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "report.json")
    args = ap.parse_args(argv)
    results = []
    for per_day in args.runs_per_day:
        with tempfile.TemporaryDirectory() as tmp:
            lake = f"{tmp}/lake"
            t0 = time.perf_counter()
            shape = synthetic_lake(lake, args.articles, args.outlets, args.days, per_day)
            written = time.perf_counter() - t0
            page = args.keep or Path(tmp) / "report.html"
            r = {**shape, "runs_per_day": per_day, "outlets": args.outlets, "days": args.days,
                 "lake_mb": round(sum(p.stat().st_size for p in Path(lake).rglob("*") if p.is_file()) / 1e6, 1),
                 "write_lake_s": round(written, 1),
                 "report_s": timed("report", "--output", lake, "--to", str(page)),
                 "stats_s": timed("stats", "--output", lake),
                 "page_mb": round(page.stat().st_size / 1e6, 2)}
            print(json.dumps(r), flush=True)
            results.append(r)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
