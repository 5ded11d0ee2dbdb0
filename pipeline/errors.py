"""``warta errors list|retry``: the failures a lake remembers (``_state/failures/``)."""

from __future__ import annotations

import argparse
import sys

from warta.lake.failures import matching, read_records, retry_now
from warta.lake.state import FEEDS_FILE
from warta.pipeline.command import (
    CommandParser,
    add_log_level,
    command,
    command_parser,
    lake_or_exit,
    locked_lake,
    settings_or_exit,
    start_logging,
)
from warta.pipeline.exits import EXIT_OK
from warta.transforms.records import STAGES, utcnow

ABOUT = """\
The failures a lake remembers: feeds that could not be polled and pages that could not be fetched,
extracted or tagged, each with its attempts and when the next run tries it again.

  warta errors list --output ./data               one line per failure (tab-separated)
  warta errors retry --output ./data --stage fetch   try those again on the next run

`retry` makes the matching failures due now (attempts reset) and forgets their feeds' ETag/Last-Modified,
so the next run polls those feeds in full and fetches the pages again. It takes the lake's lock."""


def parser() -> argparse.ArgumentParser:
    ap = command_parser("warta errors", ABOUT, log_level=False, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="action", required=True, metavar="{list,retry}", parser_class=CommandParser)
    for action, about in (("list", "show the remembered failures: stage, source, attempts, retry at, url, error"),
                          ("retry", "fetch the matching failures again on the next run")):
        p = sub.add_parser(action, help=about, description=about)
        p.add_argument("--output", required=True, help="the lake (local path or fsspec URL)")
        p.add_argument("--config", help="settings YAML (for storage_options)")
        p.add_argument("--stage", choices=STAGES, help="only failures of this stage")
        p.add_argument("--source", help="only failures of this feed name")
        add_log_level(p)
    return ap


@command("warta errors")
def errors(argv: list[str]) -> int:
    ns = parser().parse_args(argv)
    start_logging(ns)
    settings = settings_or_exit(ns.config)
    store = lake_or_exit(ns.output, settings)
    if ns.action == "list":
        rows = matching(read_records(store), ns.stage, ns.source)
        for r in rows:
            retry = r["retry_at"].isoformat() if r["retry_at"] else "never"
            print(f"{r['stage']}\t{r['source']}\t{r['attempts']}\t{retry}\t{r['url']}\t{r['error']}")
        if not rows:
            which = " ".join(f"--{k} {v}" for k, v in (("stage", ns.stage), ("source", ns.source)) if v)
            print(f"warta errors: no failures remembered in {ns.output}" + (f" matching {which}" if which else ""),
                  file=sys.stderr)
        return EXIT_OK
    with locked_lake(store, settings):
        hits = retry_now(store, utcnow(), ns.stage, ns.source)
        feeds = store.read_json(FEEDS_FILE, default={}) or {}
        for feed_url in {r["feed_url"] for r in hits} & feeds.keys():
            feeds[feed_url].update(etag=None, last_modified=None)
        if hits:
            store.write_json(FEEDS_FILE, feeds)
    print(f"warta errors retry: {len(hits)} failure(s) will be fetched again on the next run", file=sys.stderr)
    return EXIT_OK
