"""Throughput benchmarks on a loopback multi-host news world, all numbers taken side by side in one run.

    python bench/bench_pipeline.py --sizes 100 1000 10000 [--outlets 20] [--workers 2] [--no-ner]

Per size:
- stages, in this process: feed parsing (feeds/s), fetching (pages/s, parallel across hosts, serial per
  host), extraction (pages/s), NER (sentences/s, tokens/s, batched), Parquet writing (rows/s);
- end to end: ``run_local.py`` in a subprocess on the same world: wall seconds, articles/min, peak RSS
  of the whole process tree (sampled every 0.2 s);
- the physical limit: raw trafilatura + raw Stanza NER (our model, batched) over the same pages in one
  process; limit = CPU seconds / 2 cores. Reported: pipeline wall time against that limit.
Results: bench/results/pipeline.json and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.newsworld import feeds_yaml, serve_world  # noqa: E402
from config.settings import HttpSettings, NerSettings  # noqa: E402
from transforms.extract import extract_article  # noqa: E402
from transforms.feeds import parse_feed  # noqa: E402
from transforms.fetch import fetch_host  # noqa: E402
from net.http import HttpClient  # noqa: E402
from transforms.ner import NerModel, Tagger, build_pipeline, model_paths, ner_tags  # noqa: E402
from transforms.segment import sentences  # noqa: E402
from transforms.write import ARTICLE_SCHEMA, rows_table  # noqa: E402

HOST_DELAY = 0.02


def timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def entries_of(parsed, feeds) -> list[dict]:
    return [{"url": e.link, "feed_url": u, "source": n, "language": "id", "feed_title": e.title,
             "feed_authors": [], "feed_published_at": None} for p, (n, u) in zip(parsed, feeds) for e in p.entries]


def fetch_entries(entries: list[dict], client: HttpClient) -> list[tuple[str, dict]]:
    """Parallel across hosts, serial within a host (as the FetchPages stage does)."""
    by_host: dict[str, list] = {}
    for e in entries:
        by_host.setdefault(e["url"].split("/")[2], []).append(e)
    with ThreadPoolExecutor(16) as pool:
        return [r for rs in pool.map(lambda es: fetch_host(es, client), by_host.values()) for r in rs]


def fetch_all(feeds) -> list[tuple[str, dict]]:
    client = HttpClient(HttpSettings(host_delay=HOST_DELAY, fetch_threads=16))
    parsed = [parse_feed(client.get(u).body) for _, u in feeds]
    return fetch_entries(entries_of(parsed, feeds), client)


def stage_benchmarks(feeds, use_ner: bool) -> tuple[dict, list[dict]]:
    client = HttpClient(HttpSettings(host_delay=HOST_DELAY, fetch_threads=16))
    bodies = [client.get(url).body for _, url in feeds]
    parsed, wall, _ = timed(lambda: [parse_feed(b) for b in bodies])
    res = {"feed_parse_feeds_per_s": round(len(feeds) / wall, 1)}
    entries = entries_of(parsed, feeds)
    results, wall, _ = timed(lambda: fetch_entries(entries, client))
    pages = [row for kind, row in results if kind == "page"]
    res["fetch_pages_per_s"] = round(len(pages) / wall, 1)
    res["fetch_host_delay_s"] = HOST_DELAY
    arts, wall, cpu = timed(lambda: [extract_article(p) for p in pages])
    res["extract_pages_per_s"] = round(len(arts) / wall, 1)
    res["extract_pages_per_cpu_s"] = round(len(arts) / cpu, 1)
    if use_ner:
        settings = NerSettings()
        tagger = Tagger(settings, {"id": model_paths("id", settings)})
        tagger.tag(["Pemanasan model di Jakarta ."], "id")
        texts = [a["text"] for a in arts]
        n_sents = sum(1 for t in texts for _ in sentences(t))
        n_toks = sum(len(s) for t in texts for s in sentences(t))
        bs = settings.batch_size
        _, wall, cpu = timed(lambda: [tagger.tag(texts[i:i + bs], "id") for i in range(0, len(texts), bs)])
        res.update(ner_sentences_per_s=round(n_sents / wall, 1), ner_tokens_per_s=round(n_toks / wall, 1),
                   ner_threads=__import__("torch").get_num_threads())
    for a in arts:
        a["entities"] = []
    table, wall, _ = timed(lambda: rows_table(arts, ARTICLE_SCHEMA, "article_id"))
    import pyarrow.parquet as pq
    with tempfile.TemporaryDirectory() as tmp:
        _, wall2, _ = timed(lambda: pq.write_table(table, f"{tmp}/x.parquet", compression="zstd"))
    res["parquet_rows_per_s"] = round(len(arts) / (wall + wall2), 1)
    return res, pages


def physical_limit(pages: list[dict], use_ner: bool, lean: bool = True) -> dict:
    """Raw trafilatura + raw Stanza over the same pages, one process, one torch thread (the most
    CPU-efficient setting, so the limit is not inflated by thread spinning): CPU seconds and the 2-core
    limit. Raw Stanza is ``stanza.Pipeline`` on the pre-tokenised sentences, 32 articles per call; the
    same model through warta's own tagging path (``ner_tags``: no Stanza Document objects) is reported
    as ``limit_cpu_ner_lean_s``, a stricter limit."""
    import torch
    import trafilatura
    torch.set_num_threads(1)
    c0 = time.process_time()
    texts = [trafilatura.extract(p["html"], favor_precision=True, fast=True) or "" for p in pages]
    cpu_extract = time.process_time() - c0
    cpu_ner = cpu_lean = 0.0
    if use_ner:
        paths = model_paths("id", NerSettings())
        pipe, model = build_pipeline("id", paths, 1), NerModel(paths, 1)
        pipe([["Pemanasan", "."]])
        ner_tags(model, [["Pemanasan", "."]])

        def tokens(batch):  # Stanza gets pre-tokenised sentences, as in the pipeline
            return [[t[a:b] for a, b in sent] for t in batch for sent in sentences(t)]

        c0 = time.process_time()
        for i in range(0, len(texts), 32):
            pipe(tokens(texts[i:i + 32]))
        cpu_ner = time.process_time() - c0
        if lean:
            c0 = time.process_time()
            for i in range(0, len(texts), 32):
                ner_tags(model, tokens(texts[i:i + 32]))
            cpu_lean = time.process_time() - c0
    cpu = cpu_extract + cpu_ner
    return {"limit_cpu_s": round(cpu, 2), "limit_cpu_extract_s": round(cpu_extract, 2),
            "limit_cpu_ner_s": round(cpu_ner, 2), "limit_wall_s_2_cores": round(cpu / 2, 2),
            **({"limit_cpu_ner_lean_s": round(cpu_lean, 2),
                "limit_wall_s_2_cores_lean": round((cpu_extract + cpu_lean) / 2, 2)} if lean and use_ner else {})}


def timed_run(args: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB, the process and its workers) and stderr of one ``run_local.py`` run."""
    peak = [0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def sample():
        p = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                rss = sum(c.memory_info().rss for c in [p, *p.children(recursive=True)])
                peak[0] = max(peak[0], rss)
            except psutil.Error:
                pass
            time.sleep(0.2)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    _, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    watcher.join()
    if proc.returncode != 0:
        raise RuntimeError(stderr[-3000:])
    return wall, peak[0] / 2**20, stderr


def end_to_end(feeds, workers: int, use_ner: bool) -> dict:
    """The run that takes every article, then a second run over the same lake that finds nothing new
    (every feed answers 304): its wall time is the fixed cost of a run (start-up, polling, commit)."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "settings.yaml"
        cfg.write_text(f"http:\n  host_delay: {HOST_DELAY}\n  fetch_threads: 32\nmax_items_per_feed: 100000\n"
                       f"ner:\n  enabled: {str(use_ner).lower()}\n  threads: {max(1, 2 // workers)}\n")
        args = [sys.executable, str(ROOT / "run_local.py"), "--feeds", str(feeds_yaml(feeds, Path(tmp) / "f.yaml")),
                "--output", f"{tmp}/lake", "--config", str(cfg)]
        if workers > 1:
            args += ["--direct_num_workers", str(workers), "--direct_running_mode", "multi_processing"]
        wall, peak, stderr = timed_run(args)
        summary = [line for line in stderr.splitlines() if "warta run" in line][-1]
        written = int(summary.split("rows written=")[1].split()[0])
        noop_wall, _, noop_err = timed_run(args)
        assert "rows written=0 " in noop_err, noop_err[-2000:]
    return {"e2e_wall_s": round(wall, 2), "e2e_articles": written,
            "e2e_articles_per_min": round(written / wall * 60, 1), "e2e_peak_rss_mb": round(peak, 1),
            "e2e_summary": summary.split("INFO warta: ")[-1], "e2e_noop_wall_s": round(noop_wall, 2),
            "e2e_marginal_s_per_article": round((wall - noop_wall) / max(1, written), 4)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--outlets", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-ner", action="store_true")
    ap.add_argument("--lean-up-to", type=int, default=1000, help="also measure the lean NER limit up to this size")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "pipeline.json")
    ap.add_argument("--limit-only", action="store_true", help="fetch the pages and measure only the physical limit")
    args = ap.parse_args(argv)
    use_ner = not args.no_ner
    results = []
    for size in args.sizes:
        with serve_world(size, args.outlets) as (feeds, _):
            if args.limit_only:
                pages = [row for kind, row in fetch_all(feeds) if kind == "page"]
                row = {"articles": size, **physical_limit(pages, use_ner)}
                results.append(row)
                print(json.dumps(row), flush=True)
                continue
            stages, pages = stage_benchmarks(feeds, use_ner)
            limit = physical_limit(pages, use_ner, lean=size <= args.lean_up_to)
            e2e = end_to_end(feeds, args.workers, use_ner)
        row = {"articles": size, "outlets": args.outlets, "workers": args.workers, "ner": use_ner,
               **stages, **limit, **e2e}
        row["efficiency_vs_limit"] = round(limit["limit_wall_s_2_cores"] / e2e["e2e_wall_s"], 3)
        if "limit_wall_s_2_cores_lean" in limit:
            row["efficiency_vs_lean_limit"] = round(limit["limit_wall_s_2_cores_lean"] / e2e["e2e_wall_s"], 3)
        row["e2e_s_per_article"] = round(e2e["e2e_wall_s"] / max(1, e2e["e2e_articles"]), 4)
        results.append(row)
        print(json.dumps(row), flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"when": datetime.now(timezone.utc).isoformat(), "cpu_count": os.cpu_count(),
                                     "results": results}, indent=1))
    cols = ["articles", "feed_parse_feeds_per_s", "fetch_pages_per_s", "extract_pages_per_s",
            "ner_sentences_per_s", "parquet_rows_per_s", "e2e_wall_s", "e2e_articles_per_min", "e2e_peak_rss_mb",
            "limit_wall_s_2_cores", "efficiency_vs_limit", "e2e_s_per_article", "e2e_noop_wall_s",
            "e2e_marginal_s_per_article"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in results:
        print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
