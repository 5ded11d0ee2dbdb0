"""Throughput benchmarks on a loopback multi-host news world, all numbers taken side by side in one run.

    python bench/bench_pipeline.py [--sizes 1200 10000] [--outlets 100] [--modes default beam tuned] [--no-ner]

Per size:
- stages, in this process: feed parsing (feeds/s), fetching (pages/s, parallel across hosts, serial per
  host), extraction (pages/s), NER (sentences/s, tokens/s, batched), Parquet writing (rows/s);
- end to end, ``run_local.py`` in a subprocess on the same world, one row per mode: ``default`` is the
  command a new user types (no settings file, no Beam flags, the default 1 s delay per host); ``beam``
  adds Beam's own ``--direct_num_workers N --direct_running_mode multi_processing``; ``tuned`` adds a
  hand-tuned settings file (``ner.threads: 1``, ``fetch_threads: 64``) to those flags; ``default-fp32`` is
  ``default`` with ``ner.precision: fp32`` (the default command before int8 tagging, #29). Wall seconds,
  articles/min, peak RSS of the whole process tree (sampled every 0.2 s);
- the physical limit: raw trafilatura + raw Stanza NER (our model, batched, one thread) over the same
  pages in one process; limit = CPU seconds / usable CPUs. Reported: limit / wall time of each mode.
Results: bench/results/pipeline.json and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.newsworld import feeds_yaml, serve_world  # noqa: E402
from bench.shared import wait_sampled  # noqa: E402
from warta.config.settings import HttpSettings, NerSettings  # noqa: E402
from warta.net.http import HttpClient  # noqa: E402
from warta.pipeline.options import usable_cpus  # noqa: E402
from warta.transforms.extract import extract_article  # noqa: E402
from warta.transforms.feeds import parse_feed  # noqa: E402
from warta.transforms.fetch import fetch_host  # noqa: E402
from warta.transforms.ner import NerModel, Tagger, build_pipeline, model_paths, ner_tags  # noqa: E402
from warta.transforms.segment import sentences  # noqa: E402
from warta.transforms.write import ARTICLE_SCHEMA, rows_table  # noqa: E402

HOST_DELAY = 0.02  # for the in-process stage benchmarks
CORES = usable_cpus()


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
            "limit_cpu_ner_s": round(cpu_ner, 2), "cores": CORES, "limit_wall_s": round(cpu / CORES, 2),
            **({"limit_cpu_ner_lean_s": round(cpu_lean, 2),
                "limit_wall_s_lean": round((cpu_extract + cpu_lean) / CORES, 2)} if lean and use_ner else {})}


def timed_run(args: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB, the process and its workers) and stderr of one ``run_local.py`` run."""
    peak = [0]
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

    wall, stderr = wait_sampled(proc, sample)
    return wall, peak[0] / 2**20, stderr


