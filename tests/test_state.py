"""lake.state: the index folded into sorted keys answers exactly as the raw parts did; schema records."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa

from warta.lake import state
from warta.lake.state import compact_index, index_table, load_index, record_schema
from warta.lake.store import Store

NOW = datetime.now(timezone.utc)


def random_parts(store: Store, parts: int = 20, rows: int = 30, seed: int = 3) -> list[int]:
    """Index parts with articles, exact duplicates (sharing keys) and failures (older versions wrote them
    here; now ignored: see lake.failures); returns every key of the articles and duplicates."""
    rnd = random.Random(seed)
    used = []
    for p in range(parts):
        out = []
        for r in range(rows):
            aid = f"a{p}-{r}"
            kind = rnd.choice(["article"] * 6 + ["duplicate", "error"])
            url = rnd.getrandbits(64)
            exact = [] if kind == "error" else [rnd.getrandbits(64), rnd.choice(used or [7])]  # shared keys
            used += [] if kind == "error" else [url, *exact]
            out.append({"article_id": aid, "url_key": url, "exact_keys": exact,
                        "duplicate_of": f"a0-{r}" if kind == "duplicate" else None, "kind": kind,
                        "seen_at": NOW - timedelta(days=30 if p < 5 else 0),
                        "minhash": None if kind != "article" else np.arange(16, dtype=np.uint32).tobytes()})
        store.write_table(f"_state/index/part-{p:02d}.parquet", index_table(out))
    return used


def answers(snap, keys):
    return ([k in snap.url_keys for k in keys], [snap.exact.get(k) for k in keys],
            sorted({a for a, _, _ in snap.signatures}))  # a row repeated after a crash is harmless


def test_folded_index_answers_like_the_parts(tmp_path):
    store = Store(str(tmp_path))
    used = random_parts(store)
    probe = used + [random.Random(9).getrandbits(64) for _ in range(50)]  # and unknown keys
    before = load_index(store, window_days=7)
    compact_index(store, "run-x", window_days=7, keep_parts=16)
    assert store.list("_state/index") == ["_state/index/fold-run-x/FOLD.json", "_state/index/fold-run-x/bands/r00000.parquet",
                                          "_state/index/fold-run-x/keys/r00000.parquet",
                                          "_state/index/fold-run-x/window/r00000.parquet"]
    after = load_index(store, window_days=7)
    assert answers(after, probe) == answers(before, probe)
    assert len(after.url_keys) == len(before.url_keys) == len(set(used))
    assert isinstance(after.url_keys.base, state.RangedKeys) and after.url_keys.recent == set()
    # more runs, then a second fold over the first: still the same answers
    extra = {"article_id": "late", "url_key": 1, "exact_keys": [2, used[0]], "duplicate_of": None, "kind": "article",
             "seen_at": NOW, "minhash": None}
    for p in range(20, 38):
        store.write_table(f"_state/index/part-{p:02d}.parquet", index_table([dict(extra, article_id=f"late{p}")]))
    mid = load_index(store, window_days=7)
    assert 1 in mid.url_keys and mid.exact[2] == "late20" and mid.exact[used[0]] == before.exact.get(used[0])
    expected = answers(mid, probe + [1, 2])  # (the index is read lazily: a fold replaces the files it reads)
    compact_index(store, "run-y", window_days=7, keep_parts=16)
    assert answers(load_index(store, window_days=7), probe + [1, 2]) == expected


def test_old_signatures_expire_and_a_crash_before_cleanup_changes_no_answer(tmp_path):
    store = Store(str(tmp_path))
    used = random_parts(store)
    before = load_index(store, window_days=7)
    assert {a.split("-")[0] for a, _, _ in before.signatures} == {f"a{p}" for p in range(5, 20)}
    saved = {rel: store.read_bytes(rel) for rel in store.list("_state/index")}
    compact_index(store, "run-x", window_days=7, keep_parts=16)
    rows = store.read_table("_state/index/fold-run-x/window/r00000.parquet")  # articles with a signature
    assert len(rows) and min(rows.column("seen_at").to_pylist()) > NOW - timedelta(days=7)
    bands = store.read_table("_state/index/fold-run-x/bands/r00000.parquet")
    assert set(bands.column("aid_key").to_pylist()) == set(rows.column("aid_key").to_pylist())
    for rel, data in saved.items():  # as if killed after writing the folded files, before removing the parts
        store.write_bytes(rel, data)
    assert answers(load_index(store, window_days=7), used) == answers(before, used)


def test_exact_holder_is_the_first_article_and_lookups_read_only_their_row_group(tmp_path, monkeypatch):
    monkeypatch.setattr(state, "KEYS_GROUP_ROWS", 4)
    store = Store(str(tmp_path))
    rows = [{"article_id": f"a{i}", "url_key": 100 + i, "exact_keys": [i, 50], "duplicate_of": None,
             "kind": "article", "seen_at": NOW, "minhash": None} for i in range(20)]
    for p in range(17):
        store.write_table(f"_state/index/part-{p:02d}.parquet", index_table(rows if p == 0 else rows[:1]))
    compact_index(store, "r", window_days=7, keep_parts=16)
    snap = load_index(store, window_days=7)
    assert snap.exact[50] == "a0" and snap.exact[7] == "a7" and 107 not in snap.exact and 107 in snap.url_keys
    assert len(snap.exact.base.files.touched) == 3  # three row groups of 4 keys read, of 11
    assert 10**12 not in snap.url_keys and snap.exact.get(10**12) is None


def test_schema_version_grows_only_with_new_columns(tmp_path):
    store = Store(str(tmp_path))
    v1 = pa.schema([("a", pa.string())])
    assert record_schema(store, {"articles": v1}, "date_source")["version"] == 1
    assert record_schema(store, {"articles": v1}, "date_source")["version"] == 1
    doc = record_schema(store, {"articles": v1.append(pa.field("b", pa.int32()))}, "date_source")
    assert doc["version"] == 2 and doc["datasets"]["articles"] == {"a": "string", "b": "int32"}
    assert record_schema(store, {"articles": v1}, "date_source")["version"] == 2  # an older writer: no downgrade
