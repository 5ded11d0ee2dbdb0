"""Stage 3 — extract clean body text and metadata from a fetched page.

The body comes from :mod:`transforms.extract_body` (trafilatura plus lead, fallbacks and a boilerplate
filter); here we read the metadata (canonical URL, JSON-LD / meta published time with its time zone,
title cleaned of the site name, authors), with the feed's values preferred where feeds are reliable.
"""

from __future__ import annotations

import functools
import hashlib
import html as html_lib
import json
import os
import re
import unicodedata
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any
from urllib.parse import urljoin, urlsplit

import apache_beam as beam
import htmldate
from py3langid.langid import MODEL_FILE, LanguageIdentifier
from trafilatura.meta import reset_caches
from trafilatura.metadata import extract_author
from trafilatura.utils import load_html

from warta.net.urls import article_id, normalize_url
from warta.transforms.dates import When, best_time, day_first, in_zone, parse_local, parse_when
from warta.transforms.extract_body import RULES, clean_text, extract_body  # noqa: F401 (clean_text: public here too)
from warta.transforms.extract_meta import bold_byline, byline, published_time, title_day, with_visible_time
from warta.transforms.outputs import split
from warta.transforms.records import error_from

ERRORS = "errors"

@dataclass(frozen=True)
class PageMeta:
    canonical_url: str | None = None
    published_at: datetime | None = None
    published_explicit: bool = False  # the page's time carried its own offset
    title: str | None = None
    authors: list[str] = field(default_factory=list)
    image: str | None = None
    language: str | None = None


def content_hash(text: str) -> str:
    norm = " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())
    return hashlib.sha256(norm.encode("utf-8")).hexdigest()


CDATA = re.compile(r"^\s*(?://\s*)?<!\[CDATA\[|(?://\s*)?\]\]>\s*$")


def _jsonld_objects(tree) -> list[dict]:
    out: list[dict] = []
    for node in tree.xpath('//script[@type="application/ld+json"]/text()'):
        try:
            data = json.loads(CDATA.sub("", node))
        except (ValueError, TypeError):
            continue
        stack = data if isinstance(data, list) else [data]
        while stack:
            item = stack.pop()
            if isinstance(item, dict):
                out.append(item)
                stack.extend(v for k, v in item.items() if k in ("@graph", "mainEntity") and isinstance(v, (list, dict)))
            elif isinstance(item, list):
                stack.extend(item)
    return out


def _names(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):  # {"name": …} or schema.org's {"givenName": …, "familyName": …}
        return _names(value.get("name") or " ".join(v for v in (value.get("givenName"), value.get("familyName"))
                                                     if isinstance(v, str)))
    if isinstance(value, list):
        return [n for v in value for n in _names(v)]
    return []


def _listed(value: Any) -> list:
    return value if isinstance(value, list) else [value]


ACCOUNT = re.compile(r"/(?:author|user)s?/admin(?:istrator)?/?$", re.I)


def _is_account(author: Any) -> bool:
    """A JSON-LD author that is the CMS's admin account (``{"@id": "…/author/admin/", "name": "Site D"}``)."""
    return isinstance(author, dict) and any(isinstance(author.get(k), str) and ACCOUNT.search(author[k])
                                            for k in ("@id", "url"))


def _first_h1(tree) -> str | None:
    for h in tree.xpath("//h1")[:1]:
        text = " ".join(h.text_content().split())
        if text:
            return text
    return None


