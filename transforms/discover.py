"""Backfill discovery: an outlet's older article URLs from paged feeds and sitemaps.

Sources, per feed's site:
- paged feeds: RFC 5005 ``rel="next"`` / ``rel="prev-archive"`` links, else WordPress ``?paged=N``;
  paging stops at an error, an empty page, a page with nothing new, or one older than ``since``
  (feeds list the newest first);
- sitemaps: the robots.txt ``Sitemap:`` lines, else the usual paths; sitemap indexes, gzipped sitemaps,
  Google News sitemaps (``news:publication_date``, ``news:title``). A child sitemap whose ``lastmod`` is
  before ``since`` holds nothing newer, so it is skipped without being fetched.

:class:`Discovery` is a resumable crawl (a frontier of feed pages and sitemaps still to read) whose
state is plain JSON, kept by the backfill command in ``_state/backfill/<source>.json``. Every request
goes through ``HttpClient.polite_get`` (robots.txt, host delay). A host that asks to wait (429, robots.txt
5xx) leaves the item in the frontier for the next run; a sitemap that cannot be decompressed becomes an error
row (``errors``), not a crash; sitemaps are capped in number (``MAX_SITEMAPS``) and index depth
(``MAX_SITEMAP_DEPTH``).
"""

from __future__ import annotations

import gzip
import io
import time
import zlib
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import lxml.etree

from warta.config.settings import Feed
from warta.net.http import FetchError, HostDeferred, HttpClient
from warta.net.urls import host_of, normalize_url
from warta.transforms.dates import default_timezone, parse_utc
from warta.transforms.feeds import feed_entries, parse_feed
from warta.transforms.records import error_row

USUAL_SITEMAPS = ("/sitemap.xml", "/sitemap_index.xml", "/wp-sitemap.xml")
MAX_FEED_PAGES = 1000
MAX_SITEMAPS = 10_000  # sitemaps read per feed's site, all indexes together
MAX_SITEMAP_DEPTH = 3  # robots.txt -> index -> index -> sitemap
_PARSER = lxml.etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, recover=True)


def ungzip(body: bytes, limit: int) -> bytes:
    """Gzipped sitemaps (``.xml.gz``, served as application/x-gzip) decompressed, at most ``limit`` bytes."""
    if body[:2] != b"\x1f\x8b":
        return body
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(body)) as fh:
            out = fh.read(limit + 1)
    except (EOFError, OSError, zlib.error) as e:  # cut, BadGzipFile, corrupt deflate stream
        raise CorruptSitemap(f"corrupt gzip sitemap: {type(e).__name__}: {e}") from None
    if len(out) > limit:
        raise ValueError(f"sitemap larger than {limit} bytes (decompressed)")
    return out


class CorruptSitemap(ValueError):
    """A sitemap whose bytes cannot be read (corrupt gzip): recorded as an error row."""


def _local(tag: Any) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _child_text(el, name: str) -> str | None:
    for c in el.iter():
        if c is not el and _local(c.tag) == name and c.text and c.text.strip():
            return c.text.strip()
    return None


def parse_sitemap(body: bytes, tz: str | None = None) -> tuple[str, list[dict[str, Any]]]:
    """``("index", [{loc, lastmod}])`` for a sitemap index, ``("urlset", [{loc, lastmod, published, title}])``
    for a sitemap (``published``/``title`` from Google News tags; times without an offset read in ``tz``).
    Raises ValueError when it is neither."""
    try:
        root = lxml.etree.fromstring(body, _PARSER)
    except lxml.etree.XMLSyntaxError as e:
        raise ValueError(f"unreadable sitemap: {e}") from None
    kind = _local(root.tag) if root is not None else ""
    if kind not in ("sitemapindex", "urlset"):
        raise ValueError(f"not a sitemap (root element {kind or 'missing'!r})")
    items = []
    for el in root:
        if _local(el.tag) not in ("sitemap", "url"):
            continue
        loc = _child_text(el, "loc")
        if not loc:
            continue
        item = {"loc": loc, "lastmod": parse_utc(_child_text(el, "lastmod"), tz)}
        if kind == "urlset":
            item["published"] = parse_utc(_child_text(el, "publication_date"), tz)
            item["title"] = _child_text(el, "title")
        items.append(item)
    return ("index" if kind == "sitemapindex" else "urlset"), items


