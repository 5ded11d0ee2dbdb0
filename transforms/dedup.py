"""Stage 5 — deduplicate (after NER): exact (URL, canonical URL, text hash) and near-duplicates (MinHash LSH).

Exact duplicates are dropped (recorded in the index only): the same final URL (two feed links redirecting
to one page), the same declared canonical URL when it plausibly names the article (same site, not the home
or a section page, not declared by pages with different texts in the run), or the same text from the same
source. A near-duplicate — and a word-for-word copy on another outlet (a wire story run by several) — is
kept and flagged with ``duplicate_of`` = the ``article_id`` of the original (the first-seen copy, across
runs). Within a run articles are taken in a fixed order (published time, then URL), so a rerun decides
exactly the same.

The stage is keyed data throughout (signatures -> keys -> clusters -> decisions, as in datatrove's
MinHash dedup), so no step holds the run's articles, or the window's signatures, in one place:

1. **Sign** each article (MinHash, its LSH band keys), in parallel.
2. **Exact keys**: grouped by declared canonical URL to tell article canonicals from shared ones.
3. **Clusters** of the run: articles that share an exact key, a band key or an id are linked (grouped by
   key); connected components of those links (only id pairs meet in one place, no text).
4. **Lookups** against the lake's index (:class:`lake.state.LakeIndex`), grouped by key range: holders of
   exact keys, then window articles sharing a band (or the id), then their signatures and roots.
5. **Decide** per cluster, in the run's order, with :class:`NearDuplicateIndex` over only what the cluster's
   lookups found: the same rules, the same inputs that could matter, so the same decisions as one index of
   the whole run and window (``tests/test_dedup.py`` compares both on randomized near-duplicates).
"""

from __future__ import annotations

import re
from collections import ChainMap
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import apache_beam as beam
import numpy as np
from datasketch import LeanMinHash, MinHash, MinHashLSH

from warta.config.settings import DedupSettings
from warta.lake.state import IndexSnapshot, WindowRow, band_keys, id_key, key64, lsh_params, lsh_ranges
from warta.net.urls import normalize_url, plausible_article_url
from warta.transforms.outputs import split

INDEX = "index"
SCHEME = "affine32"  # 32-bit hash values: signatures stored as uint32
_WORD = re.compile(r"\w+", re.UNICODE)


def lsh_threshold(settings: DedupSettings) -> float:
    """LSH finds candidates a little below the threshold (high recall); each is then verified against the
    real threshold with the estimated Jaccard similarity."""
    return min(0.9, max(0.3, settings.near_threshold - 0.1))


def shingles(text: str, size: int) -> set[bytes]:
    words = _WORD.findall(text.lower())
    if len(words) < size:
        return {" ".join(words).encode("utf-8")} if words else set()
    return {" ".join(words[i:i + size]).encode("utf-8") for i in range(len(words) - size + 1)}


def signature(text: str, settings: DedupSettings) -> np.ndarray:
    m = MinHash(num_perm=settings.num_perm, seed=1, scheme=SCHEME)
    m.update_batch(list(shingles(text, settings.shingle_size)))
    return m.hashvalues.astype(np.uint32)


def _minhash(sig: np.ndarray) -> LeanMinHash:
    """A signature as a datasketch object; LeanMinHash skips rebuilding the permutations (80x faster)."""
    return LeanMinHash(seed=1, hashvalues=sig, scheme=SCHEME)


def exact_keys(article: dict[str, Any], shared_canonicals: frozenset[str] = frozenset()) -> list[int]:
    """Final URL, canonical URL (only a plausible article URL not in ``shared_canonicals``), and the text
    hash within the source (the same text on another outlet is a flagged copy, not dropped)."""
    canonical = article.get("canonical_url")
    if canonical in shared_canonicals or not plausible_article_url(canonical, article["url"]):
        canonical = None
    return [k for k in (key64(article["url"]), key64(canonical),
                        key64(f"{article.get('source')}\x00{article['content_hash']}")) if k is not None]


def shared_canonicals(articles: Iterable[dict[str, Any]], threshold: float) -> frozenset[str]:
    """Canonical URLs declared by pages with different texts (not near-duplicates of the first page that
    declared it): they name a site or section, not an article. Reads the ``_minhash`` signatures."""
    first: dict[str, np.ndarray] = {}
    shared = set()
    for a in articles:
        c = a.get("canonical_url")
        if c and c in first and np.mean(first[c] == a["_minhash"]) < threshold:  # estimated Jaccard
            shared.add(c)
        elif c:
            first.setdefault(c, a["_minhash"])
    return frozenset(shared)


