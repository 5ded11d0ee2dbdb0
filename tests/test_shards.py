"""Issue #23 (launcher part): polling and fetch planning sharded by host, per-shard state files merged by
the commit, counts from staged summaries, parallel publish, the feeds list read inside the pipeline, the
budget counted from the job's start on the workers, and the default layout (existing lakes keep theirs)."""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import datetime, timezone

import apache_beam as beam
import pyarrow as pa
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from pages import rss_feed

from warta.config.settings import Feed, HttpSettings, Settings
from warta.lake.commit import commit, gather_state, summarize_staged
from warta.lake.compact import Policy, compact
from warta.lake.schema import ARTICLE_SCHEMA, staging_dir
from warta.lake.state import SCHEMA_FILE, lake_layout, record_schema, with_lake_layout
from warta.lake.store import Store
from warta.net.urls import host_of
from warta.pipeline.build import Plan, _ReadFeedsFn, mark_start, run_deadline, start_marker, write_feeds
from warta.pipeline.loopback import Route
from warta.transforms.feeds import PollFeeds
from warta.transforms.fetch import FetchPages, group_hosts, plan_shard, shard_of
from warta.transforms.write import partition_of, rows_table, write_state

HTTP = HttpSettings(host_delay=0, total_timeout=3, read_timeout=2, retries=0)


def entry(url, source="s"):
    return {"url": url, "feed_url": f"http://{host_of(url)}/rss", "source": source, "language": "id",
            "feed_title": None, "feed_authors": [], "feed_published_at": None}


def world(hosts=40, seed=3):
    """Hosts with 1..12 pages each."""
    return [entry(f"http://h{h}.test/{i}.html") for h in range(hosts) for i in range(1 + (h * 7 + seed) % 12)]


def plan_all(entries, groups):
    """What FetchPages does: shard by host, plan each shard, gather the bins of each fetch group."""
    shards: dict[int, list] = {}
    for e in entries:
        shards.setdefault(shard_of(host_of(e["url"]), groups), []).append(e)
    bins: dict[int, list] = {}
    for shard, es in shards.items():
        for g, b in plan_shard(shard, es, groups, None, 0.0):
            bins.setdefault(g, []).append(b)
    return {g: group_hosts(bs) for g, bs in bins.items()}


def test_shard_of_is_stable_and_spreads_hosts():
    assert shard_of("kompas.com", 7) == shard_of("kompas.com", 7)  # crc32: the same on every worker
    counts = Counter(shard_of(f"outlet{i}.test", 4) for i in range(400))
    assert set(counts) == {0, 1, 2, 3} and min(counts.values()) > 60


def test_each_host_in_one_group_each_page_once_and_groups_balanced():
    entries = world()
    for groups in (1, 2, 3, 8):
        planned = plan_all(entries, groups)
        assert set(planned) <= set(range(groups))
        hosts = [h for g in planned.values() for h, _ in g]
        assert len(hosts) == len(set(hosts)) == 40  # a host is never split: one group, one thread
        urls = sorted(e["url"] for g in planned.values() for _, es in g for e in es)
        assert urls == sorted(e["url"] for e in entries)
        loads = [sum(len(es) for _, es in g) for g in planned.values()]
        if groups <= 3:  # as many groups as workers, about the same number of pages each
            assert len(loads) == groups and max(loads) <= 1.25 * min(loads), loads


def test_fetch_pages_over_three_groups_fetches_every_page_once(server):
    for h in ("a", "b", "c", "d"):
        for i in range(3):
            server.routes[f"/{h}/{i}.html"] = Route(f"<html><body><p>{h} {i}</p></body></html>")
    urls = [server.url(f"/{h}/{i}.html") for h in "abcd" for i in range(3)]
    with TestPipeline() as p:
        out = p | beam.Create([entry(u) for u in urls]) | FetchPages(HTTP, groups=3)
        assert_that(out.pages | beam.Map(lambda r: r["url"]), equal_to(urls))
    assert sorted(p for p in server.paths_requested() if p.endswith(".html")) == sorted(
        f"/{h}/{i}.html" for h in "abcd" for i in range(3))


