"""``warta backfill`` (older articles of the feeds' sites) and ``warta archive`` (articles from WARC files).

Both run the poll's stages after discovery (:func:`pipeline.build.process_entries` /
:func:`~pipeline.build.process_pages`), under the same lock, recovery, dedup index and commit protocol.

Backfill, per run: discover (paged feeds, sitemaps; :mod:`transforms.discover`) until each feed's
discovery is done or the run budget is spent, committing the discovery state; then fetch the pending URLs
in chunks, each chunk one bounded pipeline whose commit also removes its URLs from the pending list
(``_state/backfill/<source>.json``). A killed backfill loses at most the chunk in flight; URLs already in
the lake index are dropped from the pending list without a request.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from datetime import date
from functools import partial
from pathlib import Path
from typing import Any

import apache_beam as beam
import fsspec

from warta.config.settings import DEFAULT_FEEDS, ConfigError, Settings, load_feeds
from warta.lake.commit import RunLock, commit, new_run_id, recover, summarize_staged
from warta.lake.failures import load_failures
from warta.lake.schema import ERROR_SCHEMA, staging_dir
from warta.lake.state import key64, open_index, with_lake_layout
from warta.lake.store import Store
from warta.net.http import HttpClient
from warta.net.urls import host_of, normalize_url
from warta.pipeline.build import Plan, load_seen, process_entries, process_pages
from warta.pipeline.command import (
    Exit,
    add_log_level,
    command,
    command_parser,
    locked_lake,
    settings_or_exit,
    start_logging,
)
from warta.pipeline.exits import EXIT_CONFIG, EXIT_OK
from warta.pipeline.options import add_setting_overrides, parse_duration, setting_overrides, usable_cpus
from warta.pipeline.runner import beam_options, execute, local_dask_cluster, parallel_layout, sized_to_machine
from warta.transforms.discover import Discovery
from warta.transforms.fetch import host_pace
from warta.transforms.ner import PreloadModels
from warta.transforms.records import utcnow
from warta.transforms.warc import SKIPS, ReadWarc, sites_from, warc_counts
from warta.transforms.write import partition_of, rows_table

log = logging.getLogger("warta")
STATE_DIR = "backfill"  # under _state/ once committed


def _common_flags(ap: argparse.ArgumentParser, fetch: bool = True) -> None:
    ap.add_argument("--output", required=True, help="lake root: local path or fsspec URL")
    ap.add_argument("--config", type=Path, help="settings YAML (as for `warta run`)")
    ap.add_argument("--runner", default=None, help="direct (default), dask, or any Beam runner name")
    ap.add_argument("--workers", type=int, metavar="N",
                    help="worker processes on the DirectRunner (default: the CPUs this process may use)")
    ap.add_argument("--dask-address", help="tcp://HOST:PORT of a dask scheduler (default: start a local cluster)")
    add_setting_overrides(ap, fetch)
    add_log_level(ap, verbose=True)


def _parse(ap: argparse.ArgumentParser, argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Our flags strictly (an unknown one is an error); Beam pipeline options go after ``--``."""
    cut = argv.index("--") if "--" in argv else len(argv)
    return ap.parse_args(argv[:cut]), argv[cut + 1:]


def backfill_parser() -> argparse.ArgumentParser:
    ap = command_parser(
        "warta backfill", log_level=False, description="Discover the older articles of each feed's site (paged feeds, "
        "sitemaps) published since a date, then fetch, extract, deduplicate, tag and commit them like a poll. "
        "Resumable: rerun to continue. Beam pipeline options go after `--`.")
    ap.add_argument("--feeds", type=Path, default=DEFAULT_FEEDS, help="feeds YAML (default: %(default)s)")
    ap.add_argument("--since", type=date.fromisoformat, required=True, help="first publication day (YYYY-MM-DD)")
    ap.add_argument("--until", type=date.fromisoformat, help="last publication day (default: no limit)")
    ap.add_argument("--max-run-time", type=parse_duration, default=900.0, metavar="DURATION",
                    help="stop starting new work after this long (e.g. 90s, 15m; default 15m); rerun to continue")
    ap.add_argument("--batch-size", type=int, default=1000, help="pages per committed chunk (default: %(default)s)")
    _common_flags(ap)
    return ap


def archive_parser() -> argparse.ArgumentParser:
    ap = command_parser(
        "warta archive", log_level=False, description="Read HTML responses of the wanted domains from WARC files (any "
        "fsspec URL or glob) and extract, deduplicate, tag and commit them; nothing is fetched. Each file is "
        "a unit of work. Beam pipeline options go after `--`.")
    ap.add_argument("--warc", nargs="+", required=True, metavar="PATH_OR_URL", help="WARC files (.warc, .warc.gz)")
    wanted = ap.add_mutually_exclusive_group(required=True)
    wanted.add_argument("--feeds", type=Path, help="keep pages of these feeds' sites (source = feed name)")
    wanted.add_argument("--domains", help="comma-separated domains to keep (source = domain)")
    _common_flags(ap, fetch=False)
    return ap


