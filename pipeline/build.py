"""Compose the stages into one Beam pipeline (runner-agnostic: Create, ParDo, GroupByKey, Flatten only)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from functools import partial

import apache_beam as beam

from warta.config.settings import Feed, Settings
from warta.lake.commit import INPUT, backlog_entries
from warta.lake.failures import Failures, load_failures
from warta.lake.faults import kill_point
from warta.lake.schema import staging_dir
from warta.lake.state import FEEDS_FILE, LakeIndex, open_index
from warta.lake.store import Store
from warta.pipeline.progress import count
from warta.transforms.dedup import Deduplicate
from warta.transforms.extract import ExtractArticles
from warta.transforms.feeds import PollFeeds
from warta.transforms.fetch import FetchPages
from warta.transforms.ner import PreloadModels, TagEntities, known_languages, model_source
from warta.transforms.records import RecordFailures
from warta.transforms.write import WriteDataset, WriteState, write_summary

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


_VALIDATORS: dict[tuple, dict] = {}


def load_validators(store: Store, run_id: str) -> dict[str, dict]:
    """Each feed's validators (``_state/feeds.json``), read once per worker process and run."""
    key = (store.url, run_id)
    with _SNAPSHOT_LOCK:
        if key not in _VALIDATORS:
            _VALIDATORS.clear()
            _VALIDATORS[key] = store.read_json(FEEDS_FILE, default={}) or {}
        return _VALIDATORS[key]


def start_marker(run_id: str) -> str:
    return f"{staging_dir(run_id)}/{INPUT}/START"


def mark_start(store: Store, run_id: str) -> float:
    """The job's start: written once, by the first step that runs (later calls read it back)."""
    rel = start_marker(run_id)
    marker = store.read_json(rel)
    if marker is None:
        store.write_json(rel, {"at": time.time()})
        marker = store.read_json(rel)
    return float(marker["at"])


_DEADLINES: dict[tuple, float] = {}


def run_deadline(store: Store, run_id: str, budget: float) -> float:
    """The run's deadline on a worker: the job's start (its ``START`` marker in the staging folder, so
    every worker counts from the same moment, however long the job waited to be scheduled) plus the
    budget. Read once per worker process and run."""
    key = (store.url, run_id, budget)
    with _SNAPSHOT_LOCK:
        if key not in _DEADLINES:
            _DEADLINES.clear()
            _DEADLINES[key] = mark_start(store, run_id) + budget
        return _DEADLINES[key]


def feeds_file(run_id: str) -> str:
    """Where the launcher stages the feeds list (one JSON object a line) for the pipeline to read."""
    return f"{staging_dir(run_id)}/{INPUT}/feeds.jsonl"


def write_feeds(store: Store, run_id: str, feeds: list[Feed]) -> str:
    rel = feeds_file(run_id)
    store.write_bytes(rel, "".join(f.model_dump_json() + "\n" for f in feeds).encode("utf-8"))
    return rel


def read_backlog_file(name: str, store: Store, run_id: str) -> list[dict]:
    """One backlog file's entries (read on a worker), counted into the run's summary."""
    entries = backlog_entries(store, name)
    write_summary(store, run_id, f"backlog_taken/{name.removesuffix('.json')}", {"entries_backlog": len(entries)})
    return entries


class _ReadFeedsFn(beam.DoFn):
    """A staged feeds list in, its feeds out; the first step of the job, so it marks the job's start."""

    def __init__(self, store: Store, run_id: str):
        self.store, self.run_id = store, run_id

    def process(self, rel: str):
        mark_start(self.store, self.run_id)
        for line in self.store.read_bytes(rel).decode("utf-8").splitlines():
            if line.strip():
                yield Feed.model_validate_json(line)


@dataclass
class Plan:
    """Everything one bounded run needs, decided by the driver before the pipeline starts."""

    feeds: list[Feed]
    settings: Settings
    store: Store
    run_id: str
    validators: dict[str, dict] | None  # None: the workers read _state/feeds.json
    workers: int = 1  # host shards and fetch groups (one per worker process)
    ner_batching: str = "bundle"  # "shuffle" on runners that drop finish_bundle output (Dask)
    join_sinks: bool = False  # end in one step fed by every sink (runners that only run the last step's graph)
    backlog: list[str] = field(default_factory=list)  # _state/backlog/ files of earlier runs: taken first
    budget: float | None = None  # seconds from the job's start (on the workers): no page fetch starts after
    progress_dir: str | None = None  # local directory the workers count progress into (pipeline.progress)
    feeds_file: str | None = None  # the feeds list staged by the launcher (else ``feeds`` go into the graph)

    @property
    def deadline(self):
        """The budget's end as the workers see it (a callable, evaluated there), or None."""
        if self.budget is None:
            return None
        return partial(run_deadline, self.store, self.run_id, self.budget)

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
    if plan.feeds_file:  # read on a worker: the graph stays the same size however many feeds there are
        feeds = (p | "ListFeeds" >> beam.Create([plan.feeds_file])
                 | "ReadFeeds" >> beam.ParDo(_ReadFeedsFn(plan.store, plan.run_id)))
    else:
        feeds = p | "ListFeeds" >> beam.Create(plan.feeds)
    validators = plan.validators if plan.validators is not None else partial(load_validators, plan.store,
                                                                             plan.run_id)
    polled = feeds | "PollFeeds" >> PollFeeds(
        s.http, validators, s.max_items_per_feed, partial(load_seen, plan.store, s.dedup.window_days, plan.run_id),
        partial(load_failures_once, plan.store, plan.run_id), shards=plan.workers,
        on_shards=PreloadModels(s.ner, plan.ner_paths(), plan.preload))  # every polling worker starts loading
    store = plan.store
    backlog = (p | "ListBacklog" >> beam.Create(plan.backlog)
               | "ReadBacklog" >> beam.FlatMap(read_backlog_file, store, plan.run_id))
    entries = (polled.entries, backlog) | "WithBacklog" >> beam.Flatten()
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
               | "WriteBacklog" >> WriteState(plan.store, plan.run_id, "backlog", plan.workers))
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
    shards = plan.workers
    written.append(deduped.index | "WriteIndex" >> WriteState(plan.store, plan.run_id, "index", shards))
    written.append(errors | "RecordFailures" >> RecordFailures(partial(load_failures_once, plan.store, plan.run_id))
                   | "WriteFailures" >> WriteState(plan.store, plan.run_id, "failures", shards))
    if feed_state is not None:
        written.append(feed_state | "CountFeeds" >> beam.Map(count, plan.progress_dir, "feeds")
                       | "WriteFeedState" >> WriteState(plan.store, plan.run_id, "feeds", shards))
    if plan.join_sinks:
        # One last step that depends on every sink: runners that execute only the final transform's
        # graph (Beam's DaskRunner does) still run all branches. Without defaults: a default value is a side
        # input, which the DaskRunner computes inside a worker by submitting the whole graph a second time.
        return (tuple(written) | "AllWrites" >> beam.Flatten()
                | "Finish" >> beam.combiners.Count.Globally().without_defaults())
    return tuple(written)
