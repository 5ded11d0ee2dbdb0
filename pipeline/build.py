"""Compose the stages into one Beam pipeline (runner-agnostic: Create, ParDo, GroupByKey, Flatten only)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from functools import partial

import apache_beam as beam

from warta.config.settings import Feed, Settings
from warta.lake.failures import Failures, load_failures
from warta.lake.faults import kill_point
from warta.lake.state import LakeIndex, open_index
from warta.lake.store import Store
from warta.pipeline.progress import count
from warta.transforms.dedup import Deduplicate
from warta.transforms.extract import ExtractArticles
from warta.transforms.feeds import PollFeeds
from warta.transforms.fetch import FetchPages
from warta.transforms.ner import PreloadModels, TagEntities, known_languages, model_source
from warta.transforms.records import RecordFailures
from warta.transforms.write import WriteDataset, WriteState

_SNAPSHOT: dict[tuple, LakeIndex] = {}
_SNAPSHOT_LOCK = threading.Lock()


def load_snapshot(store: Store, window_days: int, run_id: str) -> LakeIndex:
    """The state index, opened once per worker process and run (polling and dedup share it): the parts
    since the last fold in memory, the fold read per key range as lookups need it."""
    key = (store.url, window_days, run_id)
    with _SNAPSHOT_LOCK:
        if key not in _SNAPSHOT:
            _SNAPSHOT.clear()  # keep only the current run's snapshot
            _SNAPSHOT[key] = open_index(store, window_days=window_days)
        return _SNAPSHOT[key]


_FAILURES: dict[tuple, Failures] = {}


def load_failures_once(store: Store, run_id: str) -> Failures:
    """The failure records, read once per worker process and run (polling and failure recording share them)."""
    key = (store.url, run_id)
    with _SNAPSHOT_LOCK:
        if key not in _FAILURES:
            _FAILURES.clear()
            _FAILURES[key] = load_failures(store)
        return _FAILURES[key]


def load_seen(store: Store, window_days: int, run_id: str):
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
    backlog: list[dict] = field(default_factory=list)  # entries an earlier run did not fetch: taken first
    deadline: float | None = None  # epoch seconds: no page fetch starts after it
    progress_dir: str | None = None  # local directory the workers count progress into (pipeline.progress)

    @property
    def preload(self) -> tuple[str, ...]:
        """Languages whose NER models workers load as soon as they start (those the feeds declare)."""
        return tuple(sorted({f.language for f in self.feeds if f.language})) if self.settings.ner.enabled else ()

    def ner_paths(self) -> dict[str, str | None]:
        """Language -> where this machine (the launcher) finds its NER model ("warta", "config", "model_dir",
        "stanza"), or None. Only that name goes into the job: each worker finds the files itself, and fails the
        run when it has no model where the launcher had one (transforms/ner.py, Tagger.local_paths)."""
        langs = known_languages(self.settings.ner) | {f.language for f in self.feeds if f.language}
        # detected languages without a model get None at tagging time
        return {lang: found[0] if (found := model_source(lang, self.settings.ner)) else None for lang in sorted(langs)}


def build(p: beam.Pipeline, plan: Plan) -> tuple:
    """The poll: feeds (and the backlog of earlier runs) -> new entries -> :func:`process_entries`."""
    s = plan.settings
    polled = (
        p
        | "ListFeeds" >> beam.Create(plan.feeds)
        | "PreloadModels" >> PreloadModels(s.ner, plan.ner_paths(), plan.preload)
        | "PollFeeds" >> PollFeeds(s.http, plan.validators, s.max_items_per_feed,
                                  partial(load_seen, plan.store, s.dedup.window_days, plan.run_id),
                                  partial(load_failures_once, plan.store, plan.run_id))
    )
    entries = (polled.entries, p | "ListBacklog" >> beam.Create(plan.backlog)) | "WithBacklog" >> beam.Flatten()
    return process_entries(entries, plan, errors=[polled.errors], feed_state=polled.feed_state)


def process_entries(entries, plan: Plan, errors=(), feed_state=None) -> tuple:
    """Entries (feed items, the backlog, backfill URLs) -> fetched pages -> :func:`process_pages`. Entries
    not fetched within the run's budget are staged as the backlog."""
    pages = (entries | "CountEntries" >> beam.Map(count, plan.progress_dir, "entries")
             | "FetchPages" >> FetchPages(plan.settings.http, groups=plan.workers, deadline=plan.deadline))
    fetched = (pages.pages | "CountFetched" >> beam.Map(count, plan.progress_dir, "fetched")
               | "KillPointFetch" >> beam.Map(kill_point, "fetch"))  # crash tests (lake/faults.py)
    fetch_errors = pages.errors | "CountFetchErrors" >> beam.Map(count, plan.progress_dir, "fetched")
    backlog = (pages.backlog | "CountDeferred" >> beam.Map(count, plan.progress_dir, "deferred")
               | "WriteBacklog" >> WriteState(plan.store, plan.run_id, "backlog"))
    return process_pages(fetched, plan, errors=[*errors, fetch_errors], feed_state=feed_state, written=[backlog])