def _setup(ns: argparse.Namespace, feeds_path: Path | None) -> tuple[Settings, list, Store]:
    """Settings, feeds and a writable store, or exit 2."""
    settings = settings_or_exit(ns.config, setting_overrides(ns))
    ns.runner = ns.runner or settings.runner  # the flag wins over the settings file
    try:
        feeds = load_feeds(feeds_path) if feeds_path else []
    except ConfigError as e:
        raise Exit(EXIT_CONFIG, f"configuration error: {e}") from None
    store = Store(ns.output, settings.storage_options)
    try:
        store.check_writable()
    except Exception as e:
        raise Exit(EXIT_CONFIG, f"configuration error: output {ns.output} is not writable: "
                                f"{type(e).__name__}: {e}") from None
    return with_lake_layout(settings, store), feeds, store


def run_pipeline(store: Store, settings: Settings, feeds: list, options, ns: argparse.Namespace,
                 build: Callable[[beam.Pipeline, Plan], Any] | None, state: dict[str, Any],
                 lock: RunLock, extra_stats: Callable[[Store, str], dict[str, int]] | None = None,
                 errors: list[dict[str, Any]] = ()) -> dict[str, Any]:
    """One bounded run: ``build`` the pipeline (if any), stage the ``state`` files, commit (fenced by the
    run's ``lock``). Returns the stats (``extra_stats`` adds counts read from the staged files before they go)."""
    run_id = new_run_id()
    if build is not None:
        workers, ner_batching, join_sinks = parallel_layout(options, ns.runner, settings)
        plan = Plan(feeds=feeds, settings=settings, store=store, run_id=run_id, validators={},
                    workers=workers, ner_batching=ner_batching, join_sinks=join_sinks)
        execute(build, plan, options, ns.runner, ns.verbose)
    for rel, obj in state.items():
        store.write_json(f"{staging_dir(run_id)}/{rel}", obj)
    by_day: dict[str, list] = {}
    for row in errors:  # discovery's own error rows (a corrupt sitemap)
        by_day.setdefault(partition_of(row, "errors"), []).append(row)
    for part, rows in by_day.items():
        store.write_table(f"{staging_dir(run_id)}/errors/{part}/part-{run_id}-discovery.parquet",
                          rows_table(rows, ERROR_SCHEMA, "url"))
    stats = {"run_id": run_id, **summarize_staged(store, run_id)}
    stats.pop("languages")
    if extra_stats:
        stats.update(extra_stats(store, run_id))
    commit(store, run_id, stats, settings.dedup.window_days, lock=lock)
    return stats


def _run(argv: list[str], parser: Callable[[], argparse.ArgumentParser], body) -> int:
    ns, beam_args = _parse(parser(), argv)
    start_logging(ns)
    with ExitStack() as stack:
        settings, feeds, store = _setup(ns, ns.feeds)
        dask_address = ns.dask_address
        if (ns.runner or "").lower() == "dask" and not dask_address:
            dask_address = stack.enter_context(local_dask_cluster())
        options = beam_options(beam_args, ns.runner, dask_address, max(1, ns.workers or usable_cpus()),
                               quiet=not ns.verbose)
        settings = sized_to_machine(settings, options, ns.runner)
        with locked_lake(store, settings) as lock:
            recover(store, settings.dedup.window_days, lock)
            summary = body(ns, settings, feeds, store, options, lock)
    log.info(summary)  # the last line, after a local dask cluster's shutdown notices
    return EXIT_OK


# -- backfill -------------------------------------------------------------------------------------
def state_file(feed) -> str:
    return f"{STATE_DIR}/{feed.name}.json"


def take_chunk(pending: list[dict[str, Any]], size: int, seconds: float, delay: Callable[[str], float]) -> list[dict]:
    """At most ``size`` entries, and per host no more than its delay lets us fetch in ``seconds``."""
    per_host: Counter = Counter()
    chunk = []
    for e in pending:
        if len(chunk) >= size:
            break
        host = host_of(e["url"])
        if per_host[host] and (per_host[host] + 1) * delay(e["url"]) > seconds:
            continue
        per_host[host] += 1
        chunk.append(e)
    return chunk


def _discover(found: list[Discovery], client: HttpClient, deadline: float, commit_one, c: Counter) -> None:
    """Discovery of each unfinished feed, until ``deadline``; ``commit_one(d)`` commits a feed's progress."""
    for d in found:
        if d.done or time.monotonic() >= deadline:
            continue
        before, counts = len(d.entries), dict(d.counts)
        d.run(client, deadline)
        c["discovered"] += len(d.entries) - before
        c.update({k: d.counts[k] - counts.get(k, 0) for k in d.counts})
        commit_one(d)
        d.errors = []


def _skip_known(ready: list[Discovery], store: Store, c: Counter) -> None:
    """Drop the URLs already in the lake (polled, archived, backfilled before) or failed and not due yet:
    no request for them."""
    seen, failures, now = open_index(store).url_keys, load_failures(store), utcnow()
    for d in ready:
        keys = {k: key64(normalize_url(e["url"])) for k, e in d.entries.items()}
        known = [k for k, key in keys.items() if key in seen]
        waiting = [k for k, key in keys.items() if key not in seen and failures.waiting(key, now)]
        c["in_lake"] += len(known)
        c["waiting"] += len(waiting)
        for k in known + waiting:
            del d.entries[k]


