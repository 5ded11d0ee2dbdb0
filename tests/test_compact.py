"""lake.compact and `warta compact`: fewer, sorted files; crash-safe swap; retention; schema versions."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import date, datetime, timedelta, timezone

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from conftest import ROOT

from warta.config.settings import LakeSettings
from warta.lake import compact as lc
from warta.lake.commit import RunLock, commit
from warta.lake.state import SCHEMA_FILE
from warta.lake.store import Store
from warta.transforms.write import ARTICLE_SCHEMA, ERROR_SCHEMA, partition_of, rows_table, staging_dir

DAY = datetime(2024, 11, 12, tzinfo=timezone.utc)


def article(i: int, source: str, when: datetime) -> dict:
    return {"article_id": f"{source}-{i:05d}", "url": f"https://{source}.example/{i}", "source": source,
            "feed_url": f"https://{source}.example/feed", "title": f"Judul {i}", "authors": ["A"],
            "published_at": when, "fetched_at": when + timedelta(minutes=5), "language": "id",
            "text": f"Isi berita nomor {i} dari {source}. " * 20, "content_hash": f"h{source}{i}",
            "entities": [{"mention": "Jakarta", "label": "LOC", "start_char": 0, "end_char": 7}]}


def error(i: int, when: datetime) -> dict:
    return {"url": f"https://x.example/{i}", "feed_url": "https://x.example/feed", "source": "x",
            "stage": "fetch", "error": "HTTP 404", "status": 404, "at": when}


def write_run(store: Store, run_id: str, arts: list[dict], errs: list[dict] = (), schema=ARTICLE_SCHEMA,
              layout: str = "date_source") -> dict:
    """Stage rows exactly as the pipeline's write stage does, then commit them."""
    for dataset, rows, sch, key in (("articles", arts, schema, "article_id"), ("errors", errs, ERROR_SCHEMA, "url")):
        by_part: dict[str, list] = {}
        for r in rows:
            by_part.setdefault(partition_of(r, dataset, layout), []).append(r)
        for part, rs in by_part.items():
            store.write_table(f"{staging_dir(run_id)}/{dataset}/{part}/part-{run_id}.parquet", rows_table(rs, sch, key))
    return commit(store, run_id, {}, 7)


def polled_lake(store: Store, runs: int = 4, per_run: int = 5) -> None:
    """Several runs, each adding rows (published in shuffled order) to the same two days and sources."""
    n = 0
    for r in range(runs):
        arts = []
        for src in ("kabar", "patroli"):
            for _ in range(per_run):
                arts.append(article(n, src, DAY + timedelta(hours=(n * 7) % 40)))
                n += 1
        write_run(store, f"2024111{r}T000000-r{r}", arts, [error(r, DAY + timedelta(hours=r))])


def rows(path, dataset="articles") -> list[tuple]:
    t = ds.dataset(str(path / dataset), format="parquet", partitioning="hive").to_table()
    key = ["article_id"] if dataset == "articles" else ["url", "at"]
    return sorted(tuple(r[k] for k in key) + (len(str(r)),) for r in t.to_pylist())


def data_files(path) -> list[str]:
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*.parquet")
                  if p.parts[len(path.parts)] in ("articles", "errors"))


def test_compaction_writes_one_sorted_zstd_file_per_partition_and_is_idempotent(tmp_path):
    store = Store(str(tmp_path))
    polled_lake(store)
    before, errs = rows(tmp_path), rows(tmp_path, "errors")
    assert len(data_files(tmp_path)) == 4 * 4 + 4  # 2 days x 2 sources per run, + errors
    stats = lc.compact(store, lc.Policy())
    files = data_files(tmp_path)
    assert stats["files_after"] == len(files) == 5 and all("/compact-" in f for f in files)
    assert rows(tmp_path) == before and rows(tmp_path, "errors") == errs
    for f in files:
        meta = pq.ParquetFile(tmp_path / f).metadata
        col = meta.row_group(0).column(0)
        assert col.compression == "ZSTD" and col.statistics is not None
        sort_col = "at" if f.startswith("errors/") else "published_at"
        values = pq.read_table(tmp_path / f).column(sort_col).to_pylist()
        assert values == sorted(values)
    assert not store.list(lc.COMPACT_DIR)
    again = lc.compact(store, lc.Policy())
    assert again["partitions_rewritten"] == 0 and data_files(tmp_path) == files


