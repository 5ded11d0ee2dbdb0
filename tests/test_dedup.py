"""transforms.dedup: exact and near-duplicates, within a run and across runs (through the state index)."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from functools import partial

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from conftest import seed_article

from warta.config.settings import DedupSettings
from warta.lake import state
from warta.lake.state import IndexSnapshot, compact_index, index_table, load_index, open_index
from warta.lake.store import Store
from warta.net.urls import article_id
from warta.transforms.dedup import (
    Deduplicate,
    NearDuplicateIndex,
    components,
    decide_all,
    decide_in_one,
    exact_keys,
    signature,
)
from warta.transforms.extract import content_hash

S = DedupSettings()
T = datetime(2024, 11, 12, tzinfo=timezone.utc)


def art(url: str, text: str, hours: int = 0, canonical: str | None = None, entry_url: str | None = None) -> dict:
    return {"article_id": article_id(url), "url": url, "entry_url": entry_url or url, "canonical_url": canonical,
            "source": url.split("/")[2],
            "text": text, "content_hash": content_hash(text), "published_at": T + timedelta(hours=hours),
            "fetched_at": T + timedelta(days=1), "duplicate_of": None}


def body() -> str:
    return "\n".join(seed_article()[1])


def decide(arts, snapshot=None, settings=S):
    index = NearDuplicateIndex(snapshot or IndexSnapshot(), settings)
    return [(k, o, a["url"]) for k, o, a, _, _ in decide_all([{**a, "_minhash": signature(a["text"], settings)}
                                                           for a in arts], index)]


def test_syndicated_copy_with_new_lead_and_footer_is_flagged_original_is_not():
    original = art("https://patroli.example/a", body(), hours=0)
    copy = art("https://kabar.example/b", "Pyongyang kini resmi menjadi sekutu Moskow.\n" + body()
               + "\nArtikel ini telah tayang di JurnalPatroliNews.", hours=5)
    other = art("https://kabar.example/c", " ".join(f"kata{i} lain{i % 7} berita{i % 13}" for i in range(300)), hours=1)
    got = decide([copy, other, original])  # input order does not matter: earliest first
    assert got == [("new", None, original["url"]), ("new", None, other["url"]),
                   ("near", original["article_id"], copy["url"])]


def test_exact_duplicates_by_canonical_url_and_by_text_hash_within_a_source():
    a = art("https://x.example/a", body(), hours=0, canonical="https://x.example/berita/canon-1")
    same_canonical = art("https://x.example/amp/a", body() + "\nBeda sedikit.", hours=1,
                         canonical="https://x.example/berita/canon-1")
    same_text = art("https://x.example/z", body(), hours=2)
    got = decide([a, same_canonical, same_text])
    assert got[0] == ("new", None, a["url"])
    assert got[1] == ("exact", a["article_id"], same_canonical["url"])
    assert got[2] == ("exact", a["article_id"], same_text["url"])


def test_word_for_word_copy_on_another_outlet_is_kept_and_flagged():
    wire = art("https://antara.example/berita/1", body(), hours=0)
    copy = art("https://kabar.example/nasional/2", body(), hours=3)
    assert decide([copy, wire]) == [("new", None, wire["url"]), ("near", wire["article_id"], copy["url"])]


def texts(n: int) -> list[str]:
    return [" ".join(f"kata{i}{j} lain{j % 7} berita{(i * j) % 13}" for j in range(120)) for i in range(n)]


def test_homepage_or_section_canonical_is_not_a_dedup_key():
    arts = [art(f"https://x.example/berita/{i}.html", t, hours=i, canonical=c)
            for i, (t, c) in enumerate(zip(texts(4), ["https://x.example/", "https://www.x.example",
                                                      "https://x.example/nasional/", "https://x.example/"]))]
    assert [k for k, _, _ in decide(arts)] == ["new"] * 4


def test_canonical_declared_by_different_texts_in_a_run_is_not_a_key():
    arts = [art(f"https://x.example/{i}.html", t, hours=i, canonical="https://x.example/berita/terkini-hari-ini")
            for i, t in enumerate(texts(3))]
    assert [k for k, _, _ in decide(arts)] == ["new"] * 3


def test_two_feed_links_redirecting_to_one_page_give_one_row():
    final = "https://x.example/berita/1.html"
    twins = [art(final, body(), entry_url=e) for e in ("http://x.example/berita/1.html", final + "?from=rss")]
    with TestPipeline() as p:
        out = p | beam.Create(twins) | Deduplicate(S, IndexSnapshot)
        assert_that(out.articles | beam.Map(lambda r: r["url"]), equal_to([final]))
        assert_that(out.index | "K" >> beam.Map(lambda r: (r["kind"], r["article_id"])),
                    equal_to([("article", article_id(final)), ("duplicate", article_id(final))]), label="index")


def test_a_redirect_twin_in_a_later_run_is_a_duplicate(tmp_path):
    store = Store(str(tmp_path))
    first = art("https://x.example/berita/1.html", body())
    keys = exact_keys(first)
    store.write_table("_state/index/part-r1.parquet", index_table([
        {"article_id": first["article_id"], "url_key": keys[0], "exact_keys": keys, "duplicate_of": None,
         "kind": "article", "seen_at": datetime.now(timezone.utc), "minhash": signature(body(), S).tobytes()}]))
    twin = art(first["url"], body(), entry_url="http://x.example/berita/1.html/")
    assert decide([twin], load_index(store, window_days=7)) == [("exact", first["article_id"], first["url"])]


def test_threshold_edges():
    words = [f"w{i}" for i in range(400)]
    base = " ".join(words)
    # Jaccard of 5-gram shingles falls as the edit grows: ~0.9 near-identical, ~0.5 clearly different
    near = " ".join(words[:380] + [f"x{i}" for i in range(4)])
    far = " ".join(words[:200] + [f"y{i}" for i in range(200)])
    got = decide([art("https://a/1", base, 0), art("https://a/2", near, 1), art("https://a/3", far, 2)])
    assert [k for k, _, _ in got] == ["new", "near", "new"]
    strict = DedupSettings(near_threshold=0.99)
    got = decide([art("https://a/1", base, 0), art("https://a/2", near, 1)], settings=strict)
    assert [k for k, _, _ in got] == ["new", "new"]


def test_chains_point_at_the_first_original():
    text = body()
    a = art("https://a/1", text, 0)
    b = art("https://b/1", "Lead baru.\n" + text, 1)
    c = art("https://c/1", "Lead lain lagi.\n" + text + "\nPenutup.", 2)
    got = decide([a, b, c])
    assert got[1][:2] == ("near", a["article_id"]) and got[2][:2] == ("near", a["article_id"])


def test_across_runs_through_the_state_index(tmp_path):
    store = Store(str(tmp_path))
    first = art("https://patroli.example/a", body())
    rows = [{"article_id": first["article_id"], "url_key": 1, "exact_keys": [2, 3], "duplicate_of": None,
             "kind": "article", "seen_at": datetime.now(timezone.utc), "minhash": signature(first["text"], S).tobytes()}]
    store.write_table("_state/index/part-r1.parquet", index_table(rows))
    snap = load_index(store, window_days=7)
    copy = art("https://kabar.example/b", "Kalimat pembuka baru.\n" + body(), hours=30)
    assert decide([copy], snap) == [("near", first["article_id"], copy["url"])]
    # outside the window the signature has expired: no longer matched
    old = load_index(store, window_days=7, now=datetime.now(timezone.utc) + timedelta(days=8))
    assert decide([copy], old)[0][0] == "new"


def test_deduplicate_transform_emits_articles_and_index_rows():
    a, b = art("https://a/1", body(), 0), art("https://b/1", "Lead.\n" + body(), 1)
    exact = art("https://a/2", body(), 2)  # the same text from the same source
    with TestPipeline() as p:
        out = p | beam.Create([a, b, exact]) | Deduplicate(S, IndexSnapshot)
        assert_that(out.articles | beam.Map(lambda r: (r["url"], r["duplicate_of"])),
                    equal_to([("https://a/1", None), ("https://b/1", a["article_id"])]))
        assert_that(out.index | "K" >> beam.Map(lambda r: (r["kind"], r["minhash"] is None)),
                    equal_to([("article", False), ("article", False), ("duplicate", True)]), label="index")


def test_signature_is_stable_and_compact():
    s1, s2 = signature(body(), S), signature(body(), S)
    assert s1.dtype == np.uint32 and len(s1) == S.num_perm and (s1 == s2).all()


# --- the keyed path: the same decisions as one index of the whole run and window ---------------------

def assert_keyed(arts, index_loader, want, settings=S):
    """Run the keyed Deduplicate stage and assert its (article rows, index rows) equal ``want``."""
    with TestPipeline() as p:
        out = p | beam.Create(arts) | Deduplicate(settings, index_loader)
        for name, rows in zip(("articles", "index"), want):
            got = getattr(out, name) | f"Plain{name}" >> beam.Map(plain, name)
            assert_that(got, equal_to(rows), label=f"check{name}")


def plain(row, name):
    if name == "articles":
        return row["url"], row["entry_url"], row["duplicate_of"]
    return (row["article_id"], row["url_key"], tuple(row["exact_keys"]), row["duplicate_of"], row["kind"],
            row["minhash"], tuple(row["bands"] or ()))


def in_one(arts, snapshot, settings=S):
    out = decide_in_one([{**a, "_minhash": signature(a["text"], settings)} for a in arts], snapshot, settings)
    return (sorted(plain(v, "articles") for k, v in out if k == "articles"),
            sorted(plain(v, "index") for k, v in out if k == "index"))


def family_world(seed: int, n: int, start: int = 0, earlier: list[dict] = ()) -> list[dict]:
    """Randomized articles: originals, syndicated near-copies (new lead, a word changed) of this run's or
    ``earlier`` articles, word-for-word copies on other outlets, same-source text repeats, shared and
    article canonicals, redirect twins; published times drawn at random (ties included)."""
    rnd = random.Random(seed)
    vocab = [f"kata{i}" for i in range(400)]
    out = []
    for i in range(start, start + n):
        if (out or earlier) and rnd.random() < 0.5:
            src = rnd.choice([*earlier, *out])
            words = src["text"].split()
            r = rnd.random()
            if r < 0.5:  # near copy
                k = rnd.randrange(len(words))
                words = ["Lead", "baru", f"nomor{i}"] + words[:k] + [rnd.choice(vocab)] + words[k + 1:]
            elif r < 0.6:  # far edit: half the text replaced
                words = words[: len(words) // 2] + [rnd.choice(vocab) for _ in range(len(words) // 2)]
            text = " ".join(words)
        else:
            text = " ".join(rnd.choice(vocab) for _ in range(rnd.randint(40, 160)))
        host = rnd.choice(["a", "b", "c", "d"])
        canonical = rnd.choice([None, None, f"https://{host}.example/berita/c{rnd.randrange(6)}",
                                f"https://{host}.example/"])
        a = art(f"https://{host}.example/berita/{i}.html", text, hours=rnd.randrange(6), canonical=canonical)
        if rnd.random() < 0.1:
            a = art(f"https://{host}.example/berita/{i - 1}.html", text, hours=rnd.randrange(6),
                    entry_url=f"https://{host}.example/berita/{i - 1}.html?from=rss")  # a redirect twin
        out.append(a)
    return out


def commit_part(store, rows_out, run: str, seen: datetime) -> None:
    rows = [dict(v, seen_at=seen) for k, v in rows_out if k == "index"]
    store.write_table(f"_state/index/part-{run}.parquet", index_table(rows))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_keyed_decisions_equal_one_index_on_randomized_near_duplicates(tmp_path, seed):
    store = Store(str(tmp_path))
    now = datetime.now(timezone.utc)
    # earlier runs, decided in one index and committed as parts; folds after the 9th and the 15th
    earlier = []
    for r in range(20):
        arts = family_world(seed * 100 + r, 12, start=r * 12, earlier=earlier)
        earlier += arts
        snap = load_index(store, window_days=7)
        out = decide_in_one([{**a, "_minhash": signature(a["text"], S)} for a in arts], snap, S)
        commit_part(store, out, f"r{r:02d}", now - timedelta(days=9 - r * 0.5, microseconds=r))
        if r in (8, 14):
            compact_index(store, f"r{r:02d}", window_days=7, keep_parts=4)
    assert any(p.startswith("_state/index/fold-r14") for p in store.list("_state/index"))
    run = family_world(seed * 100 + 99, 40, start=1000, earlier=earlier) + family_world(seed * 100 + 7, 10)  # + repeats
    want = in_one(run, load_index(store, window_days=7))
    assert_keyed(run, partial(open_index, store, 7), want)
    kinds = [r[4] for r in want[1]]
    earlier_ids = {a["article_id"] for a in earlier}
    assert "duplicate" in kinds and any(r[3] in earlier_ids for r in want[1] if r[4] == "article")  # exact; near
    # of an earlier run's article


def test_keyed_path_reads_the_index_per_range(tmp_path, monkeypatch):
    monkeypatch.setattr(state, "RANGE_ROWS", {"keys": 8, "bands": 16, "window": 4})
    store = Store(str(tmp_path))
    first = [art(f"https://x.example/berita/{i}.html", t, hours=i) for i, t in enumerate(texts(12))]
    out = decide_in_one([{**a, "_minhash": signature(a["text"], S)} for a in first], IndexSnapshot(), S)
    for r in range(3):
        commit_part(store, out if r == 0 else [], f"r{r}", datetime.now(timezone.utc))
    compact_index(store, "r9", window_days=7, keep_parts=1)
    index = open_index(store, window_days=7)
    assert len(index.keys.files.files) > 1 and len(index.window.files) > 1 and len(index.bands.files) > 1
    copy = art("https://kabar.example/b", "Kalimat pembuka baru.\n" + texts(12)[3], hours=30)
    want = in_one([copy], load_index(store, window_days=7))
    assert want[0] == [(copy["url"], copy["url"], first[3]["article_id"])]
    assert_keyed([copy], partial(open_index, store, 7), want)
    rows = index.window_rows([state.key64(first[3]["article_id"])])
    assert [r.article_id for r in rows] == [first[3]["article_id"]]
    assert len(index.window.touched) == 1 and index.keys.files.touched == set()  # one row group of one range


def test_clusters_are_connected_components():
    assert sorted(components([("b", "a"), ("c", "b"), ("e", "d")])) == [("a", "a"), ("b", "a"), ("c", "a"),
                                                                       ("d", "d"), ("e", "d")]


def test_lsh_bands_are_chosen_once_and_match_datasketch():
    """Keyed dedup builds one small index per cluster: the band parameters must not be optimised again for
    each (datasketch integrates numerically for that, milliseconds a time), and must be datasketch's own."""
    from datasketch import MinHashLSH

    from warta.lake.state import lsh_params, lsh_ranges
    for threshold in (0.3, 0.6, 0.9):
        for num_perm in (64, 128):
            assert lsh_ranges(threshold, num_perm) == tuple(MinHashLSH(threshold=threshold, num_perm=num_perm).hashranges)
    lsh_params.cache_clear()
    for _ in range(50):
        NearDuplicateIndex(IndexSnapshot(exact={}, roots={}, signatures=[]), DedupSettings())
    assert lsh_params.cache_info().misses == 1
