"""Stage 5 — deduplicate (after NER): exact (URL, canonical URL, text hash) and near-duplicates (MinHash LSH).

Exact duplicates are dropped (recorded in the index only): the same final URL (two feed links redirecting
to one page), the same declared canonical URL when it plausibly names the article (same site, not the home
or a section page, not declared by pages with different texts in the run), or the same text from the same
source. A near-duplicate — and a word-for-word copy on another outlet (a wire story run by several) — is
kept and flagged with ``duplicate_of`` = the ``article_id`` of the original (the first-seen copy, across
runs). Within a run articles are taken in a fixed order (published time, then URL), so a rerun decides
exactly the same.
"""

from __future__ import annotations

import re
from collections import ChainMap
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import apache_beam as beam
import numpy as np
from datasketch import LeanMinHash, MinHash, MinHashLSH

from warta.config.settings import DedupSettings
from warta.lake.state import IndexSnapshot, key64
from warta.net.urls import normalize_url, plausible_article_url
from warta.transforms.outputs import split

INDEX = "index"
SCHEME = "affine32"  # 32-bit hash values: signatures stored as uint32
_WORD = re.compile(r"\w+", re.UNICODE)


def shingles(text: str, size: int) -> set[bytes]:
    words = _WORD.findall(text.lower())
    if len(words) < size:
        return {" ".join(words).encode("utf-8")} if words else set()
    return {" ".join(words[i:i + size]).encode("utf-8") for i in range(len(words) - size + 1)}


def signature(text: str, settings: DedupSettings) -> np.ndarray:
    m = MinHash(num_perm=settings.num_perm, seed=1, scheme=SCHEME)
    m.update_batch(list(shingles(text, settings.shingle_size)))
    return m.hashvalues.astype(np.uint32)


def _minhash(sig: np.ndarray, num_perm: int) -> LeanMinHash:
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
        # LSH finds candidates a little below the threshold (high recall); each is then verified
        # against the real threshold with the estimated Jaccard similarity.
        lsh_threshold = min(0.9, max(0.3, settings.near_threshold - 0.1))
        self.lsh = MinHashLSH(threshold=lsh_threshold, num_perm=settings.num_perm)
        self.sigs: dict[str, np.ndarray] = {}
        self.order: dict[str, int] = {}
        for aid, sig, _ in snapshot.signatures:
            self._add(aid, sig)

    def _add(self, aid: str, sig: np.ndarray) -> None:
        if aid in self.sigs or len(sig) != self.settings.num_perm:
            return
        self.sigs[aid] = sig
        self.order[aid] = len(self.order)
        self.lsh.insert(aid, _minhash(sig, self.settings.num_perm))

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
            mh = _minhash(sig, self.settings.num_perm)
            candidates = [c for c in self.lsh.query(mh) if c != aid]
            matches = [c for c in candidates
                       if mh.jaccard(_minhash(self.sigs[c], self.settings.num_perm)) >= self.settings.near_threshold]
            if matches:
                best = self.root(min(matches, key=self.order.__getitem__))
        for k in keys:
            self.exact.setdefault(k, aid)
        if best:
            self.roots[aid] = best
        self._add(aid, sig)
        return ("near", best) if best else ("new", None)


def decide_all(articles: Iterable[dict[str, Any]], index: NearDuplicateIndex):
    """Yield ``(decision, original, article, signature, exact keys)`` in the deterministic order."""
    def order(a):
        when: datetime | None = a.get("published_at") or a.get("fetched_at")
        return (when.timestamp() if when else 0.0, a["url"], a["entry_url"], a["fetched_at"].timestamp())

    articles = sorted(articles, key=order)
    shared = shared_canonicals(articles, index.settings.near_threshold)
    for art in articles:
        art = dict(art)  # inputs are not ours to change (Dask may hand the same objects to a retried task)
        sig = art.pop("_minhash")
        keys = exact_keys(art, shared)
        kind, original = index.decide(art, sig, keys)
        yield kind, original, art, sig, keys


class _DeduplicateFn(beam.DoFn):
    def __init__(self, settings: DedupSettings, snapshot_loader: Callable[[], IndexSnapshot]):
        self.settings, self.snapshot_loader = settings, snapshot_loader
        self.exact = beam.metrics.Metrics.counter("warta", "duplicates_exact")
        self.near = beam.metrics.Metrics.counter("warta", "duplicates_near")

    def setup(self):
        self.snapshot = self.snapshot_loader()

    def process(self, keyed):
        _, articles = keyed
        index = NearDuplicateIndex(self.snapshot, self.settings)
        taken: set[tuple[str, int]] = set()
        for kind, original, art, sig, keys in decide_all(articles, index):
            url_key = key64(normalize_url(art["entry_url"]))
            if (art["article_id"], url_key) in taken:  # one URL twice in one run (WARC captures): the first stays
                continue
            taken.add((art["article_id"], url_key))  # a redirect twin (another entry URL) is a duplicate row
            row = {
                "article_id": art["article_id"], "url_key": url_key, "exact_keys": keys,
                "duplicate_of": original, "kind": "duplicate" if kind == "exact" else "article",
                "seen_at": art["fetched_at"], "minhash": sig.tobytes() if kind != "exact" else None,
            }
            yield INDEX, row
            if kind == "exact":
                self.exact.inc()
                continue
            if kind == "near":
                self.near.inc()
                art["duplicate_of"] = original
            yield "articles", art


@dataclass(eq=False)
class Deduplicate(beam.PTransform):
    """Articles in; articles to write out (main, ``duplicate_of`` filled) and ``index`` rows for the state."""

    settings: DedupSettings
    snapshot_loader: Any  # zero-arg callable returning the IndexSnapshot (loaded once per worker)

    def __post_init__(self):
        super().__init__()

    def expand(self, articles):
        settings = self.settings
        tagged = (
            articles
            | "Sign" >> beam.Map(lambda a: {**a, "_minhash": signature(a["text"], settings)})
            | "ToOneKey" >> beam.Map(lambda a: (None, a))
            | "Gather" >> beam.GroupByKey()
            | "Decide" >> beam.ParDo(_DeduplicateFn(settings, self.snapshot_loader))
        )
        return split(tagged, ["articles", INDEX])