def test_compaction_that_lost_the_lock_commits_nothing(tmp_path):
    from warta.lake.lock import LockLost

    store = Store(str(tmp_path))
    polled_lake(store)
    files, before = data_files(tmp_path), rows(tmp_path)

    def taken_over():
        raise LockLost("another run holds the output")

    with pytest.raises(LockLost):
        lc.compact(store, lc.Policy(), fence=taken_over)
    assert data_files(tmp_path) == files and rows(tmp_path) == before and not store.list(lc.COMPACT_DIR)


def test_target_size_splits_a_partition_and_a_rerun_leaves_it(tmp_path):
    store = Store(str(tmp_path))
    polled_lake(store, runs=6, per_run=30)
    before = rows(tmp_path)
    lc.compact(store, lc.Policy(target_bytes=8_000), ["articles/date=2024-11-12/source=kabar"])
    part = [f for f in data_files(tmp_path) if "date=2024-11-12/source=kabar" in f]
    assert len(part) > 1 and all("/compact-" in f for f in part)
    assert rows(tmp_path) == before
    # files follow each other in published_at order
    bounds = [pq.read_table(tmp_path / f).column("published_at").to_pylist() for f in part]
    assert all(a[-1] <= b[0] for a, b in zip(bounds, bounds[1:]))
    assert lc.compact(store, lc.Policy(target_bytes=8_000))["partitions_rewritten"] == 4  # the others only
    assert [f for f in data_files(tmp_path) if "date=2024-11-12/source=kabar" in f] == part


def warta(*args, env=None):
    code = "import logging; logging.getLogger().setLevel(logging.ERROR); from pipeline.cli import main; main()"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