def test_poll_feeds_sharded_polls_each_feed_once(server):
    feeds = []
    for n in range(6):
        server.routes[f"/f{n}.xml"] = Route(rss_feed(title=f"f{n}", link=server.base, items=[
            {"title": "t", "link": f"{server.base}/f{n}/a.html"}]), "application/rss+xml")
        feeds.append(Feed(name=f"f{n}", url=server.url(f"/f{n}.xml")))
    with TestPipeline() as p:
        out = p | beam.Create(feeds) | PollFeeds(HTTP, lambda: {}, 10, set, shards=3)
        assert_that(out.entries | beam.Map(lambda e: e["source"]), equal_to([f.name for f in feeds]))
        assert_that(out.feed_state | "St" >> beam.Map(lambda s: s["status"]), equal_to(["ok"] * 6), label="st")
    assert sorted(p for p in server.paths_requested() if p.endswith(".xml")) == sorted(f"/f{n}.xml" for n in range(6))


def test_state_shards_are_merged_by_the_commit_and_counted_from_summaries(tmp_path):
    store = Store(str(tmp_path / "lake"))
    run = "20241112T000000-aaa"
    states = [{"feed_url": f"http://h{i}.test/rss", "source": f"s{i}", "status": s, "entries_new": i,
               "etag": f"e{i}"} for i, s in enumerate(["ok", "unchanged", "failed", "ok"])]
    write_state("feeds", states[:2], store, run, 0)
    write_state("feeds", states[2:], store, run, 1)
    write_state("backlog", [{"url": "http://h1.test/x"}], store, run, 1)
    t = datetime(2024, 11, 12, tzinfo=timezone.utc)
    arts = [{"article_id": f"a{i}", "url": f"http://h{i}.test/a", "source": f"s{i % 2}", "language": "id",
             "fetched_at": t, "published_at": t, "entities": [{"text": "x"}] * i,
             "duplicate_of": "a0" if i == 3 else None} for i in range(4)]
    from warta.transforms.write import rows_summary, write_summary
    store.write_table(f"{staging_dir(run)}/articles/date=2024-11-12/part-{run}.parquet",
                      rows_table(arts, ARTICLE_SCHEMA, "article_id"))
    write_summary(store, run, "articles/date=2024-11-12", rows_summary(arts, "articles"))
    c = summarize_staged(store, run)
    assert (c["feeds_polled"], c["feeds_unchanged"], c["feeds_failed"], c["entries_new"]) == (4, 1, 1, 6)
    assert (c["articles_written"], c["entities"], c["duplicates_near"], c["entries_pending"]) == (4, 6, 1, 1)
    assert c["languages"] == {"id": 4}
    gather_state(store, staging_dir(run))
    first = store.read_bytes(f"{staging_dir(run)}/feeds.json")
    gather_state(store, staging_dir(run))  # a replayed commit merges to the same bytes
    assert store.read_bytes(f"{staging_dir(run)}/feeds.json") == first
    commit(store, run, c, 7)
    validators = store.read_json("_state/feeds.json")
    assert sorted(validators) == sorted(s["feed_url"] for s in states)
    assert validators["http://h0.test/rss"]["etag"] == "e0" and "etag" not in validators["http://h2.test/rss"]
    assert json.loads(store.read_bytes(f"_state/backlog/{run}.json")) == [{"url": "http://h1.test/x"}]
    manifest = store.read_json(f"_state/runs/{run}.json")
    assert not any(f.startswith("summary/") for f in manifest["files"])
    # articles sorted by source within the file (the date layout reads one outlet as one run of rows)
    published = pa.concat_tables([store.read_table(f) for f in store.list("articles")])
    assert published.column("source").to_pylist() == sorted(published.column("source").to_pylist())


def test_publish_copies_on_an_object_store(tmp_path):
    """memory:// is not a local filesystem: files are copied by the filesystem itself (fs.copy)."""
    store = Store(f"memory://pub-{time.time_ns()}")
    run = "20241112T000000-bbb"
    names = [f"articles/date=2024-11-{d:02d}/part-{run}.parquet" for d in range(1, 21)]
    for n, name in enumerate(names):
        store.write_bytes(f"{staging_dir(run)}/{name}", b"PAR1" + bytes([n]))
    commit(store, run, {}, 7)
    assert store.list("articles") == sorted(names)
    assert [store.read_bytes(n) for n in names] == [b"PAR1" + bytes([n]) for n in range(20)]
    assert store.list(staging_dir(run)) == []