# Separators between a headline and the site name / section / date in <title> and og:title.
TITLE_SEPARATOR = re.compile(r"\s+[|\-–—*·•»]\s+|\s*[|ㅣ]\s*")
# A JSON-LD headline with HTML entities left in ("Kohberger&#8217;s"), separators between kicker and headline,
# and quote styles (ignored when candidates are compared).
ESCAPED = re.compile(r"&(?:#\d+|#x[0-9a-f]+|[a-z]+);", re.I)
LOOSE_SEPARATOR = re.compile(r"\s*[:|/\-–—]\s+|\s+[:|/\-–—]\s*")
KICKER_END = re.compile(r"(?::|\s[|/\-–—])\s*$")
QUOTES = str.maketrans({"‘": "'", "’": "'", "“": '"', "”": '"', "„": '"', "«": '"', "»": '"', "\xad": None})
# A byline's lead word ("By", "Von", "Autor:") and the joints between several names.
BYLINE_PREFIX = re.compile(r"^(?:by|von|van|de|por|par|af|av|autor(?:in)?|author|text|written\s+by)\b[:\s]*", re.I)
# A lead before the byline word: "Capital von Jemima Kelly" (a brand), not "Ursula von der Leyen".
BYLINE_INSIDE = re.compile(r"^(?:\S+\s+){1,2}(?:[Bb]y|[Vv]on|[Pp]ar|[Pp]or)\s+(?=[A-ZÀ-ÖØ-Þ])")
# A title after the name ("신현주 기자": reporter) and a source credit ("Quelle: dpa"), which names no author.
BYLINE_SUFFIX = re.compile(r"\s+(?:기자|記者|특파원)$")
SOURCE_CREDIT = re.compile(r"^(?:quelle|source|fuente|fonte|kaynak|sumber|źródło|bron)\b", re.I)
# Buttons and labels that byline finders pick up next to an author's name.
NOT_NAMES = {"follow", "folgen", "suivre", "seguir", "segui", "volgen", "følg", "ikuti", "subscribe", "abonnieren", "more",
             "mehr", "profile", "profil"}
AUTHOR_JOINT = re.compile(r"\s*(?:[,;/]|\s(?:and|und|og|och|y|et|e|en|ve|i)\s|&)\s*", re.I)


def _squash(text: str) -> str:
    """Letters and digits only, accents dropped, case-folded: for comparing names with host names."""
    return "".join(c for c in unicodedata.normalize("NFKD", text) if c.isalnum()).casefold()


def site_keys(tree, base_url: str, publisher: Any = None) -> set[str]:
    """What the site calls itself: og:site_name, application-name, JSON-LD publisher, host name labels."""
    names = tree.xpath('//meta[@property="og:site_name" or @name="application-name" or @name="og:site_name"]/@content')
    names += _names(publisher)
    host = (urlsplit(base_url).hostname or "").split(".")
    labels = [label for label in host if label not in {"www", "m", "amp", "com", "co", "org", "net", "news"}]
    stem = labels[:-1] or labels  # without the top-level domain
    return {k for k in map(_squash, [*names, *stem, "".join(stem)]) if len(k) >= 2}


def _is_site(segment: str, keys: set[str]) -> bool:
    seg = _squash(segment)
    if not seg:
        return True
    if re.fullmatch(r"[\d\W_]+", segment):  # a date or number, as in "Title | DW | 28.04.2023"
        return True
    return len(seg) <= 40 and any(seg == k or (len(k) >= 3 and (k in seg or seg in k)) for k in keys)


def _spaced(text: str | None) -> str:
    return " ".join(html_lib.unescape(text or "").split())


def _loose(text: str) -> str:
    """For comparing kickers: "Kicker: Headline" and "Kicker - Headline" alike."""
    return LOOSE_SEPARATOR.sub(" ", text)


def _same_words(a: str | None, b: str | None) -> bool:
    """Equal but for spacing, case and the style of quotes."""
    return _spaced(a).translate(QUOTES).casefold() == _spaced(b).translate(QUOTES).casefold()


def clean_title(title: str, keys: set[str], others: list[str | None] = (), confirm: list[str | None] = ()) -> str:
    """Drop a trailing site name (and anything after it) and use a shorter candidate (``others``) the title
    merely extends with a kicker or a section, unless a candidate in ``confirm`` carries that kicker or section too."""
    title = _spaced(title)
    if not RULES["title_cut"]:
        return title
    for other in map(_spaced, others):
        if other and other != title and len(other) >= 10:
            longer = [_loose(c) for c in map(_spaced, confirm) if c != other and other in c]
            if title.startswith(other) and TITLE_SEPARATOR.match(title[len(other):]) \
                    and not any(c.startswith(_loose(title)) for c in longer):
                title = other  # "Headline | Section | Site" around the h1's "Headline"
            elif title.endswith(other) and KICKER_END.search(title[:-len(other)]) \
                    and not any(c.endswith(_loose(title)) for c in longer):
                title = other  # "Kicker: Headline"
            else:
                title = _shared_tail(title, other) or title  # "Kicker: Headline" and "Other kicker - Headline"
    cuts = [m for m in TITLE_SEPARATOR.finditer(title)]
    ends = [m.end() for m in cuts]
    segments = [title[a:b.start()] for a, b in zip([0, *ends], cuts)] + [title[ends[-1] if ends else 0:]]
    for i in range(1, len(segments)):
        if _is_site(segments[i], keys):
            first = i  # a short section name may sit between headline and site: "Headline | City | Site"
            while first > 1 and len(segments[first - 1]) <= 25:
                first -= 1
            return title[:cuts[first - 1].start()].strip()
    return title