class NearDuplicateIndex:
    """Exact keys plus an LSH over MinHash signatures; decides one article at a time, in order."""

    def __init__(self, snapshot: IndexSnapshot, settings: DedupSettings):
        self.settings = settings
        self.exact = ChainMap({}, snapshot.exact)  # this run's keys over the snapshot (read, not copied)
        self.roots = ChainMap({}, snapshot.roots)
        threshold = lsh_threshold(settings)  # params given: MinHashLSH would choose them again for every cluster
        self.lsh = MinHashLSH(threshold=threshold, num_perm=settings.num_perm,
                              params=lsh_params(threshold, settings.num_perm))
        self.sigs: dict[str, np.ndarray] = {}
        self.order: dict[str, int] = {}
        for aid, sig, _ in snapshot.signatures:
            self._add(aid, sig)

    def _add(self, aid: str, sig: np.ndarray) -> None:
        if aid in self.sigs or len(sig) != self.settings.num_perm:
            return
        self.sigs[aid] = sig
        self.order[aid] = len(self.order)
        self.lsh.insert(aid, _minhash(sig))

    def root(self, aid: str) -> str:
        seen = set()
        while aid in self.roots and aid not in seen:
            seen.add(aid)
            aid = self.roots[aid]
        return aid

    def decide(self, article: dict[str, Any], sig: np.ndarray, keys: list[int]) -> tuple[str, str | None]:
        """``("exact", original_id)``, ``("near", original_id)`` or ``("new", None)``; updates the index.
        An article whose own final URL is already known (a second feed link redirecting to the same page)
        is an exact duplicate of itself."""
        for k in keys:
            if k in self.exact:
                return "exact", self.exact[k]
        aid = article["article_id"]
        best = None
        if aid not in self.sigs:
            mh = _minhash(sig)
            candidates = [c for c in self.lsh.query(mh) if c != aid]
            matches = [c for c in candidates
                       if mh.jaccard(_minhash(self.sigs[c])) >= self.settings.near_threshold]
            if matches:
                best = self.root(min(matches, key=self.order.__getitem__))
        for k in keys:
            self.exact.setdefault(k, aid)
        if best:
            self.roots[aid] = best
        self._add(aid, sig)
        return ("near", best) if best else ("new", None)


def run_order(a: dict[str, Any]) -> tuple:
    """The order in which a run's articles are decided: published time, URL, entry URL, fetch time."""
    when: datetime | None = a.get("published_at") or a.get("fetched_at")
    return (when.timestamp() if when else 0.0, a["url"], a["entry_url"], a["fetched_at"].timestamp())


def decide_all(articles: Iterable[dict[str, Any]], index: NearDuplicateIndex):
    """Yield ``(decision, original, article, signature, exact keys)`` in the deterministic order."""
    articles = sorted(articles, key=run_order)
    # exact keys come with the articles (``_keys``) when the run's shared canonicals were decided before
    shared = frozenset() if all("_keys" in a for a in articles) else \
        shared_canonicals(articles, index.settings.near_threshold)
    for art in articles:
        art = dict(art)  # inputs are not ours to change (Dask may hand the same objects to a retried task)
        sig = art.pop("_minhash")
        keys = art.pop("_keys") if "_keys" in art else exact_keys(art, shared)
        kind, original = index.decide(art, sig, keys)
        yield kind, original, art, sig, keys


def index_rows(decisions: Iterable[tuple], ranges) -> Iterable[tuple[str, dict[str, Any], str, str | None]]:
    """Decisions -> ``(INDEX, row)`` and ``("articles", article)``, as the stage emits them. One URL twice
    in a run (WARC captures) gives one row: the first stays; a redirect twin (another entry URL) is a
    duplicate row."""
    taken: set[tuple[str, int]] = set()
    for kind, original, art, sig, keys in decisions:
        url_key = key64(normalize_url(art["entry_url"]))
        if (art["article_id"], url_key) in taken:
            continue
        taken.add((art["article_id"], url_key))
        row = {
            "article_id": art["article_id"], "url_key": url_key, "exact_keys": keys,
            "duplicate_of": original, "kind": "duplicate" if kind == "exact" else "article",
            "seen_at": art["fetched_at"], "minhash": sig.tobytes() if kind != "exact" else None,
            "bands": band_keys(sig, ranges) if kind != "exact" else None,
        }
        yield INDEX, row, kind, original
        if kind == "exact":
            continue
        if kind == "near":
            art["duplicate_of"] = original
        yield "articles", art, kind, original


