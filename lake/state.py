"""Run state under ``OUTPUT/_state/``: what the lake already holds, and each feed's validators.

- ``_state/index/*.parquet`` — one row per URL ever taken (article, exact duplicate or failure):
  url key, canonical key, content hash, MinHash signature (kept only inside the dedup window).
- ``_state/feeds.json`` — per feed URL: ETag, Last-Modified, last status.
- ``_state/schema.json`` — the lake's schema version, its columns per dataset, the partition layout,
  and the history of added columns (readers: ``union_by_name`` / a unified pyarrow schema).

State files are written only by the commit step (``lake.commit``), after the data they describe.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa

from lake.store import Store

log = logging.getLogger(__name__)

INDEX_DIR = "_state/index"
FEEDS_FILE = "_state/feeds.json"
SCHEMA_FILE = "_state/schema.json"

INDEX_SCHEMA = pa.schema([
    ("article_id", pa.string()),
    ("url_key", pa.uint64()),  # the entry link as the feed gave it (what polling checks)
    ("exact_keys", pa.list_(pa.uint64())),  # final URL, declared canonical URL, normalised-text hash
    ("duplicate_of", pa.string()),
    ("kind", pa.string()),  # article | duplicate | error
    ("seen_at", pa.timestamp("us", tz="UTC")),
    ("minhash", pa.binary()),  # uint32 signature; null outside the window or for errors
])


def key64(text: str | None) -> int | None:
    """64-bit key of a string (URL, hash): compact in memory and on disk."""
    if not text:
        return None
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


@dataclass
class IndexSnapshot:
    """The index as loaded by a worker: sets for exact checks, signatures for near-duplicates."""

    url_keys: set[int] = field(default_factory=set)
    exact: dict[int, str] = field(default_factory=dict)  # exact key -> article_id of the first holder
    roots: dict[str, str] = field(default_factory=dict)  # article_id -> article_id of its original
    signatures: list[tuple[str, np.ndarray, datetime]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.url_keys)


def load_index(store: Store, window_days: int | None = None, now: datetime | None = None) -> IndexSnapshot:
    snap = IndexSnapshot()
    cutoff = None
    if window_days is not None:
        cutoff = (now or datetime.now(timezone.utc)) - timedelta(days=window_days)
    for rel in store.list(INDEX_DIR, ".parquet"):
        table = store.read_table(rel)
        cols = table.to_pydict()
        for i, aid in enumerate(cols["article_id"]):
            snap.url_keys.add(cols["url_key"][i])
            if cols["kind"][i] == "error":
                continue
            holder = cols["duplicate_of"][i] if cols["kind"][i] == "duplicate" else aid
            for k in cols["exact_keys"][i] or ():
                snap.url_keys.add(k)
                snap.exact.setdefault(k, holder)
            if cols["duplicate_of"][i]:
                snap.roots[aid] = cols["duplicate_of"][i]
            sig, seen = cols["minhash"][i], cols["seen_at"][i]
            if sig is not None and cols["kind"][i] == "article" and (cutoff is None or seen >= cutoff):
                snap.signatures.append((aid, np.frombuffer(sig, dtype=np.uint32), seen))
    snap.signatures.sort(key=lambda t: t[2])
    return snap


def error_index_row(err: dict) -> dict:
    """Index row remembering a permanently failed URL, so it is not fetched again."""
    from transforms.urls import article_id, normalize_url

    return {"article_id": article_id(err["url"]), "url_key": key64(normalize_url(err["url"])), "exact_keys": [],
            "duplicate_of": None, "kind": "error", "seen_at": err["at"], "minhash": None}


def index_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=INDEX_SCHEMA)


def compact_index(store: Store, run_id: str, window_days: int, keep_parts: int = 16) -> None:
    """Merge index parts once there are many, dropping signatures older than the window.

    Crash-safe: the merged file is written before the parts are removed; a part that survives a
    crash only repeats rows, which loading tolerates.
    """
    parts = store.list(INDEX_DIR, ".parquet")
    if len(parts) <= keep_parts:
        return
    tables = [store.read_table(p) for p in parts]
    merged = pa.concat_tables(tables).to_pylist()
    cutoff = datetime.now(timezone.utc) - timedelta(days=window_days)
    seen: set[tuple] = set()
    rows = []
    for r in merged:
        key = (r["article_id"], r["url_key"])
        if key in seen:
            continue
        seen.add(key)
        if r["seen_at"] < cutoff:
            r["minhash"] = None
        rows.append(r)
    store.write_table(f"{INDEX_DIR}/compact-{run_id}.parquet", index_table(rows))
    for p in parts:
        store.remove(p)


def record_schema(store: Store, datasets: dict[str, pa.Schema], layout: str) -> dict:
    """Record the columns this version writes in ``_state/schema.json``; a column not seen before
    bumps the version (columns are only ever added, so old files stay readable with the new ones)."""
    now = {name: {f.name: str(f.type) for f in schema} for name, schema in datasets.items()}
    doc = store.read_json(SCHEMA_FILE) or {"version": 0, "layout": layout, "datasets": {}, "history": []}
    added = {name: {c: t for c, t in cols.items() if c not in doc["datasets"].get(name, {})}
             for name, cols in now.items()}
    added = {name: cols for name, cols in added.items() if cols}
    if doc.get("layout") != layout:
        log.warning("this lake is partitioned by %s but the settings say lake.layout=%s", doc.get("layout"), layout)
    if added:
        doc["version"] += 1
        for name, cols in added.items():
            doc["datasets"].setdefault(name, {}).update(cols)
        doc["history"].append({"version": doc["version"], "added": added,
                               "at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        store.write_json(SCHEMA_FILE, doc)
    return doc
