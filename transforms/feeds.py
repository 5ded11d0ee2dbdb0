"""Stage 1 — poll feeds: conditional GET through our HTTP client, parse with feedparser, keep new entries.

Feeds are sharded by a stable hash of their host (``shards``, one per worker); each shard's feeds
are polled concurrently, one thread per host (at most ``fetch_threads``), a host's feeds one after
another: one request at a time per host, since a host lives in one shard.
"""

from __future__ import annotations

import calendar
import logging
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urljoin

import apache_beam as beam
import feedparser
import feedparser.urls

from warta.config.settings import Feed, HttpSettings
from warta.lake.failures import Failures
from warta.lake.state import key64
from warta.net.http import FetchError, HttpClient
from warta.net.urls import host_of, normalize_url, url_problem
from warta.transforms.dates import When, day_first, default_timezone, parse_when
from warta.transforms.fetch import shard_of
from warta.transforms.outputs import split
from warta.transforms.records import error_row, utcnow

ERRORS = "errors"
FEED_STATE = "feed_state"
FEED_TYPES = ("xml", "rss", "atom", "rdf")
log = logging.getLogger(__name__)
# feedparser folds the slashes after any scheme ("http:///x" -> "http://x"), which makes "file:///etc/passwd"
# read "file://etc/passwd" in error rows: fold them for http(s) only, so other URLs are recorded whole
feedparser.urls._urifixer = re.compile(r"^(https?://)(/*)(.*?)", re.I)


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


def entry_time(entry, tz: str | None, dayfirst: bool) -> When | None:
    """The entry's published (else updated) time, read from the raw string so that naive times are local
    to ``tz`` and WIB/WITA/WIT are understood; feedparser's own reading (UTC) when ours fails."""
    for raw, struct in (("published", "published_parsed"), ("updated", "updated_parsed")):
        when = parse_when(entry.get(raw), tz, dayfirst)
        if when is None and _utc(entry.get(struct)):
            when = When(_utc(entry.get(struct)), explicit=False)
        if when:
            return when
    return None


_ENTITY_DECL = re.compile(rb"<!ENTITY", re.I)
_DOCTYPE_SUBSET = re.compile(rb"<!DOCTYPE[^\[>]*\[.*?\]\s*>", re.I | re.S)


def parse_feed(body: bytes, content_type: str = "") -> feedparser.FeedParserDict:
    """Parse feed bytes; raise ValueError when they are not a feed at all (HTML page, garbage).
    Relative links are left as they are (``feed_entries`` resolves them), so that an ``<id>`` such as
    ``1`` does not turn into a URL under the feed's address."""
    if _ENTITY_DECL.search(body[:65536]):  # entity declarations (billion laughs): dropped before parsing,
        body = _DOCTYPE_SUBSET.sub(b"", body, count=1)  # so nothing is expanded; their references stay unread
    parsed = feedparser.parse(body, response_headers={"content-type": content_type or "application/xml"})
    if not parsed.entries and not parsed.get("version"):
        reason = parsed.get("bozo_exception") or "no RSS/Atom structure found"
        hint = " (server sent HTML)" if "html" in content_type.lower() else ""
        raise ValueError(f"not a readable feed{hint}: {reason}")
    if not parsed.entries and parsed.get("bozo"):
        # a feed that parses to nothing because it is broken (entity expansion refused, cut, malformed): an
        # error, not a quiet "no news"; a well-formed empty feed stays a feed without entries
        raise ValueError(f"feed yields no entries: {parsed.get('bozo_exception') or 'malformed'}")
    return parsed


def _is_http(url: str) -> bool:
    return url.lower().startswith(("http://", "https://"))


