"""Run state under ``OUTPUT/_state/``: what the lake already holds, and each feed's validators.

- ``_state/index/part-<run>.parquet`` — one row per URL a run took (article or exact duplicate; failures
  are in ``_state/failures/``, see :mod:`lake.failures`): url key, canonical key, content hash, MinHash
  signature.
- ``_state/index/keys-<id>.parquet`` + ``compact-<id>.parquet`` — what index compaction folds the parts
  into: every key ever seen (sorted uint64, with the article holding each exact key), and the rows of
  the dedup window (signatures, roots). Older rows live on only as keys.
- ``_state/feeds.json`` — per feed URL: ETag, Last-Modified, last status.
- ``_state/schema.json`` — the lake's schema version, its columns per dataset, the partition layout,
  and the history of added columns (readers: ``union_by_name`` / a unified pyarrow schema).

State files are written only by the commit step (``lake.commit``), after the data they describe.
"""

from __future__ import annotations

import hashlib
import io
import logging
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from warta.lake.store import Store

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


class SortedKeys:
    """Every key the index has folded into ``_state/index/keys-<id>.parquet``: the keys as one sorted
    uint64 array (8 bytes each, membership by binary search) and, read only for keys a run asks
    about, the article holding each exact key (one row group at a time)."""

    def __init__(self, keys: np.ndarray | None = None, store: Store | None = None, rel: str | None = None,
                 group_rows: int = 0):
        self.keys = np.zeros(0, dtype=np.uint64) if keys is None else keys
        self.store, self.rel, self.group_rows = store, rel, group_rows
        self._file: pq.ParquetFile | None = None  # opened at the first holder lookup, kept for the next ones
        self._groups: dict[int, pa.Array] = {}

    @classmethod
    def load(cls, store: Store, rel: str) -> SortedKeys:
        with store.fs.open(store.path(rel), "rb") as fh:
            pf = pq.ParquetFile(fh)
            keys = pf.read(columns=["key"]).column("key").to_numpy()
            group_rows = pf.metadata.row_group(0).num_rows if pf.metadata.num_row_groups else 0
        return cls(keys, store, rel, group_rows)

    def position(self, key: int) -> int:
        i = int(np.searchsorted(self.keys, np.uint64(key)))
        return i if i < len(self.keys) and self.keys[i] == key else -1

    def __contains__(self, key: int) -> bool:
        return self.position(key) >= 0

    def holder(self, key: int) -> str | None:
        i = self.position(key)
        if i < 0:
            return None
        g, offset = divmod(i, self.group_rows)
        if g not in self._groups:
            if self._file is None:
                self._file = pq.ParquetFile(self.store.fs.open(self.store.path(self.rel), "rb"))
            self._groups[g] = self._file.read_row_group(g, columns=["holder"]).column(0).combine_chunks()
        return self._groups[g][offset].as_py()


class KeySet:
    """URL and exact keys known to the lake: the folded sorted keys plus the recent parts' keys."""

    def __init__(self, base: SortedKeys | None = None, recent: set[int] | None = None):
        self.base = base or SortedKeys()
        self.recent = {k for k in (recent or ()) if k not in self.base}

    def __contains__(self, key: int) -> bool:
        return key in self.recent or key in self.base

    def __len__(self) -> int:
        return len(self.base.keys) + len(self.recent)


class ExactKeys(Mapping):
    """Exact key -> article_id of its first holder, read from disk only for the keys looked up."""

    def __init__(self, base: SortedKeys | None = None, recent: dict[int, str] | None = None):
        self.base = base or SortedKeys()
        self.recent = recent or {}

    def __getitem__(self, key: int) -> str:
        found = self.base.holder(key) or self.recent.get(key)
        if found is None:
            raise KeyError(key)
        return found

    def __contains__(self, key: object) -> bool:
        return isinstance(key, int) and (self.base.holder(key) or self.recent.get(key)) is not None

    def __iter__(self):
        keys = {int(k) for k in self.base.keys if self.base.holder(int(k)) is not None}
        return iter(keys | set(self.recent))

    def __len__(self) -> int:
        return sum(1 for _ in self)


@dataclass
class IndexSnapshot:
    """The index as a worker sees it: URL keys and exact keys for membership checks (lookups only
    for this run's candidates), roots and MinHash signatures of the dedup window."""

    url_keys: KeySet = field(default_factory=KeySet)
    exact: ExactKeys = field(default_factory=ExactKeys)  # exact key -> article_id of the first holder
    roots: dict[str, str] = field(default_factory=dict)  # article_id -> article_id of its original
    signatures: list[tuple[str, np.ndarray, datetime]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.url_keys)


