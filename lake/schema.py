"""The lake's Parquet schemas and the staging layout: what workers write and the commit publishes."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc

# An entity: ``mention`` as written, ``label`` (PER, LOC, ORG), ``start_char``/``end_char`` 0-based character
# offsets into the article's ``text`` (end exclusive: text[start_char:end_char] == mention; DuckDB's substr is
# 1-based: substr(text, start_char + 1, end_char - start_char)), and ``canonical``, the form the article itself
# gives it in full ("Vladimir Putin" for a later "Putin"; see transforms/entities.py).
# Schema history: the mention was first a field named ``text``, which collided with the article's ``text``
# column once unnested. A lake written before the rename records it in ``_state/schema.json`` (a "changed"
# entry, a new version); readers upgrade such files (:func:`upgrade_entities`), compaction rewrites them.
ENTITY = pa.struct([("mention", pa.string()), ("label", pa.string()),
                    ("start_char", pa.int32()), ("end_char", pa.int32()), ("canonical", pa.string())])
LEGACY_MENTION = "text"  # the mention's field name before the rename
TS = pa.timestamp("us", tz="UTC")
ARTICLE_SCHEMA = pa.schema([
    ("article_id", pa.string()), ("url", pa.string()), ("canonical_url", pa.string()),
    ("source", pa.string()), ("feed_url", pa.string()), ("title", pa.string()),
    ("authors", pa.list_(pa.string())), ("published_at", TS), ("fetched_at", TS),
    ("language", pa.string()), ("text", pa.string()), ("content_hash", pa.string()),
    ("duplicate_of", pa.string()), ("entities", pa.list_(ENTITY)), ("image_url", pa.string()),
    ("charset", pa.string()),  # nullable: rows written before it was recorded have none
])
# What readers ask of article files of any version: the current entity fields and the legacy one.
ARTICLE_READ_SCHEMA = ARTICLE_SCHEMA.set(
    ARTICLE_SCHEMA.get_field_index("entities"),
    pa.field("entities", pa.list_(pa.struct([*ENTITY, pa.field(LEGACY_MENTION, pa.string())]))))
ERROR_SCHEMA = pa.schema([
    ("url", pa.string()), ("feed_url", pa.string()), ("source", pa.string()), ("stage", pa.string()),
    ("error", pa.string()), ("status", pa.int32()), ("at", TS),
])


def upgrade_entities(table: pa.Table) -> pa.Table:
    """``entities`` in the current form (:data:`ENTITY`), whichever version wrote the rows: a legacy ``text``
    field becomes ``mention``, a missing ``canonical`` is the mention itself. Other columns are untouched."""
    if "entities" not in table.column_names or table.schema.field("entities").type == pa.list_(ENTITY):
        return table
    lists = table.column("entities").combine_chunks()
    if isinstance(lists, pa.ChunkedArray):  # an empty column has no chunk
        lists = pa.array([], lists.type)
    offsets = lists.offsets
    start, end = offsets[0].as_py(), offsets[-1].as_py()
    values = lists.values.slice(start, end - start)
    names = {f.name for f in values.type}

    def field(name: str, typ: pa.DataType) -> pa.Array:
        return values.field(name) if name in names else pa.nulls(len(values), typ)

    mention = pc.coalesce(field("mention", pa.string()), field(LEGACY_MENTION, pa.string()))
    canonical = pc.coalesce(field("canonical", pa.string()), mention)
    arrays = {"mention": mention, "canonical": canonical}
    struct = pa.StructArray.from_arrays([arrays.get(f.name) if f.name in arrays else field(f.name, f.type).cast(f.type)
                                         for f in ENTITY], fields=list(ENTITY))
    upgraded = pa.ListArray.from_arrays(pc.subtract(offsets, start), struct, type=pa.list_(ENTITY),
                                        mask=lists.is_null())
    i = table.column_names.index("entities")
    return table.set_column(i, pa.field("entities", pa.list_(ENTITY)), upgraded)


def staging_dir(run_id: str) -> str:
    return f"_state/pending/{run_id}"


def new_run_id() -> str:
    """A run's id: its UTC start time (sortable) and a random suffix; it names the run's staging folder."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
