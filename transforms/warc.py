"""Read pages from WARC files (e.g. Common Crawl's CC-NEWS) instead of fetching them.

Each WARC file (any fsspec URL, gzip per record or plain) is one unit of work. Kept: ``response``
records with HTTP 200 and an HTML content type whose target URI is on a wanted domain and not
already in the lake. Skipped (and counted): revisits and other record types, other statuses, non-HTML
bodies, other domains, URLs already in the lake. A kept record becomes a page as the fetch stage makes
one: ``url`` = ``final_url`` = the record's target URI, ``fetched_at`` = its ``WARC-Date``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import fsspec
from warcio.archiveiterator import ArchiveIterator

from warta.config.settings import Feed
from warta.lake.schema import staging_dir
from warta.lake.state import key64
from warta.lake.store import Store
from warta.net.http import HTML_TYPES, charset_of, decode_html
from warta.net.urls import host_of, normalize_url, url_problem
from warta.transforms.dates import parse_utc
from warta.transforms.outputs import split
from warta.transforms.records import error_row, utcnow

ERRORS = "errors"
SKIPS = ("revisit", "not_response", "status", "not_html", "other_domain", "in_lake", "too_large")
STATS_DIR = "archive"  # per-file counts, staged next to the run's data (not published)


@dataclass(frozen=True)
class Site:
    """A wanted domain and what its pages are filed under."""

    domain: str
    source: str
    feed_url: str | None = None
    language: str | None = None


def sites_from(feeds: Iterable[Feed] = (), domains: Iterable[str] = ()) -> list[Site]:
    """Feeds give their site's host (source = feed name); bare domains are their own source."""
    out = [Site(host_of(f.url).removeprefix("www."), f.name, f.url, f.language) for f in feeds]
    out += [Site(d.strip().lower().removeprefix("www."), d.strip().lower()) for d in domains if d.strip()]
    return out


def site_of(url: str, sites: list[Site]) -> Site | None:
    host = host_of(url).removeprefix("www.")
    for s in sites:
        if host == s.domain or host.endswith("." + s.domain):
            return s
    return None


def read_warc(stream, sites: list[Site], seen: set[int], max_bytes: int,
              counts: dict[str, int], errors: list[dict[str, Any]] | None = None) -> Iterator[dict[str, Any]]:
    """Pages from one WARC stream; every other record only bumps a count in ``counts``. A record that cannot
    be read as a page (a URL that is no URL, a body that does not decode) is an error row appended to
    ``errors`` (counted as ``record_errors``), and the next record is read."""
    for record in ArchiveIterator(stream):
        counts["records"] = counts.get("records", 0) + 1
        try:
            page = _page(record, sites, seen, max_bytes, counts)
        except Exception as e:  # this record only: the rest of the file is still read
            counts["record_errors"] = counts.get("record_errors", 0) + 1
            if errors is not None:
                url = record.rec_headers.get_header("WARC-Target-URI")
                errors.append(error_row("fetch", f"WARC record: {type(e).__name__}: {e}", url=url))
            continue
        if page is not None:
            yield page


def _page(record, sites: list[Site], seen: set[int], max_bytes: int, counts: dict[str, int]) -> dict | None:
    skip = _skip_reason(record, sites, seen)
    if skip is None:
        body = record.content_stream().read(max_bytes + 1)
        if len(body) > max_bytes:
            skip = "too_large"
    if skip:
        counts[skip] = counts.get(skip, 0) + 1
        return None
    url = record.rec_headers.get_header("WARC-Target-URI")
    problem = url_problem(url)
    if problem:
        raise ValueError(problem)
    site = site_of(url, sites)
    charset = charset_of(record.http_headers.get_header("Content-Type") or "")
    html, charset = decode_html(body, charset)  # WHATWG text encodings only
    counts["pages"] = counts.get("pages", 0) + 1
    return {"url": url, "final_url": url, "status": 200, "html": html, "charset": charset,
            "fetched_at": parse_utc(record.rec_headers.get_header("WARC-Date")) or utcnow(),
            "source": site.source, "feed_url": site.feed_url, "language": site.language,
            "feed_title": None, "feed_authors": [], "feed_published_at": None}


