"""``warta errors list|retry``: the remembered failures of an output (``_state/failures/``, see lake/failures.py).

``retry`` makes the matching failures due now (attempts reset) and drops their feeds' ETag/Last-Modified, so
the next run polls those feeds in full and fetches the pages again. It takes the output's lock.
"""

from __future__ import annotations

import argparse
import sys

from warta.config.settings import ConfigError, load_settings
from warta.lake.commit import LockedError, RunLock, new_run_id
from warta.lake.failures import matching, read_records, retry_now
from warta.lake.state import FEEDS_FILE
from warta.lake.store import Store
from warta.pipeline.exits import EXIT_CONFIG, EXIT_LOCKED, EXIT_OK
from warta.transforms.records import STAGES, utcnow


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="warta errors", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="action", required=True)
    for action, about in (("list", "show the remembered failures"),
                          ("retry", "fetch the matching failures again on the next run")):
        p = sub.add_parser(action, help=about)
        p.add_argument("--output", required=True, help="the lake (local path or fsspec URL)")
        p.add_argument("--config", help="settings YAML (for storage_options)")
        p.add_argument("--stage", choices=STAGES, help="only failures of this stage")
        p.add_argument("--source", help="only failures of this feed name")
    return ap


def errors(argv: list[str]) -> int:
    ns = parser().parse_args(argv)
    try:
        settings = load_settings(ns.config)
    except ConfigError as e:
        print(f"warta: configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    store = Store(ns.output, settings.storage_options)
    if ns.action == "list":
        for r in matching(read_records(store), ns.stage, ns.source):
            retry = r["retry_at"].isoformat() if r["retry_at"] else "never"
            print(f"{r['stage']}\t{r['source']}\t{r['attempts']}\t{retry}\t{r['url']}\t{r['error']}")
        return EXIT_OK
    try:
        with RunLock(store, new_run_id(), ttl=settings.lock_ttl):
            hits = retry_now(store, utcnow(), ns.stage, ns.source)
            feeds = store.read_json(FEEDS_FILE, default={}) or {}
            for feed_url in {r["feed_url"] for r in hits} & feeds.keys():
                feeds[feed_url].update(etag=None, last_modified=None)
            if hits:
                store.write_json(FEEDS_FILE, feeds)
    except LockedError as e:
        print(f"warta: {e}", file=sys.stderr)
        return EXIT_LOCKED
    print(f"warta errors retry: {len(hits)} failure(s) will be fetched again on the next run", file=sys.stderr)
    return EXIT_OK