def _index_files(store: Store) -> tuple[str | None, list[str]]:
    """(newest keys file, row files). A compaction killed before removing the old keys file leaves
    two: the newest holds every key of the older one."""
    files = store.list(INDEX_DIR, ".parquet")
    keys = [f for f in files if posixpath.basename(f).startswith("keys-")]
    return (keys[-1] if keys else None), [f for f in files if not posixpath.basename(f).startswith("keys-")]


_BASE: dict[tuple[str, str], SortedKeys] = {}  # keys files are immutable: reused by the next run in this process


def load_index(store: Store, window_days: int | None = None, now: datetime | None = None) -> IndexSnapshot:
    """The folded keys (one column read, cached per process) plus the rows of the parts written since
    the last index compaction and of the dedup window: a cost set by the window, not the lake's age."""
    keys_file, row_files = _index_files(store)
    base = SortedKeys()
    if keys_file:
        cache_key = (store.url, keys_file)
        if cache_key not in _BASE:
            _BASE.clear()
            _BASE[cache_key] = SortedKeys.load(store, keys_file)
        base = _BASE[cache_key]
    cutoff = None
    if window_days is not None:
        cutoff = (now or datetime.now(timezone.utc)) - timedelta(days=window_days)
    url_keys: set[int] = set()
    exact: dict[int, str] = {}
    snap = IndexSnapshot(roots={})
    for rel in row_files:
        cols = store.read_table(rel).to_pydict()
        for i, aid in enumerate(cols["article_id"]):
            if cols["kind"][i] == "error":  # failures written by older versions: now in lake.failures
                continue
            url_keys.add(cols["url_key"][i])
            holder = cols["duplicate_of"][i] if cols["kind"][i] == "duplicate" else aid
            for k in cols["exact_keys"][i] or ():
                url_keys.add(k)
                exact.setdefault(k, holder)
            if cols["duplicate_of"][i]:
                snap.roots[aid] = cols["duplicate_of"][i]
            sig, seen = cols["minhash"][i], cols["seen_at"][i]
            if sig is not None and cols["kind"][i] == "article" and (cutoff is None or seen >= cutoff):
                snap.signatures.append((aid, np.frombuffer(sig, dtype=np.uint32), seen))
    snap.url_keys = KeySet(base, url_keys)
    snap.exact = ExactKeys(base, exact)
    snap.signatures.sort(key=lambda t: t[2])
    return snap


def index_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=INDEX_SCHEMA)


def fold_keys(tables: list[pa.Table], base: tuple[np.ndarray, pa.Array] | None = None) -> tuple[np.ndarray, pa.Array]:
    """Sorted unique keys of index rows (after ``base``), each with the article holding it as an exact
    key (the first one, in order), or null for URL-only keys (feed links that redirected elsewhere)."""
    keys, holders = ([base[0]], [base[1]]) if base else ([], [])
    for t in tables:
        kind = t.column("kind").combine_chunks()
        ok = pc.not_equal(kind, "error").to_numpy(zero_copy_only=False)
        holder = pc.if_else(pc.equal(kind, "duplicate"), t.column("duplicate_of"), t.column("article_id"))
        keys.append(t.column("url_key").to_numpy()[ok])  # error rows (older versions): see lake.failures
        holders.append(pa.nulls(int(ok.sum()), pa.string()))
        nested = t.column("exact_keys").combine_chunks()
        lengths = pc.fill_null(pc.list_value_length(nested), 0).to_numpy() * ok
        flat = pc.list_flatten(nested.filter(pa.array(ok))).to_numpy()
        keys.append(flat)
        holders.append(pc.take(holder.combine_chunks(), pa.array(np.repeat(np.arange(t.num_rows), lengths))))
    if not keys:
        return np.zeros(0, dtype=np.uint64), pa.array([], pa.string())
    k = np.concatenate(keys).astype(np.uint64)
    h = pa.concat_arrays([a.cast(pa.string()) for a in holders])
    unique = np.unique(k)
    valid = np.flatnonzero(h.is_valid().to_numpy(zero_copy_only=False))
    held, first = np.unique(k[valid], return_index=True)
    take = np.full(len(unique), -1, dtype=np.int64)
    take[np.searchsorted(unique, held)] = valid[first]
    holder = pc.take(h, pa.array(take, mask=take < 0))
    return unique, holder


KEYS_GROUP_ROWS = 65536


