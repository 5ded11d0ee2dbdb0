"""The ``warta`` command: the command table, dispatch, and the run command itself.

``run(argv)``: one bounded run, or a loop of them with ``--every``; the summary line; exit codes.
``warta`` alone prints the usage (exit 2) and never crawls. Flags without a command are ``warta run FLAGS``
when they say which feeds (``--feeds FILE`` or ``--example``); ``run_local.py FLAGS`` (for scripts) is always
``warta run FLAGS``, and ``run_local.py`` alone prints the usage like ``warta``.
"""

from __future__ import annotations

import difflib
import logging
import signal
import sys
import threading
import time
from contextlib import ExitStack
from typing import Any

logging.getLogger().setLevel(logging.ERROR)  # Beam's import-time warnings (apitools); run() sets up logging


from warta.config.settings import ConfigError, Settings, load_feeds  # noqa: E402
from warta.lake.commit import LockedError, RunLock, backlog_files, commit, new_run_id, recover, summarize_staged  # noqa: E402
from warta.lake.compact import compact_after_run  # noqa: E402
from warta.lake.schema import staging_dir  # noqa: E402
from warta.lake.state import with_lake_layout  # noqa: E402
from warta.lake.store import Store  # noqa: E402
from warta.pipeline.build import Plan, build, write_feeds  # noqa: E402
from warta.pipeline.command import Exit, call, command, lock_or_exit, settings_or_exit, start_logging  # noqa: E402
from warta.pipeline.exits import EXIT_CONFIG, EXIT_OK  # noqa: E402
from warta.pipeline.options import split_args, usable_cpus  # noqa: E402
from warta.pipeline.progress import ProgressLine  # noqa: E402
from warta.pipeline.runner import (  # noqa: E402
    beam_options,
    execute,
    local_dask_cluster,
    parallel_layout,
    sized_to_machine,
    worker_pool,
)
from warta.transforms.ner import check_ner  # noqa: E402

log = logging.getLogger("warta")
DEFAULT_RUN_TIME = 15 * 60.0  # seconds: the budget of a one-shot run
MIN_EVERY_RUN_TIME = 60.0  # with --every the budget is the interval, but at least this (start-up must fit)
COMMIT_ALLOWANCE = 30 * 60.0  # seconds: the lock outlives the budget by this much (NER tail, commit, compaction)
POLL_RETRIES = 2  # with --every: times a poll is run again at once when a worker process died during it


def summary_line(c: dict[str, Any], seconds: float) -> str:
    line = (f"warta run {c.get('run_id', '')}: feeds polled={c['feeds_polled']} unchanged={c['feeds_unchanged']} "
            f"failed={c['feeds_failed']} | entries new={c['entries_new']} from backlog={c.get('entries_backlog', 0)} "
            f"left pending={c.get('entries_pending', 0)} | pages fetched={c['pages_fetched']} "
            f"extracted={c['pages_extracted']} | duplicates exact={c['duplicates_exact']} near={c['duplicates_near']} "
            f"| entities={c['entities']} | rows written={c['articles_written']} "
            f"| errors={c['errors_written']} | "
            + (f"model load {c['model_load_s']:.1f}s | " if "model_load_s" in c else "") + f"{seconds:.1f}s")
    if c.get("no_model"):  # {language: articles}
        missing = ", ".join(f"{lang} ({n} article{'s' * (n != 1)})" for lang, n in c["no_model"].items())
        line += f" | no NER model for {missing}: get one with `warta models download {' '.join(c['no_model'])}`"
    return line


