"""``warta compact``: compaction and retention of a lake, under its lock (see :mod:`lake.compact`)."""

from __future__ import annotations

import argparse
import logging
import re
import time
from pathlib import Path

from warta.lake.commit import recover
from warta.lake.compact import Policy, compact, record_lake_schema
from warta.pipeline.command import (
    Exit,
    add_log_level,
    command,
    command_parser,
    lake_or_exit,
    locked_lake,
    settings_or_exit,
    start_logging,
)
from warta.pipeline.exits import EXIT_CONFIG, EXIT_OK

log = logging.getLogger("warta")


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?)B?\s*", text.upper())
    if not m:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: use e.g. 128MB, 1GB")
    return int(float(m.group(1)) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[m.group(2)])


def parser() -> argparse.ArgumentParser:
    ap = command_parser(
        "warta compact", log_level=False,
        description="Rewrite each partition's files into few files of the target size (rows sorted by "
                    "published_at, errors by at; zstd) and delete data past retention. Crash-safe and "
                    "idempotent; takes the output's lock like a run. Exit 3 when the output is locked.")
    ap.add_argument("--output", required=True, help="lake root: local path or fsspec URL")
    ap.add_argument("--config", type=Path, help="settings YAML (storage_options, lake.*)")
    ap.add_argument("--target-size", type=parse_size, help="file size to aim for (default: lake.compact_target_mb)")
    ap.add_argument("--partition", action="append", default=[], metavar="PREFIX",
                    help="only below this path, e.g. articles/date=2024-11-12 (repeatable; default: articles and errors)")
    ap.add_argument("--retention-days", type=int, help="delete articles older than this (default: lake.retention_days)")
    ap.add_argument("--errors-retention-days", type=int, help="delete errors older than this (default: lake.errors_retention_days)")
    add_log_level(ap)
    return ap


@command("warta compact")
def compact_command(argv: list[str]) -> int:
    ns = parser().parse_args(argv)
    start_logging(ns)
    settings = settings_or_exit(ns.config)
    bad = [p for p in ns.partition if p.split("/", 1)[0] not in ("articles", "errors") or ".." in p]
    if bad:
        raise Exit(EXIT_CONFIG, f"configuration error: --partition must start with articles/ or errors/: {bad[0]}")
    policy = Policy.from_settings(settings.lake)
    if ns.target_size:
        policy.target_bytes = ns.target_size
    for dataset, days in (("articles", ns.retention_days), ("errors", ns.errors_retention_days)):
        if days is not None:
            policy.retention_days[dataset] = days
    t0 = time.monotonic()
    store = lake_or_exit(ns.output, settings)
    with locked_lake(store, settings) as lock:
        recover(store, settings.dedup.window_days, lock)
        stats = compact(store, policy, [p.rstrip("/") for p in ns.partition] or ("articles", "errors"),
                        fence=lock.check)
        record_lake_schema(store, settings.lake.layout)
    log.info("warta compact: partitions rewritten=%d expired=%d | files %d -> %d | %.1fs",
             stats["partitions_rewritten"], stats["partitions_expired"], stats["files_before"],
             stats["files_after"], time.monotonic() - t0)
    return EXIT_OK