def next_feed_page(parsed, url: str, page: int) -> str:
    """The next (older) page of a feed: its RFC 5005 ``next``/``prev-archive`` link, else ``?paged=N+1``."""
    for link in parsed.feed.get("links", []):
        if link.get("rel") in ("next", "prev-archive") and link.get("href"):
            return urljoin(url, link["href"])
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "paged"]
    return urlunsplit(parts._replace(query=urlencode([*query, ("paged", str(page + 1))])))


def same_site(url: str, site_host: str) -> bool:
    host = host_of(url)
    bare = site_host.removeprefix("www.")
    return host == site_host or host.removeprefix("www.") == bare or host.endswith("." + bare)


def _iso(dt: datetime | None) -> str | None:
    return dt.isoformat() if dt else None


@dataclass(eq=False)
class Discovery:
    """One feed's discovery: frontier, visited pages, entries found, counts. Plain JSON via ``state()``."""

    feed: Feed
    since: date
    until: date | None = None
    frontier: list[dict[str, Any]] = field(default_factory=list)
    visited: list[str] = field(default_factory=list)
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)  # normalised URL -> entry (in range)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("requests", "out_of_range", "other_domain", "sitemaps_skipped"), 0))
    _ignored: set[str] = field(default_factory=set)  # out of range or other domain (counted once)
    errors: list[dict[str, Any]] = field(default_factory=list)  # error rows of this run (not kept in state)

    def __post_init__(self):
        if not self.frontier and not self.visited:
            self.frontier = [{"kind": "feed", "url": self.feed.url, "page": 1},
                             {"kind": "robots", "url": self.feed.url}]
        self._known = set(self.visited) | {f["url"] for f in self.frontier}  # _push in O(1)
        for k in ("sitemaps", "sitemaps_capped", "sitemap_errors"):
            self.counts.setdefault(k, 0)

    @property
    def done(self) -> bool:
        return not self.frontier

    # -- state ------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"feed_url": self.feed.url, "since": self.since.isoformat(),
                "until": self.until.isoformat() if self.until else None, "frontier": self.frontier,
                "visited": self.visited, "counts": self.counts, "ignored": sorted(self._ignored),
                "entries": [{**e, "feed_published_at": _iso(e["feed_published_at"]), "date": _iso(e["date"])}
                            for _, e in sorted(self.entries.items())]}

    @classmethod
    def resume(cls, feed: Feed, since: date, until: date | None, state: dict[str, Any] | None) -> Discovery:
        """Continue a saved discovery of the same feed and range; otherwise start afresh."""
        same = state and state.get("feed_url") == feed.url and state.get("since") == since.isoformat() and \
            state.get("until") == (until.isoformat() if until else None)
        if not same:
            return cls(feed, since, until)
        entries = {normalize_url(e["url"]): {**e, "feed_published_at": parse_utc(e["feed_published_at"]),
                                             "date": parse_utc(e["date"])} for e in state["entries"]}
        return cls(feed, since, until, frontier=state["frontier"], visited=state["visited"], entries=entries,
                   counts=state["counts"], _ignored=set(state.get("ignored", ())))

    # -- crawling ---------------------------------------------------------------------------
    def in_range(self, when: datetime | None) -> bool:
        if when is None:
            return True  # undated: taken (the page's own date is read at extraction)
        day = when.astimezone(timezone.utc).date()
        return day >= self.since and (self.until is None or day <= self.until)

    def add(self, url: str, when: datetime | None, **fields) -> None:
        """Record a found URL (in range, on the site) or count why it is not wanted."""
        key = normalize_url(url)
        if key in self.entries:  # the same post from a feed and a sitemap: keep what each knows
            kept = self.entries[key]
            for k, v in fields.items():
                kept[k] = kept.get(k) or v
            kept["date"] = kept["date"] or when
        elif key in self._ignored:
            return
        elif not same_site(url, host_of(self.feed.url)):
            self._ignored.add(key)
            self.counts["other_domain"] += 1
        elif not self.in_range(when):
            self._ignored.add(key)
            self.counts["out_of_range"] += 1
        else:
            self.entries[key] = {"url": url, "feed_url": self.feed.url, "source": self.feed.name,
                                 "language": self.feed.language, "feed_title": None, "feed_authors": [],
                                 "feed_published_at": None, **fields, "date": when}

    def step(self, client: HttpClient) -> None:
        """Read the next frontier item (one request, or none for robots already cached)."""
        item = self.frontier.pop(0)
        self.visited.append(item["url"])
        if item["kind"] == "robots":
            try:
                self._robots(client, item["url"])
            except HostDeferred:  # robots.txt 5xx / unreachable: this site's discovery waits for the next run
                self.visited.pop()
                self.frontier.insert(0, item)
                raise
            return
        self.counts["requests"] += 1
        try:
            resp = client.polite_get(item["url"], max_bytes=client.settings.max_feed_bytes)
        except HostDeferred:  # 429 / Retry-After: this item and the rest wait for the next run
            self.visited.pop()
            self.frontier.insert(0, item)
            raise
        except FetchError:
            return  # unreachable or disallowed: that branch of the crawl ends here
        if resp.status >= 400:
            return
        try:
            if item["kind"] == "feed":
                self._feed_page(item, resp)
            else:
                self._sitemap(resp.body, client.settings.max_feed_bytes, item.get("depth", 0))
        except CorruptSitemap as e:
            self.counts["sitemap_errors"] += 1
            self.errors.append(error_row("poll", str(e), url=item["url"], feed_url=self.feed.url,
                                         source=self.feed.name, status=resp.status))
        except ValueError:
            return  # not a feed / sitemap (an HTML error page, garbage): nothing found there
        except Exception as e:  # whatever a parser raises on hostile bytes: that item's error, not the run's
            self.errors.append(error_row("poll", f"{type(e).__name__}: {e}", url=item["url"], feed_url=self.feed.url,
                                         source=self.feed.name, status=resp.status))

    def run(self, client: HttpClient, deadline: float) -> None:
        """Step until done or until ``time.monotonic()`` passes ``deadline``."""
        try:
            while self.frontier and time.monotonic() < deadline:
                self.step(client)
        except HostDeferred:
            return  # the host asked to be left alone for now: the next run resumes from the same frontier

    def _push(self, kind: str, url: str, **extra) -> None:
        if url in self._known:
            return
        if kind == "sitemap":
            if self.counts["sitemaps"] >= MAX_SITEMAPS or extra.get("depth", 0) > MAX_SITEMAP_DEPTH:
                self.counts["sitemaps_capped"] += 1
                return
            self.counts["sitemaps"] += 1
        self._known.add(url)
        self.frontier.append({"kind": kind, "url": url, **extra})

    def _robots(self, client: HttpClient, url: str) -> None:
        origin = urlunsplit(urlsplit(url)[:2] + ("", "", ""))
        rules = client.robots(url)
        listed = list(rules.sitemaps) if rules is not None else []  # protego: the Sitemap: lines
        for sitemap in listed or [origin + p for p in USUAL_SITEMAPS]:
            self._push("sitemap", sitemap)

    def _feed_page(self, item: dict[str, Any], resp) -> None:
        parsed = parse_feed(resp.body, resp.headers.get("content-type", ""))
        older = 0
        entries = [e for e in feed_entries(parsed, self.feed, base=resp.url) if "error" not in e]
        for e in entries:
            when = e["feed_published_at"]
            older += bool(when and when.astimezone(timezone.utc).date() < self.since)
            self.add(e["url"], when, **{k: v for k, v in e.items() if k.startswith("feed_") and k != "feed_url"})
        # newest first: a page entirely before `since` ends the paging; so does the previous page served
        # again (a site that ignores ?paged=)
        first = entries[0]["url"] if entries else None
        if first and first != item.get("previous_first") and older < len(entries) and item["page"] < MAX_FEED_PAGES:
            self._push("feed", next_feed_page(parsed, resp.url, item["page"]), page=item["page"] + 1,
                       previous_first=first)

    def _sitemap(self, body: bytes, limit: int, depth: int = 0) -> None:
        kind, items = parse_sitemap(ungzip(body, limit), self.feed.timezone or default_timezone(self.feed.language))
        for it in items:
            if kind == "index":
                if it["lastmod"] and it["lastmod"].astimezone(timezone.utc).date() < self.since:
                    self.counts["sitemaps_skipped"] += 1  # nothing in it changed since `since`
                else:
                    self._push("sitemap", it["loc"], depth=depth + 1)
            else:
                self.add(it["loc"], it["published"] or it["lastmod"], feed_title=it["title"],
                         feed_published_at=it["published"])
