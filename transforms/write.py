"""Stage 6 — write Parquet into the run's staging area under ``_state/pending/<run_id>/``.

Nothing written here is visible to readers of ``articles/`` or ``errors/``: the driver's commit step
(:mod:`lake.commit`) publishes the staged files and only then advances the run state.
File names are deterministic (one file per partition per run; state deltas one file per shard), so a
replayed commit overwrites identical bytes instead of adding rows. Next to each file, a small summary
(``summary/…json``: rows, entities, statuses) gives the launcher its counts without reading the data.
"""

from __future__ import annotations

import json
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import pyarrow as pa

from warta.lake.failures import failures_table
from warta.lake.schema import ARTICLE_SCHEMA, ERROR_SCHEMA, staging_dir
from warta.lake.state import index_table
from warta.lake.store import Store

SUMMARY = "summary"  # staged counts, summed by lake.commit.summarize_staged


def partition_of(row: dict[str, Any], dataset: str, layout: str = "date_source") -> str:
    """Hive partition of a row: ``date=<published day>/source=<name>``; with the ``ingest_date`` layout
    ``ingest_date=<fetch day>/source=<name>`` (late articles land in the day they were fetched); with the
    ``date`` layout ``date=<published day>`` alone (``source`` stays a column: 1 file a day once compacted);
    with the ``month`` layout ``month=<published month>`` (``YYYY-MM``; readers filter days on
    ``coalesce(published_at, fetched_at)``: 1 file a month once compacted, target size permitting)."""
    if dataset == "articles":
        if layout == "ingest_date":
            return f"ingest_date={row['fetched_at'].strftime('%Y-%m-%d')}/source={row['source']}"
        when = row.get("published_at") or row["fetched_at"]
        if layout == "month":
            return f"month={when.strftime('%Y-%m')}"
        day = when.strftime("%Y-%m-%d")
        return f"date={day}" if layout == "date" else f"date={day}/source={row['source']}"
    return f"date={row['at'].strftime('%Y-%m-%d')}"


def rows_table(rows: list[dict[str, Any]], schema: pa.Schema, sort_key: str) -> pa.Table:
    """Rows sorted by ``sort_key``; articles by source first, so a file of a ``date`` partition (all
    outlets of a day) reads one outlet as one contiguous run of rows."""
    if sort_key == "article_id":
        rows = sorted(rows, key=lambda r: (r.get("source") or "", r.get("article_id") or ""))
    else:
        rows = sorted(rows, key=lambda r: (r.get(sort_key) or "", str(r.get("stage", ""))))
    return pa.Table.from_pylist([{f.name: r.get(f.name) for f in schema} for r in rows], schema=schema)


def rows_summary(rows: list[dict[str, Any]], dataset: str) -> dict[str, Any]:
    """What the launcher reports about a staged file: rows, and for articles entities, near duplicates and
    languages; for errors the pages that were fetched but failed later (extract, ner)."""
    if dataset == "articles":
        return {"articles_written": len(rows), "entities": sum(len(r.get("entities") or ()) for r in rows),
                "duplicates_near": sum(r.get("duplicate_of") is not None for r in rows),
                "languages": dict(Counter(str(r.get("language")) for r in rows))}
    stages = Counter(r.get("stage") for r in rows)
    return {"errors_written": len(rows), "pages_fetched": stages["extract"] + stages["ner"]}


def write_summary(store: Store, run_id: str, name: str, counts: dict[str, Any]) -> None:
    store.write_json(f"{staging_dir(run_id)}/{SUMMARY}/{name}.json", counts)


class _WritePartitionFn(beam.DoFn):
    def __init__(self, store: Store, run_id: str, dataset: str):
        self.store, self.run_id, self.dataset = store, run_id, dataset
        self.rows = beam.metrics.Metrics.counter("warta", f"{dataset}_rows_staged")

    def process(self, keyed):
        partition, rows = keyed
        rows = list(rows)
        schema, key = (ARTICLE_SCHEMA, "article_id") if self.dataset == "articles" else (ERROR_SCHEMA, "url")
        rel = f"{staging_dir(self.run_id)}/{self.dataset}/{partition}/part-{self.run_id}.parquet"
        self.store.write_table(rel, rows_table(rows, schema, key))
        write_summary(self.store, self.run_id, f"{self.dataset}/{partition}", rows_summary(rows, self.dataset))
        self.rows.inc(len(rows))
        yield rel