class cancel_on_signals:
    """While a one-shot run's job runs: SIGTERM is raised as KeyboardInterrupt, like SIGINT, so the job is
    cancelled (:func:`~warta.pipeline.runner.execute`) and nothing is committed. Only where no one else
    handles the signals (``--every`` finishes the poll in flight instead) and in the main thread."""

    def __enter__(self):
        self.previous = None
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGTERM) == signal.SIG_DFL and \
                signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self.previous = signal.signal(signal.SIGTERM, self.interrupt)
        return self

    @staticmethod
    def interrupt(signum, _frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def run_once(feeds, settings: Settings, output: str, beam_args: list[str], runner: str | None = None,
             dask_address: str | None = None, workers: int | None = None,
             max_run_time: float = DEFAULT_RUN_TIME, verbose: bool = False) -> dict[str, Any]:
    """Poll, process, commit. Raises LockedError when another run holds the output.

    The launcher stays small: the feeds list is staged as a file the pipeline reads, validators and the
    backlog are read by the workers, counts come from the staged summaries. Past ``max_run_time``
    seconds from the job's start on the workers, no new page fetch starts; entries not fetched wait in
    the backlog. SIGINT/SIGTERM cancel the job; nothing is committed."""
    t0 = time.monotonic()
    store = Store(output, settings.storage_options)
    run_id = new_run_id()
    # the heartbeat refreshes the lock, but a lock whose heartbeats fail must still outlive the job
    ttl = max(settings.lock_ttl, max_run_time + COMMIT_ALLOWANCE)
    with RunLock(store, run_id, ttl=ttl) as lock, cancel_on_signals():
        recover(store, settings.dedup.window_days, lock)
        settings = with_lake_layout(settings, store)  # an existing lake keeps its recorded layout
        taken = backlog_files(store)
        options = beam_options(beam_args, runner, dask_address, workers, quiet=not verbose)
        settings = sized_to_machine(settings, options, runner)
        groups, ner_batching, join_sinks = parallel_layout(options, runner, settings)
        try:
            staged_feeds = write_feeds(store, run_id, feeds)
            with ProgressLine(len(feeds), time.time() + max_run_time) as progress:
                plan = Plan(feeds=feeds, settings=settings, store=store, run_id=run_id, validators=None,
                            workers=groups, ner_batching=ner_batching, join_sinks=join_sinks, backlog=taken,
                            budget=max_run_time, progress_dir=progress.directory, feeds_file=staged_feeds)
                execute(build, plan, options, runner, verbose)
        except KeyboardInterrupt:
            log.warning("run %s cancelled: nothing was committed", run_id)
            store.remove(staging_dir(run_id), recursive=True)
            raise
        stats = {"run_id": run_id, **summarize_staged(store, run_id)}
        paths = plan.ner_paths()
        stats["no_model"] = {lang: n for lang, n in stats.pop("languages").items()
                             if lang != "None" and not paths.get(lang)} if settings.ner.enabled else {}
        if settings.ner.enabled:
            stats["model_load_s"] = progress.model_load_s  # summed over the worker processes
        stats["seconds"] = round(time.monotonic() - t0, 2)
        manifest = commit(store, run_id, stats, settings.dedup.window_days, backlog_taken=taken, lock=lock)
        compact_after_run(store, settings.lake, manifest["files"], fence=lock.check)
    log.info(summary_line(stats, stats["seconds"]))
    return stats


@command("warta run")
def run(argv: list[str] | None = None) -> int:
    ns, beam_args, overrides = split_args(argv)
    start_logging(ns)
    if ns.workers is not None and ns.workers < 1:
        raise Exit(EXIT_CONFIG, "--workers must be at least 1")
    # One worker process per CPU; with --every they are long-lived (worker_pool), so models stay loaded.
    workers = ns.workers or usable_cpus()
    with ExitStack() as stack:
        if ns.example:
            from warta.pipeline.example import serve_example
            ns.feeds, example_overrides = stack.enter_context(serve_example())
            overrides = {**example_overrides, **overrides}
            if ns.output == "./data":
                ns.output = "./data-example"
        settings = settings_or_exit(ns.config, overrides)
        try:
            ns.runner = ns.runner or settings.runner  # the flag wins over the settings file
            feeds = load_feeds(ns.feeds)
            check_ner(settings.ner, ns.runner)
        except ConfigError as e:
            raise Exit(EXIT_CONFIG, f"configuration error: {e}") from None
        try:
            Store(ns.output, settings.storage_options).check_writable()
        except Exception as e:  # unwritable or unreachable output
            raise Exit(EXIT_CONFIG, f"configuration error: output {ns.output} is not writable: "
                                    f"{type(e).__name__}: {e}") from None
        dask_address = ns.dask_address
        if (ns.runner or "").lower() == "dask" and not dask_address:
            dask_address = stack.enter_context(local_dask_cluster())
        with lock_or_exit():
            if ns.every:
                return run_every(ns.every, feeds, settings, ns.output, beam_args, ns.runner, dask_address,
                                 workers, ns.max_run_time or max(ns.every, MIN_EVERY_RUN_TIME), ns.verbose)
            try:
                run_once(feeds, settings, ns.output, beam_args, ns.runner, dask_address, workers,
                         ns.max_run_time or DEFAULT_RUN_TIME, ns.verbose)
            except ConfigError as e:  # found by a worker (a NER model it cannot load): nothing was committed
                raise Exit(EXIT_CONFIG, f"configuration error: {e}") from None
    return EXIT_OK


def run_every(interval: float, feeds, settings: Settings, output: str, beam_args: list[str],
              runner: str | None, dask_address: str | None, workers: int | None, max_run_time: float,
              verbose: bool = False) -> int:
    """Bounded runs in one long-lived process until SIGINT/SIGTERM; the poll in flight is finished.

    On the DirectRunner with more than one worker, the worker processes are started once and serve every
    poll (their NER models stay loaded); a poll that fails because one of them died is retried at once
    with a replacement (at most ``POLL_RETRIES`` times), otherwise the next poll retries."""
    stop = threading.Event()

    def request_stop(signum, _frame):
        log.info("signal %s: finishing the current poll, then exiting", signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with ExitStack() as stack:
            pool = None
            if (runner or "direct").lower() == "direct" and (workers or 1) > 1 and not any(
                    a.startswith("--direct_") for a in beam_args):
                pool = stack.enter_context(worker_pool(workers, verbose))
            while not stop.is_set():
                started = time.monotonic()
                for attempt in range(POLL_RETRIES + 1):
                    deaths = pool.deaths if pool else 0
                    try:
                        run_once(feeds, settings, output, beam_args, runner, dask_address, workers, max_run_time,
                                 verbose)
                    except LockedError as e:
                        log.warning("skipping this poll: %s", e)
                    except Exception:
                        if pool and pool.deaths > deaths and attempt < POLL_RETRIES and not stop.is_set():
                            log.warning("poll failed: a worker process died; nothing from it was committed, "
                                        "retrying with a new one")
                            continue
                        log.exception("poll failed; nothing from it was committed, the next poll retries")
                    break
                stop.wait(max(0.0, interval - (time.monotonic() - started)))
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return EXIT_OK


# Subcommand -> ("module:function", what it does); the function takes the remaining argv and returns an exit
# status (or raises command.Exit). Imported only when chosen, so `warta run` never pays for another command's imports.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("warta.pipeline.cli:run", "poll the feeds once (or --every INTERVAL) and commit to the lake"),
    "report": ("warta.pipeline.report:report", "write one self-contained HTML page about the lake"),
    "stats": ("warta.pipeline.report:stats", "print the lake's key numbers as a plain table (terminals, cron mail)"),
    "errors": ("warta.pipeline.errors:errors", "list remembered failures, or `retry` them on the next run"),
    "compact": ("warta.pipeline.compact:compact_command", "rewrite each partition's small files into large ones; retention"),
    "models": ("warta.pipeline.models_cmd:models", "download Stanza NER models (`models download en`), list those found"),
    "backfill": ("warta.pipeline.backfill:backfill", "add older articles of the feeds' sites (paged feeds, sitemaps)"),
    "archive": ("warta.pipeline.backfill:archive", "add the articles of WARC files (e.g. CC-NEWS) without fetching"),
}
RUN_SELECTORS = ("--feeds", "--example")  # flags that make `warta FLAGS…` (no command) a run


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {about}" for name, (_, about) in COMMANDS.items()]
    return ("usage: warta COMMAND [ARGS]\n\n"
            "commands:\n" + "\n".join(lines) + "\n\n"
            "  warta --example             try it: the bundled sample outlets, into ./data-example\n"
            "  warta run                   poll the feeds of config/feeds.yaml into ./data\n"
            "  warta --feeds FILE [ARGS]   the same as `warta run --feeds FILE [ARGS]`\n\n"
            "`warta COMMAND --help` for a command's flags. Exit status: 0 done, 1 failed (nothing committed; "
            "rerun),\n2 usage or configuration error (nothing done), 3 the lake is locked by another run.")


def selects_run(argv: list[str]) -> bool:
    """Flags without a command run only when they say which feeds (``--feeds``, ``--example``)."""
    return any(a == s or a.startswith(s + "=") for a in argv for s in RUN_SELECTORS)


def dispatch(argv: list[str], flags_run: bool = False) -> int:
    """``flags_run``: flags without a command are always ``warta run`` (``run_local.py``, for scripts)."""
    if not argv:  # a tool's name alone asks what it is: never start a crawl
        print(usage())
        return EXIT_CONFIG
    if argv[0] in ("help", "-h", "--help"):
        print(usage())
        return EXIT_OK
    if argv[0].startswith("-"):
        if not (flags_run or selects_run(argv)):
            print("warta: no command: `warta run ARGS` polls the feeds (config/feeds.yaml unless --feeds FILE), "
                  "`warta --example` tries the sample outlets, `warta --help` lists the commands", file=sys.stderr)
            return EXIT_CONFIG
        argv = ["run", *argv]
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" (did you mean `warta {close[0]}`?)" if close else ""
        print(f"warta: unknown command {name!r}{hint}; `warta --help` lists the commands", file=sys.stderr)
        return EXIT_CONFIG
    import importlib
    module, func = COMMANDS[name][0].split(":")
    return call(f"warta {name}", getattr(importlib.import_module(module), func), rest)


def main(argv: list[str] | None = None, flags_run: bool = False) -> None:
    sys.exit(dispatch(sys.argv[1:] if argv is None else argv, flags_run))
