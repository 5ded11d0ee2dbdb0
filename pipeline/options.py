"""Command-line flags: ours are parsed here, everything else goes to Beam's PipelineOptions."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from config.settings import DEFAULT_FEEDS

EPILOG = """\
Settings file (--config, YAML; every key optional, flags override it):
  http:
    user_agent: "warta/0.1.0 (+https://github.com/warta-news/warta)"
    connect_timeout: 5        read_timeout: 15       total_timeout: 30   # seconds
    max_bytes: 5000000        max_feed_bytes: 10000000                    # decoded body caps
    max_redirects: 5          retries: 2             backoff: 0.5
    respect_robots: true      host_delay: 1.0        max_crawl_delay: 30
    fetch_threads: 16         block_private_addresses: false
  ner:
    enabled: true             batch_size: 32         threads: null
    model_dir: null           # <dir>/<lang>/ner.pt (+ ner_pretrain.pt) for languages other than id
    languages: {}             # {en: {ner_model_path: ..., ner_pretrain_path: ...}}
  dedup:
    near_threshold: 0.8       window_days: 7         shingle_size: 5     num_perm: 128
  max_items_per_feed: 500     # new entries per feed per poll; the rest wait for the next poll
  min_text_chars: 200         lock_ttl: 3600
  storage_options: {}         # passed to fsspec (e.g. {endpoint_url: ..., key: ..., secret: ...})

Any other flag is a Beam pipeline option (e.g. --direct_num_workers 2, --runner FlinkRunner).
Exit status: 0 run completed (failed feeds/pages are rows in errors/), 2 misconfiguration,
3 the output is locked by another run, 1 unexpected failure (nothing committed; rerun).
"""


def parse_duration(text: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"invalid interval {text!r}: use e.g. 30s, 15m, 1h")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="run_local.py",
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
    ap.add_argument("--runner", default=None, help="direct (default), dask, or any Beam runner name")
    ap.add_argument("--dask-address", help="tcp://HOST:PORT of a dask scheduler (default: start a local cluster)")
    add_setting_overrides(ap)
    ap.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return ap


def add_setting_overrides(ap: argparse.ArgumentParser) -> None:
    """Flags that override one setting each (``dest`` is the setting's dotted path); shared by commands."""
    g = ap.add_argument_group("setting overrides")
    g.add_argument("--user-agent", dest="http.user_agent")
    g.add_argument("--host-delay", dest="http.host_delay", type=float, help="seconds between requests to a host")
    g.add_argument("--timeout", dest="http.total_timeout", type=float, help="total seconds per response")
    g.add_argument("--max-bytes", dest="http.max_bytes", type=int, help="page size cap (decoded bytes)")
    g.add_argument("--ignore-robots", dest="http.respect_robots", action="store_const", const=False)
    g.add_argument("--block-private", dest="http.block_private_addresses", action="store_const", const=True,
                   help="refuse hosts that resolve to private, loopback or link-local addresses")
    g.add_argument("--max-items-per-feed", dest="max_items_per_feed", type=int)
    g.add_argument("--no-ner", dest="ner.enabled", action="store_const", const=False)
    g.add_argument("--ner-model-dir", dest="ner.model_dir", help="directory of <lang>/ner.pt Stanza models")
    g.add_argument("--near-threshold", dest="dedup.near_threshold", type=float)
    g.add_argument("--window-days", dest="dedup.window_days", type=int)


def split_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str], dict[str, Any]]:
    """Our namespace, the leftover Beam arguments, and the dotted setting overrides given as flags."""
    ns, beam_args = parser().parse_known_args(argv)
    return ns, beam_args, setting_overrides(ns)


def setting_overrides(ns: argparse.Namespace) -> dict[str, Any]:
    """The settings given as flags (see :func:`add_setting_overrides`)."""
    overrides = {k: v for k, v in vars(ns).items() if "." in k or k == "max_items_per_feed"}
    return {k: v for k, v in overrides.items() if v is not None}