def decide_in_one(articles: Iterable[dict[str, Any]], snapshot: IndexSnapshot, settings: DedupSettings):
    """The whole run against one in-memory index of the window (the design before keyed dedup; kept as
    the reference the keyed path is tested against). Articles carry ``_minhash``."""
    ranges = lsh_ranges(lsh_threshold(settings), settings.num_perm)
    return [(out, value) for out, value, _, _ in
            index_rows(decide_all(articles, NearDuplicateIndex(snapshot, settings)), ranges)]


# --- the keyed stage -----------------------------------------------------------------------------------

SHARD_BITS = 8  # lookups are grouped into 256 shards per key set (by the keys' top bits)


def sign(article: dict[str, Any], settings: DedupSettings, ranges) -> dict[str, Any]:
    """The article with its signature, band keys and a run-unique id (``_uid``) for the joins."""
    sig = signature(article["text"], settings)
    uid = f"{article['article_id']}:{key64(chr(0).join(str(article.get(f)) for f in ('entry_url', 'url', 'fetched_at', 'content_hash')))}"
    return {**article, "_minhash": sig, "_bands": band_keys(sig, ranges) if len(sig) == settings.num_perm else [],
            "_uid": uid}


def with_exact_keys(article: dict[str, Any], shared: frozenset[str] = frozenset()) -> dict[str, Any]:
    return {**article, "_keys": exact_keys(article, shared)}


def canonical_group(kv, threshold: float):
    """The articles declaring one canonical URL, with their exact keys (the canonical one only when the
    URL is not shared by different texts: :func:`shared_canonicals` over the group, in the run's order)."""
    _, articles = kv
    articles = sorted(articles, key=run_order)
    shared = shared_canonicals(articles, threshold)
    return [with_exact_keys(a, shared) for a in articles]


def link_keys(article: dict[str, Any]):
    """What links two articles of a run into one cluster: a shared exact key, band key or id."""
    uid = article["_uid"]
    yield ("i", article["article_id"]), uid
    for k in article["_keys"]:
        yield ("x", k), uid
    for k in article["_bands"]:
        yield ("b", k), uid


def links(kv):
    uids = sorted(set(kv[1]))
    return [(u, uids[0]) for u in uids[1:]]


