"""Stage 3 — extract clean body text and metadata from a fetched page.

trafilatura does the body; we add an Indonesian-news boilerplate filter ("Baca Juga:", ad and scroll
markers, photo credits, share/comment widgets) and our own metadata reading (canonical URL, JSON-LD /
meta published time with its time zone), with the feed's values preferred where feeds are reliable.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urljoin

import apache_beam as beam
import htmldate
import lxml.html
from py3langid.langid import MODEL_FILE, LanguageIdentifier
import trafilatura
from trafilatura.meta import reset_caches

from transforms.dates import When, best_time, day_first, parse_when
from transforms.outputs import split
from transforms.records import error_from
from transforms.urls import article_id, normalize_url

ERRORS = "errors"

# Lines that are never article text on Indonesian (and English) news pages. Matched case-insensitively
# against a whole line after trimming.
BOILERPLATE_LINE = re.compile(
    r"""^(?:
        (?:baca|lihat|simak|cek)\s+(?:juga|pula|selengkapnya|berita\s+lainnya|artikel\s+lainnya)\b.*
      | (?:berita|artikel)\s+(?:terkait|lainnya|pilihan|rekomendasi)\s*:?.*
      | read\s+(?:also|more)\s*:.*
      | advertisement | iklan | scroll\s+(?:to|untuk)\s+(?:continue|lanjut(?:kan)?)\b.*
      | (?:\(?\s*)?(?:foto|photo|gambar|ilustrasi|image|sumber\s+foto)\s*:.{0,160}
      | (?:editor|penulis|reporter|pewarta|penyunting|redaktur)\s*:.{0,80}
      | (?:bagikan|share)(?:\s+(?:artikel|berita|this|ini))?\s*:?(?:\s*(?:facebook|twitter|whatsapp|telegram|line|x|copy\s+link|salin\s+tautan)\W*)*
      | (?:facebook|twitter|whatsapp|telegram|line|email|copy\s+link|salin\s+tautan)(?:\W+(?:facebook|twitter|whatsapp|telegram|line|email|copy\s+link|salin\s+tautan))*\W*
      | komentar | tinggalkan\s+(?:komentar|balasan)\b.* | \d+\s+komentar | leave\s+a\s+(?:comment|reply)\b.*
      | (?:dapatkan|ikuti)\s+(?:update|berita|informasi)\b.{0,120}(?:google\s+news|whatsapp|telegram|channel).*
      | tags?\s*:.* | topik\s*:.*
    )$""",
    re.IGNORECASE | re.VERBOSE,
)

# Headings after which a page only lists other stories: the body is cut there (when they come after
# the first third of the text, so a short article that mentions such words early is left alone).
TAIL_MARKER = re.compile(
    r"""^(?:artikel\s+ini\s+(?:telah\s+)?(?:tayang|terbit|dimuat)\b.*
      | (?:berita|artikel)\s+(?:terkini|terpopuler|terbaru|populer|lainnya|terkait|pilihan|rekomendasi)\s*:?
      | (?:terpopuler|terkini|rekomendasi\s+untuk\s+anda|pilihan\s+untuk\s+anda|related\s+(?:articles|stories))
    )$""",
    re.IGNORECASE | re.VERBOSE,
)

# Inline markers that may sit inside a paragraph.
INLINE_MARKERS = re.compile(r"\s*(?:ADVERTISEMENT|SCROLL TO CONTINUE WITH CONTENT)\s*")

# Two fast trafilatura passes (no readability/jusText fallback): a precision-oriented one, and a
# recall-oriented one used when the first kept under RECALL_SWITCH of what the second found (it then
# probably cut article parts). Measured on the extraction benchmark: see bench/ and the README.
PRECISE = {"favor_precision": True, "fast": True, "include_comments": False, "include_tables": True}
BROAD = {"favor_recall": True, "fast": True, "include_comments": False, "include_tables": True}
RECALL_SWITCH = 0.5


@dataclass(frozen=True)
class PageMeta:
    canonical_url: str | None = None
    published_at: datetime | None = None
    published_explicit: bool = False  # the page's time carried its own offset
    title: str | None = None
    authors: list[str] = field(default_factory=list)
    image: str | None = None
    language: str | None = None


def clean_text(text: str) -> str:
    """Drop boilerplate lines and markers, normalise whitespace; paragraphs joined by newlines."""
    raw_lines = [" ".join(INLINE_MARKERS.sub(" ", raw).split()) for raw in text.splitlines()]
    raw_lines = [line for line in raw_lines if line]
    for i, line in enumerate(raw_lines):
        if i >= len(raw_lines) / 3 and TAIL_MARKER.match(line):
            raw_lines = raw_lines[:i]
            break
    return "\n".join(line for line in raw_lines if not BOILERPLATE_LINE.match(line))


def content_hash(text: str) -> str:
    norm = " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())
    return hashlib.sha256(norm.encode("utf-8")).hexdigest()


def _jsonld_objects(tree) -> list[dict]:
    out: list[dict] = []
    for node in tree.xpath('//script[@type="application/ld+json"]/text()'):
        try:
            data = json.loads(node)
        except (ValueError, TypeError):
            continue
        stack = data if isinstance(data, list) else [data]
        while stack:
            item = stack.pop()
            if isinstance(item, dict):
                out.append(item)
                stack.extend(v for k, v in item.items() if k == "@graph" and isinstance(v, list))
            elif isinstance(item, list):
                stack.extend(item)
    return out


def _names(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return _names(value.get("name"))
    if isinstance(value, list):
        return [n for v in value for n in _names(v)]
    return []


def _first_h1(tree) -> str | None:
    for h in tree.xpath("//h1")[:1]:
        text = " ".join(h.text_content().split())
        if text:
            return text
    return None


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
                if any(t in str(o.get("@type", "")) for t in ("Article", "Posting", "Report"))]
    declared = [parse_when(obj.get("datePublished"), tz, dayfirst) for obj in articles]
    declared.append(parse_when(meta("article:published_time", "datePublished", "pubdate", "publishdate", "date",
                                    "dc.date", "DC.date.issued"), tz, dayfirst))
    declared = [w for w in declared if w]
    published = next((w for w in declared if w.explicit), declared[0] if declared else None)
    authors = [a for obj in articles for a in _names(obj.get("author"))]
    if not authors:
        a = meta("author", "article:author")
        authors = [a] if a and not a.startswith("http") else []
    lang = tree.xpath("/html/@lang")
    return PageMeta(
        canonical_url=canonical,
        published_at=published.at if published else None,
        published_explicit=bool(published and published.explicit),
        title=meta("og:title", "twitter:title") or _first_h1(tree) or (tree.findtext(".//title") or "").strip() or None,
        authors=[" ".join(a.split()) for a in dict.fromkeys(authors) if a.strip()],
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


def drop_leading_title(text: str, titles: list[str | None]) -> str:
    """Remove the headline when the extractor kept it as the first line of the body."""
    def norm(s: str) -> str:
        return " ".join(re.sub(r"[^\w\s]", " ", s).split()).casefold()

    wanted = {norm(t) for t in titles if t and t.strip()}
    first, _, rest = text.partition("\n")
    return rest if wanted and norm(first) in wanted else text


def extract_body(html: str | bytes, url: str | None, options: dict[str, Any] | None = None,
                 titles: list[str | None] = ()) -> str:
    """Cleaned body text of one page (metadata is read separately, see :func:`read_meta`).

    ``options`` (trafilatura keyword arguments) replace our two-pass strategy with a single pass.
    ``titles`` are headlines known from elsewhere (feed, meta tags), dropped if the body starts with one.
    """
    def run(opts: dict[str, Any]) -> str:
        doc = trafilatura.bare_extraction(html, url=url, **opts)
        return (doc.as_dict().get("text") if doc is not None else None) or ""

    if options:
        text = run(options)
    else:
        text, broad = run(PRECISE), run(BROAD)
        if len(text) < RECALL_SWITCH * len(broad):
            text = broad
    return drop_leading_title(clean_text(text), list(titles))


def page_date(tree, tz: str | None = None) -> When | None:
    """Last-resort publication date from the page (htmldate; day precision, taken as 00:00 in ``tz``)."""
    try:
        found = htmldate.find_date(tree, extensive_search=False, original_date=True)
    except Exception:
        return None
    return parse_when(found, tz)


XML_DECLARATION = re.compile(r"^\s*<\?xml[^>]*\?>")  # XHTML: lxml refuses a str that declares its encoding


def extract_article(page: dict[str, Any], *, min_chars: int = 200, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """A fetched page in, an article row (without entities) out. Raises ValueError when no article is found."""
    html = page["html"]
    if not html or not html.strip():
        raise ValueError("empty page")
    final_url = page.get("final_url") or page["url"]
    try:
        tree = lxml.html.fromstring(XML_DECLARATION.sub("", html, count=1) if isinstance(html, str) else html)
    except (lxml.etree.ParserError, ValueError) as e:
        raise ValueError(f"unparseable HTML: {e}") from None
    tz, dayfirst = page.get("timezone"), day_first(page.get("language") or page.get("channel_language"))
    meta = read_meta(tree, final_url, tz, dayfirst)
    h1 = [" ".join(h.text_content().split()) for h in tree.xpath("//h1")[:2]]
    text = extract_body(html, final_url, options, titles=[page.get("feed_title"), meta.title, *h1])
    if len(text) < min_chars:
        raise ValueError(f"no article body found ({len(text)} characters of text)")
    fetched_at = page["fetched_at"]
    feed_time = page.get("feed_published_at")
    published = best_time([  # an explicit offset beats a time read in the feed's zone
        When(feed_time, bool(page.get("feed_time_explicit", True))) if feed_time else None,
        When(meta.published_at, meta.published_explicit) if meta.published_at else None,
        page_date(tree, tz)], fetched_at)
    url = normalize_url(final_url)
    authors = page.get("feed_authors") or meta.authors
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
    def __init__(self, min_chars: int, options: dict[str, Any] | None):
        self.min_chars, self.options = min_chars, options
        self.ok = beam.metrics.Metrics.counter("warta", "pages_extracted")
        self.failed = beam.metrics.Metrics.counter("warta", "extract_failed")
        self.count = 0

    def process(self, page):
        try:
            row = extract_article(page, min_chars=self.min_chars, options=self.options)
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
    options: dict[str, Any] | None = None

    def __post_init__(self):
        super().__init__()

    def expand(self, pages):
        tagged = pages | "Extract" >> beam.ParDo(_ExtractFn(self.min_chars, self.options))
        return split(tagged, ["articles", ERRORS])