def _shared_tail(a: str, b: str) -> str | None:
    """The headline two candidates share after different kickers, or None."""
    tail = os.path.commonprefix([a[::-1], b[::-1]])[::-1].lstrip()
    if len(tail) >= 20 and all(KICKER_END.search(t[:-len(tail)]) for t in (a, b)):
        return tail
    return None


def pick_title(headline: str | None, social: str | None, h1: str | None, page_title: str | None,
               keys: set[str]) -> str | None:
    """The headline among the JSON-LD headline, og:title, first h1 and <title>, cleaned (:func:`clean_title`).

    The JSON-LD headline first, unless it is HTML-escaped twice (a careless copy). Where it and og:title
    word the headline differently, og:title wins when the JSON-LD headline only repeats the <title> (the
    search-engine copy), or when og:title adds a kicker to it that the h1 shows too."""
    def clean(text, confirm):
        return clean_title(text, keys, [h1, social], confirm) if text else None
    first = headline if headline and not ESCAPED.search(headline) else None
    chosen = clean(first or social or headline or h1 or page_title, [social if first else headline])
    if not (headline and social and RULES["title_choice"]):
        return chosen
    ld, og = clean(headline, [social]), clean(social, [headline])
    if _same_words(ld, og):
        return chosen
    if _same_words(clean(page_title, [headline, social]), ld):
        return og
    shown = _squash(h1 or "")
    return og if shown and _squash(og) == shown != _squash(ld) and shown.endswith(_squash(ld)) else chosen


def clean_authors(names: list[str], keys: set[str]) -> list[str]:
    """Split joined bylines ("A und B, dpa"), drop lead words and the site's own name, spell out slugs."""
    out: list[str] = []
    for name in names:
        name = BYLINE_INSIDE.sub("", BYLINE_PREFIX.sub("", " ".join(html_lib.unescape(name).split())))
        if re.search(r"\(|https?:|www\.", name) or SOURCE_CREDIT.match(name):
            continue
        for part in AUTHOR_JOINT.split(name):
            part = BYLINE_SUFFIX.sub("", BYLINE_PREFIX.sub("", part.strip(" .-–—")))
            if re.fullmatch(r"[a-z]+(?:-[a-z]+)+", part):  # a URL slug: "chuck-ross"
                part = part.replace("-", " ").title()
            if part and _squash(part) and not _is_site(part, keys) and part.casefold() not in NOT_NAMES \
                    and part not in out:
                out.append(part)
    return out


def cms_accounts(articles: list[dict]) -> set[str]:
    """Squashed names of CMS accounts (admin, editor) given as JSON-LD authors."""
    return {_squash(n) for obj in articles for a in _listed(obj.get("author")) if _is_account(a) for n in _names(a)}


def page_authors(tree, articles: list[dict], keys: set[str]) -> list[str]:
    """The page's authors: JSON-LD people, agencies and the outlet's desks ("Redaktion example.de", "MDR
    Sachsen-Anhalt"), else author meta tags, else the visible byline; the outlet's own name (og:site_name,
    host: ``keys``) only when no one else is named. A CMS account's name ("admin") is never a byline.
    (Last of all, :func:`extract_article` looks for a bold name atop the body when this names no one.)"""
    accounts = cms_accounts(articles)
    keys = keys | accounts
    meta = [v.strip() for v in tree.xpath('//meta[@name="author" or @property="author" or @name="article:author" or '
                                          '@property="article:author"]/@content') if v.strip() and "://" not in v]
    ld_names = [n for obj in articles for n in _names(obj.get("author")) if _squash(n) not in accounts]
    return ([n for n in clean_authors(ld_names, set()) if _squash(n) not in keys] or clean_authors(meta, keys)
            or (RULES["visible_byline"] and (clean_authors([extract_author(tree) or ""], keys)
                                             or clean_authors([byline(tree) or ""], keys)))
            or clean_authors(ld_names or meta, set()))


