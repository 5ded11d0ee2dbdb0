"""The article-extraction-benchmark metric (scrapinghub/article-extraction-benchmark), re-implemented.

Per page: tokens are ``\\w+`` runs; shingles are word 4-grams counted as multisets; tp/fp/fn are the
clipped overlaps, normalised so each page weighs the same. Precision is the mean over pages that
predicted something or had truth to miss (tp+fp > 0), recall the mean over pages with truth
(tp+fn > 0); F1 is computed from those two means.
"""

from __future__ import annotations

import re
from collections import Counter
from statistics import mean

_TOKEN = re.compile(r"\w+", re.UNICODE)


def shingles(text: str, n: int = 4) -> Counter:
    tokens = _TOKEN.findall(text or "")
    return Counter(tuple(tokens[i:i + n]) for i in range(max(1, len(tokens) - n + 1)) if tokens[i:i + n])


def page_counts(pred: str, truth: str) -> tuple[float, float, float]:
    p, t = shingles(pred), shingles(truth)
    tp = sum((p & t).values())
    fp = sum((p - t).values())
    fn = sum((t - p).values())
    total = tp + fp + fn
    return (tp / total, fp / total, fn / total) if total else (0.0, 0.0, 0.0)


def _ratio(tp: float, other: float, third: float) -> float:
    if other == third == 0:
        return 1.0
    if tp == other == 0:
        return 0.0
    return tp / (tp + other)


def corpus_scores(pairs: list[tuple[str, str]]) -> dict[str, float]:
    """``pairs`` of (prediction, truth) -> precision, recall, F1 as the benchmark computes them."""
    counts = [page_counts(p, t) for p, t in pairs]
    precision = mean(_ratio(tp, fp, fn) for tp, fp, fn in counts if tp + fp > 0)
    recall = mean(_ratio(tp, fn, fp) for tp, fp, fn in counts if tp + fn > 0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "pages": len(pairs)}
