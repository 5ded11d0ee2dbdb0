"""Multiple outputs from one stage, portable to every runner.

Stages emit ``(kind, value)`` pairs and :func:`split` fans them out with plain ``Filter``/``Map``
steps. This is what ``with_outputs`` does, but Beam's DaskRunner mixes up tagged outputs, so we keep
to the transforms every runner implements.
"""

from __future__ import annotations

import zlib
from types import SimpleNamespace

import apache_beam as beam


def split(tagged, kinds: list[str]) -> SimpleNamespace:
    """``tagged``: PCollection of (kind, value). Returns a namespace with one PCollection per kind."""
    out = {}
    for kind in kinds:
        out[kind] = (
            tagged
            | f"Only{kind.title().replace('_', '')}" >> beam.Filter(lambda kv, k=kind: kv[0] == k)
            | f"Unwrap{kind.title().replace('_', '')}" >> beam.Map(lambda kv: kv[1])
        )
    return SimpleNamespace(**out)


def _bucket(key: str, buckets: int) -> int:
    return zlib.crc32(key.encode("utf-8")) % buckets


def _chunks(keyed, size: int):
    _, items = keyed
    items = sorted(items, key=repr)  # deterministic batches, whatever order the shuffle delivered
    for i in range(0, len(items), size):
        yield items[i:i + size]


def batches(pcoll, key_fn, buckets: int, size: int, label: str = "Batch"):
    """Lists of at most ``size`` elements, from ``buckets`` shuffle groups keyed by ``key_fn``.

    Replaces ``BatchElements``, whose last partial batch the DaskRunner drops (it emits it from
    ``finish_bundle``); GroupByKey and FlatMap behave the same on every runner.
    """
    return (
        pcoll
        | f"{label}Key" >> beam.Map(lambda x: (_bucket(key_fn(x), max(1, buckets)), x))
        | f"{label}Group" >> beam.GroupByKey()
        | f"{label}Chunks" >> beam.FlatMap(_chunks, max(1, size))
    )
