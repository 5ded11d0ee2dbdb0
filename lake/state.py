"""Run state under ``OUTPUT/_state/``: what the lake already holds, and each feed's validators.

- ``_state/index/part-<run>.parquet`` — one row per URL a run took (article or exact duplicate; failures
  are in ``_state/failures/``, see :mod:`lake.failures`): url key, exact keys (final URL, canonical URL,
  content hash), MinHash signature and its LSH band keys.
- ``_state/index/fold-<id>/`` — what index compaction folds the parts into, three sets of Parquet files,
  each split into ranges of its (uniformly hashed) uint64 key and sorted by it, so that a lookup reads only
  the files and row groups (min/max statistics) its keys fall in:

  - ``keys/r<i>.parquet`` — every key ever seen (``key``) with the article holding each exact key;
  - ``bands/r<i>.parquet`` — the dedup window's LSH band index: ``band_key`` (a band of a signature, or
    an article's id key) -> ``aid_key`` (the article), ``seen_at`` (to expire it);
  - ``window/r<i>.parquet`` — the window's articles by ``aid_key``: signature, root, ``seq`` (load order).

  ``fold-<id>/FOLD.json`` (written last: the fold's commit point) records the ranges of each set.
  Lakes written before folds were range-split have ``keys-<id>.parquet`` + ``compact-<id>.parquet``
  instead; they are read as one range and a row file until the next fold replaces them.
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
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import NamedTuple

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
    ("bands", pa.list_(pa.uint64())),  # LSH band keys of the signature (band_keys); null without one
])
KEYS_SCHEMA = pa.schema([("key", pa.uint64()), ("holder", pa.string())])
BANDS_SCHEMA = pa.schema([("band_key", pa.uint64()), ("aid_key", pa.uint64()),
                          ("seen_at", pa.timestamp("us", tz="UTC"))])
WINDOW_SCHEMA = pa.schema([("aid_key", pa.uint64()), ("article_id", pa.string()),
                           ("seen_at", pa.timestamp("us", tz="UTC")), ("seq", pa.int64()),
                           ("duplicate_of", pa.string()), ("minhash", pa.binary())])
SETS = {"keys": ("key", KEYS_SCHEMA), "bands": ("band_key", BANDS_SCHEMA), "window": ("aid_key", WINDOW_SCHEMA)}
KEYS_GROUP_ROWS = 8192  # rows per row group of keys/ and bands/ (a lookup reads whole row groups)
WINDOW_GROUP_ROWS = 512  # window/ rows hold a 512-byte signature each
RANGE_ROWS = {"keys": 1 << 20, "bands": 1 << 20, "window": 1 << 17}  # rows per range file, about


def key64(text: str | None) -> int | None:
    """64-bit key of a string (URL, hash): compact in memory and on disk."""
    if not text:
        return None
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


def id_key(article_id: str) -> int:
    """The band key under which the band index finds an article by its id (the window holds it or not)."""
    return key64(f"\x01id\x00{article_id}")


@lru_cache(maxsize=16)
def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) datasketch's MinHashLSH chooses for this threshold. Choosing integrates the
    false positive and negative rates numerically (milliseconds): done once per process, not per index."""
    from datasketch import MinHashLSH
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    return lsh.b, lsh.r


def lsh_ranges(threshold: float, num_perm: int) -> tuple[tuple[int, int], ...]:
    """The bands (start, end) datasketch's MinHashLSH uses for this threshold: the same candidates."""
    b, r = lsh_params(threshold, num_perm)
    return tuple((i * r, (i + 1) * r) for i in range(b))


def band_keys(sig: np.ndarray, ranges: Iterable[tuple[int, int]]) -> list[int]:
    """One uint64 per LSH band: two signatures share a key exactly when they share that band."""
    sig = np.asarray(sig, dtype=np.uint32)
    return [int.from_bytes(hashlib.blake2b(i.to_bytes(2, "big") + sig[s:e].tobytes(), digest_size=8).digest(), "big")
            for i, (s, e) in enumerate(ranges)]


def range_of(key: int, bits: int) -> int:
    """Which of ``2**bits`` ranges of the uint64 key space holds ``key`` (its top bits)."""
    return int(key) >> (64 - bits) if bits else 0


def _range_bounds(i: int, bits: int) -> tuple[int, int]:
    if not bits:
        return 0, 1 << 64
    return i << (64 - bits), (i + 1) << (64 - bits)