def _backfill(ns, settings: Settings, feeds: list, store: Store, options, lock: RunLock) -> str:
    t0 = time.monotonic()
    deadline = t0 + ns.max_run_time
    c = Counter()
    client = HttpClient(settings.http)
    try:
        found = [Discovery.resume(f, ns.since, ns.until, store.read_json(f"_state/{state_file(f)}")) for f in feeds]
        _discover(found, client, deadline, lambda d: run_pipeline(
            store, settings, feeds, options, ns, None, {state_file(d.feed): d.state()}, lock, errors=d.errors), c)
        ready = [d for d in found if d.done]
        _skip_known(ready, store, c)
        owner = {k: d for d in ready for k in d.entries}
        pending = sorted(((k, e) for d in ready for k, e in d.entries.items()),  # newest first
                         key=lambda ke: (-(ke[1]["date"].timestamp() if ke[1]["date"] else 0), ke[0]))
        while pending and time.monotonic() < deadline:  # fetched in chunks, each committed
            chunk = take_chunk([e for _, e in pending], ns.batch_size, deadline - time.monotonic(),
                               partial(host_pace, client))
            keys = {normalize_url(e["url"]) for e in chunk}
            touched = {owner[k] for k in keys}
            for k in keys:
                del owner[k].entries[k]
            stats = run_pipeline(store, settings, feeds, options, ns, _chunk_builder(chunk),
                                 {state_file(d.feed): d.state() for d in touched}, lock)
            c.update({k: stats[k] for k in ("pages_fetched", "articles_written", "errors_written", "entities")})
            pending = [(k, e) for k, e in pending if k not in keys]
    finally:
        client.close()
    left = sum(len(d.entries) for d in found) + sum(not d.done for d in found)
    if left:
        log.warning("run budget spent with work left (%d: pending URLs, unfinished discoveries); rerun to continue",
                    left)
    return (f"warta backfill: discovered={c['discovered']} | skipped out-of-range={c['out_of_range']} "
            f"other-domain={c['other_domain']} in-lake={c['in_lake']} failed-not-due={c['waiting']} sitemaps={c['sitemaps_skipped']} "
            f"| pages fetched={c['pages_fetched']} | rows written={c['articles_written']} "
            f"| errors={c['errors_written']} | pending={left} | {time.monotonic() - t0:.1f}s")


def _chunk_builder(chunk: list[dict[str, Any]]):
    entries = [{k: v for k, v in e.items() if k != "date"} for e in chunk]  # as a feed gives them

    def build(p: beam.Pipeline, plan: Plan):
        listed = (p | "ListEntries" >> beam.Create(entries)
                  | "PreloadModels" >> PreloadModels(plan.settings.ner, plan.ner_paths(), plan.preload))
        return process_entries(listed, plan)
    return build


@command("warta backfill")
def backfill(argv: list[str]) -> int:
    return _run(argv, backfill_parser, _backfill)


# -- archive --------------------------------------------------------------------------------------
def warc_urls(paths: list[str], storage_options: dict[str, Any]) -> list[str]:
    """The WARC files named (globs expanded), as full URLs, sorted."""
    files = fsspec.open_files(paths, "rb", **storage_options)
    return sorted({f.fs.unstrip_protocol(f.path) for f in files})


def _archive(ns, settings: Settings, feeds: list, store: Store, options, lock: RunLock) -> str:
    t0 = time.monotonic()
    sites = sites_from(feeds, ns.domains.split(",") if ns.domains else [])
    urls = warc_urls(ns.warc, settings.storage_options)

    def build(p: beam.Pipeline, plan: Plan):
        s = plan.settings
        read = (p | "ListWarcFiles" >> beam.Create(urls)
                | "PreloadModels" >> PreloadModels(s.ner, plan.ner_paths(), plan.preload)
                | "ReadWarc" >> ReadWarc(sites, partial(load_seen, plan.store, s.dedup.window_days, plan.run_id),
                                         s.http.max_bytes, s.storage_options, plan.store, plan.run_id,
                                         groups=plan.workers))
        return process_pages(read.pages, plan, errors=[read.errors])

    stats = run_pipeline(store, settings, feeds, options, ns, build, {}, lock, extra_stats=warc_counts)
    skipped = " ".join(f"{k.replace('_', '-')}={stats.get(k, 0)}" for k in SKIPS)
    return (f"warta archive: files={len(urls)} records={stats.get('records', 0)} | skipped {skipped} "
            f"| pages read={stats.get('pages', 0)} extracted={stats['pages_extracted']} "
            f"| duplicates exact={stats['duplicates_exact']} near={stats['duplicates_near']} "
            f"| entities={stats['entities']} | rows written={stats['articles_written']} "
            f"| errors={stats['errors_written']} | {time.monotonic() - t0:.1f}s")


@command("warta archive")
def archive(argv: list[str]) -> int:
    return _run(argv, archive_parser, _archive)