def entry_link(entry, base: str) -> tuple[str | None, str | None]:
    """``(url, None)`` or ``(None, error)``. Only http(s) links are followed: the entry's link (resolved
    against the feed), its alternate or enclosure links, or an id that is itself an absolute http(s) URL."""
    ident = (entry.get("id") or "").strip()
    link = (entry.get("link") or "").strip()
    if entry.get("guidislink") and link == ident:
        link = ""  # feedparser copied the id into link: an id is only a URL when it is an absolute one
    hrefs = [link] + [(l.get("href") or "").strip() for l in entry.get("links", [])
                      if l.get("rel", "alternate") in ("alternate", "enclosure")]
    for href in filter(None, hrefs):
        try:
            url = urljoin(base, href)
        except ValueError as e:  # "http://[::1/x": urljoin parses the link
            return None, f"malformed URL: {e}: not followed"
        problem = url_problem(url)
        return (url, None) if problem is None else (None, f"{problem}: not followed")
    if _is_http(ident):
        problem = url_problem(ident)
        return (ident, None) if problem is None else (None, f"{problem}: not followed")
    if ident:
        return None, f"entry has no link and its id {ident[:200]!r} is not an http(s) URL: not followed"
    return None, "entry has no link"


def feed_entries(parsed: feedparser.FeedParserDict, feed: Feed, base: str | None = None
                 ) -> Iterable[dict[str, Any] | dict[str, str]]:
    """Entries as pipeline elements; an unusable link yields ``{'error': ..., 'url': ..., 'key': ...}`` instead
    (``key``: what identifies the entry, to record its failure once)."""
    channel = (parsed.feed.get("language") or "").split("-")[0].lower()
    channel = channel if len(channel) == 2 else None
    language = feed.language or channel  # for reading the feed's times only; the article's language is decided later
    tz = feed.timezone or default_timezone(language)
    for e in parsed.entries:
        try:
            yield _entry(e, feed, base, channel, language, tz)
        except Exception as exc:  # whatever a library raises on a hostile entry: that entry's error row
            yield _entry_error(e, feed, f"{type(exc).__name__}: {exc}")


def _entry_error(e, feed: Feed, error: str) -> dict[str, str]:
    raw = str(e.get("link") or e.get("id") or "").strip()
    return {"error": error, "url": raw[:500] or None,
            "key": raw or f"{feed.url} {e.get('title') or ''} {e.get('published') or ''}"}


def _entry(e, feed: Feed, base: str | None, channel: str | None, language: str | None, tz: str
           ) -> dict[str, Any]:
    url, error = entry_link(e, base or feed.url)
    if error:
        return _entry_error(e, feed, error)
    authors = [a.get("name") for a in e.get("authors", []) if a.get("name")] or (
        [e["author"]] if e.get("author") else [])
    when = entry_time(e, tz, day_first(language))
    return {
        "url": url,
        "feed_url": feed.url,
        "source": feed.name,
        "language": feed.language,  # the feeds file's word; else detected from the text (extract)
        "channel_language": channel,  # the feed's <language>: last resort
        "timezone": tz,
        "feed_title": e.get("title"),
        "feed_authors": authors,
        "feed_published_at": when.at if when else None,
        "feed_time_explicit": bool(when and when.explicit),
    }


def poll_feed(feed: Feed, client: HttpClient, validators: dict[str, Any] | None,
              seen: set[int], max_items: int, failures: Failures | None = None) -> PollResult:
    """Poll one feed. Never raises: failures become error rows in the result. Entries that failed before
    wait for their retry time (a feed with some due is fetched in full); an entry's own error is written
    once, until it changes or expires."""
    result = PollResult(state={"feed_url": feed.url, "source": feed.name, "status": "failed", "entries_new": 0})
    try:
        _poll_into(result, feed, client, validators, seen, max_items, failures or Failures())
    except Exception as e:  # a bug or a library's surprise on hostile input: the feed's error row, not a crash
        log.exception("polling %s failed", feed.url)
        result.state.update(status="failed", etag=None, last_modified=None)
        result.errors.append(error_row("poll", f"{type(e).__name__}: {e}", url=feed.url, feed_url=feed.url,
                                       source=feed.name))
    return result


