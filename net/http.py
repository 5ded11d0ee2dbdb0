"""Polite, bounded HTTP: one client per worker, shared by the feed and page stages.

- our own User-Agent; only http/https; optional refusal of private/link-local targets
- retries with backoff on connection errors, 429 and 5xx (urllib3 ``Retry``), capped redirects
- connect/read timeouts plus a total deadline per response (slow-drip bodies are cut off)
- a cap on the *decoded* body size, so gzip/deflate bombs stop at the cap
- robots.txt per host (``urllib.robotparser``; RFC 9309: 4xx = allow all, 5xx/unreachable = disallow all)
- one request at a time per host, spaced by ``host_delay`` or the robots crawl-delay, whichever is larger
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
import time
import urllib.robotparser
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from config.settings import HttpSettings

HTML_TYPES = ("text/html", "application/xhtml+xml")
CHUNK = 16 * 1024


class FetchError(Exception):
    """A request that produced no usable response. ``stage`` names the pipeline stage for errors/."""

    def __init__(self, message: str, *, status: int | None = None, stage: str = "fetch", url: str | None = None):
        super().__init__(message)
        self.status = status
        self.stage = stage
        self.url = url


@dataclass(frozen=True)
class Response:
    url: str  # final URL, after redirects
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    def header_charset(self) -> str | None:
        return charset_of(self.headers.get("content-type", ""))


def charset_of(content_type: str) -> str | None:
    """The charset parameter of a Content-Type header value, if any."""
    m = re.search(r"charset=[\"']?([\w.:-]+)", content_type, re.I)
    return m.group(1) if m else None


def check_scheme(url: str) -> None:
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise FetchError(f"unsupported URL scheme {scheme or '(none)'!r}: not followed", url=url)


def is_private_host(host: str) -> bool:
    """True when ``host`` resolves to a loopback, private, link-local or otherwise non-public address."""
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False  # unresolvable: the request itself will fail and be recorded
    for info in infos:
        ip = ipaddress.ip_address(info[4][0].split("%")[0])
        if not ip.is_global:
            return True
    return False


def decode_html(body: bytes, header_charset: str | None) -> str:
    """Decode a page: charset from the header, else <meta>, else UTF-8, else Windows-1252."""
    candidates = [header_charset]
    m = re.search(rb"<meta[^>]+charset=[\"']?([\w.:-]+)", body[:4096], re.I)
    if m:
        candidates.append(m.group(1).decode("ascii", "ignore"))
    for enc in (*candidates, "utf-8"):
        if not enc:
            continue
        try:
            return body.decode(enc)
        except (LookupError, UnicodeDecodeError):
            continue
    return body.decode("cp1252", errors="replace")


@dataclass
class HostThrottle:
    """Spaces requests to one host; thread-safe, one lock per host."""

    delay: float
    _next: dict[str, float] = field(default_factory=dict)
    _locks: dict[str, threading.Lock] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def lock(self, host: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(host, threading.Lock())

    def wait(self, host: str) -> None:
        """Call with ``lock(host)`` held: sleeps until the host may be asked again."""
        ready = self._next.get(host, 0.0)
        now = time.monotonic()
        if ready > now:
            time.sleep(ready - now)

    def done(self, host: str, delay: float | None = None) -> None:
        """Call when a request to ``host`` has finished: the next one waits ``delay`` from now."""
        self._next[host] = time.monotonic() + (self.delay if delay is None else delay)


class HttpClient:
    """A requests session with our politeness and bounds. Build one per worker (``DoFn.setup``)."""

    def __init__(self, settings: HttpSettings):
        self.settings = settings
        self.session = requests.Session()
        self.session.headers.update({"User-Agent": settings.user_agent, "Accept-Encoding": "gzip, deflate"})
        self.session.max_redirects = settings.max_redirects
        retry = Retry(
            total=settings.retries, connect=settings.retries, read=settings.retries, status=settings.retries,
            redirect=False, backoff_factor=settings.backoff, backoff_max=10.0,
            status_forcelist=(429, 500, 502, 503, 504), allowed_methods=frozenset({"GET", "HEAD"}),
            raise_on_status=False, respect_retry_after_header=True,
        )
        adapter = HTTPAdapter(max_retries=retry, pool_connections=64, pool_maxsize=64)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.throttle = HostThrottle(settings.host_delay)
        self._robots: dict[str, urllib.robotparser.RobotFileParser | bool] = {}
        self._robots_lock = threading.Lock()

    def close(self) -> None:
        self.session.close()

    # -- raw requests -------------------------------------------------------------------------
    def get(self, url: str, *, max_bytes: int | None = None, headers: dict[str, str] | None = None) -> Response:
        """GET with every bound applied. Raises :class:`FetchError`; HTTP errors are returned, not raised."""
        check_scheme(url)
        host = urlsplit(url).hostname or ""
        if self.settings.block_private_addresses and is_private_host(host):
            raise FetchError(f"host {host} resolves to a private address: blocked by configuration", url=url)
        limit = max_bytes or self.settings.max_bytes
        deadline = time.monotonic() + self.settings.total_timeout
        try:
            resp = self.session.get(
                url, headers=headers, stream=True, allow_redirects=True,
                timeout=(self.settings.connect_timeout, self.settings.read_timeout),
            )
        except requests.TooManyRedirects:
            raise FetchError(f"more than {self.settings.max_redirects} redirects", url=url) from None
        except requests.exceptions.RetryError as e:
            raise FetchError(f"gave up after retries: {e}", url=url) from None
        except requests.RequestException as e:
            raise FetchError(f"{type(e).__name__}: {_short(e)}", url=url) from None
        try:
            for hop in (*resp.history, resp):
                check_scheme(hop.url)
            chunks, size = [], 0
            while True:
                if time.monotonic() > deadline:
                    raise FetchError(f"response not complete within {self.settings.total_timeout:g}s", url=url)
                chunk = resp.raw.read1(CHUNK, decode_content=True)
                if not chunk:
                    break
                size += len(chunk)
                if size > limit:
                    raise FetchError(f"body larger than {limit} bytes (decoded)", status=resp.status_code, url=url)
                chunks.append(chunk)
        except FetchError:
            raise
        except Exception as e:  # urllib3 decode errors, resets mid-body, timeouts
            raise FetchError(f"{type(e).__name__} while reading body: {_short(e)}", status=resp.status_code, url=url) from None
        finally:
            resp.close()
        hdrs = {k.lower(): v for k, v in resp.headers.items()}
        return Response(url=resp.url, status=resp.status_code, headers=hdrs, body=b"".join(chunks))

    # -- politeness --------------------------------------------------------------------------
    def robots(self, url: str) -> urllib.robotparser.RobotFileParser | bool | FetchError:
        """Parsed robots.txt for the URL's origin; ``True`` = allow all, ``False`` = disallow all,
        a FetchError when the host could not be reached at all."""
        parts = urlsplit(url)
        origin = urlunsplit((parts.scheme, parts.netloc, "", "", ""))
        with self._robots_lock:
            if origin in self._robots:
                return self._robots[origin]
        try:
            resp = self.get(origin + "/robots.txt", max_bytes=512_000)
        except FetchError as e:  # host unreachable: nothing else there can be fetched either
            rules: urllib.robotparser.RobotFileParser | bool | FetchError = FetchError(
                f"host unreachable (robots.txt: {e})", status=e.status)
        else:
            if resp.status >= 500:
                rules = False
            elif resp.status >= 400:
                rules = True
            else:
                rules = urllib.robotparser.RobotFileParser(origin + "/robots.txt")
                rules.parse(resp.body.decode("utf-8", "replace").splitlines())
        with self._robots_lock:
            self._robots[origin] = rules
        return rules

    def crawl_delay(self, url: str) -> float:
        rules = self.robots(url) if self.settings.respect_robots else True
        delay = rules.crawl_delay(self.settings.user_agent) if isinstance(rules, urllib.robotparser.RobotFileParser) else None
        return max(self.settings.host_delay, min(float(delay or 0), self.settings.max_crawl_delay))

    def allowed(self, url: str) -> bool:
        if not self.settings.respect_robots:
            return True
        rules = self.robots(url)
        if isinstance(rules, FetchError):
            raise FetchError(str(rules), status=rules.status, url=url)
        return rules if isinstance(rules, bool) else rules.can_fetch(self.settings.user_agent, url)

    def polite_get(self, url: str, **kwargs) -> Response:
        """robots check, then one request at a time per host, spaced by the host's delay."""
        check_scheme(url)
        if not self.allowed(url):
            raise FetchError("disallowed by robots.txt", stage="robots", url=url)
        host = urlsplit(url).netloc.lower()
        with self.throttle.lock(host):
            self.throttle.wait(host)
            try:
                return self.get(url, **kwargs)
            finally:  # the delay runs from the end of one request to the start of the next
                self.throttle.done(host, self.crawl_delay(url))


def _short(e: Exception, limit: int = 300) -> str:
    text = str(e).replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "…"