def write_keys(store: Store, rel: str, keys: np.ndarray, holders: pa.Array) -> None:
    buf = io.BytesIO()
    pq.write_table(pa.table({"key": pa.array(keys, pa.uint64()), "holder": holders}), buf, compression="zstd",
                   row_group_size=KEYS_GROUP_ROWS)
    store.write_bytes(rel, buf.getvalue())


def compact_index(store: Store, run_id: str, window_days: int, keep_parts: int = 16) -> None:
    """Once there are many row files: fold every key into a new ``keys-<run_id>.parquet`` (sorted, with
    the holders), keep only the dedup window's rows (signatures, roots) in ``compact-<run_id>.parquet``.

    Crash-safe: both are written before the old files are removed; a row file that survives a crash
    only repeats rows, and loading uses the newest keys file.
    """
    keys_file, row_files = _index_files(store)
    if len(row_files) <= keep_parts:
        return
    base = None
    if keys_file:
        old = store.read_table(keys_file)
        base = (old.column("key").to_numpy(), old.column("holder").combine_chunks())
    tables = [store.read_table(p).cast(INDEX_SCHEMA) for p in row_files]
    write_keys(store, f"{INDEX_DIR}/keys-{run_id}.parquet", *fold_keys(tables, base))
    cutoff = datetime.now(timezone.utc) - timedelta(days=window_days)
    seen: set[tuple] = set()
    rows = []
    for r in pa.concat_tables(tables).to_pylist():
        key = (r["article_id"], r["url_key"])
        if key in seen or r["kind"] == "error" or r["seen_at"] < cutoff:
            continue
        seen.add(key)
        rows.append(r)
    store.write_table(f"{INDEX_DIR}/compact-{run_id}.parquet", index_table(rows))
    for p in [*row_files, *([keys_file] if keys_file else [])]:
        if p not in (f"{INDEX_DIR}/keys-{run_id}.parquet", f"{INDEX_DIR}/compact-{run_id}.parquet"):
            store.remove(p)

def record_schema(store: Store, datasets: dict[str, pa.Schema], layout: str) -> dict:
    """Record the columns this version writes in ``_state/schema.json``. A column not seen before, or one whose
    type this version writes differently (the entity struct's ``text`` → ``mention``), bumps the version and adds
    a history entry (``added`` / ``changed``); old files stay readable (``union_by_name``, or
    :func:`lake.schema.upgrade_entities`). A writer of fewer columns (an older version) changes nothing."""
    now = {name: {f.name: str(f.type) for f in schema} for name, schema in datasets.items()}
    doc = store.read_json(SCHEMA_FILE) or {"version": 0, "layout": layout, "datasets": {}, "history": []}
    added = {name: {c: t for c, t in cols.items() if c not in doc["datasets"].get(name, {})}
             for name, cols in now.items()}
    added = {name: cols for name, cols in added.items() if cols}
    changed = {name: {c: t for c, t in cols.items() if doc["datasets"].get(name, {}).get(c, t) != t}
               for name, cols in now.items()}
    changed = {name: cols for name, cols in changed.items() if cols}
    if doc.get("layout") != layout:
        log.warning("this lake is partitioned by %s but the settings say lake.layout=%s", doc.get("layout"), layout)
    if added or changed:
        doc["version"] += 1
        entry: dict = {"version": doc["version"]}
        if added:
            entry["added"] = added
        if changed:  # the type before and after, e.g. the entity struct's field `text` renamed `mention`
            entry["changed"] = {name: {c: {"from": doc["datasets"][name][c], "to": t} for c, t in cols.items()}
                                for name, cols in changed.items()}
        for diff in (added, changed):
            for name, cols in diff.items():
                doc["datasets"].setdefault(name, {}).update(cols)
        doc["history"].append({**entry, "at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        store.write_json(SCHEMA_FILE, doc)
    return doc


def ensure_datasets(store: Store, datasets: dict[str, pa.Schema], day: str) -> list[str]:
    """Give every dataset folder at least one file, so that ``read_parquet('lake/errors/**/*.parquet')`` works
    on a lake that has had no error yet: an empty file with the schema, ``<dataset>/date=<day>/empty.parquet``
    (compaction folds it into the partition's next files). Returns the files written."""
    written = []
    for name, schema in datasets.items():
        if store.exists(name) and store.fs.ls(store.path(name), detail=False):
            continue
        rel = f"{name}/date={day}/empty.parquet"
        store.write_table(rel, schema.empty_table())
        written.append(rel)
    return written
