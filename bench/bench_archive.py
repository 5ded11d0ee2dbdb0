"""Throughput of ``warta archive`` on WARC input (no network) against the extract + NER limit.

    python bench/bench_archive.py --sizes 300 1000 [--files 4] [--workers N] [--no-ner]

Per size: the bench news world's article pages (``bench/newsworld.py``: Indonesian sentences from
../shared/data) written into ``--files`` gzipped WARC files with warcio, one host per outlet, plus one
non-HTML record and one revisit per 20 pages; then
- ``run_local.py archive`` in a subprocess over them: wall seconds, articles/min, peak RSS; and the same
  command again, which finds every page in the lake (the fixed cost of a run);
- the physical limit, measured as ``bench_pipeline.py`` does: raw trafilatura + raw Stanza (our model,
  batched) over the same pages in one process; limit = CPU seconds / usable cores.
Reported: ``efficiency_vs_limit`` = limit / archive wall time, and ``cpu_efficiency_vs_limit`` = the limit's
CPU seconds / the archive run's CPU seconds (its processes and workers): the same comparison, less
sensitive to other work on a shared machine. Results: bench/results/archive.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from warcio.statusandheaders import StatusAndHeaders  # noqa: E402
from warcio.warcwriter import WARCWriter  # noqa: E402

from bench.bench_pipeline import physical_limit, save_results, timed_run  # noqa: E402
from bench.newsworld import build_world  # noqa: E402

WARC_DATE = datetime(2024, 11, 2, tzinfo=timezone.utc)


def write_warcs(size: int, outlets: int, files: int, folder: Path) -> tuple[list[Path], list[dict]]:
    """The WARC files and the article pages in them (``{"html": ...}``, for the limit run)."""
    world, _ = build_world(size, outlets)
    pages = [(f"http://outlet{o}.bench.test{path}", route.payload())
             for o, (routes, _) in enumerate(world) for path, route in routes.items() if path.startswith("/berita/")]
    paths = [folder / f"bench-{i:02d}.warc.gz" for i in range(files)]
    handles = [open(p, "wb") for p in paths]
    writers = [WARCWriter(fh, gzip=True) for fh in handles]
    try:
        for i, (url, body) in enumerate(pages):
            w = writers[i % files]
            when = {"WARC-Date": (WARC_DATE + timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%SZ")}
            http = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
            w.write_record(w.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=http,
                                                warc_headers_dict=when))
            if i % 20 == 0:  # the usual company: an image and a revisit
                img = StatusAndHeaders("200 OK", [("Content-Type", "image/jpeg")], protocol="HTTP/1.1")
                w.write_record(w.create_warc_record(url + "foto.jpg", "response", payload=io.BytesIO(b"\xff" * 5000),
                                                    http_headers=img, warc_headers_dict=when))
                w.write_record(w.create_revisit_record(url, "sha1:AAAA", url, "2024-10-01T00:00:00Z",
                                                       warc_headers_dict=when))
    finally:
        for fh in handles:
            fh.close()
    return paths, [{"html": body.decode("utf-8")} for _, body in pages]


def archive_run(paths: list[Path], workers: int | None, use_ner: bool, tmp: str) -> dict:
    """The default command (worker processes and torch threads sized to the machine), unless ``workers``."""
    args = [sys.executable, str(ROOT / "run_local.py"), "archive", "--warc", *map(str, paths),
            "--domains", "bench.test", "--output", f"{tmp}/lake"]
    args += [] if use_ner else ["--no-ner"]
    args += ["--workers", str(workers)] if workers else []
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall, peak, stderr = timed_run(args)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the run and its worker processes, once reaped
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    summary = [line for line in stderr.splitlines() if "warta archive" in line][-1]
    written = int(summary.split("rows written=")[1].split()[0])
    noop_wall, _, noop_err = timed_run(args)
    assert "rows written=0 " in noop_err, noop_err[-2000:]
    return {"archive_wall_s": round(wall, 2), "archive_cpu_s": round(cpu, 2), "archive_articles": written,
            "archive_articles_per_min": round(written / wall * 60, 1), "archive_peak_rss_mb": round(peak, 1),
            "archive_summary": summary.split("INFO warta: ")[-1], "archive_noop_wall_s": round(noop_wall, 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[300, 1000])
    ap.add_argument("--outlets", type=int, default=20)
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--workers", type=int, help="worker processes (default: warta's own, the usable CPUs)")
    ap.add_argument("--no-ner", action="store_true")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "archive.json")
    args = ap.parse_args(argv)
    use_ner = not args.no_ner
    results = []
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            paths, pages = write_warcs(size, args.outlets, args.files, Path(tmp))
            run = archive_run(paths, args.workers, use_ner, tmp)
        limit = physical_limit(pages, use_ner, lean=False)
        row = {"articles": size, "files": args.files, "workers": args.workers, "ner": use_ner, **limit, **run,
               "efficiency_vs_limit": round(limit["limit_wall_s"] / run["archive_wall_s"], 3),
               "cpu_efficiency_vs_limit": round(limit["limit_cpu_s"] / run["archive_cpu_s"], 3)}
        results.append(row)
        print(json.dumps(row), flush=True)
    save_results(args.json, results, ["articles", "files", "archive_wall_s", "archive_cpu_s",
                                      "archive_articles_per_min", "archive_peak_rss_mb", "archive_noop_wall_s",
                                      "limit_cpu_s", "limit_wall_s", "efficiency_vs_limit",
                                      "cpu_efficiency_vs_limit"], cpu_count=os.cpu_count())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