def end_to_end(feeds, mode: str, use_ner: bool, host_delay: float, noop: bool = False) -> dict:
    """One ``run_local.py`` run that takes every article (see the modes above); with ``noop``, a second
    run over the same lake that finds nothing new (every feed answers 304): the fixed cost of a run."""
    with tempfile.TemporaryDirectory() as tmp:
        args = [sys.executable, str(ROOT / "run_local.py"), "--feeds", str(feeds_yaml(feeds, Path(tmp) / "f.yaml")),
                "--output", f"{tmp}/lake"]
        settings = {"http": {"host_delay": host_delay}} if host_delay != 1.0 else {}
        if not use_ner:
            settings["ner"] = {"enabled": False}
        if mode == "default-fp32":
            settings["ner"] = {**settings.get("ner", {}), "precision": "fp32"}
        if mode == "tuned":
            settings = {"http": {**settings.get("http", {}), "fetch_threads": 64},
                        "ner": {**settings.get("ner", {}), "threads": 1}}
        if settings:
            cfg = Path(tmp) / "settings.yaml"
            cfg.write_text(json.dumps(settings))  # JSON is YAML
            args += ["--config", str(cfg)]
        if mode in ("beam", "tuned"):
            args += ["--direct_num_workers", str(CORES), "--direct_running_mode", "multi_processing"]
        wall, peak, stderr = timed_run(args)
        summary = [line for line in stderr.splitlines() if "warta run" in line][-1]
        written = int(summary.split("rows written=")[1].split()[0])
        row = {"mode": mode, "args": " ".join(args[2:]).replace(tmp, "TMP"), "e2e_wall_s": round(wall, 2),
               "e2e_articles": written, "e2e_articles_per_min": round(written / wall * 60, 1),
               "e2e_peak_rss_mb": round(peak, 1), "e2e_summary": summary.split("INFO warta: ")[-1]}
        if noop:
            noop_wall, _, noop_err = timed_run(args)
            assert "rows written=0 " in noop_err, noop_err[-2000:]
            row.update(e2e_noop_wall_s=round(noop_wall, 2),
                       e2e_marginal_s_per_article=round((wall - noop_wall) / max(1, written), 4))
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1200])
    ap.add_argument("--outlets", type=int, default=100)
    ap.add_argument("--modes", nargs="+", default=["default", "beam", "tuned"],
                    choices=["default", "beam", "tuned", "default-fp32"])
    ap.add_argument("--host-delay", type=float, default=1.0, help="seconds between requests to a host (default: "
                    "warta's default, 1 s; other values go in a settings file)")
    ap.add_argument("--noop", action="store_true", help="also time a second run that finds nothing new")
    ap.add_argument("--no-ner", action="store_true")
    ap.add_argument("--lean-up-to", type=int, default=1200, help="also measure the lean NER limit up to this size")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "pipeline.json")
    ap.add_argument("--no-stages", action="store_true", help="skip the per-stage benchmarks")
    ap.add_argument("--limit-only", action="store_true", help="fetch the pages and measure only the physical limit")
    args = ap.parse_args(argv)
    use_ner = not args.no_ner
    results = []
    for size in args.sizes:
        with serve_world(size, args.outlets) as (feeds, _):
            stages, pages = stage_benchmarks(feeds, use_ner) if not (args.limit_only or args.no_stages) else ({}, [
                row for kind, row in fetch_all(feeds) if kind == "page"])
            limit = physical_limit(pages, use_ner, lean=size <= args.lean_up_to)
            if args.limit_only:
                results.append({"articles": size, **limit})
                print(json.dumps(results[-1]), flush=True)
                continue
            for mode in args.modes:
                e2e = end_to_end(feeds, mode, use_ner, args.host_delay, noop=args.noop and mode == "default")
                row = {"articles": size, "outlets": args.outlets, "host_delay": args.host_delay, "ner": use_ner,
                       **stages, **limit, **e2e}
                row["ratio_to_limit"] = round(limit["limit_wall_s"] / e2e["e2e_wall_s"], 3)
                if "limit_wall_s_lean" in limit:
                    row["ratio_to_lean_limit"] = round(limit["limit_wall_s_lean"] / e2e["e2e_wall_s"], 3)
                row["e2e_s_per_article"] = round(e2e["e2e_wall_s"] / max(1, e2e["e2e_articles"]), 4)
                results.append(row)
                print(json.dumps(row), flush=True)
    save_results(args.json, results, ["articles", "mode", "e2e_wall_s", "e2e_articles", "e2e_articles_per_min",
                                      "e2e_peak_rss_mb", "limit_wall_s", "ratio_to_limit", "ratio_to_lean_limit",
                                      "e2e_noop_wall_s", "extract_pages_per_s", "ner_sentences_per_s"],
                 usable_cpus=CORES)
    return 0


def save_results(path: Path, results: list[dict], cols: list[str], **meta) -> None:
    """Write ``results`` as JSON (with the time, load and ``meta``) and print them as a Markdown table."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"when": datetime.now(timezone.utc).isoformat(), **meta,
                                "load_avg_1m": os.getloadavg()[0], "results": results}, indent=1))
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in results:
        print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")


if __name__ == "__main__":
    raise SystemExit(main())
