"""Command-line flags: ours are parsed here, everything else goes to Beam's PipelineOptions."""

from __future__ import annotations

import argparse
import math
import os
import re
from pathlib import Path
from typing import Any

from warta.config.docs import epilog_text
from warta.config.settings import DEFAULT_FEEDS
from warta.pipeline.command import Exit, add_log_level, command_parser
from warta.pipeline.exits import EXIT_CONFIG

EPILOG = epilog_text() + """

Beam pipeline options known to Beam (e.g. --runner FlinkRunner, --direct_num_workers 2) are passed to
Beam; anything after a bare `--` goes to Beam unchecked (options of runners not installed here).
Any other argument is an error (exit 2): a mistyped flag never runs with the defaults.
Exit status: 0 run completed (failed feeds/pages are rows in errors/), 2 misconfiguration,
3 the output is locked by another run, 1 unexpected failure (nothing committed; rerun).
"""


def parse_duration(text: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"invalid interval {text!r}: use e.g. 30s, 15m, 1h")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def parser() -> argparse.ArgumentParser:
    ap = command_parser(
        "warta run", log_level=False,
        description="warta: poll news feeds, fetch and extract articles, deduplicate, tag entities, "
                    "and write a Hive-partitioned Parquet lake.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--feeds", type=Path, default=DEFAULT_FEEDS, help="feeds YAML (default: %(default)s)")
    ap.add_argument("--output", default="./data", help="lake root: local path or fsspec URL (default: %(default)s)")
    ap.add_argument("--config", type=Path, help="settings YAML (see below)")
    ap.add_argument("--example", action="store_true",
                    help="serve the bundled sample feeds and pages on loopback and run on them "
                         "(output defaults to ./data-example)")
    ap.add_argument("--every", type=parse_duration, metavar="INTERVAL",
                    help="keep polling at this interval (e.g. 90s, 15m, 1h) until SIGINT/SIGTERM")
    ap.add_argument("--workers", type=int, metavar="N",
                    help="worker processes on the DirectRunner (default: the CPUs this process may use; with "
                         "--every they are started once and keep their models loaded). 1 = one in-process worker")
    ap.add_argument("--max-run-time", type=parse_duration, metavar="DURATION",
                    help="run budget (e.g. 90s, 15m, 1h; default 15m, with --every the interval, at least 1m): past it no "
                         "new page fetch starts, what was fetched is committed, the rest waits in _state/backlog/ "
                         "for the next run")
    ap.add_argument("--runner", default=None, help="direct (default), dask, or any Beam runner name")
    ap.add_argument("--dask-address", help="tcp://HOST:PORT of a dask scheduler (default: start a local cluster)")
    add_setting_overrides(ap)
    add_log_level(ap, verbose=True)
    return ap


def add_setting_overrides(ap: argparse.ArgumentParser, fetch: bool = True) -> None:
    """Flags that override one setting each (``dest`` is the setting's dotted path); shared by commands.
    ``fetch=False``: without the flags of polling and fetching (for commands that never fetch)."""
    g = ap.add_argument_group("setting overrides")
    if fetch:
        g.add_argument("--user-agent", dest="http.user_agent")
        g.add_argument("--host-delay", dest="http.host_delay", type=float, help="seconds between requests to a host")
        g.add_argument("--timeout", dest="http.total_timeout", type=float, help="total seconds per response")
    g.add_argument("--max-bytes", dest="http.max_bytes", type=int, help="page size cap (decoded bytes)")
    if fetch:
        g.add_argument("--ignore-robots", dest="http.respect_robots", action="store_const", const=False)
        g.add_argument("--block-private", dest="http.block_private_addresses", action="store_const", const=True,
                       help="refuse hosts that resolve to private, loopback or link-local addresses")
        g.add_argument("--max-items-per-feed", dest="max_items_per_feed", type=int)
    g.add_argument("--no-ner", dest="ner.enabled", action="store_const", const=False)
    g.add_argument("--ner-model-dir", dest="ner.model_dir", help="directory of <lang>/ner.pt Stanza models")
    g.add_argument("--near-threshold", dest="dedup.near_threshold", type=float)
    g.add_argument("--window-days", dest="dedup.window_days", type=int)


def beam_parser() -> argparse.ArgumentParser:
    """Every option of Beam's PipelineOptions classes (as Beam itself collects them)."""
    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser
    ap = _BeamArgumentParser(allow_abbrev=False, add_help=False)
    for cls in {str(c): c for c in PipelineOptions.__subclasses__()}.values():
        cls._add_argparse_args(ap)  # noqa: SLF001 (Beam's own way of listing its options)
    return ap


def split_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str], dict[str, Any]]:
    """Our namespace, the Beam arguments, and the dotted setting overrides given as flags.

    Raises :class:`~warta.pipeline.command.Exit` (2) naming the arguments that neither we nor Beam know (everything after ``--`` is
    passed to Beam unchecked)."""
    argv = list(argv or [])
    unchecked: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, unchecked = argv[:cut], argv[cut + 1:]
    ns, beam_args = parser().parse_known_args(argv)
    _, unknown = beam_parser().parse_known_args(beam_args)
    if unknown:
        raise Exit(EXIT_CONFIG, f"unknown argument{'s' if len(unknown) > 1 else ''}: {' '.join(unknown)} "
                         "(`--help` lists the flags; put options of other Beam runners after `--`)")
    return ns, beam_args + unchecked, setting_overrides(ns)


def setting_overrides(ns: argparse.Namespace) -> dict[str, Any]:
    """The settings given as flags (see :func:`add_setting_overrides`)."""
    overrides = {k: v for k, v in vars(ns).items() if "." in k or k == "max_items_per_feed"}
    return {k: v for k, v in overrides.items() if v is not None}


def usable_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota (``cpu.max``)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)
