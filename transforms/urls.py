"""URL normalisation and stable article ids."""

from __future__ import annotations

import hashlib
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

TRACKING_PARAMS = frozenset({
    "fbclid", "gclid", "dclid", "gbraid", "wbraid", "msclkid", "yclid", "igshid", "mc_cid", "mc_eid",
    "_ga", "_gl", "ocid", "cmpid", "spm", "share", "amp_js_v", "__twitter_impression",
})
TRACKING_PREFIXES = ("utm_", "pk_", "hsa_", "vero_")


def normalize_url(url: str) -> str:
    """Lower-case scheme and host, drop default ports, fragments and tracking parameters."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    port = parts.port
    if port and not ((scheme == "http" and port == 80) or (scheme == "https" and port == 443)):
        host = f"{host}:{port}"
    if parts.username or parts.password:
        host = f"{parts.username or ''}{':' + parts.password if parts.password else ''}@{host}"
    query = [
        (k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
        if k.lower() not in TRACKING_PARAMS and not k.lower().startswith(TRACKING_PREFIXES)
    ]
    path = parts.path or "/"
    return urlunsplit((scheme, host, path, urlencode(query, doseq=True), ""))


def article_id(url: str) -> str:
    """Stable id of an article: a hash of its normalised URL."""
    return hashlib.sha256(normalize_url(url).encode("utf-8")).hexdigest()[:24]


def host_of(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()
