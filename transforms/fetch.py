"""Stage 2 — fetch article pages politely.

Entries are grouped by host, so one host's pages are fetched one at a time (spaced by its delay),
while the hosts of a group are fetched in parallel threads: parallel across hosts, polite per host.
Entries are sharded by a stable hash of their host into ``groups`` shards, so no step sees every
entry of the run; each shard packs its hosts into ``groups`` bins of about the same number of pages,
and bin ``j`` of shard ``s`` joins fetch group ``(j + s) % groups`` (one group per worker). A host
lives in one shard, one bin, one group: it is only ever fetched from one worker. Each page is passed
downstream as soon as it arrives, so the stages fused after this one (extraction, NER) work while
the remaining pages are still being fetched.

A run has a budget (``deadline``): a host takes only the pages that fit in what is left of it at its
pace, and past the deadline no new fetch starts; the entries not fetched come out as ``backlog``
(kept for the next run, entries that waited there first).
"""

from __future__ import annotations

import queue
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import apache_beam as beam

from warta.config.settings import HttpSettings
from warta.net.http import HTML_TYPES, FetchError, HttpClient, decode_html
from warta.net.urls import host_of, normalize_url
from warta.transforms.outputs import split
from warta.transforms.records import error_from, error_row, utcnow

ERRORS = "errors"
BACKLOG = "backlog"


def fetch_page(entry: dict[str, Any], client: HttpClient) -> dict[str, Any]:
    """Fetch one entry's page; returns the entry with ``html``, ``charset`` (the one it was decoded with),
    ``final_url``, ``fetched_at``. Raises FetchError (HostDeferred: the host's other entries fail the same,
    without a request, until the next run)."""
    resp = client.polite_get(entry["url"])
    if resp.status >= 400:
        raise FetchError(f"HTTP {resp.status}", status=resp.status, url=entry["url"])
    if resp.content_type and resp.content_type not in HTML_TYPES:
        raise FetchError(f"content type {resp.content_type!r} is not HTML", status=resp.status, url=entry["url"])
    html, charset = decode_html(resp.body, resp.header_charset())
    return {**entry, "final_url": resp.url, "status": resp.status, "html": html, "charset": charset,
            "fetched_at": utcnow()}


def host_pace(client: HttpClient, url: str) -> float:
    """Seconds between two requests to ``url``'s host. A host whose robots.txt cannot be read is paced by
    ``host_delay``: its pages then fail one by one through :meth:`HttpClient.polite_get` (deferred)."""
    try:
        return client.crawl_delay(url)
    except Exception:  # FetchError, or anything a hostile robots.txt provokes: its pages fail one by one
        return client.settings.host_delay


def fetch_one(entry: dict[str, Any], client: HttpClient) -> tuple[str, dict[str, Any]]:
    """``("page", row)`` or ``("error", row)``; never raises."""
    try:
        return "page", fetch_page(entry, client)
    except FetchError as e:
        return "error", error_from(e, "fetch", entry)
    except Exception as e:  # never let one page take the batch down
        return "error", error_row("fetch", f"{type(e).__name__}: {e}", url=entry.get("url"),
                                  feed_url=entry.get("feed_url"), source=entry.get("source"))


def fetch_host(entries: Iterable[dict[str, Any]], client: HttpClient) -> list[tuple[str, dict[str, Any]]]:
    """Fetch one host's entries in order; ``("page", row)`` or ``("error", row)`` for each."""
    return [fetch_one(entry, client) for entry in sorted(entries, key=lambda e: e["url"])]


