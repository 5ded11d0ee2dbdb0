"""The ``warta`` command: subcommands (``warta run|compact|report|…``) and the run command itself.

``run(argv)``: one bounded run, or a loop of them with ``--every``; the summary line; exit codes.
``run_local.py ARGS`` and ``warta ARGS`` without a subcommand are ``warta run ARGS``.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from contextlib import ExitStack
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from config.settings import ConfigError, Settings, load_feeds, load_settings
from pipeline.build import Plan, build
from lake.commit import LockedError, RunLock, commit, new_run_id, recover, summarize_staged
from pipeline.options import split_args
from lake.state import FEEDS_FILE
from lake.store import Store

log = logging.getLogger("warta")
EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_LOCKED = 0, 1, 2, 3
def beam_options(beam_args: list[str], runner: str | None, dask_address: str | None) -> PipelineOptions:
    args = list(beam_args)
    name = (runner or "direct").lower()
    if name == "direct":
        args += ["--runner", "DirectRunner"]
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
        from apache_beam.options.pipeline_options import DirectOptions
        workers = options.view_as(DirectOptions).direct_num_workers or 1
        if workers <= 0:
            workers = os.cpu_count() or 1
    else:
        workers = 2 if name == "dask" else 8
    # Beam's DaskRunner drops elements emitted from finish_bundle (batch through a shuffle there) and
    # computes only the graph of the last transform (so all sinks must feed one last step); any runner
    # other than the DirectRunner gets the join, which costs one small extra stage.
    return settings.parallelism or workers, "shuffle" if name == "dask" else "bundle", name != "direct"


def summary_line(c: dict[str, Any], seconds: float) -> str:
    line = (f"warta run {c.get('run_id', '')}: feeds polled={c['feeds_polled']} unchanged={c['feeds_unchanged']} "
            f"failed={c['feeds_failed']} | entries new={c['entries_new']} | pages fetched={c['pages_fetched']} "
            f"extracted={c['pages_extracted']} | duplicates exact={c['duplicates_exact']} near={c['duplicates_near']} "
            f"| entities={c['entities']} | rows written={c['articles_written']} "
            f"| errors={c['errors_written']} | {seconds:.1f}s")
    if c.get("no_model"):
        line += f" | no NER model for: {', '.join(c['no_model'])}"
    return line


def run_once(feeds, settings: Settings, output: str, beam_args: list[str], runner: str | None = None,
             dask_address: str | None = None) -> dict[str, Any]:
    """Poll, process, commit. Raises LockedError when another run holds the output."""
    t0 = time.monotonic()
    store = Store(output, settings.storage_options)
    run_id = new_run_id()
    with RunLock(store, run_id, ttl=settings.lock_ttl):
        recover(store, settings.dedup.window_days)
        options = beam_options(beam_args, runner, dask_address)
        workers, ner_batching, join_sinks = parallel_layout(options, runner, settings)
        plan = Plan(feeds=feeds, settings=settings, store=store, run_id=run_id,
                    validators=store.read_json(FEEDS_FILE, default={}) or {},
                    workers=workers, ner_batching=ner_batching, join_sinks=join_sinks)
        p = beam.Pipeline(options=options)
        build(p, plan)
        result = p.run()
        result.wait_until_finish()
        if hasattr(result, "client"):  # DaskRunner opens its own client: close it before the cluster goes
            result.client.close()
        stats = {"run_id": run_id, **summarize_staged(store, run_id)}
        paths = plan.ner_paths()
        stats["no_model"] = [lang for lang in stats.pop("languages") if not paths.get(lang)] if settings.ner.enabled else []
        stats["seconds"] = round(time.monotonic() - t0, 2)
        commit(store, run_id, stats, settings.dedup.window_days)
    log.info(summary_line(stats, stats["seconds"]))
    return stats


def configure_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    for noisy in ("apache_beam", "stanza", "distributed", "torch"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, getattr(logging, level)))
    for chatty in ("trafilatura", "htmldate", "courlan", "urllib3"):  # per-page notices; failures reach errors/ anyway
        logging.getLogger(chatty).setLevel(max(logging.ERROR, getattr(logging, level)))


def run(argv: list[str] | None = None) -> int:
    ns, beam_args, overrides = split_args(argv)
    configure_logging(ns.log_level)
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
                return run_every(ns.every, feeds, settings, ns.output, beam_args, ns.runner, dask_address)
            run_once(feeds, settings, ns.output, beam_args, ns.runner, dask_address)
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
              runner: str | None, dask_address: str | None) -> int:
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
                run_once(feeds, settings, output, beam_args, runner, dask_address)
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
