"""The lake's Parquet schemas and the staging layout: what workers write and the commit publishes."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import pyarrow as pa

ENTITY = pa.struct([("text", pa.string()), ("label", pa.string()),
                    ("start_char", pa.int32()), ("end_char", pa.int32())])
TS = pa.timestamp("us", tz="UTC")
ARTICLE_SCHEMA = pa.schema([
    ("article_id", pa.string()), ("url", pa.string()), ("canonical_url", pa.string()),
    ("source", pa.string()), ("feed_url", pa.string()), ("title", pa.string()),
    ("authors", pa.list_(pa.string())), ("published_at", TS), ("fetched_at", TS),
    ("language", pa.string()), ("text", pa.string()), ("content_hash", pa.string()),
    ("duplicate_of", pa.string()), ("entities", pa.list_(ENTITY)), ("image_url", pa.string()),
    ("charset", pa.string()),  # nullable: rows written before it was recorded have none
])
ERROR_SCHEMA = pa.schema([
    ("url", pa.string()), ("feed_url", pa.string()), ("source", pa.string()), ("stage", pa.string()),
    ("error", pa.string()), ("status", pa.int32()), ("at", TS),
])


def staging_dir(run_id: str) -> str:
    return f"_state/pending/{run_id}"


def new_run_id() -> str:
    """A run's id: its UTC start time (sortable) and a random suffix; it names the run's staging folder."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