def _skip_reason(record, sites: list[Site], seen: set[int]) -> str | None:
    if record.rec_type == "revisit":
        return "revisit"
    if record.rec_type != "response" or record.http_headers is None:
        return "not_response"
    if record.http_headers.get_statuscode() != "200":
        return "status"
    ctype = (record.http_headers.get_header("Content-Type") or "").split(";")[0].strip().lower()
    if ctype not in HTML_TYPES:
        return "not_html"
    url = record.rec_headers.get_header("WARC-Target-URI") or ""
    if site_of(url, sites) is None:
        return "other_domain"
    if key64(normalize_url(url)) in seen:
        return "in_lake"
    return None


def stats_name(warc_url: str) -> str:
    return f"{STATS_DIR}/{hashlib.sha1(warc_url.encode()).hexdigest()[:16]}.json"


def warc_counts(store: Store, run_id: str) -> dict[str, int]:
    """The per-file counts staged by this run's WARC readers, summed."""
    total: dict[str, int] = {}
    for rel in store.list(f"{staging_dir(run_id)}/{STATS_DIR}", ".json"):
        for k, v in store.read_json(rel).items():
            if k != "warc":
                total[k] = total.get(k, 0) + v
    return total


class _ReadWarcFn(beam.DoFn):
    def __init__(self, sites: list[Site], seen_loader: Callable[[], set[int]], max_bytes: int,
                 storage_options: dict[str, Any], stats: tuple[Store, str]):
        self.sites, self.seen_loader, self.max_bytes = sites, seen_loader, max_bytes
        self.storage_options, self.stats = storage_options, stats
        self.pages = beam.metrics.Metrics.counter("warta", "warc_pages")

    def setup(self):
        self.seen = self.seen_loader()

    def process(self, warc_url: str):
        counts: dict[str, int] = {}
        errors: list[dict[str, Any]] = []
        try:
            with fsspec.open(warc_url, "rb", **self.storage_options) as fh:
                for page in read_warc(fh, self.sites, self.seen, self.max_bytes, counts, errors):
                    self.pages.inc()
                    yield "pages", page
                    yield from ((ERRORS, e) for e in errors)
                    errors.clear()
        except Exception as e:  # unreadable or truncated file: its pages so far stand, the rest is an error
            yield ERRORS, error_row("fetch", f"WARC {type(e).__name__}: {e}", url=warc_url)
        yield from ((ERRORS, e) for e in errors)
        store, run_id = self.stats
        store.write_json(f"{staging_dir(run_id)}/{stats_name(warc_url)}", {"warc": warc_url, **counts})


@dataclass(eq=False)
class ReadWarc(beam.PTransform):
    """WARC file URLs in (dealt over ``groups`` workers, one file per unit of work); pages (main) and ``errors`` out."""

    sites: list[Site]
    seen_loader: Any  # zero-arg callable: URL keys already in the lake
    max_bytes: int
    storage_options: dict[str, Any]
    store: Store
    run_id: str
    groups: int = 1  # files are dealt into this many groups, one per worker

    def __post_init__(self):
        super().__init__()

    def expand(self, urls):
        groups = max(1, self.groups)
        tagged = (
            urls
            | "ToOneKey" >> beam.Map(lambda u: (None, u))
            | "GatherFiles" >> beam.GroupByKey()
            | "DealFiles" >> beam.FlatMap(lambda kv: ((i % groups, u) for i, u in enumerate(sorted(set(kv[1])))))
            | "SpreadFiles" >> beam.GroupByKey()  # runners spread the keys (one per worker) over their workers
            | "Files" >> beam.FlatMap(lambda kv: sorted(kv[1]))
            | "Read" >> beam.ParDo(_ReadWarcFn(self.sites, self.seen_loader, self.max_bytes,
                                               self.storage_options, (self.store, self.run_id)))
        )
        return split(tagged, ["pages", ERRORS])
