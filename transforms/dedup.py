"""Stage 4 — deduplicate: exact (URL, canonical URL, text hash) and near-duplicates (MinHash LSH).

Exact duplicates are dropped (recorded in the index only). A near-duplicate is kept and flagged with
``duplicate_of`` = the ``article_id`` of the original (the first-seen copy, across runs). Within a run
articles are taken in a fixed order (published time, then URL), so a rerun decides exactly the same.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Iterable

import apache_beam as beam
import numpy as np
from datasketch import LeanMinHash, MinHash, MinHashLSH

from config.settings import DedupSettings
from transforms.outputs import split
from lake.state import IndexSnapshot, key64
from transforms.urls import normalize_url

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


def exact_keys(article: dict[str, Any]) -> list[int]:
    return [k for k in (key64(article["url"]), key64(article.get("canonical_url")),
                        key64(article["content_hash"])) if k is not None]


class NearDuplicateIndex:
    """Exact keys plus an LSH over MinHash signatures; decides one article at a time, in order."""

    def __init__(self, snapshot: IndexSnapshot, settings: DedupSettings):
        self.settings = settings
        self.exact = dict(snapshot.exact)
        self.roots = dict(snapshot.roots)
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

    def decide(self, article: dict[str, Any], sig: np.ndarray) -> tuple[str, str | None]:
        """``("exact", original_id)``, ``("near", original_id)`` or ``("new", None)``; updates the index."""
        keys = exact_keys(article)
        for k in keys:
            if k in self.exact and self.exact[k] != article["article_id"]:
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
    """Yield ``(decision, article)`` in the deterministic order."""
    def order(a):
        when: datetime | None = a.get("published_at") or a.get("fetched_at")
        return (when.timestamp() if when else 0.0, a["url"], a["fetched_at"].timestamp())

    for art in sorted(articles, key=order):
        sig = art.pop("_minhash")
        kind, original = index.decide(art, sig)
        yield kind, original, art, sig


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
        taken: set[str] = set()
        for kind, original, art, sig in decide_all(articles, index):
            if art["article_id"] in taken:  # the same page twice in one run (WARC captures): the first stays
                continue
            taken.add(art["article_id"])
            row = {
                "article_id": art["article_id"], "url_key": key64(normalize_url(art["entry_url"])), "exact_keys": exact_keys(art),
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
