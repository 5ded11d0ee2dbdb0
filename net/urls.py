"""URL normalisation and stable article ids."""

from __future__ import annotations

import hashlib
import ipaddress
import re
from urllib.parse import parse_qsl, unquote_plus, urlencode, urlsplit, urlunsplit

TRACKING_PARAMS = frozenset({
    "fbclid", "gclid", "dclid", "gbraid", "wbraid", "msclkid", "yclid", "igshid", "mc_cid", "mc_eid",
    "_ga", "_gl", "ocid", "cmpid", "spm", "share", "amp_js_v", "__twitter_impression",
})
TRACKING_PREFIXES = ("utm_", "pk_", "hsa_", "vero_")


_HOST_LABEL = re.compile(r"(?!-)[\w-]{1,63}(?<!-)", re.ASCII)


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be requested as an http(s) URL (unparseable, bad port, host name too long or with
    characters DNS does not allow), in words; None when it can. The feed, sitemap and WARC stages check
    every URL they take in, so one malformed link becomes one error row, never a crash of the stage."""
    if not isinstance(url, str) or not url.strip():
        return "empty URL"
    if any(ord(c) < 33 or c == "\x7f" for c in url.strip()):
        return "URL contains spaces or control characters"
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 (raises on a port out of range)
    except ValueError as e:
        return f"malformed URL: {e}"
    if parts.scheme.lower() not in ("http", "https"):
        return f"unsupported URL scheme {parts.scheme.lower() or '(none)'!r}"
    host = parts.hostname or ""
    if not host:
        return "URL has no host"
    if ":" in host:  # IPv6 literal
        try:
            ipaddress.IPv6Address(host.split("%")[0])
        except ValueError:
            return f"malformed IPv6 address {host!r}"
        return None
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except (UnicodeError, ValueError):
        return f"host name {host[:100]!r} is not a valid domain name"
    if len(ascii_host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in ascii_host.rstrip(".").split(".")):
        return f"host name {host[:100]!r} is not a valid domain name (labels of 1-63 letters, digits, hyphens)"
    return None


def normalize_url(url: str) -> str:
    """Lower-case scheme and host, drop default ports, fragments and tracking parameters. Total: a URL that
    cannot be parsed (see :func:`url_problem`) comes back stripped, so keys of error rows stay stable."""
    try:
        return _normalize(url)
    except ValueError:
        return url.strip()


def _normalize(url: str) -> str:
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    port = parts.port
    if ":" in host:
        host = f"[{host}]"  # IPv6 literal: keep its brackets
    if port and not ((scheme == "http" and port == 80) or (scheme == "https" and port == 443)):
        host = f"{host}:{port}"
    if parts.username or parts.password:
        host = f"{parts.username or ''}{':' + parts.password if parts.password else ''}@{host}"
    path = parts.path or "/"
    return urlunsplit((scheme, host, path, _clean_query(parts.query), ""))


def _clean_query(query: str) -> str:
    """Drop tracking parameters; ``key=value`` pairs re-encoded, other parts (``?berita/123``) kept as they are."""
    kept = []
    for part in query.split("&"):
        if not part:
            continue
        if "=" not in part:
            kept.append(part)
            continue
        key = unquote_plus(part.split("=", 1)[0]).lower()
        if key not in TRACKING_PARAMS and not key.startswith(TRACKING_PREFIXES):
            kept.append(urlencode(parse_qsl(part, keep_blank_values=True)))
    return "&".join(kept)


def article_id(url: str) -> str:
    """Stable id of an article: a hash of its normalised URL."""
    return hashlib.sha256(normalize_url(url).encode("utf-8")).hexdigest()[:24]


def host_of(url: str) -> str:
    """Lower-cased host name of ``url``; "" when it has none or cannot be parsed."""
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""


def site_of(host: str) -> str:
    """A host without the ``www.``/``m.``/``amp.`` prefixes outlets serve the same site under."""
    return re.sub(r"^(?:www\d*|m|amp|mobile)\.", "", host.lower())


_ID = re.compile(r"\d|\.\w+$")  # an id or a file suffix (.html)
_WORDS = re.compile(r"\w-\w+-\w")  # a slug of three words or more


def plausible_article_url(candidate: str | None, page_url: str) -> bool:
    """Can a page's declared canonical URL stand for the article (serve as an exact dedup key)?
    Only on the page's own site, and not the site root or a bare section page (``/nasional/``)."""
    if not candidate:
        return False
    c, p = urlsplit(candidate), urlsplit(page_url)
    if c.scheme not in ("http", "https") or site_of(c.hostname or "") != site_of(p.hostname or ""):
        return False
    segments = [s for s in c.path.split("/") if s]
    if c.query:
        return True  # ?p=123, ?id=...: the article is named in the query
    if len(segments) >= 3 or any(_ID.search(s) for s in segments):
        return True
    return len(segments) == 2 and "-" in segments[1] or len(segments) == 1 and bool(_WORDS.search(segments[0]))