def process_pages(pages, plan: Plan, errors=(), feed_state=None, written=()) -> tuple:
    """Pages (fetched, or read from WARC files) -> extract -> NER -> dedup -> staged writes.

    ``errors``: error PCollections of the stages before; ``feed_state``: feed states to stage, if any;
    ``written``: sinks of the stages before (all sinks are joined on runners that need it)."""
    s = plan.settings
    # On the DirectRunner, Fetch -> Extract -> Tag run fused in each worker, with no shuffle between them:
    # tagging starts with the first pages while the rest are still arriving. On a cluster the articles are
    # shuffled over all its workers before tagging (TagEntities' batching, spread over plan.workers slots).
    # Deduplication (keyed by key range and cluster, transforms.dedup) comes after (exact duplicates are
    # rare by then: URLs are deduplicated above).
    extracted = pages | "ExtractArticles" >> ExtractArticles(
        s.min_text_chars, profiles={h: p.model_dump() for h, p in s.extract.profiles.items()})
    tagged = extracted.articles | "TagEntities" >> TagEntities(s.ner, plan.ner_paths(), plan.ner_batching,
                                                               plan.preload, spread=plan.workers)
    deduped = (tagged.articles | "CountTagged" >> beam.Map(count, plan.progress_dir, "tagged")
               | "Deduplicate" >> Deduplicate(s.dedup, partial(load_snapshot, plan.store, s.dedup.window_days,
                                                              plan.run_id)))
    written = [*written, deduped.articles | "WriteArticles" >> WriteDataset(plan.store, plan.run_id, "articles",
                                                                            s.lake.layout)]
    errors = (*errors, extracted.errors, tagged.errors) | "AllErrors" >> beam.Flatten()
    written.append(errors | "WriteErrors" >> WriteDataset(plan.store, plan.run_id, "errors"))
    written.append(deduped.index | "WriteIndex" >> WriteState(plan.store, plan.run_id, "index"))
    written.append(errors | "RecordFailures" >> RecordFailures(partial(load_failures_once, plan.store, plan.run_id))
                   | "WriteFailures" >> WriteState(plan.store, plan.run_id, "failures"))
    if feed_state is not None:
        written.append(feed_state | "CountFeeds" >> beam.Map(count, plan.progress_dir, "feeds")
                       | "WriteFeedState" >> WriteState(plan.store, plan.run_id, "feeds"))
    if plan.join_sinks:
        # One last step that depends on every sink: runners that execute only the final transform's
        # graph (Beam's DaskRunner does) still run all branches. Without defaults: a default value is a side
        # input, which the DaskRunner computes inside a worker by submitting the whole graph a second time.
        return (tuple(written) | "AllWrites" >> beam.Flatten()
                | "Finish" >> beam.combiners.Count.Globally().without_defaults())
    return tuple(written)