def _bits_for(rows: int, per_file: int) -> int:
    bits = 0
    while rows > per_file << bits and bits < 16:
        bits += 1
    return bits


class RangeFiles:
    """One set of range files (``keys``, ``bands`` or ``window``): sorted by ``col``, split by its top bits.
    Reads only the files and row groups (by their min/max statistics) that hold the keys asked for."""

    def __init__(self, store: Store, files: list[str], bits: int, col: str):
        self.store, self.files, self.bits, self.col = store, files, bits, col
        self._stats: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.touched: set[tuple[int, int]] = set()  # (file, row group) read so far (tests, benchmarks)

    def __getstate__(self):
        return {**self.__dict__, "_stats": {}}

    def stats(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(min, max) of ``col`` per row group of file ``i``, from its footer."""
        if i not in self._stats:
            with self.store.fs.open(self.store.path(self.files[i]), "rb") as fh:
                md = pq.ParquetFile(fh).metadata
            c = md.schema.names.index(self.col)
            lo, hi = [], []
            for g in range(md.num_row_groups):
                st = md.row_group(g).column(c).statistics
                lo.append(st.min if st is not None and st.has_min_max else 0)
                hi.append(st.max if st is not None and st.has_min_max else (1 << 64) - 1)
            self._stats[i] = (np.array(lo, dtype=np.uint64), np.array(hi, dtype=np.uint64))
        return self._stats[i]

    def group_of(self, i: int, key: int) -> int:
        """The row group of file ``i`` whose range may hold ``key`` (row groups are sorted and disjoint)."""
        lo, hi = self.stats(i)
        g = int(np.searchsorted(lo, np.uint64(key), side="right")) - 1
        return g if g >= 0 and hi[g] >= key else -1

    def read_groups(self, i: int, groups: list[int], columns: list[str] | None = None) -> pa.Table:
        self.touched.update((i, g) for g in groups)
        with self.store.fs.open(self.store.path(self.files[i]), "rb") as fh:
            return pq.ParquetFile(fh).read_row_groups(groups, columns=columns)

    def lookup(self, keys: Iterable[int], columns: list[str] | None = None) -> pa.Table:
        """The rows whose ``col`` is one of ``keys`` (several rows per key where the set has them)."""
        wanted = np.unique(np.fromiter((int(k) for k in keys), dtype=np.uint64))
        out = []
        for i in np.unique(wanted >> np.uint64(64 - self.bits)) if self.bits else ([0] if len(wanted) else []):
            i = int(i)
            if i >= len(self.files):
                continue
            mine = wanted[(wanted >> np.uint64(64 - self.bits)) == i] if self.bits else wanted
            lo, hi = self.stats(i)
            start = np.searchsorted(mine, lo, side="left")  # a row group is read when some key is in its range
            end = np.searchsorted(mine, hi, side="right")
            groups = [int(g) for g in np.flatnonzero(end > start)]
            if not groups:
                continue
            t = self.read_groups(i, groups, columns and [self.col, *[c for c in columns if c != self.col]])
            out.append(t.filter(pa.array(np.isin(t.column(self.col).to_numpy(), mine))))
        if not out:
            cols = SETS_BY_COL[self.col].names if columns is None else [self.col, *[c for c in columns if c != self.col]]
            return SETS_BY_COL[self.col].empty_table().select(cols)
        return pa.concat_tables(out)

    def read_range(self, lo: int, hi: int) -> pa.Table:
        """Every row with ``lo <= col < hi`` (folding into new ranges)."""
        out = []
        for i in range(len(self.files)):
            flo, fhi = _range_bounds(i, self.bits)
            if fhi <= lo or flo >= hi:
                continue
            glo, ghi = self.stats(i)
            groups = [g for g in range(len(glo)) if int(ghi[g]) >= lo and int(glo[g]) < hi]
            if groups:
                t = self.read_groups(i, groups)
                k = t.column(self.col).to_numpy()
                out.append(t.filter(pa.array((k >= np.uint64(lo)) & (k <= np.uint64(hi - 1)))))
        return pa.concat_tables(out) if out else SETS_BY_COL[self.col].empty_table()

    def __len__(self) -> int:
        return sum(self._rows(i) for i in range(len(self.files)))

    def _rows(self, i: int) -> int:
        with self.store.fs.open(self.store.path(self.files[i]), "rb") as fh:
            return pq.ParquetFile(fh).metadata.num_rows


SETS_BY_COL = {col: schema for col, schema in SETS.values()}


class RangedKeys:
    """The folded keys (``keys/`` ranges, or a legacy ``keys-<id>.parquet`` as one range): membership
    and holders read one row group at a time, only for the keys asked about; at most ``cache_groups``
    row groups of keys are kept (a process that asks about every key never holds them all)."""

    def __init__(self, files: RangeFiles | None = None, cache_groups: int = 256):
        self.files = files
        self.cache_groups = cache_groups
        self._keys: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()

    def __getstate__(self):
        return {**self.__dict__, "_keys": OrderedDict()}

    def _group_keys(self, i: int, g: int) -> np.ndarray:
        if (i, g) in self._keys:
            self._keys.move_to_end((i, g))
        else:
            self._keys[(i, g)] = self.files.read_groups(i, [g], ["key"]).column(0).to_numpy()
            while len(self._keys) > self.cache_groups:
                self._keys.popitem(last=False)
        return self._keys[(i, g)]

    def _where(self, key: int) -> tuple[int, int, int]:
        if self.files is None or not self.files.files:
            return -1, -1, -1
        i = range_of(key, self.files.bits)
        g = self.files.group_of(i, key) if i < len(self.files.files) else -1
        if g < 0:
            return -1, -1, -1
        keys = self._group_keys(i, g)
        j = int(np.searchsorted(keys, np.uint64(key)))
        return (i, g, j) if j < len(keys) and keys[j] == key else (-1, -1, -1)

    def __contains__(self, key: int) -> bool:
        return self._where(key)[0] >= 0

    def holder(self, key: int) -> str | None:
        i, g, j = self._where(key)
        if i < 0:
            return None
        return self.files.read_groups(i, [g], ["holder"]).column(0)[j].as_py()

    def holders(self, keys: Iterable[int]) -> dict[int, str]:
        """Holders of the keys that have one: each row group read once (the batch lookup of a shard)."""
        if self.files is None or not self.files.files:
            return {}
        t = self.files.lookup(keys, ["holder"])
        return {int(k): h for k, h in zip(t.column("key").to_pylist(), t.column("holder").to_pylist())
                if h is not None}

    def __len__(self) -> int:
        return 0 if self.files is None else len(self.files)


class KeySet:
    """URL and exact keys known to the lake: the folded keys (read on demand) plus the recent parts' keys."""

    def __init__(self, base: RangedKeys | None = None, recent: set[int] | None = None):
        self.base = base or RangedKeys()
        self.recent = set(recent or ())

    def __contains__(self, key: int) -> bool:
        return key in self.recent or key in self.base

    def __len__(self) -> int:
        return len(self.base) + sum(1 for k in self.recent if k not in self.base)


class ExactKeys(Mapping):
    """Exact key -> article_id of its first holder, read from disk only for the keys looked up."""

    def __init__(self, base: RangedKeys | None = None, recent: dict[int, str] | None = None):
        self.base = base or RangedKeys()
        self.recent = recent or {}

    def __getitem__(self, key: int) -> str:
        found = self.base.holder(key) or self.recent.get(key)
        if found is None:
            raise KeyError(key)
        return found

    def __contains__(self, key: object) -> bool:
        return isinstance(key, int) and (self.base.holder(key) or self.recent.get(key)) is not None

    def holders(self, keys: Iterable[int]) -> dict[int, str]:
        keys = list(keys)
        found = self.base.holders(keys)
        return {**{k: self.recent[k] for k in keys if k in self.recent and k not in found}, **found}

    def __iter__(self):  # the recent keys only: the folded ones are looked up, never listed
        return iter(self.recent)

    def __len__(self) -> int:
        return len(self.recent)


class WindowRow(NamedTuple):
    article_id: str
    minhash: np.ndarray  # uint32
    seen_at: datetime
    seq: int  # ties on seen_at are broken by load order, as they always were
    duplicate_of: str | None


@dataclass
class IndexSnapshot:
    """The index in memory: URL keys and exact keys for membership checks, roots and MinHash signatures
    of the dedup window (``load_index``; tests). Answers the keyed lookups of :class:`LakeIndex` too."""

    url_keys: KeySet | set = field(default_factory=KeySet)
    exact: Mapping = field(default_factory=dict)  # exact key -> article_id of the first holder
    roots: dict[str, str] = field(default_factory=dict)  # article_id -> article_id of its original
    signatures: list[tuple[str, np.ndarray, datetime]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.url_keys)

    def holders(self, keys: Iterable[int]) -> dict[int, str]:
        if hasattr(self.exact, "holders"):
            return self.exact.holders(keys)
        return {k: self.exact[k] for k in keys if k in self.exact}

    def band_hits(self, keys: Iterable[int], ranges) -> dict[int, list[int]]:
        bands: dict[int, list[int]] = {}
        for aid, sig, _ in self.signatures:
            for b in [*band_keys(sig, ranges), id_key(aid)]:
                bands.setdefault(b, []).append(key64(aid))
        return {k: bands[k] for k in keys if k in bands}

    def window_rows(self, aid_keys: Iterable[int]) -> list[WindowRow]:
        wanted = set(aid_keys)
        return [WindowRow(aid, sig, seen, i, self.roots.get(aid)) for i, (aid, sig, seen) in enumerate(self.signatures)
                if key64(aid) in wanted]


def _part_table(store: Store, rel: str) -> pa.Table:
    """An index part as the current schema (parts written before ``bands`` existed lack it)."""
    t = store.read_table(rel)
    for f in INDEX_SCHEMA:
        if f.name not in t.column_names:
            t = t.append_column(f, pa.nulls(t.num_rows, f.type))
    return t.select(INDEX_SCHEMA.names).cast(INDEX_SCHEMA)


@dataclass
class Fold:
    """The newest complete fold (``fold-<id>/FOLD.json``), or a legacy ``keys-<id>.parquet`` as one range."""

    store: Store
    dir: str | None
    bits: dict[str, int]
    next_seq: int = 0
    legacy_keys: str | None = None

    def files(self, name: str) -> RangeFiles:
        col = SETS[name][0]
        if self.dir is None:
            return RangeFiles(self.store, [self.legacy_keys] if name == "keys" and self.legacy_keys else [], 0, col)
        bits = self.bits[name]
        return RangeFiles(self.store, [f"{self.dir}/{name}/r{i:05d}.parquet" for i in range(1 << bits)], bits, col)


def _index_files(store: Store) -> tuple[Fold | None, list[str], list[str]]:
    """(newest complete fold, row files to read on top of it, every fold folder and legacy keys file: what
    the next fold replaces). A fold killed before its ``FOLD.json`` is ignored; one killed before removing
    the old files leaves them: they only repeat rows the fold holds."""
    files = store.list(INDEX_DIR)
    top = [f for f in files if posixpath.dirname(f) == INDEX_DIR and f.endswith(".parquet")]
    folds = sorted({f.split("/")[2] for f in files if f.split("/")[2].startswith("fold-")})
    done = [d for d in folds if f"{INDEX_DIR}/{d}/FOLD.json" in files]
    rows = [f for f in top if not posixpath.basename(f).startswith("keys-")]
    legacy = [f for f in top if posixpath.basename(f).startswith("keys-")]
    replaced = [f"{INDEX_DIR}/{d}" for d in folds] + legacy
    if done:
        doc = store.read_json(f"{INDEX_DIR}/{done[-1]}/FOLD.json")
        return Fold(store, f"{INDEX_DIR}/{done[-1]}", doc["bits"], doc["next_seq"]), rows, replaced
    if legacy:
        return Fold(store, None, {}, 0, legacy[-1]), rows, replaced
    return None, rows, replaced


class LakeIndex:
    """The index as a worker uses it during a run: the fold is read per key (ranges, row groups), the
    parts since the last fold (at most ``keep_parts`` runs' rows) are held in memory. Picklable."""

    def __init__(self, store: Store, window_days: int | None = None, now: datetime | None = None):
        self.store = store
        self.cutoff = None if window_days is None else (now or datetime.now(timezone.utc)) - timedelta(days=window_days)
        fold, row_files, _ = _index_files(store)
        self.fold = fold
        empty = Fold(store, None, {})
        self.keys = RangedKeys((fold or empty).files("keys"))
        self.bands = (fold or empty).files("bands")
        self.window = (fold or empty).files("window")
        recent_urls: set[int] = set()
        self.recent_exact: dict[int, str] = {}
        self.roots: dict[str, str] = {}
        self.recent_window: list[tuple[WindowRow, list[int] | None]] = []
        seq = (fold.next_seq if fold else 0) - 1
        for rel in row_files:
            cols = _part_table(store, rel).to_pydict()
            for i, aid in enumerate(cols["article_id"]):
                kind = cols["kind"][i]
                seq += 1  # every row counts, as in the fold
                if kind == "error":  # failures written by older versions: now in lake.failures
                    continue
                recent_urls.add(cols["url_key"][i])
                holder = cols["duplicate_of"][i] if kind == "duplicate" else aid
                for k in cols["exact_keys"][i] or ():
                    recent_urls.add(k)
                    self.recent_exact.setdefault(k, holder)
                if cols["duplicate_of"][i]:
                    self.roots[aid] = cols["duplicate_of"][i]
                sig, seen = cols["minhash"][i], cols["seen_at"][i]
                if sig is not None and kind == "article" and (self.cutoff is None or seen >= self.cutoff):
                    row = WindowRow(aid, np.frombuffer(sig, dtype=np.uint32), seen, seq, cols["duplicate_of"][i])
                    self.recent_window.append((row, cols["bands"][i]))
        self.url_keys = KeySet(self.keys, recent_urls)
        self.exact = ExactKeys(self.keys, self.recent_exact)
        self._recent_bands: dict[tuple, dict[int, list[int]]] = {}

    def holders(self, keys: Iterable[int]) -> dict[int, str]:
        return self.exact.holders(keys)

    def band_hits(self, keys: Iterable[int], ranges) -> dict[int, list[int]]:
        """Band key -> the window articles (``aid_key``) with that band (or that id key)."""
        keys = list(keys)
        ranges = tuple(map(tuple, ranges))
        if ranges not in self._recent_bands:
            recent: dict[int, list[int]] = {}
            for row, bands in self.recent_window:
                for b in [*(bands if bands is not None else band_keys(row.minhash, ranges)), id_key(row.article_id)]:
                    recent.setdefault(b, []).append(key64(row.article_id))
            self._recent_bands[ranges] = recent
        hits: dict[int, list[int]] = {}
        t = self.bands.lookup(keys, ["aid_key", "seen_at"])
        for b, a, seen in zip(t.column("band_key").to_pylist(), t.column("aid_key").to_pylist(),
                              t.column("seen_at").to_pylist()):
            if self.cutoff is None or seen >= self.cutoff:
                hits.setdefault(b, []).append(a)
        for k in keys:
            if k in self._recent_bands[ranges]:
                hits.setdefault(k, []).extend(self._recent_bands[ranges][k])
        return hits

    def window_rows(self, aid_keys: Iterable[int]) -> list[WindowRow]:
        """The window's rows of these articles (signature, seen_at, seq, root), expired ones left out."""
        wanted = set(aid_keys)
        t = self.window.lookup(wanted)
        out = [WindowRow(r["article_id"], np.frombuffer(r["minhash"], dtype=np.uint32), r["seen_at"], r["seq"],
                         r["duplicate_of"]) for r in t.to_pylist()
               if self.cutoff is None or r["seen_at"] >= self.cutoff]
        return out + [row for row, _ in self.recent_window if key64(row.article_id) in wanted]

    def snapshot(self) -> IndexSnapshot:
        """The whole window in memory (every window file read): the pre-keyed view, for comparisons."""
        rows = self.window_rows_all()
        return IndexSnapshot(url_keys=self.url_keys, exact=self.exact,
                             roots={**{r.article_id: r.duplicate_of for r in rows if r.duplicate_of}, **self.roots},
                             signatures=[(r.article_id, r.minhash, r.seen_at) for r in rows])

    def window_rows_all(self) -> list[WindowRow]:
        rows = []
        for i in range(len(self.window.files)):
            t = self.window.read_groups(i, list(range(len(self.window.stats(i)[0]))))
            rows += [WindowRow(r["article_id"], np.frombuffer(r["minhash"], dtype=np.uint32), r["seen_at"], r["seq"],
                               r["duplicate_of"]) for r in t.to_pylist()
                     if self.cutoff is None or r["seen_at"] >= self.cutoff]
        rows += [row for row, _ in self.recent_window]
        return sorted(rows, key=lambda r: (r.seen_at, r.seq))


def open_index(store: Store, window_days: int | None = None, now: datetime | None = None) -> LakeIndex:
    """The index for keyed lookups: cheap to open (footers and the recent parts), read per key."""
    return LakeIndex(store, window_days, now)


def load_index(store: Store, window_days: int | None = None, now: datetime | None = None) -> IndexSnapshot:
    """The index with the whole dedup window's signatures in memory (the pre-keyed snapshot; tests and
    benchmarks compare the keyed path against it). Keys are still read per key from the fold."""
    return open_index(store, window_days, now).snapshot()


def index_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist([{"bands": None, **r} for r in rows], schema=INDEX_SCHEMA)


def _first_holders(k: np.ndarray, h: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """Sorted unique ``k``, each with its first non-null holder in ``h`` (or null)."""
    unique = np.unique(k)
    valid = np.flatnonzero(h.is_valid().to_numpy(zero_copy_only=False))
    held, first = np.unique(k[valid], return_index=True)
    take = np.full(len(unique), -1, dtype=np.int64)
    take[np.searchsorted(unique, held)] = valid[first]
    return unique, pc.take(h, pa.array(take, mask=take < 0))


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
    return _first_holders(np.concatenate(keys).astype(np.uint64),
                          pa.concat_arrays([a.cast(pa.string()) for a in holders]))


def write_keys(store: Store, rel: str, keys: np.ndarray, holders: pa.Array) -> None:
    _write_sorted(store, rel, pa.table({"key": pa.array(keys, pa.uint64()), "holder": holders}), KEYS_GROUP_ROWS)


def _write_sorted(store: Store, rel: str, table: pa.Table, group_rows: int) -> None:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", row_group_size=group_rows, write_statistics=True)
    store.write_bytes(rel, buf.getvalue())


def _new_window_rows(tables: list[pa.Table], cutoff: datetime, next_seq: int, ranges) -> tuple[pa.Table, pa.Table]:
    """The parts' window rows (articles with a signature inside the window) and their band rows (the
    stored band keys, computed for parts written without them, plus the id key). ``seq`` counts every
    part row in order, as :class:`LakeIndex` does."""
    wins, bands = [], []
    seq = next_seq
    for t in tables:
        ok = pc.and_(pc.and_(pc.equal(t.column("kind"), "article"), pc.is_valid(t.column("minhash"))),
                     pc.greater_equal(t.column("seen_at"), pa.scalar(cutoff, INDEX_SCHEMA.field("seen_at").type)))
        ok = pc.fill_null(ok, False)
        rows = np.flatnonzero(ok.to_numpy(zero_copy_only=False))
        w = t.take(pa.array(rows))
        seq_col = pa.array(seq + rows, pa.int64())
        seq += t.num_rows
        aids = w.column("article_id").to_pylist()
        aid_keys = pa.array([key64(a) for a in aids], pa.uint64())
        wins.append(pa.table([aid_keys, w.column("article_id"), w.column("seen_at"), seq_col, w.column("duplicate_of"),
                              w.column("minhash")], schema=WINDOW_SCHEMA))
        stored = w.column("bands").combine_chunks()
        if stored.null_count:  # parts written before rows carried their band keys
            sigs = w.column("minhash").to_pylist()
            stored = pa.array([b if b is not None else band_keys(np.frombuffer(sig, dtype=np.uint32), ranges)
                               for b, sig in zip(stored.to_pylist(), sigs)], pa.list_(pa.uint64()))
        lengths = pc.list_value_length(stored).to_numpy()
        which = np.concatenate([np.repeat(np.arange(len(aids)), lengths), np.arange(len(aids))])
        band_col = np.concatenate([pc.list_flatten(stored).to_numpy(),
                                   np.array([id_key(a) for a in aids], dtype=np.uint64)])
        bands.append(pa.table([pa.array(band_col, pa.uint64()), pc.take(aid_keys, pa.array(which)),
                               pc.take(w.column("seen_at"), pa.array(which))], schema=BANDS_SCHEMA))
    if not wins:
        return WINDOW_SCHEMA.empty_table(), BANDS_SCHEMA.empty_table()
    return pa.concat_tables(wins), pa.concat_tables(bands)


def _split(table: pa.Table, col: str, bits: int) -> list[pa.Table]:
    if not bits:
        return [table]
    r = table.column(col).to_numpy() >> np.uint64(64 - bits)
    return [table.filter(pa.array(r == i)) for i in range(1 << bits)]


def compact_index(store: Store, run_id: str, window_days: int, keep_parts: int = 16, ranges=None) -> None:
    """Once there are more than ``keep_parts`` row files: fold them and the previous fold into a new
    ``fold-<run_id>/`` (keys, band index and window rows, each split into key ranges, one range in memory
    at a time), expiring band and window rows older than the window. ``ranges``: the LSH bands of parts
    written before they carried their band keys (default settings' otherwise).

    Crash-safe: the new fold is complete (``FOLD.json`` written last) before the old files are removed; a
    row file that survives a crash only repeats rows, and loading uses the newest complete fold.
    """
    fold, row_files, replaced = _index_files(store)
    if len(row_files) <= keep_parts:
        return
    if ranges is None:
        from warta.config.settings import DedupSettings
        d = DedupSettings()
        ranges = lsh_ranges(min(0.9, max(0.3, d.near_threshold - 0.1)), d.num_perm)
    tables = [_part_table(store, p) for p in row_files]
    cutoff = datetime.now(timezone.utc) - timedelta(days=window_days)
    next_seq = fold.next_seq if fold else 0
    new = {"keys": None, "window": None, "bands": None}
    k, h = fold_keys(tables)
    new["keys"] = pa.table({"key": pa.array(k, pa.uint64()), "holder": h})
    new["window"], new["bands"] = _new_window_rows(tables, cutoff, next_seq, ranges)
    old = {name: (fold.files(name) if fold else RangeFiles(store, [], 0, SETS[name][0])) for name in SETS}
    out = f"{INDEX_DIR}/fold-{run_id}"
    store.remove(out, recursive=True)  # a fold of this run killed before its FOLD.json
    bits, rows = {}, {}
    for name, (col, schema) in SETS.items():
        old_rows = len(old[name])
        bits[name] = _bits_for(old_rows + new[name].num_rows, RANGE_ROWS[name])
        rows[name] = 0
        for i, part in enumerate(_split(new[name].sort_by(col), col, bits[name])):
            merged = pa.concat_tables([old[name].read_range(*_range_bounds(i, bits[name])).cast(schema), part])
            if name == "keys":
                key, holder = _first_holders(merged.column("key").to_numpy(), merged.column("holder").combine_chunks())
                merged = pa.table({"key": pa.array(key, pa.uint64()), "holder": holder})
            else:  # expire, and keep the order of equal keys (older rows first)
                merged = merged.filter(pc.greater_equal(merged.column("seen_at"), pa.scalar(cutoff, schema.field("seen_at").type)))
                merged = merged.take(pc.sort_indices(merged, sort_keys=[(col, "ascending")]))
            rows[name] += merged.num_rows
            _write_sorted(store, f"{out}/{name}/r{i:05d}.parquet", merged,
                          WINDOW_GROUP_ROWS if name == "window" else KEYS_GROUP_ROWS)
    seqs = sum(t.num_rows for t in tables)
    store.write_json(f"{out}/FOLD.json", {"bits": bits, "rows": rows, "next_seq": next_seq + seqs,
                                          "folded_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    for p in [*row_files, *replaced]:
        if p != out:
            store.remove(p, recursive=True)


def lake_layout(store: Store, lake) -> str:
    """The partition layout to write: ``lake.layout`` when the settings name it; else the one recorded in
    ``_state/schema.json`` (an existing lake keeps its layout when the default changes); a lake with
    articles but no record was written with the old default, ``date_source``; a new lake the default."""
    if "layout" in lake.model_fields_set:
        return lake.layout
    recorded = (store.read_json(SCHEMA_FILE) or {}).get("layout")
    return recorded or layout_on_disk(store) or lake.layout


def layout_on_disk(store: Store) -> str | None:
    """The layout of the articles already in the lake, read from its first partition folder (a lake
    written before the layout was recorded); None for a lake without articles."""
    def first_dir(rel: str) -> str | None:
        try:
            names = sorted(posixpath.basename(p.rstrip("/")) for p in store.fs.ls(store.path(rel), detail=False))
        except FileNotFoundError:
            return None
        return next((n for n in names if "=" in n and not n.startswith(".")), None)

    top = first_dir("articles")
    if top is None:
        return None
    name = top.split("=", 1)[0]
    if name != "date":
        return name  # month, ingest_date
    return "date_source" if (first_dir(f"articles/{top}") or "").startswith("source=") else "date"


def with_lake_layout(settings, store: Store):
    """``settings`` with ``lake.layout`` set to :func:`lake_layout` (marked as set, so it stays)."""
    layout = lake_layout(store, settings.lake)
    lake = settings.lake.model_copy(update={"layout": layout})
    lake.model_fields_set.add("layout")
    return settings.model_copy(update={"lake": lake})


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
