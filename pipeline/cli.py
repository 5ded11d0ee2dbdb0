"""The ``warta`` command: subcommands (``warta run|compact|report|…``) and the run command itself.

``run(argv)``: one bounded run, or a loop of them with ``--every``; the summary line; exit codes.
``run_local.py ARGS`` and ``warta ARGS`` without a subcommand are ``warta run ARGS``.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from contextlib import ExitStack
from typing import Any

logging.getLogger().setLevel(logging.ERROR)  # Beam's import-time warnings (apitools); run() sets up logging

import apache_beam as beam  # noqa: E402
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions  # noqa: E402

from config.settings import ConfigError, Settings, load_feeds, load_settings  # noqa: E402
from pipeline.build import Plan, build  # noqa: E402
from pipeline.progress import OUR_LOGGERS, ProgressLine, QuietFilter  # noqa: E402
from lake.compact import compact_after_run  # noqa: E402
from lake.commit import (LockedError, RunLock, commit, new_run_id, read_backlog, recover,  # noqa: E402
                         summarize_staged)
from pipeline.worker import DirectFnRunner  # noqa: E402
from pipeline.options import UsageError, split_args, usable_cpus  # noqa: E402
from transforms.ner import check_ner  # noqa: E402
from lake.state import FEEDS_FILE  # noqa: E402
from lake.store import Store  # noqa: E402

log = logging.getLogger("warta")
EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_LOCKED = 0, 1, 2, 3
DEFAULT_RUN_TIME = 15 * 60.0  # seconds: the budget of a one-shot run
MIN_EVERY_RUN_TIME = 60.0  # with --every the budget is the interval, but at least this (start-up must fit)


def beam_options(beam_args: list[str], runner: str | None, dask_address: str | None,
                 workers: int | None = None, quiet: bool = False) -> PipelineOptions:
    """Beam's options; on the DirectRunner, ``workers`` > 1 worker processes unless Beam's own flags say
    otherwise. ``quiet``: worker processes log only errors, and our own messages."""
    args = list(beam_args)
    if quiet and not any(a.startswith("--default_sdk_harness_log_level") for a in beam_args):
        level = logging.getLevelName(log.getEffectiveLevel())
        args += ["--default_sdk_harness_log_level", "ERROR",
                 "--sdk_harness_log_level_overrides", json.dumps(dict.fromkeys(OUR_LOGGERS, level))]
    name = (runner or "direct").lower()
    if name == "direct":
        args += ["--runner", "DirectRunner"]
        given = PipelineOptions(beam_args).view_as(DirectOptions)
        if workers and workers > 1 and not any(a.startswith("--direct_") for a in beam_args):
            args += ["--direct_num_workers", str(workers), "--direct_running_mode", "multi_processing"]
        elif given.direct_num_workers == 0:  # Beam's "as many as CPUs" (it would count all of the host's)
            args += ["--direct_num_workers", str(usable_cpus())]
    elif name == "dask":
        args += ["--runner", "apache_beam.runners.dask.dask_runner.DaskRunner"]
        if dask_address:
            args += ["--dask_client_address", dask_address]
    else:
        args += ["--runner", runner]
    return PipelineOptions(args, save_main_session=False)


def parallel_layout(options: PipelineOptions, runner: str | None, settings: Settings) -> tuple[int, str, bool]:
    """(host groups to spread the work over, NER batching, join the sinks) for this runner."""
    name = (runner or "direct").lower()
    if name == "direct":
        workers = options.view_as(DirectOptions).direct_num_workers or 1
    else:
        workers = 2 if name == "dask" else 8
    # Beam's DaskRunner drops elements emitted from finish_bundle (batch through a shuffle there) and
    # computes only the graph of the last transform (so all sinks must feed one last step); any runner
    # other than the DirectRunner gets the join, which costs one small extra stage.
    return settings.parallelism or workers, "shuffle" if name == "dask" else "bundle", name != "direct"


def sized_to_machine(settings: Settings, options: PipelineOptions, runner: str | None) -> Settings:
    """Torch threads per worker = CPUs // worker processes (never more busy threads than cores), unless
    ``ner.threads`` is set. Worker processes are those of the DirectRunner's multi_processing mode."""
    if settings.ner.threads or (runner or "direct").lower() != "direct":
        return settings
    direct = options.view_as(DirectOptions)
    procs = (direct.direct_num_workers or 1) if direct.direct_running_mode == "multi_processing" else 1
    threads = max(1, usable_cpus() // procs)
    return settings.model_copy(update={"ner": settings.ner.model_copy(update={"threads": threads})})


def summary_line(c: dict[str, Any], seconds: float) -> str:
    line = (f"warta run {c.get('run_id', '')}: feeds polled={c['feeds_polled']} unchanged={c['feeds_unchanged']} "
            f"failed={c['feeds_failed']} | entries new={c['entries_new']} from backlog={c.get('entries_backlog', 0)} "
            f"left pending={c.get('entries_pending', 0)} | pages fetched={c['pages_fetched']} "
            f"extracted={c['pages_extracted']} | duplicates exact={c['duplicates_exact']} near={c['duplicates_near']} "
            f"| entities={c['entities']} | rows written={c['articles_written']} "
            f"| errors={c['errors_written']} | {seconds:.1f}s")
    if c.get("no_model"):  # {language: articles}
        missing = ", ".join(f"{lang} ({n} article{'s' * (n != 1)})" for lang, n in c["no_model"].items())
        line += f" | no NER model for {missing}: get one with `warta models download {' '.join(c['no_model'])}`"
    return line


def execute(build_fn, plan: Plan, options: PipelineOptions, runner: str | None, verbose: bool = False) -> None:
    """Build a pipeline with ``build_fn(p, plan)`` on the runner chosen and run it to the end."""
    direct = (runner or "direct").lower() == "direct"
    p = beam.Pipeline(runner=DirectFnRunner(quiet=not verbose) if direct else None, options=options)
    build_fn(p, plan)
    result = p.run()
    result.wait_until_finish()
    if hasattr(result, "client"):  # DaskRunner opens its own client: close it before the cluster goes
        result.client.close()


def run_once(feeds, settings: Settings, output: str, beam_args: list[str], runner: str | None = None,
             dask_address: str | None = None, workers: int | None = None,
             max_run_time: float = DEFAULT_RUN_TIME, verbose: bool = False) -> dict[str, Any]:
    """Poll, process, commit. Raises LockedError when another run holds the output.

    Past ``max_run_time`` seconds no new page fetch starts; entries not fetched wait in the backlog."""
    t0 = time.monotonic()
    deadline = time.time() + max_run_time
    store = Store(output, settings.storage_options)
    run_id = new_run_id()
    with RunLock(store, run_id, ttl=settings.lock_ttl) as lock:
        recover(store, settings.dedup.window_days)
        taken, backlog = read_backlog(store)
        options = beam_options(beam_args, runner, dask_address, workers, quiet=not verbose)
        settings = sized_to_machine(settings, options, runner)
        groups, ner_batching, join_sinks = parallel_layout(options, runner, settings)
        with ProgressLine(len(feeds), deadline) as progress:
            plan = Plan(feeds=feeds, settings=settings, store=store, run_id=run_id,
                        validators=store.read_json(FEEDS_FILE, default={}) or {},
                        workers=groups, ner_batching=ner_batching, join_sinks=join_sinks,
                        backlog=backlog, deadline=deadline, progress_dir=progress.directory)
            execute(build, plan, options, runner, verbose)
        stats = {"run_id": run_id, **summarize_staged(store, run_id), "entries_backlog": len(backlog)}
        paths = plan.ner_paths()
        stats["no_model"] = {lang: n for lang, n in stats.pop("languages").items()
                             if lang != "None" and not paths.get(lang)} if settings.ner.enabled else {}
        stats["seconds"] = round(time.monotonic() - t0, 2)
        manifest = commit(store, run_id, stats, settings.dedup.window_days, backlog_taken=taken, fence=lock.check)
        compact_after_run(store, settings.lake, manifest["files"], fence=lock.check)
    log.info(summary_line(stats, stats["seconds"]))
    return stats


def setup_logging(level: str, verbose: bool) -> None:
    logging.basicConfig(level=getattr(logging, level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    if not verbose:
        for handler in logging.getLogger().handlers:
            handler.addFilter(QuietFilter())


def run(argv: list[str] | None = None) -> int:
    try:
        ns, beam_args, overrides = split_args(argv)
    except UsageError as e:
        print(f"warta: {e}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(ns.log_level, ns.verbose)
    if ns.workers is not None and ns.workers < 1:
        print("warta: --workers must be at least 1", file=sys.stderr)
        return EXIT_CONFIG
    # --every: one in-process worker by default, so the models stay loaded between polls (its torch
    # threads use every CPU); a one-shot run: one worker process per CPU.
    workers = ns.workers or (1 if ns.every else usable_cpus())
    with ExitStack() as stack:
        try:
            if ns.example:
                from pipeline.example import serve_example
                ns.feeds, example_overrides = stack.enter_context(serve_example())
                overrides = {**example_overrides, **overrides}
                if ns.output == "./data":
                    ns.output = "./data-example"
            settings = load_settings(ns.config, overrides)
            feeds = load_feeds(ns.feeds)
            check_ner(settings.ner, ns.runner)
        except ConfigError as e:
            print(f"warta: configuration error: {e}", file=sys.stderr)
            return EXIT_CONFIG
        try:
            Store(ns.output, settings.storage_options).check_writable()
        except Exception as e:  # unwritable or unreachable output
            print(f"warta: configuration error: output {ns.output} is not writable: {type(e).__name__}: {e}",
                  file=sys.stderr)
            return EXIT_CONFIG
        dask_address = ns.dask_address
        if (ns.runner or "").lower() == "dask" and not dask_address:
            dask_address = stack.enter_context(local_dask_cluster())
        try:
            if ns.every:
                return run_every(ns.every, feeds, settings, ns.output, beam_args, ns.runner, dask_address,
                                 workers, ns.max_run_time or max(ns.every, MIN_EVERY_RUN_TIME), ns.verbose)
            run_once(feeds, settings, ns.output, beam_args, ns.runner, dask_address, workers,
                     ns.max_run_time or DEFAULT_RUN_TIME, ns.verbose)
        except LockedError as e:
            print(f"warta: {e}", file=sys.stderr)
            return EXIT_LOCKED
    return EXIT_OK


class local_dask_cluster:
    """A local dask.distributed cluster (2 worker processes) for ``--runner dask`` without an address."""

    def __enter__(self) -> str:
        from distributed import LocalCluster
        self.cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
        return self.cluster.scheduler_address

    def __exit__(self, *exc) -> None:
        self.cluster.close()


def run_every(interval: float, feeds, settings: Settings, output: str, beam_args: list[str],
              runner: str | None, dask_address: str | None, workers: int | None, max_run_time: float,
              verbose: bool = False) -> int:
    """Bounded runs in one long-lived process until SIGINT/SIGTERM; the poll in flight is finished."""
    stop = threading.Event()

    def request_stop(signum, _frame):
        log.info("signal %s: finishing the current poll, then exiting", signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.is_set():
            started = time.monotonic()
            try:
                run_once(feeds, settings, output, beam_args, runner, dask_address, workers, max_run_time, verbose)
            except LockedError as e:
                log.warning("skipping this poll: %s", e)
            except Exception:
                log.exception("poll failed; nothing from it was committed, the next poll retries")
            stop.wait(max(0.0, interval - (time.monotonic() - started)))
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return EXIT_OK


# Subcommand -> "module:function"; the function takes the remaining argv and returns an exit status.
# Imported only when chosen, so `warta run` never pays for another command's imports.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("pipeline.cli:run", "poll the feeds once (or --every INTERVAL) and commit to the lake"),
    "report": ("pipeline.report:report", "write one self-contained HTML page about the lake (--output, --days, --to)"),
    "stats": ("pipeline.report:stats", "print the lake's key numbers as a plain table (for terminals and cron mail)"),
    "errors": ("pipeline.errors:errors", "list remembered failures, or `retry` them on the next run"),
    "compact": ("pipeline.compact:compact_command", "rewrite each partition's small files into large sorted ones; retention"),
    "models": ("pipeline.models_cmd:models", "download Stanza NER models (`models download en`), list those found"),
    "backfill": ("pipeline.backfill:backfill", "add older articles of the feeds' sites (paged feeds, sitemaps)"),
    "archive": ("pipeline.backfill:archive", "add the articles of WARC files (e.g. CC-NEWS) without fetching"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {about}" for name, (_, about) in COMMANDS.items()]
    return ("usage: warta COMMAND [ARGS]   (`warta ARGS` without a command is `warta run ARGS`)\n\n"
            "commands:\n" + "\n".join(lines) + "\n\n`warta COMMAND --help` for a command's flags.")


def dispatch(argv: list[str]) -> int:
    if argv[:1] == ["help"]:
        print(usage())
        return EXIT_OK
    if argv in (["-h"], ["--help"]):  # the command list, then the flags of the default command (run)
        print(usage() + "\n")
    if not argv or argv[0].startswith("-"):
        return run(argv)
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"warta: unknown command {name!r}\n{usage()}", file=sys.stderr)
        return EXIT_CONFIG
    import importlib
    module, func = COMMANDS[name][0].split(":")
    return getattr(importlib.import_module(module), func)(rest)


def main(argv: list[str] | None = None) -> None:
    sys.exit(dispatch(sys.argv[1:] if argv is None else argv))
