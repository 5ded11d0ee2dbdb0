"""Stage 1 — poll feeds: conditional GET through our HTTP client, parse with feedparser, keep new entries.

Feeds are polled concurrently, one thread per host (at most ``fetch_threads``), a host's feeds one
after another: one request at a time per host.
"""

from __future__ import annotations

import calendar
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable

import apache_beam as beam
import feedparser

from config.settings import Feed, HttpSettings
from net.http import FetchError, HttpClient
from transforms.outputs import split
from transforms.records import error_row
from lake.state import key64
from transforms.urls import host_of, normalize_url

ERRORS = "errors"
FEED_STATE = "feed_state"
FEED_TYPES = ("xml", "rss", "atom", "rdf")


@dataclass
class PollResult:
    entries: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)


def _utc(struct) -> datetime | None:
    if not struct:
        return None
    try:
        return datetime.fromtimestamp(calendar.timegm(struct), tz=timezone.utc)
    except (OverflowError, ValueError, TypeError):
        return None


def parse_feed(body: bytes, url: str, content_type: str = "") -> feedparser.FeedParserDict:
    """Parse feed bytes; raise ValueError when they are not a feed at all (HTML page, garbage)."""
    parsed = feedparser.parse(body, response_headers={"content-type": content_type or "application/xml",
                                                      "content-location": url})
    if not parsed.entries and not parsed.get("version"):
        reason = parsed.get("bozo_exception") or "no RSS/Atom structure found"
        hint = " (server sent HTML)" if "html" in content_type.lower() else ""
        raise ValueError(f"not a readable feed{hint}: {reason}")
    return parsed


def feed_entries(parsed: feedparser.FeedParserDict, feed: Feed) -> Iterable[dict[str, Any] | dict[str, str]]:
    """Entries as pipeline elements; an unusable link yields ``{'error': ..., 'url': ...}`` instead."""
    channel = (parsed.feed.get("language") or "").split("-")[0].lower()
    for e in parsed.entries:
        link = (e.get("link") or e.get("id") or "").strip()
        if not link:
            yield {"error": "entry has no link", "url": None}
            continue
        scheme = link.split(":", 1)[0].lower() if ":" in link else ""
        if scheme not in ("http", "https"):
            yield {"error": f"unsupported URL scheme {scheme or '(none)'!r}: not followed", "url": link[:500]}
            continue
        authors = [a.get("name") for a in e.get("authors", []) if a.get("name")] or (
            [e["author"]] if e.get("author") else [])
        yield {
            "url": link,
            "feed_url": feed.url,
            "source": feed.name,
            "language": feed.language,  # the feeds file's word; else detected from the text (extract)
            "channel_language": channel if len(channel) == 2 else None,  # the feed's <language>: last resort
            "feed_title": e.get("title"),
            "feed_authors": authors,
            "feed_published_at": _utc(e.get("published_parsed") or e.get("updated_parsed")),
        }


def poll_feed(feed: Feed, client: HttpClient, validators: dict[str, Any] | None,
              seen: set[int], max_items: int) -> PollResult:
    """Poll one feed. Never raises: failures become error rows in the result."""
    validators = validators or {}
    result = PollResult(state={"feed_url": feed.url, "source": feed.name, "status": "failed", "entries_new": 0})
    headers = {}
    if validators.get("etag"):
        headers["If-None-Match"] = validators["etag"]
    if validators.get("last_modified"):
        headers["If-Modified-Since"] = validators["last_modified"]
    try:
        resp = client.get(feed.url, headers=headers, max_bytes=client.settings.max_feed_bytes)
    except FetchError as e:
        result.errors.append(error_row("poll", str(e), url=feed.url, feed_url=feed.url, source=feed.name,
                                       status=e.status))
        return result
    if resp.status == 304:
        result.state.update(status="unchanged", etag=validators.get("etag"),
                            last_modified=validators.get("last_modified"))
        return result
    if resp.status >= 400:
        result.errors.append(error_row("poll", f"HTTP {resp.status}", url=feed.url, feed_url=feed.url,
                                       source=feed.name, status=resp.status))
        return result
    try:
        parsed = parse_feed(resp.body, resp.url, resp.headers.get("content-type", ""))
    except Exception as e:  # feedparser is defensive, but the input is hostile
        result.errors.append(error_row("poll", str(e), url=feed.url, feed_url=feed.url, source=feed.name,
                                       status=resp.status))
        return result
    taken: set[int] = set()
    capped = False
    for item in feed_entries(parsed, feed):
        if "error" in item:
            result.errors.append(error_row("poll", item["error"], url=item["url"], feed_url=feed.url,
                                           source=feed.name))
            continue
        key = key64(normalize_url(item["url"]))
        if key in seen or key in taken:
            continue
        if len(taken) >= max_items:
            capped = True  # the rest stay in the feed; validators are not stored so the next poll sees them
            break
        taken.add(key)
        result.entries.append(item)
    result.state.update(
        status="capped" if capped else "ok", entries_new=len(result.entries),
        etag=None if capped else resp.headers.get("etag"),
        last_modified=None if capped else resp.headers.get("last-modified"),
        malformed=bool(parsed.get("bozo")),
    )
    return result


class _PollFeedsFn(beam.DoFn):
    def __init__(self, http: HttpSettings, validators: dict[str, dict], max_items: int, seen_loader):
        self.http, self.validators, self.max_items = http, validators, max_items
        self.seen_loader = seen_loader
        self.polled = beam.metrics.Metrics.counter("warta", "feeds_polled")
        self.unchanged = beam.metrics.Metrics.counter("warta", "feeds_unchanged")
        self.failed = beam.metrics.Metrics.counter("warta", "feeds_failed")
        self.new = beam.metrics.Metrics.counter("warta", "entries_new")

    def setup(self):
        self.client = HttpClient(self.http)
        self.seen = self.seen_loader()

    def teardown(self):
        self.client.close()

    def poll_host(self, feeds: list[Feed]) -> list[PollResult]:
        return [poll_feed(f, self.client, self.validators.get(f.url), self.seen, self.max_items) for f in feeds]

    def process(self, feeds: list[Feed]):
        by_host: dict[str, list[Feed]] = {}
        for feed in feeds:
            by_host.setdefault(host_of(feed.url), []).append(feed)
        with ThreadPoolExecutor(max(1, min(len(by_host), self.http.fetch_threads)), "poll") as pool:
            for done in as_completed([pool.submit(self.poll_host, fs) for fs in by_host.values()]):
                for res in done.result():
                    self.polled.inc()
                    self.unchanged.inc(res.state["status"] == "unchanged")
                    self.failed.inc(res.state["status"] == "failed")
                    self.new.inc(len(res.entries))
                    for entry in res.entries:
                        yield "entries", entry
                    for err in res.errors:
                        yield ERRORS, err
                    yield FEED_STATE, res.state


@dataclass(eq=False)
class PollFeeds(beam.PTransform):
    """Feeds in, new entries out (main), plus ``errors`` and ``feed_state`` tagged outputs."""

    http: HttpSettings
    validators: dict[str, dict]
    max_items: int
    seen_loader: Any  # zero-arg callable returning the set of known URL keys; called in DoFn.setup

    def __post_init__(self):
        super().__init__()

    def expand(self, feeds):
        tagged = feeds | "AllFeeds" >> beam.combiners.ToList() | "Poll" >> beam.ParDo(
            _PollFeedsFn(self.http, self.validators, self.max_items, self.seen_loader))
        return split(tagged, ["entries", ERRORS, FEED_STATE])