def test_feeds_list_is_read_inside_the_pipeline_and_marks_the_start(tmp_path):
    store = Store(str(tmp_path / "lake"))
    run = "20241112T000000-ccc"
    feeds = [Feed(name=f"f{i}", url=f"http://h{i}.test/rss", language="id") for i in range(3)]
    rel = write_feeds(store, run, feeds)
    assert not store.exists(start_marker(run))
    t0 = time.time()
    assert list(_ReadFeedsFn(store, run).process(rel)) == feeds
    started = store.read_json(start_marker(run))["at"]
    assert t0 <= started <= time.time()
    assert mark_start(store, run) == started  # later calls (other workers) read it back
    plan = Plan(feeds=feeds, settings=Settings(), store=store, run_id=run, validators=None, budget=30.0,
                feeds_file=rel)
    assert plan.deadline() == run_deadline(store, run, 30.0) == started + 30.0
    # the graph holds the file's path, not the feeds: its size does not grow with them
    from warta.pipeline.build import build
    sizes = []
    for n in (3, 3000):
        many = [Feed(name=f"f{i}", url=f"http://h{i}.test/rss") for i in range(n)]
        p = beam.Pipeline()
        build(p, Plan(feeds=many, settings=Settings(), store=store, run_id=run, validators=None,
                      feeds_file=write_feeds(store, run, many)))
        sizes.append(len(p.to_runner_api().SerializeToString()))
    assert sizes[1] < sizes[0] * 1.05, sizes


def test_new_lake_uses_date_and_an_existing_date_source_lake_keeps_it(tmp_path):
    assert Settings().lake.layout == "date"
    new = Store(str(tmp_path / "new"))
    assert with_lake_layout(Settings(), new).lake.layout == "date"
    old = Store(str(tmp_path / "old"))
    record_schema(old, {"articles": ARTICLE_SCHEMA}, "date_source")
    assert lake_layout(old, Settings().lake) == "date_source"  # not told: keeps what it was written with
    assert with_lake_layout(Settings(), old).lake.layout == "date_source"
    told = Settings.model_validate({"lake": {"layout": "month"}})
    assert lake_layout(old, told.lake) == "month"  # told explicitly: the setting wins
    # a lake written before layouts were recorded: read from its folders
    legacy = Store(str(tmp_path / "legacy"))
    legacy.write_bytes("articles/date=2024-11-12/source=kabar/part-x.parquet", b"PAR1")
    assert lake_layout(legacy, Settings().lake) == "date_source"
    flat = Store(str(tmp_path / "flat"))
    flat.write_bytes("articles/date=2024-11-12/part-x.parquet", b"PAR1")
    assert lake_layout(flat, Settings().lake) == "date"
    assert json.loads((tmp_path / "old" / SCHEMA_FILE).read_text())["layout"] == "date_source"


def test_existing_date_source_lake_keeps_writing_date_source(world, tmp_path, fast_config):
    """End to end, without being told: a lake recorded as date_source gets date_source partitions."""
    from test_pipeline_e2e import run_cli
    out = tmp_path / "lake"
    record_schema(Store(str(out)), {"articles": ARTICLE_SCHEMA}, "date_source")
    feeds = world.feeds_yaml(tmp_path / "feeds.yaml")
    res = run_cli("--feeds", str(feeds), "--output", str(out), "--config", str(fast_config), "--no-ner",
                  "--workers", "2")
    assert res.returncode == 0, res.stderr[-3000:]
    parts = {p.parent.relative_to(out / "articles").as_posix() for p in (out / "articles").rglob("*.parquet")}
    assert parts and all("/source=" in p for p in parts), parts
    assert json.loads((out / SCHEMA_FILE).read_text())["layout"] == "date_source"
    assert "feeds polled=7" in res.stderr.strip().splitlines()[-1]


def test_compaction_of_a_date_partition_sorts_rows_by_source(tmp_path):
    store = Store(str(tmp_path / "lake"))
    t = datetime(2024, 11, 12, tzinfo=timezone.utc)
    for run, sources in (("r1", ["z", "a"]), ("r2", ["m", "b"])):
        rows = [{"article_id": f"{run}{s}{i}", "url": f"http://{s}.test/{i}", "source": s, "fetched_at": t,
                 "published_at": t.replace(hour=i)} for s in sources for i in range(3)]
        part = partition_of(rows[0], "articles", "date")
        store.write_table(f"articles/{part}/part-{run}.parquet", rows_table(rows, ARTICLE_SCHEMA, "article_id"))
    compact(store, Policy(min_files=2))
    files = store.list("articles")
    assert len(files) == 1 and "compact-" in files[0]
    assert store.read_table(files[0]).column("source").to_pylist() == sorted(["z", "a", "m", "b"] * 3)


