"""Stage 2 — fetch article pages politely.

Entries are grouped by host, so one host's pages are fetched one at a time (spaced by its delay),
while a batch of hosts is fetched in parallel threads: parallel across hosts, polite per host.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any, Iterable

import apache_beam as beam

from config.settings import HttpSettings
from transforms import faults
from transforms.outputs import batches, split
from transforms.http import HTML_TYPES, FetchError, HttpClient, decode_html
from transforms.records import error_from, error_row, utcnow
from transforms.urls import host_of

ERRORS = "errors"


def fetch_page(entry: dict[str, Any], client: HttpClient) -> dict[str, Any]:
    """Fetch one entry's page; returns the entry with ``html``, ``final_url``, ``fetched_at``. Raises FetchError."""
    resp = client.polite_get(entry["url"])
    if resp.status >= 400:
        raise FetchError(f"HTTP {resp.status}", status=resp.status, url=entry["url"])
    if resp.content_type and resp.content_type not in HTML_TYPES:
        raise FetchError(f"content type {resp.content_type!r} is not HTML", status=resp.status, url=entry["url"])
    html = decode_html(resp.body, resp.header_charset())
    return {**entry, "final_url": resp.url, "status": resp.status, "html": html, "fetched_at": utcnow()}


def fetch_host(entries: Iterable[dict[str, Any]], client: HttpClient) -> list[tuple[str, dict[str, Any]]]:
    """Fetch one host's entries in order; ``("page", row)`` or ``("error", row)`` for each."""
    out = []
    for entry in sorted(entries, key=lambda e: e["url"]):
        faults.point("fetch")
        try:
            out.append(("page", fetch_page(entry, client)))
        except FetchError as e:
            out.append(("error", error_from(e, "fetch", entry)))
        except Exception as e:  # never let one page take the batch down
            out.append(("error", error_row("fetch", f"{type(e).__name__}: {e}", url=entry.get("url"),
                                           feed_url=entry.get("feed_url"), source=entry.get("source"))))
    return out


class _FetchHostsFn(beam.DoFn):
    def __init__(self, http: HttpSettings):
        self.http = http
        self.fetched = beam.metrics.Metrics.counter("warta", "pages_fetched")
        self.failed = beam.metrics.Metrics.counter("warta", "pages_failed")

    def setup(self):
        self.client = HttpClient(self.http)
        self.pool = ThreadPoolExecutor(max_workers=max(1, self.http.fetch_threads), thread_name_prefix="fetch")

    def teardown(self):
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()

    def process(self, host_groups: list[tuple[str, Iterable[dict]]]):
        futures = [self.pool.submit(fetch_host, list(entries), self.client) for _, entries in host_groups]
        for fut in as_completed(futures):
            for kind, row in fut.result():
                if kind == "page":
                    self.fetched.inc()
                    yield "pages", row
                else:
                    self.failed.inc()
                    yield ERRORS, row


@dataclass(eq=False)
class FetchPages(beam.PTransform):
    """Entries in; fetched pages out (main) and ``errors``."""

    http: HttpSettings
    expected_hosts: int = 1  # about how many hosts (feeds) there are: sizes the parallel groups

    def __post_init__(self):
        super().__init__()

    def expand(self, entries):
        n = max(1, self.http.fetch_threads)
        by_host = (
            entries
            | "KeyByHost" >> beam.Map(lambda e: (host_of(e["url"]), e))
            | "GroupByHost" >> beam.GroupByKey()
        )
        # hosts are spread over enough groups that each group keeps a thread pool busy
        groups = max(1, -(-self.expected_hosts // n))
        tagged = (
            batches(by_host, lambda hg: hg[0], groups, n, label="BatchHosts")
            | "Fetch" >> beam.ParDo(_FetchHostsFn(self.http))
        )
        return split(tagged, ["pages", ERRORS])
