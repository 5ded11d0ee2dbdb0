"""Published time and visible bylines of an article page (used by ``transforms.extract.read_meta``).

Sources, most trusted first: JSON-LD ``datePublished`` of the article object, ``<meta>`` publication tags,
microdata (``itemprop="datePublished"``), a ``<time datetime>`` with a time of day outside navigation,
and ``"datePublished"``-style keys in script JSON (pages rendered by JavaScript). A value without a time
zone takes the offset of another date on the page that shows the same wall-clock time within a day
(``"2023-04-28 18:11"`` in JSON-LD, ``2023-04-28T18:11+02:00`` in a meta tag); otherwise it is read in the feed's time zone
(:mod:`transforms.dates`), else as UTC.
Without any, the day comes from the title ("… | 28.04.2023") or htmldate, with the clock time of the visible
dateline of that day, else the earliest the markup writes for that day. Bylines: a short "By …"/"Autor: …" block, or a bold name atop the body.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime, timedelta

from lxml.etree import tostring

from warta.transforms.dates import When, in_zone, parse_local
from warta.transforms.extract_body import OUTSIDE, RULES

META_NAMES = ("article:published_time", "og:article:published_time", "datePublished", "pubdate", "publishdate",
              "publish-date", "parsely-pub-date", "sailthru.date", "date", "dc.date", "DC.date.issued",
              "dcterms.created")
SCRIPT_DATE = re.compile(r'"(?:datePublished|publishedAt|published_at|publishDate|publishtime|firstPublished)"\s*:'
                         r'\s*"(\d{4}-\d\d-\d\d[T ]\d\d:\d\d[^"]{0,20})"')
HAS_TIME = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d")


def candidates(tree, articles: list[dict], meta) -> Iterable[str]:
    """Raw publication-date strings of a page, most trusted first (lazily: later sources are rarely read)."""
    for obj in articles:
        yield obj.get("datePublished")
    yield meta(*META_NAMES)
    yield from tree.xpath('//*[@itemprop="datePublished"]/@datetime | //*[@itemprop="datePublished"]/@content')
    yield from (v for v in tree.xpath(f"//time[not({OUTSIDE})]/@datetime") if HAS_TIME.match(v.strip()))
    for script in tree.xpath("//script[not(@src)]/text()"):
        yield from SCRIPT_DATE.findall(script)


def published_time(tree, articles: list[dict], meta, tz: str | None = None, dayfirst: bool = False) -> When | None:
    """The page's publication time (see the module docstring), or None. The first candidate wins; written
    without an offset, it takes the offset of a later candidate at about the same wall time (a page that
    says ``10:00`` in one place and ``10:00+02:00`` in another), else it is read in ``tz``."""
    found = (d for d in (parse_local(v, dayfirst) for v in candidates(tree, articles, meta)) if d is not None)
    first = next(found, None)
    if first is not None and first.tzinfo is None and RULES["borrowed_zone"]:
        zoned = next((d for d in found if d.tzinfo is not None
                      and abs(d.replace(tzinfo=None) - first) <= timedelta(days=1)), None)
        first = first.replace(tzinfo=zoned.tzinfo) if zoned else first
    return in_zone(first, tz) if first is not None else None


# A visible byline: "By Ana Silva", "von <a>Dr. Tom Berg</a>", "<strong>Author</strong> Ana Silva" (short blocks only).
BYLINE = re.compile(r"^(?:by|von|par|por|door|av|af|di|autor(?:in)?(?:/autor)?|authors?|written\s+by|penulis|reporter)"
                    r"\s*:?\s+(\S.{2,80})$", re.I)
BYLINE_BLOCKS = (f"//body//*[self::p or self::li or self::span or self::div][not({OUTSIDE})]"
                 "[string-length(normalize-space()) < 90][.//a or ./strong or ./b]")


def byline(tree) -> str | None:
    """The first short block that reads as a byline (lead word, then one or more names): its names."""
    for el in tree.xpath(BYLINE_BLOCKS):
        found = BYLINE.match(" ".join(el.text_content().split()))
        if found and not re.search(r"\d{2}", found.group(1)):
            return found.group(1)
    return None


# A line of one or more names only: "Ana Silva", "ANA SILVA/TOM BERG", "Ana Silva and Tom Berg".
_NAME = r"[A-ZÀ-ÖØ-Þ][\w'’.-]*(?:\s+[A-ZÀ-ÖØ-Þ][\w'’.-]*){1,3}"
NAMES_LINE = re.compile(rf"{_NAME}(?:\s*(?:/|,|&|\band\b)\s*{_NAME})*")


def bold_byline(tree, text: str) -> str | None:
    """A byline set as a bold paragraph among the first lines of the body (``<p><strong>Ana Silva</strong></p>``),
    as small sites do when their CMS names only a site account as the author."""
    lines = [line for line in text.splitlines()[:3] if len(line) <= 80 and NAMES_LINE.fullmatch(line)]
    if lines:
        for p in tree.xpath("//p[count(*) = 1][strong or b]"):
            if " ".join(p.text_content().split()) in lines and " ".join(p[0].text_content().split()) in lines:
                return " ".join(p[0].text_content().split())
    return None


DATED = (f"//*[contains(@class, 'date') or contains(@class, 'Date') or contains(@class, 'time') or "
         f"contains(@class, 'Time')][not({OUTSIDE})][string-length(normalize-space()) < 80]")
CLOCK = re.compile(r"(?<![\d:.])([01]?\d|2[0-3])[:.h](\d\d)(?![\d:.])")


def with_visible_time(tree, day: datetime | None) -> datetime | None:
    """A day-only date (htmldate) with the time of day of the page's visible dateline, when the first
    date/time-classed element shows that same day and year with a clock time ("01. April 2025, 15:25");
    else with the earliest time the markup (attributes, script data) writes for that day without an
    offset (``data-deploy-dt="2026.01.29 18:40"``)."""
    if day is None or (day.hour, day.minute) != (0, 0):
        return day
    for el in tree.xpath(DATED)[:3]:
        text = " ".join(el.text_content().split())
        clock = CLOCK.search(text)
        if clock and str(day.year) in text and re.search(rf"(?<!\d)0?{day.day}(?!\d)", text.replace(str(day.year), "")):
            return day.replace(hour=int(clock.group(1)), minute=int(clock.group(2)))
    stamp = re.compile(rf"(?<!\d){day.year}(?P<sep>[-./]){day.month:02d}(?P=sep){day.day:02d}[T ]([01]\d|2[0-3]):([0-5]\d)(?![\d:]*[+Z-])")
    clocks = [(int(h), int(m)) for _, h, m in stamp.findall(tostring(tree, encoding="unicode"))]
    return day.replace(hour=min(clocks)[0], minute=min(clocks)[1]) if clocks else day


TITLE_DATE = re.compile(r"[|\-–—]\s*(\d{1,2})\.(\d{1,2})\.(\d{4})$")


def title_day(tree) -> datetime | None:
    """The day a page's title ends with ("Headline | Site | 28.04.2023"), at 00:00 (naive: local time)."""
    for title in [*tree.xpath('//meta[@property="og:title"]/@content'), tree.findtext(".//title") or ""]:
        found = TITLE_DATE.search(title.strip())
        if found:
            day, month, year = map(int, found.groups())
            try:
                return datetime(year, month, day)
            except ValueError:
                continue
    return None