def test_sigterm_on_the_launcher_cancels_the_job_and_commits_nothing(tmp_path, fast_config):
    """A run is stopped mid-fetch: the launcher exits non-zero, its worker processes go, nothing is
    published, no staging or lock is left, and the next run starts clean."""
    import os
    import signal
    import subprocess
    import sys

    import psutil
    from conftest import ROOT
    from test_pipeline_e2e import outlet

    from warta.pipeline.loopback import LoopbackServer

    with LoopbackServer("127.0.0.1") as slow:
        feeds = tmp_path / "feeds.yaml"
        feeds.write_text(f"feeds:\n  - name: lambat\n    url: {outlet(slow, 'lambat', 40)}\n")
        config = tmp_path / "slow.yaml"
        config.write_text(fast_config.read_text().replace("host_delay: 0", "host_delay: 0.5"))
        out = tmp_path / "lake"
        env = {**os.environ, "STANZA_RESOURCES_DIR": str(ROOT / "tests" / "no-stanza-models")}
        proc = subprocess.Popen([sys.executable, str(ROOT / "run_local.py"), "--feeds", str(feeds), "--output",
                                 str(out), "--config", str(config), "--no-ner", "--workers", "2"],
                                cwd=ROOT, stderr=subprocess.PIPE, text=True, env=env)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None and sum(
                p.startswith("/lambat/") and p.endswith(".html") for p in slow.paths_requested()) < 2:
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        children = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode != 0
        assert "cancelled: nothing was committed" in stderr, stderr[-3000:]
        gone, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, alive
        assert not (out / "articles").exists() and not (out / "errors").exists()
        assert not list((out / "_state").glob("pending/*")) and not (out / "_state" / "LOCK").exists()
        assert not (out / "_state" / "runs").exists() or not list((out / "_state" / "runs").iterdir())


def test_lock_ttl_covers_the_budget_and_the_commit(tmp_path, monkeypatch):
    """Even with every heartbeat failing, the lock is not taken over while the job may still run."""
    import pytest

    from warta.lake.lock import LockedError
    from warta.pipeline import cli

    seen = {}

    class Refused:
        def __init__(self, store, run_id, ttl):
            seen["ttl"] = ttl

        def __enter__(self):
            raise LockedError("test")

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(cli, "RunLock", Refused)
    for budget in (60.0, 4 * 3600.0):
        with pytest.raises(LockedError):
            cli.run_once([], Settings(), str(tmp_path / "lake"), [], max_run_time=budget)
        assert seen["ttl"] >= budget + cli.COMMIT_ALLOWANCE and seen["ttl"] >= Settings().lock_ttl


def side_inputs(p: beam.Pipeline) -> list[str]:
    """Labels of the steps of ``p`` that read a side input."""
    from apache_beam.portability import common_urns
    from apache_beam.portability.api import beam_runner_api_pb2
    found = []
    for t in p.to_runner_api().components.transforms.values():
        if t.spec.urn == common_urns.primitives.PAR_DO.urn and \
                beam_runner_api_pb2.ParDoPayload.FromString(t.spec.payload).side_inputs:
            found.append(t.unique_name)
    return found


def test_the_cluster_graph_reads_no_side_input(tmp_path):
    """Beam's DaskRunner computes a side input (e.g. a global combiner's default value) by submitting the
    whole graph again from a worker: the poll's graph, as a cluster runs it, must have none."""
    from warta.pipeline.build import build
    probe = beam.Pipeline()
    _ = probe | beam.Create([1]) | beam.combiners.ToList()  # with its default: the side input we must not have
    assert side_inputs(probe)
    store, run = Store(str(tmp_path / "lake")), "r1"
    feeds = [Feed(name=f"f{i}", url=f"http://h{i}.test/rss", language="id") for i in range(3)]
    p = beam.Pipeline()
    build(p, Plan(feeds=feeds, settings=Settings(), store=store, run_id=run, validators=None, workers=3,
                  ner_batching="shuffle", join_sinks=True, backlog=["b.json"], budget=60.0,
                  feeds_file=write_feeds(store, run, feeds)))
    assert side_inputs(p) == []
