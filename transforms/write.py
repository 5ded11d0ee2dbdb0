"""Stage 6 — write Parquet into the run's staging area under ``_state/pending/<run_id>/``.

Nothing written here is visible to readers of ``articles/`` or ``errors/``: the driver's commit step
(:mod:`lake.commit`) publishes the staged files and only then advances the run state.
File names are deterministic (one file per partition per run), so a replayed commit overwrites
identical bytes instead of adding rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import pyarrow as pa

from warta.lake.failures import failures_table
from warta.lake.schema import ARTICLE_SCHEMA, ERROR_SCHEMA, staging_dir
from warta.lake.state import index_table
from warta.lake.store import Store


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
    rows = sorted(rows, key=lambda r: (r.get(sort_key) or "", str(r.get("stage", ""))))
    return pa.Table.from_pylist([{f.name: r.get(f.name) for f in schema} for r in rows], schema=schema)


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


def _write_index(rows, store: Store, run_id: str):
    rows = sorted(rows, key=lambda r: r["article_id"])
    store.write_table(f"{staging_dir(run_id)}/index.parquet", index_table(rows))
    return len(rows)


def _write_failures(records, store: Store, run_id: str):
    latest: dict[int, dict] = {}
    for r in records:  # one record per URL: the latest failure of the run
        if r["key"] not in latest or r["last_at"] >= latest[r["key"]]["last_at"]:
            latest[r["key"]] = r
    store.write_table(f"{staging_dir(run_id)}/failures.parquet", failures_table(list(latest.values())))
    return len(latest)


def _write_feed_state(states, store: Store, run_id: str):
    store.write_bytes(f"{staging_dir(run_id)}/feeds.json",
                      json.dumps(sorted(states, key=lambda s: s["feed_url"]), default=str).encode())
    return len(states)


def _write_backlog(entries, store: Store, run_id: str):
    """Entries left for the next run (not fetched within this run's budget)."""
    store.write_bytes(f"{staging_dir(run_id)}/backlog.json",
                      json.dumps(sorted(entries, key=lambda e: e["url"]), default=str).encode())
    return len(entries)


@dataclass(eq=False)
class WriteState(beam.PTransform):
    """Stage the run's state delta (index rows, feed states or the backlog) as one file."""

    store: Store
    run_id: str
    kind: str  # "index", "feeds", "backlog" or "failures"

    def __post_init__(self):
        super().__init__()

    def expand(self, rows):
        fn = {"index": _write_index, "feeds": _write_feed_state, "backlog": _write_backlog,
              "failures": _write_failures}[self.kind]
        store, run_id = self.store, self.run_id
        return (
            rows
            | "Collect" >> beam.combiners.ToList().without_defaults()  # no side input (Dask computes those in a worker)
            | "Write" >> beam.Map(lambda rows: fn(rows, store, run_id))
        )