def components(edges: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(uid, cluster id: the smallest uid of its component) for every uid in ``edges``."""
    parent: dict[str, str] = {}

    def find(x):
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return [(u, find(u)) for u in list(parent)]


def lookup_requests(article: dict[str, Any]):
    """((key set, shard), (key, uid)) for the article's exact keys and its band keys (and id key)."""
    uid = article["_uid"]
    for k in article["_keys"]:
        yield ("keys", k >> (64 - SHARD_BITS)), (k, uid)
    for k in [*article["_bands"], id_key(article["article_id"])]:
        yield ("bands", k >> (64 - SHARD_BITS)), (k, uid)


class _LookupFn(beam.DoFn):
    """One shard of lookups against the index: exact holders -> ``found``, band hits -> window ``want``s."""

    def __init__(self, index_loader, ranges):
        self.index_loader, self.ranges = index_loader, ranges

    def setup(self):
        self.index = self.index_loader()

    def process(self, kv):
        (kind, _), requests = kv
        requests = list(requests)
        keys = {k for k, _ in requests}
        if kind == "keys":
            held = self.index.holders(keys)
            for k, uid in requests:
                if k in held:
                    yield beam.pvalue.TaggedOutput("found", (uid, ("exact", k, held[k])))
        else:
            hits = self.index.band_hits(keys, self.ranges)
            for k, uid in requests:
                for aid_key in hits.get(k, ()):
                    yield beam.pvalue.TaggedOutput("want", (aid_key >> (64 - SHARD_BITS), (aid_key, uid)))


class _WindowFn(beam.DoFn):
    """One shard of window articles wanted by the run: their signatures, seen_at, order and root."""

    def __init__(self, index_loader):
        self.index_loader = index_loader

    def setup(self):
        self.index = self.index_loader()

    def process(self, kv):
        wanted = set(kv[1])
        by_key: dict[int, list[WindowRow]] = {}
        for row in self.index.window_rows({k for k, _ in wanted}):
            by_key.setdefault(key64(row.article_id), []).append(row)
        for aid_key, uid in sorted(wanted):
            for row in by_key.get(aid_key, ()):
                yield uid, ("window", row)


def to_cluster(kv):
    """(cluster id, (article, what the lookups found for it)) from the join on ``_uid``."""
    uid, joined = kv
    clusters, found = list(joined["cluster"]), list(joined["found"])
    for article in joined["article"]:
        yield (clusters[0] if clusters else uid), (article, found)


def decide_cluster(members: Iterable[tuple[dict[str, Any], list]], settings: DedupSettings):
    """Today's decisions for one cluster: :func:`decide_all` over an index holding only the exact keys and
    window articles the cluster's lookups found (window rows in the window's order)."""
    exact: dict[int, str] = {}
    rows: dict[tuple[int, str], WindowRow] = {}
    articles = []
    for article, found in members:
        articles.append(article)
        for f in found:
            if f[0] == "exact":
                exact[f[1]] = f[2]
            else:
                rows[(f[1].seq, f[1].article_id)] = f[1]
    window = sorted(rows.values(), key=lambda r: (r.seen_at, r.seq))
    roots: dict[str, str] = {}
    for r in window:
        if r.duplicate_of:
            roots[r.article_id] = r.duplicate_of
    snapshot = IndexSnapshot(exact=exact, roots=roots, signatures=[(r.article_id, r.minhash, r.seen_at) for r in window])
    return decide_all(articles, NearDuplicateIndex(snapshot, settings))


class _DecideFn(beam.DoFn):
    def __init__(self, settings: DedupSettings, ranges):
        self.settings, self.ranges = settings, ranges
        self.exact = beam.metrics.Metrics.counter("warta", "duplicates_exact")
        self.near = beam.metrics.Metrics.counter("warta", "duplicates_near")

    def process(self, kv):
        members = [(self._plain(a), found) for a, found in kv[1]]
        for out, value, kind, _ in index_rows(decide_cluster(members, self.settings), self.ranges):
            if out == INDEX:
                self.exact.inc(kind == "exact")
                self.near.inc(kind == "near")
            yield out, value

    @staticmethod
    def _plain(article):  # the joins' working columns stay here (``_minhash``, ``_keys``: decide_all takes them)
        return {k: v for k, v in article.items() if k not in ("_bands", "_uid")}


@dataclass(eq=False)
class Deduplicate(beam.PTransform):
    """Articles in; articles to write out (main, ``duplicate_of`` filled) and ``index`` rows for the state."""

    settings: DedupSettings
    index_loader: Any  # zero-arg callable returning the index (lake.state.LakeIndex), opened once per worker

    def __post_init__(self):
        super().__init__()

    def expand(self, articles):
        s = self.settings
        ranges = lsh_ranges(lsh_threshold(s), s.num_perm)
        signed = articles | "Sign" >> beam.Map(sign, s, ranges)
        by_canonical = signed | "HasCanonical" >> beam.Partition(lambda a, _: int(bool(a.get("canonical_url"))), 2)
        keyed = (
            by_canonical[0] | "ExactKeys" >> beam.Map(with_exact_keys),
            by_canonical[1]
            | "KeyByCanonical" >> beam.Map(lambda a: (a["canonical_url"], a))
            | "GroupByCanonical" >> beam.GroupByKey()
            | "CanonicalKeys" >> beam.FlatMap(canonical_group, s.near_threshold),
        ) | "Keyed" >> beam.Flatten()
        clusters = (
            keyed
            | "LinkKeys" >> beam.FlatMap(link_keys)
            | "GroupLinks" >> beam.GroupByKey()
            | "Links" >> beam.FlatMap(links)
            # id pairs of linked articles only (candidates that passed the threshold: syndicated copies), so
            # one list is small even at 1M articles a day; without defaults: no side input (Dask)
            | "AllLinks" >> beam.combiners.ToList().without_defaults()
            | "Components" >> beam.FlatMap(components)
        )
        looked = (
            keyed
            | "LookupRequests" >> beam.FlatMap(lookup_requests)
            | "GroupLookups" >> beam.GroupByKey()
            | "Lookup" >> beam.ParDo(_LookupFn(self.index_loader, ranges)).with_outputs("found", "want")
        )
        window = (
            looked.want
            | "GroupWanted" >> beam.GroupByKey()
            | "WindowRows" >> beam.ParDo(_WindowFn(self.index_loader))
        )
        found = (looked.found, window) | "Found" >> beam.Flatten()
        decided = (
            {"article": keyed | "ByUid" >> beam.Map(lambda a: (a["_uid"], a)), "found": found, "cluster": clusters}
            | "Join" >> beam.CoGroupByKey()
            | "ToCluster" >> beam.FlatMap(to_cluster)
            | "GroupClusters" >> beam.GroupByKey()
            | "Decide" >> beam.ParDo(_DecideFn(s, ranges))
        )
        return split(decided, ["articles", INDEX])
