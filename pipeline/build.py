"""Compose the stages into one Beam pipeline (runner-agnostic: Create, ParDo, GroupByKey, Flatten only)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import partial

import apache_beam as beam

from config.settings import Feed, Settings
from transforms.dedup import Deduplicate
from transforms.extract import ExtractArticles
from transforms.feeds import PollFeeds
from transforms.fetch import FetchPages
from transforms.ner import PreloadModels, TagEntities, model_paths
from transforms.records import is_permanent
from lake.state import IndexSnapshot, error_index_row, load_index
from lake.store import Store
from transforms.write import WriteDataset, WriteState


_SNAPSHOT: dict[tuple, IndexSnapshot] = {}
_SNAPSHOT_LOCK = threading.Lock()


def load_snapshot(store: Store, window_days: int, run_id: str) -> IndexSnapshot:
    """The state index, read once per worker process and run (polling and dedup share it)."""
    key = (store.url, window_days, run_id)
    with _SNAPSHOT_LOCK:
        if key not in _SNAPSHOT:
            _SNAPSHOT.clear()  # keep only the current run's snapshot
            _SNAPSHOT[key] = load_index(store, window_days=window_days)
        return _SNAPSHOT[key]


def load_seen(store: Store, window_days: int, run_id: str) -> set[int]:
    return load_snapshot(store, window_days, run_id).url_keys


@dataclass
class Plan:
    """Everything one bounded run needs, decided by the driver before the pipeline starts."""

    feeds: list[Feed]
    settings: Settings
    store: Store
    run_id: str
    validators: dict[str, dict]
    workers: int = 1  # host groups fetched in parallel (one per worker process)
    ner_batching: str = "bundle"  # "shuffle" on runners that drop finish_bundle output (Dask)
    join_sinks: bool = False  # end in one step fed by every sink (runners that only run the last step's graph)

    @property
    def preload(self) -> tuple[str, ...]:
        """Languages whose NER models workers load as soon as they start (those the feeds declare)."""
        return tuple(sorted({f.language for f in self.feeds if f.language})) if self.settings.ner.enabled else ()

    def ner_paths(self) -> dict[str, dict[str, str] | None]:
        langs = {"id", *self.settings.ner.languages}
        langs |= {f.language for f in self.feeds if f.language}
        if self.settings.ner.model_dir:
            from pathlib import Path
            base = Path(self.settings.ner.model_dir)
            if base.is_dir():
                langs |= {p.name for p in base.iterdir() if (p / "ner.pt").exists()}
        # detected languages without a model get None at tagging time
        return {lang: model_paths(lang, self.settings.ner) for lang in sorted(langs)}


def build(p: beam.Pipeline, plan: Plan) -> None:
    s = plan.settings
    paths = plan.ner_paths()
    polled = (
        p
        | "ListFeeds" >> beam.Create(plan.feeds)
        | "PreloadModels" >> PreloadModels(s.ner, paths, plan.preload)
        | "PollFeeds" >> PollFeeds(s.http, plan.validators, s.max_items_per_feed,
                                  partial(load_seen, plan.store, s.dedup.window_days, plan.run_id))
    )
    pages = polled.entries | "FetchPages" >> FetchPages(s.http, groups=plan.workers)
    # Fetch -> Extract -> Tag run fused in each worker, with no shuffle between them: tagging starts
    # with the first pages while the rest are still arriving. Deduplication needs every article of the
    # run in one place, so it comes after (exact duplicates are rare by then: URLs are deduplicated above).
    extracted = pages.pages | "ExtractArticles" >> ExtractArticles(
        s.min_text_chars, profiles={h: p.model_dump() for h, p in s.extract.profiles.items()})
    tagged = extracted.articles | "TagEntities" >> TagEntities(s.ner, paths, plan.ner_batching, plan.preload)
    deduped = tagged.articles | "Deduplicate" >> Deduplicate(
        s.dedup, partial(load_snapshot, plan.store, s.dedup.window_days, plan.run_id))

    written = [deduped.articles | "WriteArticles" >> WriteDataset(plan.store, plan.run_id, "articles")]
    errors = (polled.errors, pages.errors, extracted.errors, tagged.errors) | "AllErrors" >> beam.Flatten()
    written.append(errors | "WriteErrors" >> WriteDataset(plan.store, plan.run_id, "errors"))
    remembered = (
        errors
        | "PermanentFailures" >> beam.Filter(is_permanent)
        | "FailureIndexRows" >> beam.Map(error_index_row)
    )
    written.append((deduped.index, remembered) | "AllIndexRows" >> beam.Flatten() | "WriteIndex" >> WriteState(
        plan.store, plan.run_id, "index"))
    written.append(polled.feed_state | "WriteFeedState" >> WriteState(plan.store, plan.run_id, "feeds"))
    if plan.join_sinks:
        # One last step that depends on every sink: runners that execute only the final transform's
        # graph (Beam's DaskRunner does) still run all branches.
        return tuple(written) | "AllWrites" >> beam.Flatten() | "Finish" >> beam.combiners.Count.Globally()
    return tuple(written)