def read_meta(tree, base_url: str, tz: str | None = None, dayfirst: bool = False) -> PageMeta:
    """Canonical URL, published time, title, authors, image and language from the page head. Times
    without an offset are read in ``tz`` (the feed's zone), numeric dates day first if ``dayfirst``."""
    def meta(*names: str) -> str | None:
        for n in names:
            v = tree.xpath(f'//meta[@property="{n}" or @name="{n}" or @itemprop="{n}"]/@content')
            if v and v[0].strip():
                return v[0].strip()
        return None

    canon = tree.xpath('//link[contains(concat(" ", normalize-space(@rel), " "), " canonical ")]/@href')
    canonical = canon[0].strip() if canon and canon[0].strip() else meta("og:url")
    if canonical:
        canonical = urljoin(base_url, canonical)
        if not canonical.startswith(("http://", "https://")):
            canonical = None

    articles = [o for o in _jsonld_objects(tree)
                if any(t in str(o.get("@type", "")) for t in ("Article", "Posting", "Report", "Review"))]
    published = published_time(tree, articles, meta, tz, dayfirst)
    keys = site_keys(tree, base_url, next((o.get("publisher") for o in articles if o.get("publisher")), None))
    keys |= cms_accounts(articles)  # a CMS account's name is no more a title part than a byline
    authors = page_authors(tree, articles, keys)
    headline = next((o["headline"] for o in articles if isinstance(o.get("headline"), str) and o["headline"].strip()),
                    None) or meta("headline")  # JSON-LD, else a <meta name/itemprop="headline">
    h1 = _first_h1(tree)
    social = meta("og:title", "twitter:title")
    title = pick_title(headline, social, h1, (tree.findtext(".//title") or "").strip() or None, keys)
    lang = tree.xpath("/html/@lang")
    return PageMeta(
        canonical_url=canonical,
        published_at=published.at if published else None,
        published_explicit=bool(published and published.explicit),
        title=title,
        authors=authors,
        image=_absolute(meta("og:image", "twitter:image"), base_url),
        language=(lang[0].split("-")[0].lower() if lang and lang[0].strip() else None),
    )


def _absolute(url: str | None, base_url: str) -> str | None:
    url = urljoin(base_url, url) if url else None
    return url if url and url.startswith(("http://", "https://")) else None


CLOSE_LANGUAGES = ({"id", "ms"},)  # the detector splits its confidence between these


@functools.lru_cache(maxsize=1)
def _language_identifier() -> LanguageIdentifier:
    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def detect_language(text: str, hint: str | None = None, min_prob: float = 0.9) -> str | None:
    """The text's language when the detector is confident (probability ``min_prob``), else None. Between
    close languages (Indonesian/Malay) the text is confidently one of them, and ``hint`` (what the page
    or feed declares) picks which when it is one of them."""
    if len(text.strip()) < 20:
        return None
    ranked = _language_identifier().rank(text[:3000])
    top, prob = ranked[0]
    if prob >= min_prob:
        return top
    probs = dict(ranked)
    for group in CLOSE_LANGUAGES:
        if top in group and sum(probs.get(lang, 0.0) for lang in group) >= min_prob:
            return hint if hint in group else top
    return None


def page_date(tree, tz: str | None = None) -> When | None:
    """Last-resort publication date from the page: the day its title ends with, else htmldate's; 00:00 in
    ``tz`` unless the visible dateline of that day gives the time."""
    day = title_day(tree)
    if day is None:
        try:
            day = parse_local(htmldate.find_date(tree, extensive_search=False, original_date=True))
        except Exception:
            return None
    day = with_visible_time(tree, day)
    return in_zone(day, tz) if day is not None else None


def site_profile(profiles: dict[str, dict[str, str | None]] | None, url: str) -> dict[str, str | None]:
    """The per-site profile (``extract.profiles`` setting) for a page's host, ``www.`` ignored; {} when none."""
    host = (urlsplit(url).hostname or "").removeprefix("www.")
    return next((p for h, p in (profiles or {}).items() if h.lower().removeprefix("www.") == host), {})


def _profile_value(tree, xpath: str | None) -> str | None:
    found = tree.xpath(xpath) if xpath else None
    if not found:
        return None
    first = found[0] if isinstance(found, list) else found
    text = first.text_content() if hasattr(first, "text_content") else str(first)
    return " ".join(text.split()) or None