@pytest.mark.slow
@pytest.mark.parametrize("point", ["compact_staged", "compact_swap", "compact_swapped"])
def test_killed_compaction_then_rerun_keeps_every_row_once(tmp_path, point):
    store = Store(str(tmp_path))
    polled_lake(store)
    before, errs = rows(tmp_path), rows(tmp_path, "errors")
    killed = warta("compact", "--output", tmp_path, env={"WARTA_KILL_AT": point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert store.list(lc.COMPACT_DIR)  # it died mid-way
    rerun = warta("compact", "--output", tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert rows(tmp_path) == before and rows(tmp_path, "errors") == errs
    files = data_files(tmp_path)
    assert len(files) == 5 and all("/compact-" in f for f in files)
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file() and ("compact/" in p.as_posix() or p.name == "LOCK"
                                                                     or p.name.endswith(".tmp"))]
    assert leftovers == []


@pytest.mark.slow
def test_killed_compaction_on_s3_then_a_run_recovery_completes_it(tmp_path, s3):
    import s3fs

    fs = s3fs.S3FileSystem(key="test", secret="test", endpoint_url=s3["FSSPEC_S3_ENDPOINT_URL"])
    store = Store("s3://lake/news", {"endpoint_url": s3["FSSPEC_S3_ENDPOINT_URL"], "key": "test", "secret": "test"})
    polled_lake(store, runs=3, per_run=3)

    def lake_rows():
        t = ds.dataset("lake/news/articles", filesystem=fs, format="parquet", partitioning="hive").to_table()
        fs.invalidate_cache()
        return sorted(t.column("article_id").to_pylist())

    before = lake_rows()
    killed = warta("compact", "--output", "s3://lake/news", env={**s3, "WARTA_KILL_AT": "compact_swap"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    rerun = warta("compact", "--output", "s3://lake/news", env=s3)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    fs.invalidate_cache()
    assert lake_rows() == before and len(before) == 18
    keys = fs.find("lake/news")
    data = [k for k in keys if "/articles/" in k or "/errors/" in k]
    assert len(data) == len({k.rsplit("/", 1)[0] for k in data}) and all("/compact-" in k for k in data)
    assert not any("/_state/compact/" in k or k.endswith("LOCK") for k in keys)


def test_retention_drops_old_errors_and_keeps_articles_by_default(tmp_path):
    store = Store(str(tmp_path))
    old, recent = DAY - timedelta(days=40), DAY
    write_run(store, "r1", [article(1, "kabar", old)], [error(1, old)])
    write_run(store, "r2", [article(2, "kabar", recent)], [error(2, recent)])
    policy = lc.Policy.from_settings(LakeSettings(errors_retention_days=30))
    policy.now = DAY + timedelta(days=1)
    stats = lc.compact(store, policy)
    assert stats["partitions_expired"] == 1
    assert [r[0] for r in rows(tmp_path, "errors")] == ["https://x.example/2"]
    assert len(rows(tmp_path)) == 2  # articles kept forever unless asked
    policy.retention_days["articles"] = 30
    lc.compact(store, policy)
    assert [r[0] for r in rows(tmp_path)] == ["kabar-00002"]
    assert not (tmp_path / "articles" / f"date={old:%Y-%m-%d}" / "source=kabar").exists() or not any(
        (tmp_path / "articles" / f"date={old:%Y-%m-%d}").rglob("*.parquet"))


def test_next_schema_version_appends_and_compacts_a_lake_of_todays_files(tmp_path, monkeypatch):
    store = Store(str(tmp_path))
    write_run(store, "r1", [article(i, "kabar", DAY) for i in range(3)])
    assert lc.record_lake_schema(store, "date_source")["version"] == 1
    # the next version adds a nullable column at the end of the schema
    nxt = ARTICLE_SCHEMA.append(pa.field("paywalled", pa.bool_()))
    monkeypatch.setitem(lc.DATASETS, "articles", (nxt, lc.DATASETS["articles"][1]))
    write_run(store, "r2", [{**article(i, "kabar", DAY), "paywalled": True} for i in range(3, 5)], schema=nxt)
    doc = lc.record_lake_schema(store, "date_source")
    assert doc["version"] == 2 and doc["history"][-1]["added"] == {"articles": {"paywalled": "bool"}}
    assert store.read_json(SCHEMA_FILE) == doc
    glob = f"{tmp_path}/articles/**/*.parquet"
    mixed = duckdb.sql(f"select article_id, paywalled from read_parquet('{glob}', hive_partitioning=true, "
                       "union_by_name=true) order by 1").fetchall()
    assert [m[1] for m in mixed] == [None, None, None, True, True]
    lc.compact(store, lc.Policy())
    (only,) = [f for f in data_files(tmp_path) if f.startswith("articles/")]  # errors/: an empty file, see below
    table = pq.read_table(tmp_path / only)
    assert table.schema.names[-1] == "paywalled" and table.num_rows == 5
    assert sorted(zip(table.column("article_id").to_pylist(), table.column("paywalled").to_pylist())) == mixed


def test_automatic_policy_compacts_touched_partitions_past_the_threshold_and_closed_days(tmp_path):
    store = Store(str(tmp_path))
    lake = LakeSettings(compact_after_files=3)
    now = DAY + timedelta(days=1, hours=3)
    for r in range(2):
        manifest = write_run(store, f"r{r}", [article(r, "kabar", now)])
    assert lc.compact_after_run(store, lake, manifest["files"], now)["partitions_rewritten"] == 0
    manifest = write_run(store, "r2", [article(2, "kabar", now)])
    assert lc.compact_after_run(store, lake, manifest["files"], now)["partitions_rewritten"] == 1
    # yesterday's partitions are compacted as soon as a run follows, whatever that run touched
    for r in range(3, 5):
        write_run(store, f"r{r}", [article(r, "patroli", DAY)])
    manifest = write_run(store, "r5", [article(5, "kabar", now)])
    stats = lc.compact_after_run(store, lake, manifest["files"], now)
    assert stats["partitions_rewritten"] == 1
    assert [f for f in data_files(tmp_path) if "patroli" in f][0].split("/")[-1].startswith("compact-")
    assert lc.compact_after_run(store, LakeSettings(compact_after_files=0), [], now) is None


def test_cli_usage_errors_and_lock(tmp_path):
    from warta.pipeline.compact import compact_command, parse_size

    assert parse_size("128MB") == 128 * 2**20 and parse_size("1g") == 2**30
    assert compact_command(["--output", str(tmp_path), "--bogus"]) == 2
    assert compact_command(["--output", str(tmp_path), "--partition", "_state/index"]) == 2
    store = Store(str(tmp_path))
    with RunLock(store, "a-run"):
        assert compact_command(["--output", str(tmp_path)]) == 3
    assert compact_command(["--output", str(tmp_path)]) == 0


def test_ingest_date_layout_partitions_by_fetch_day():
    late = article(1, "kabar", DAY - timedelta(days=3))
    assert partition_of(late, "articles") == "date=2024-11-09/source=kabar"
    assert partition_of(late, "articles", "ingest_date") == "ingest_date=2024-11-09/source=kabar"
    assert partition_of(late, "articles", "date") == "date=2024-11-09"
    late["fetched_at"] = DAY
    assert partition_of(late, "articles", "ingest_date") == "ingest_date=2024-11-12/source=kabar"
    assert lc.partition_last_day("articles/ingest_date=2024-11-12/source=kabar") == date(2024, 11, 12)


def test_month_layout_partitions_by_published_month_else_fetch_month():
    late = article(1, "kabar", datetime(2024, 10, 31, 23, 59, tzinfo=timezone.utc))
    assert partition_of(late, "articles", "month") == "month=2024-10"
    assert partition_of({**late, "published_at": None}, "articles", "month") == "month=2024-11"  # fetched 00:04
    assert partition_of(error(1, DAY), "errors", "month") == "date=2024-11-12"  # errors/ stay by day
    assert [lc.partition_last_day(f"articles/month={m}") for m in ("2024-02", "2024-11", "2024-12")] == [
        date(2024, 2, 29), date(2024, 11, 30), date(2024, 12, 31)]
    assert lc.partition_last_day("articles/monthly=2024-11") is None


def month_lake(store: Store) -> list[tuple]:
    """Three runs a day over Oct 20 – Nov 9 2024, two sources, in the ``month`` layout; (day, count) per day."""
    n = 0
    for d in range(21):
        for r in range(3):
            when = datetime(2024, 10, 20, 2 + 7 * r, tzinfo=timezone.utc) + timedelta(days=d)
            write_run(store, f"{when:%Y%m%dT%H%M%S}-m", [article(n + i, src, when) for i, src in
                                                          enumerate(("kabar", "patroli"))], layout="month")
            n += 2
    return sorted((date(2024, 10, 20) + timedelta(days=d), 6) for d in range(21))


def test_month_layout_compacts_a_month_into_one_file_and_expires_whole_months_only(tmp_path):
    store = Store(str(tmp_path))
    per_day = month_lake(store)
    before = rows(tmp_path)
    assert {f.split("/")[1] for f in data_files(tmp_path)} == {"month=2024-10", "month=2024-11"}
    stats = lc.compact(store, lc.Policy())
    assert stats["partitions_rewritten"] == 2 and stats["files_before"] == 63
    files = data_files(tmp_path)
    assert [f.rsplit("/", 1)[0] for f in files] == ["articles/month=2024-10", "articles/month=2024-11"]
    assert all("/compact-" in f for f in files) and rows(tmp_path) == before
    # a reader filters days on the article's day: no date column needed
    got = duckdb.sql(f"set TimeZone='UTC'; select coalesce(published_at, fetched_at)::date as d, count(*) from "
                     f"read_parquet('{tmp_path}/articles/*/*.parquet', hive_partitioning=true) group by 1 order by 1")
    assert got.fetchall() == per_day
    # retention 30 days: October goes only once every day of it is past retention
    policy = lc.Policy(retention_days={"articles": 30}, now=datetime(2024, 11, 30, tzinfo=timezone.utc))
    assert lc.compact(store, policy)["partitions_expired"] == 0 and lc.expired_days(store, policy) == []
    assert rows(tmp_path) == before
    policy.now = datetime(2024, 12, 1, 12, tzinfo=timezone.utc)  # Oct 31 is now 31 days old
    assert lc.expired_days(store, policy) == ["articles/month=2024-10"]
    assert lc.compact(store, policy)["partitions_expired"] == 1
    assert len(rows(tmp_path)) == 54 and data_files(tmp_path)[0].startswith("articles/month=2024-11/")


def test_month_layout_closes_a_month_on_the_first_day_of_the_next(tmp_path):
    assert lc.closed_partitions("month", datetime(2024, 11, 20, 3, tzinfo=timezone.utc)) == ["errors/date=2024-11-19"]
    assert lc.closed_partitions("month", datetime(2024, 12, 1, 3, tzinfo=timezone.utc)) == [
        "articles/month=2024-11", "errors/date=2024-11-30"]
    assert lc.closed_partitions("date", DAY) == ["articles/date=2024-11-11", "errors/date=2024-11-11"]
    store = Store(str(tmp_path))
    lake = LakeSettings(layout="month", compact_after_files=16)
    month_lake(store)
    mid = datetime(2024, 11, 9, 20, tzinfo=timezone.utc)
    manifest = write_run(store, "r-mid", [article(900, "kabar", mid)], layout="month")
    assert lc.compact_after_run(store, lake, manifest["files"], mid)["partitions_rewritten"] == 1  # 28 files >= 16
    manifest = write_run(store, "r-mid2", [article(901, "kabar", mid)], layout="month")
    assert lc.compact_after_run(store, lake, manifest["files"], mid)["partitions_rewritten"] == 0  # the month is open
    first = datetime(2024, 12, 1, 1, tzinfo=timezone.utc)
    manifest = write_run(store, "r-dec", [article(902, "kabar", first)], layout="month")
    assert lc.compact_after_run(store, lake, manifest["files"], first)["partitions_rewritten"] == 1  # November closed
    assert [f.split("/")[1] for f in data_files(tmp_path) if "/compact-" in f] == ["month=2024-11"]
    assert sum("month=2024-11/" in f for f in data_files(tmp_path)) == 1


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["date_source", "month"])
def test_a_run_compacts_the_partitions_it_touched_and_records_the_schema(world, tmp_path, fast_config, layout):
    feeds = world.feeds_yaml(tmp_path / "feeds.yaml", "patroli", "kabar")
    config = tmp_path / "compacting.yaml"
    config.write_text(fast_config.read_text() + f"\nlake:\n  compact_after_files: 1\n  layout: {layout}\n")
    out = tmp_path / "lake"
    res = warta("run", "--feeds", feeds, "--output", out, "--config", config, "--no-ner")
    assert res.returncode == 0, res.stderr[-2000:]
    files = data_files(out)
    assert files and all("/compact-" in f for f in files)
    keys = {f.split("/")[1].split("=")[0] for f in files if f.startswith("articles/")}
    assert keys == ({"month"} if layout == "month" else {"date"})
    assert Store(str(out)).read_json(SCHEMA_FILE)["version"] == 1
    before = rows(out)
    again = warta("run", "--feeds", feeds, "--output", out, "--config", config, "--no-ner")
    assert again.returncode == 0 and rows(out) == before and data_files(out) == files


def test_a_large_partition_is_streamed_by_record_batch(tmp_path, monkeypatch):
    store = Store(str(tmp_path))
    polled_lake(store, runs=4, per_run=30)
    old = ARTICLE_SCHEMA.remove(ARTICLE_SCHEMA.get_field_index("entities"))  # a file of an older schema
    write_run(store, "20241115T000000-old", [{k: v for k, v in article(999, "kabar", DAY).items() if k != "entities"}],
              schema=old)
    before = rows(tmp_path)
    monkeypatch.setattr(lc, "SORT_IN_MEMORY_BYTES", 0)  # every partition counts as large

    def whole_file_read(*a, **kw):
        raise AssertionError("a whole file was read into memory")
    monkeypatch.setattr(lc.pq, "read_table", whole_file_read)
    real = lc.stream_partition
    monkeypatch.setattr(lc, "stream_partition", lambda *a, **kw: real(*a, **kw, batch_rows=7))
    lc.compact(store, lc.Policy(target_bytes=30_000))
    monkeypatch.undo()
    assert rows(tmp_path) == before and not store.list(lc.COMPACT_DIR)
    files = data_files(tmp_path)
    assert all("/compact-" in f for f in files)
    assert sum("source=kabar" in f and "date=2024-11-12" in f for f in files) > 1  # split at the target size
    assert all(pq.ParquetFile(tmp_path / f).metadata.row_group(0).column(0).compression == "ZSTD" for f in files)