@dataclass(eq=False)
class WriteDataset(beam.PTransform):
    """Rows in; one staged Parquet file per Hive partition; emits the staged paths."""

    store: Store
    run_id: str
    dataset: str  # "articles" or "errors"
    layout: str = "date_source"  # see partition_of

    def __post_init__(self):
        super().__init__()

    def expand(self, rows):
        dataset, layout = self.dataset, self.layout
        return (
            rows
            | "KeyByPartition" >> beam.Map(lambda r: (partition_of(r, dataset, layout), r))
            | "GroupByPartition" >> beam.GroupByKey()
            | "WriteParquet" >> beam.ParDo(_WritePartitionFn(self.store, self.run_id, dataset))
        )


def state_shard(row: dict[str, Any], kind: str, shards: int) -> int:
    """The shard of a state row (any stable split works: the commit merges the shards)."""
    key = {"index": "url_key", "failures": "key", "feeds": "feed_url", "backlog": "url"}[kind]
    return zlib.crc32(str(row[key]).encode("utf-8", "surrogatepass")) % max(1, shards)


def _write_index(rows, store: Store, path: str) -> dict[str, int]:
    rows = sorted(rows, key=lambda r: r["article_id"])
    store.write_table(f"{path}.parquet", index_table(rows))
    kinds = Counter(r["kind"] for r in rows)
    return {"duplicates_exact": kinds["duplicate"], "pages_extracted": kinds["article"] + kinds["duplicate"]}


def _write_failures(records, store: Store, path: str) -> dict[str, int]:
    latest: dict[int, dict] = {}
    for r in records:  # one record per URL: the latest failure of the run
        if r["key"] not in latest or r["last_at"] >= latest[r["key"]]["last_at"]:
            latest[r["key"]] = r
    store.write_table(f"{path}.parquet", failures_table(sorted(latest.values(), key=lambda r: r["key"])))
    return {}


def _write_feed_state(states, store: Store, path: str) -> dict[str, int]:
    states = sorted(states, key=lambda s: s["feed_url"])
    store.write_bytes(f"{path}.json", json.dumps(states, default=str).encode())
    status = Counter(s["status"] for s in states)
    return {"feeds_polled": len(states), "feeds_unchanged": status["unchanged"], "feeds_failed": status["failed"],
            "entries_new": sum(s.get("entries_new", 0) for s in states)}


def _write_backlog(entries, store: Store, path: str) -> dict[str, int]:
    """Entries left for the next run (not fetched within this run's budget)."""
    store.write_bytes(f"{path}.json", json.dumps(sorted(entries, key=lambda e: e["url"]), default=str).encode())
    return {"entries_pending": len(entries)}


STATE_WRITERS = {"index": _write_index, "feeds": _write_feed_state, "backlog": _write_backlog,
                 "failures": _write_failures}


def write_state(kind: str, rows: list[dict[str, Any]], store: Store, run_id: str, shard: int = 0) -> dict[str, int]:
    """Stage one shard of a state delta as ``<kind>/part-<shard>.{parquet,json}``, and its summary."""
    counts = STATE_WRITERS[kind](list(rows), store, f"{staging_dir(run_id)}/{kind}/part-{shard:05d}")
    write_summary(store, run_id, f"{kind}/part-{shard:05d}", counts)
    return counts


@dataclass(eq=False)
class WriteState(beam.PTransform):
    """Stage the run's state delta (index rows, feed states, failures or the backlog) as one file per
    shard (the commit merges them; no step gathers the whole delta)."""

    store: Store
    run_id: str
    kind: str  # "index", "feeds", "backlog" or "failures"
    shards: int = 1

    def __post_init__(self):
        super().__init__()

    def expand(self, rows):
        kind, store, run_id, shards = self.kind, self.store, self.run_id, max(1, self.shards)
        return (
            rows
            | "KeyByShard" >> beam.Map(lambda r: (state_shard(r, kind, shards), r))
            | "GroupByShard" >> beam.GroupByKey()
            | "Write" >> beam.MapTuple(lambda shard, rs: write_state(kind, rs, store, run_id, shard))
        )
