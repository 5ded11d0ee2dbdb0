"""``warta backfill`` end to end on a loopback WordPress-like outlet: range, robots, resumption, no refetching.

The outlet: 2,000 posts over two years, 40 feed pages of 50, a sitemap index of three sitemaps (one gzipped,
one Google News); ``--since`` one year back takes about 1,000 of them. Host delay 0, no NER.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

import duckdb
import pytest
from conftest import ROOT
from outlet import SINCE, Outlet

pytestmark = pytest.mark.slow


def backfill(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run_local.py"), "backfill", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def lake_urls(out, dataset="articles") -> list[str]:
    if not list((out / dataset).rglob("*.parquet")):
        return []
    rel = duckdb.sql(f"select url from read_parquet('{out}/{dataset}/**/*.parquet', hive_partitioning=true)")
    return [r[0] for r in rel.fetchall()]


def article_requests(server) -> list[str]:
    return [p for p in server.paths_requested() if "/berita-" in p]


@pytest.fixture
def outlet(server):
    return Outlet(server, posts=2000, per_page=50)


def test_backfill_takes_exactly_the_posts_in_range_once_and_never_again(outlet, server, tmp_path, fast_config):
    assert outlet.feed_pages == 40
    feeds, out = outlet.feeds_yaml(tmp_path / "feeds.yaml"), tmp_path / "lake"
    args = ("--feeds", feeds, "--output", out, "--config", fast_config, "--no-ner", "--since", SINCE)
    res = backfill(*args)
    assert res.returncode == 0, res.stderr[-3000:]
    urls = lake_urls(out)
    assert sorted(urls) == sorted(outlet.in_range())  # each once
    assert set(lake_urls(out, "errors")) == outlet.disallowed_in_range()  # robots: error rows, never requested
    asked = server.paths_requested()
    assert not any(p.startswith("/rahasia/") for p in asked) and "/sitemap-old.xml" not in asked
    assert len(article_requests(server)) == len(set(article_requests(server))) == len(urls)
    summary = res.stderr.strip().splitlines()[-1]
    n = len(outlet.in_range() | outlet.disallowed_in_range())
    assert f"discovered={n} " in summary and "other-domain=1 " in summary and "sitemaps=1 " in summary, summary
    assert f"rows written={len(urls)} " in summary and "pending=0 " in summary, summary

    server.requests.clear()  # the same backfill again: done, nothing is asked for
    again = backfill(*args)
    assert again.returncode == 0 and server.paths_requested() == [] and sorted(lake_urls(out)) == sorted(urls)
    assert "pages fetched=0 " in again.stderr

    # a wider range is discovered afresh: only the posts not yet in the lake are fetched
    server.requests.clear()
    wider = SINCE - timedelta(days=60)
    more = backfill(*args[:-1], wider)
    assert more.returncode == 0, more.stderr[-3000:]
    assert sorted(lake_urls(out)) == sorted(outlet.in_range(wider))
    assert not {server.base + p for p in article_requests(server)} & set(urls)
    # robots-disallowed posts are remembered failures, not due again yet: not even an error row twice
    assert f"in-lake={len(urls)} failed-not-due={len(outlet.disallowed_in_range())} " in more.stderr


@pytest.mark.parametrize("kill", ["fetch", "publish", "after-a-chunk"])
def test_killed_backfill_continues_where_it_stopped(kill, outlet, server, tmp_path, fast_config):
    feeds, out = outlet.feeds_yaml(tmp_path / "feeds.yaml"), tmp_path / "lake"
    args = ["--feeds", feeds, "--output", out, "--config", fast_config, "--no-ner", "--since", SINCE,
            "--batch-size", 200]
    if kill == "after-a-chunk":  # SIGKILL once a chunk is committed (discovery and a chunk: two runs)
        proc = subprocess.Popen([sys.executable, str(ROOT / "run_local.py"), "backfill", *map(str, args)], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        runs = out / "_state" / "runs"
        deadline = time.monotonic() + 120
        while (len(list(runs.glob("*.json"))) if runs.exists() else 0) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    else:
        killed = backfill(*args, "--workers", 1, env={"WARTA_KILL_AT": kill})  # in-process: the kill ends it
        assert killed.returncode == -signal.SIGKILL
    before = set(lake_urls(out))
    assert len(before) < len(outlet.in_range())
    server.requests.clear()
    rerun = backfill(*args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert sorted(lake_urls(out)) == sorted(outlet.in_range())
    assert not {server.base + p for p in article_requests(server)} & before  # what was committed is not refetched
    assert "pending=0 " in rerun.stderr


def test_run_budget_and_flags(outlet, server, tmp_path, fast_config):
    feeds, out = outlet.feeds_yaml(tmp_path / "feeds.yaml"), tmp_path / "lake"
    spent = backfill("--feeds", feeds, "--output", out, "--config", fast_config, "--since", SINCE,
                     "--max-run-time", "0s")
    assert spent.returncode == 0 and "pending=1 " in spent.stderr and server.paths_requested() == []
    assert backfill("--feeds", feeds, "--output", out, "--since", SINCE, "--bogus").returncode == 2
    assert backfill("--feeds", feeds, "--output", out).returncode == 2  # --since is required
    assert backfill("--feeds", feeds, "--output", out, "--since", "last year").returncode == 2