def extract_article(page: dict[str, Any], *, min_chars: int = 200,
                    profiles: dict[str, dict[str, str | None]] | None = None) -> dict[str, Any]:
    """A fetched page in, an article row (without entities) out. Raises ValueError when no article is found.

    ``profiles``: per-host XPath for body/title/date (the ``extract.profiles`` setting); what a profile
    finds wins over the generic extractor, anything it leaves out is extracted as usual."""
    html = page["html"]
    if not html or not html.strip():
        raise ValueError("empty page")
    final_url = page.get("final_url") or page["url"]
    tree = load_html(html)  # trafilatura's parser: one tree for the metadata, the body and every trafilatura pass
    if tree is None:
        raise ValueError("unparseable HTML")
    tz, dayfirst = page.get("timezone"), day_first(page.get("language") or page.get("channel_language"))
    meta = read_meta(tree, final_url, tz, dayfirst)
    profile = site_profile(profiles, final_url)
    if profile:
        when = parse_when(_profile_value(tree, profile.get("date")), tz, dayfirst)
        meta = replace(meta, title=_profile_value(tree, profile.get("title")) or meta.title,
                       **({"published_at": when.at, "published_explicit": when.explicit} if when else {}))
    h1 = [" ".join(h.text_content().split()) for h in tree.xpath("//h1")[:2]]
    text = extract_body(html, final_url, titles=[page.get("feed_title"), meta.title, *h1], tree=tree,
                        body_xpath=profile.get("body"))
    authors = page.get("feed_authors") or meta.authors
    keys = site_keys(tree, final_url)
    if RULES["bold_byline"] and (not authors or all(_is_site(a, keys) for a in authors)):  # no one named: a bold byline atop the body?
        named = bold_byline(tree, text)
        if named:
            authors = clean_authors([named], keys) or authors
            text = "\n".join(line for line in text.splitlines() if line != named)
    if len(text) < min_chars:
        raise ValueError(f"no article body found ({len(text)} characters of text)")
    fetched_at = page["fetched_at"]
    feed_time = page.get("feed_published_at")
    published = best_time([  # an explicit offset beats a time read in the feed's zone
        When(feed_time, bool(page.get("feed_time_explicit", True))) if feed_time else None,
        When(meta.published_at, meta.published_explicit) if meta.published_at else None], fetched_at) \
        or (best_time([page_date(tree, tz)], fetched_at) if RULES["page_day"] else None)  # the page's day (never explicit): only as a last resort
    url = normalize_url(final_url)
    return {
        "article_id": article_id(url),
        "url": url,
        "canonical_url": normalize_url(meta.canonical_url) if meta.canonical_url else None,
        "source": page["source"],
        "feed_url": page["feed_url"],
        "title": page.get("feed_title") or meta.title,
        "authors": authors,
        "published_at": published,
        "fetched_at": fetched_at,
        # the feeds file's word > the text (when sure) > the page's <html lang> > the feed channel's <language>
        "language": page.get("language") or detect_language(text, meta.language or page.get("channel_language"))
                    or meta.language or page.get("channel_language"),
        "text": text,
        "content_hash": content_hash(text),
        "image_url": meta.image,
        "charset": page.get("charset"),  # the page's bytes were decoded with (net.http.decode_html)
        "duplicate_of": None,
        "entities": [],
        "entry_url": page["url"],  # internal: the link as the feed gave it (for the state index)
    }


class _ExtractFn(beam.DoFn):
    def __init__(self, min_chars: int, profiles: dict[str, dict] | None = None):
        self.min_chars, self.profiles = min_chars, profiles
        self.ok = beam.metrics.Metrics.counter("warta", "pages_extracted")
        self.failed = beam.metrics.Metrics.counter("warta", "extract_failed")
        self.count = 0

    def process(self, page):
        try:
            row = extract_article(page, min_chars=self.min_chars, profiles=self.profiles)
        except Exception as e:  # hostile HTML must not escape: dead-letter it
            self.failed.inc()
            yield ERRORS, error_from(e, "extract", page)
            return
        self.ok.inc()
        self.count += 1
        if self.count % 1000 == 0:  # trafilatura keeps LRU caches; keep memory flat on long runs
            reset_caches()
        yield "articles", row


@dataclass(eq=False)
class ExtractArticles(beam.PTransform):
    """Pages in; article rows out (main) and ``errors``."""

    min_chars: int = 200
    profiles: dict[str, dict[str, str | None]] | None = None  # extract.profiles: {host: {body, title, date}}

    def __post_init__(self):
        super().__init__()

    def expand(self, pages):
        tagged = pages | "Extract" >> beam.ParDo(_ExtractFn(self.min_chars, self.profiles))
        return split(tagged, ["articles", ERRORS])