def _poll_into(result: PollResult, feed: Feed, client: HttpClient, validators: dict[str, Any] | None,
               seen: set[int], max_items: int, failures: Failures) -> None:
    now = utcnow()
    validators = {} if failures.due_in(feed.url, now) else (validators or {})
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
        return
    if resp.status == 304:
        result.state.update(status="unchanged", etag=validators.get("etag"),
                            last_modified=validators.get("last_modified"))
        return
    if resp.status >= 400:
        result.errors.append(error_row("poll", f"HTTP {resp.status}", url=feed.url, feed_url=feed.url,
                                       source=feed.name, status=resp.status))
        return
    try:
        parsed = parse_feed(resp.body, resp.headers.get("content-type", ""))
    except Exception as e:  # feedparser is defensive, but the input is hostile
        result.errors.append(error_row("poll", str(e), url=feed.url, feed_url=feed.url, source=feed.name,
                                       status=resp.status))
        return
    taken: set[int] = set()
    capped = False
    for item in feed_entries(parsed, feed, resp.url):
        if "error" in item:
            fkey = key64(f"{feed.url} {item['key']}")
            if not failures.already_recorded(fkey, item["error"], now):
                result.errors.append({**error_row("poll", item["error"], url=item["url"], feed_url=feed.url,
                                                  source=feed.name), "failure_key": fkey})
            continue
        key = key64(normalize_url(item["url"]))
        if key in seen or key in taken or failures.waiting(key, now):
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


class _PollFeedsFn(beam.DoFn):
    """Polls one shard's feeds: ``(shard, feeds)`` in."""

    def __init__(self, http: HttpSettings, validators, max_items: int, seen_loader, failures_loader):
        self.http, self.validators_of, self.max_items = http, validators, max_items
        self.seen_loader, self.failures_loader = seen_loader, failures_loader
        self.polled = beam.metrics.Metrics.counter("warta", "feeds_polled")
        self.unchanged = beam.metrics.Metrics.counter("warta", "feeds_unchanged")
        self.failed = beam.metrics.Metrics.counter("warta", "feeds_failed")
        self.new = beam.metrics.Metrics.counter("warta", "entries_new")

    def setup(self):
        self.client = HttpClient(self.http)
        self.seen = self.seen_loader()
        self.failures = self.failures_loader()
        self.validators = self.validators_of() if callable(self.validators_of) else self.validators_of

    def teardown(self):
        self.client.close()

    def poll_host(self, feeds: list[Feed]) -> list[PollResult]:
        return [poll_feed(f, self.client, self.validators.get(f.url), self.seen, self.max_items,
                          self.failures) for f in feeds]

    def process(self, shard: tuple[int, Iterable[Feed]]):
        _, feeds = shard
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
    """Feeds in, new entries out (main), plus ``errors`` and ``feed_state`` tagged outputs. Feeds are
    grouped into ``shards`` by host, each shard polled by one DoFn call (on one worker)."""

    http: HttpSettings
    validators: Any  # {feed_url: {etag, last_modified}}, or a zero-arg callable returning it (called in setup)
    max_items: int
    seen_loader: Any  # zero-arg callable returning the set of known URL keys; called in DoFn.setup
    failures_loader: Any = Failures  # zero-arg callable returning the failure records (lake.failures)
    shards: int = 1
    on_shards: beam.PTransform | None = None  # applied to the shards before polling (PreloadModels)

    def __post_init__(self):
        super().__init__()

    def expand(self, feeds):
        shards = max(1, self.shards)
        grouped = (feeds | "KeyByShard" >> beam.Map(lambda f: (shard_of(host_of(f.url), shards), f))
                   | "GatherShards" >> beam.GroupByKey())
        if self.on_shards is not None:
            grouped = grouped | "OnShards" >> self.on_shards
        tagged = grouped | "Poll" >> beam.ParDo(
            _PollFeedsFn(self.http, self.validators, self.max_items, self.seen_loader, self.failures_loader))
        return split(tagged, ["entries", ERRORS, FEED_STATE])