def one_entry_per_page(entries: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """A page linked from several feeds (or with tracking parameters) is fetched once: of the entries
    with the same normalised URL, the one of the alphabetically first source is kept."""
    kept: dict[str, dict[str, Any]] = {}
    for e in entries:
        key = normalize_url(e["url"])
        first = kept.get(key)
        if first is None or (e["source"], e["feed_url"]) < (first["source"], first["feed_url"]):
            kept[key] = e
        if first is not None and (e.get("backlog") or first.get("backlog")):
            kept[key] = {**kept[key], "backlog": True}  # waited in the backlog: still fetched first
    return list(kept.values())


def fetch_order(entry: dict[str, Any]) -> tuple[bool, str]:
    """A host's pages in order: those waiting from an earlier run first, then by URL."""
    return not entry.get("backlog"), entry["url"]


def shard_of(host: str, shards: int) -> int:
    """The shard of a host: a stable hash (the same on every worker and run), so a host is never split."""
    return zlib.crc32(host.encode("utf-8", "surrogatepass")) % max(1, shards)


Deadline = float | Callable[[], float | None] | None  # epoch seconds, or a callable read on the worker


def resolve_deadline(deadline: Deadline) -> float | None:
    """The budget's end: a number, or a zero-arg callable evaluated on the worker (the deadline starts
    when the job does, see :func:`pipeline.build.run_deadline`)."""
    return deadline() if callable(deadline) else deadline


def pages_within(deadline: float | None, delay: float) -> float:
    """How many pages of one host can start before ``deadline`` (epoch seconds) at one per ``delay``."""
    if deadline is None:
        return float("inf")
    left = deadline - time.time()
    if left <= 0:
        return 0
    return float("inf") if delay <= 0 else 1 + int(left / delay)


def plan_groups(entries: Iterable[dict[str, Any]], groups: int,
                fits: float = float("inf")) -> list[list[tuple[str, list[dict[str, Any]]]]]:
    """Each page once, its host's entries packed into at most ``groups`` groups of about the same number
    of pages: the largest host goes to the lightest group. A host is never split, so it is only ever
    fetched from one worker. A host counts for at most ``fits`` pages (what the budget lets it fetch)."""
    by_host: dict[str, list[dict[str, Any]]] = {}
    for e in one_entry_per_page(entries):
        by_host.setdefault(host_of(e["url"]), []).append(e)
    bins: list[list[tuple[str, list[dict[str, Any]]]]] = [[] for _ in range(max(1, groups))]
    load = [0] * len(bins)
    for host, host_entries in sorted(by_host.items(), key=lambda kv: (-min(len(kv[1]), fits), kv[0])):
        i = min(range(len(bins)), key=lambda j: (load[j], j))
        bins[i].append((host, sorted(host_entries, key=fetch_order)))
        load[i] += min(len(host_entries), fits)
    return [b for b in bins if b]


def plan_shard(shard: int, entries: Iterable[dict[str, Any]], groups: int, deadline: Deadline, delay: float
               ) -> list[tuple[int, list[tuple[str, list[dict[str, Any]]]]]]:
    """One shard's hosts packed into ``groups`` bins, as ``(fetch group, bin)``: bin ``j`` joins group
    ``(j + shard) % groups``, so the heaviest bins of different shards land on different workers."""
    fits = pages_within(resolve_deadline(deadline), delay)
    return [((j + shard) % groups, b) for j, b in enumerate(plan_groups(entries, groups, fits))]


def group_hosts(bins: Iterable[list[tuple[str, list[dict[str, Any]]]]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """The bins one fetch group received (from every shard), as one list of hosts, largest first (when
    there are more hosts than threads, the longest start first)."""
    return sorted((host for bin_ in bins for host in bin_), key=lambda h: (-len(h[1]), h[0]))


def fetch_hosts(host_groups: list[tuple[str, list[dict]]], client: HttpClient, deadline: float | None,
                max_threads: int) -> Iterator[tuple[str, dict]]:
    """Fetch a group of hosts, one thread per host (politeness is per host; at most ``max_threads`` open
    connections), each host's entries in order: ``("page" | "backlog" | "error", row)`` as they arrive.
    Entries a host cannot fetch before ``deadline`` (its pace counted) come out as ``backlog``; whatever a
    host's thread raises becomes an ``error`` row for each of its entries not yet settled."""
    threads = max(1, min(len(host_groups), max_threads))
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fetch")
    # Bounded: when the stages downstream (NER) are slower than the network, fetching waits
    # instead of holding every page of the group in memory.
    arrived: queue.Queue = queue.Queue(maxsize=4 * threads)
    stop = threading.Event()

    def put(item) -> None:
        while not stop.is_set():
            try:
                arrived.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def fetch_into_queue(entries) -> None:
        done = 0
        try:
            fits = pages_within(deadline, host_pace(client, entries[0]["url"]))
            for i, entry in enumerate(entries):
                if stop.is_set():
                    return
                late = i >= fits or (deadline is not None and time.time() >= deadline)
                put(("backlog", entry) if late else fetch_one(entry, client))
                done += 1
        except Exception as e:  # never lose a host's entries: each one not yet settled gets an error row
            for entry in entries[done:]:
                put(("error", error_from(e, "fetch", entry)))
        finally:
            put(None)  # this host is done

    for _, entries in host_groups:
        pool.submit(fetch_into_queue, entries)
    running = len(host_groups)
    try:
        while running:
            item = arrived.get()
            if item is None:
                running -= 1
            else:
                yield item
    finally:
        stop.set()  # the consumer stopped (a bundle failed downstream): let the fetching threads go
        pool.shutdown(wait=False, cancel_futures=True)


class _FetchHostsFn(beam.DoFn):
    def __init__(self, http: HttpSettings, deadline: Deadline):
        self.http, self.deadline_of = http, deadline
        self.counters = {kind: beam.metrics.Metrics.counter("warta", name) for kind, name in
                         (("page", "pages_fetched"), ("error", "pages_failed"), ("backlog", "pages_deferred"))}

    def setup(self):
        self.client = HttpClient(self.http)
        self.deadline = resolve_deadline(self.deadline_of)

    def teardown(self):
        self.client.close()

    def process(self, host_groups: list[tuple[str, list[dict]]]):
        for kind, row in fetch_hosts(host_groups, self.client, self.deadline, self.http.fetch_threads):
            self.counters[kind].inc()
            yield {"page": "pages", "backlog": BACKLOG, "error": ERRORS}[kind], row


@dataclass(eq=False)
class FetchPages(beam.PTransform):
    """Entries in; fetched pages out (main), ``errors``, and the ``backlog`` of entries not fetched
    within the budget. Each page is fetched once."""

    http: HttpSettings
    groups: int = 1  # host shards and fetch groups, fetched in parallel by as many workers (one group per worker)
    deadline: Deadline = None  # epoch seconds after which no fetch starts (None: no budget), or a callable

    def __post_init__(self):
        super().__init__()

    def expand(self, entries):
        groups, deadline, delay = max(1, self.groups), self.deadline, self.http.host_delay
        tagged = (
            entries
            | "KeyByShard" >> beam.Map(lambda e: (shard_of(host_of(e["url"]), groups), e))
            | "GatherShards" >> beam.GroupByKey()
            | "PlanShards" >> beam.FlatMap(lambda kv: plan_shard(kv[0], kv[1], groups, deadline, delay))
            | "SpreadGroups" >> beam.GroupByKey()  # runners spread the keys over their workers
            | "Groups" >> beam.Map(lambda kv: group_hosts(kv[1]))
            | "Fetch" >> beam.ParDo(_FetchHostsFn(self.http, self.deadline))
        )
        return split(tagged, ["pages", ERRORS, BACKLOG])
