"""Polite, bounded HTTP: one client per worker, shared by the feed and page stages.

- our own User-Agent; only http/https; optional refusal of private/link-local targets
- retries with backoff on connection errors, 429 and 5xx (urllib3 ``Retry``); a ``Retry-After`` longer than
  ``max_retry_after`` is not waited for, and the host is deferred for the rest of the run (:class:`HostDeferred`; its pages are retried with backoff),
  as it is after a 429 that outlasted the retries
- redirects followed one hop at a time (capped), each hop's scheme and, when configured, address checked
- connect/read timeouts plus a total deadline per response (slow-drip bodies are cut off)
- a cap on the *decoded* body size, so gzip/deflate bombs stop at the cap
- robots.txt per host (``protego``, RFC 9309: wildcards, longest match; 4xx = allow all; 5xx or unreachable =
  try later: the host is deferred for the rest of the run, never remembered as "disallow all")
- one request at a time per host, spaced by ``host_delay`` or the robots crawl-delay, whichever is larger
- page decoding in the WHATWG order (:func:`decode_html`), with replacement, returning the charset used
"""

from __future__ import annotations

import codecs
import email.utils
import ipaddress
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit, urlunsplit

import charset_normalizer
import requests
from protego import Protego
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import MaxRetryError, ResponseError
from urllib3.util.retry import Retry

from warta.config.settings import HttpSettings
from warta.net.urls import url_problem

HTML_TYPES = ("text/html", "application/xhtml+xml")
CHUNK = 16 * 1024
ROBOTS_MAX = 500 * 1024


class FetchError(Exception):
    """A request that produced no usable response. ``stage`` names the pipeline stage for errors/."""

    def __init__(self, message: str, *, status: int | None = None, stage: str = "fetch", url: str | None = None):
        super().__init__(message)
        self.status = status
        self.stage = stage
        self.url = url


DEFERRED = "host deferred, retried later"  # ends the message of every HostDeferred


class HostDeferred(FetchError):
    """The host asked us to come back later (a ``Retry-After`` beyond ``max_retry_after``, or robots.txt
    answering 5xx or unreachable): nothing more is asked of it in this run, its URLs are retried next run."""


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if re.fullmatch(r"[0-9]{1,12}", value):  # ASCII digits only: "²".isdigit() is True, float("²") fails
        return float(value)
    try:
        when = email.utils.parsedate_tz(value)
        return None if when is None else max(0.0, email.utils.mktime_tz(when) - time.time())
    except (ValueError, OverflowError, TypeError):
        return None


class CappedRetry(Retry):
    """urllib3 retries, except that a ``Retry-After`` longer than ``max_retry_after`` ends them at once
    (the response is returned, and :meth:`HttpClient.get` defers the host) instead of sleeping."""

    max_retry_after: float = 60.0

    def new(self, **kw) -> CappedRetry:
        retry = super().new(**kw)
        retry.max_retry_after = self.max_retry_after
        return retry

    def parse_retry_after(self, retry_after: str) -> float:
        """urllib3 fails the whole request on a header it cannot read (``Retry-After: ²``); we ignore it."""
        seconds = retry_after_seconds(retry_after)
        return 0.0 if seconds is None else seconds

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):
        wait = retry_after_seconds(response.headers.get("Retry-After")) if response is not None else None
        if wait is not None and wait > self.max_retry_after:
            raise MaxRetryError(_pool, url, ResponseError(f"Retry-After {wait:.0f}s is beyond the cap"))
        return super().increment(method, url, response, error, _pool, _stacktrace)


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
    scheme = url.split(":", 1)[0].strip().lower() if ":" in url else ""
    if scheme not in ("http", "https"):
        raise FetchError(f"unsupported URL scheme {scheme or '(none)'!r}: not followed", url=url)


def private_ip(address: str) -> bool:
    """True for a loopback, private, link-local or otherwise non-public address."""
    return not ipaddress.ip_address(address.split("%")[0]).is_global


def is_private_host(host: str) -> bool:
    """True when ``host`` resolves to a non-public address, or does not resolve at all (fail closed)."""
    try:
        return any(private_ip(info[4][0]) for info in socket.getaddrinfo(host, None))
    except (OSError, UnicodeError, ValueError):
        return True


class BlockedAddress(Exception):
    """A connection refused by ``block_private_addresses`` (not an OSError: urllib3 must not retry it)."""


def checked_address(host: str, port: int) -> str:
    """Resolve ``host`` once and return the public address to connect to; raise :class:`BlockedAddress`
    when any address it resolves to is private or the lookup fails. The connection is then made to exactly
    this address (Host header and SNI keep the name), so a second lookup cannot rebind it."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError) as e:
        raise BlockedAddress(f"host {host} could not be resolved ({type(e).__name__}): blocked by configuration") from None
    addresses = [info[4][0] for info in infos]
    if not addresses or any(private_ip(a) for a in addresses):
        raise BlockedAddress(f"host {host} resolves to a private address: blocked by configuration")
    return addresses[0]


class Guard:
    """The bounds of one :meth:`HttpClient.get`, seen by the connections it opens (thread-local): a watchdog
    that shuts down every socket of the request at the deadline (a server dripping headers, a gzip header or
    chunks one byte at a time cannot hold it longer), and the address check of ``block_private_addresses``."""

    _local = threading.local()

    def __init__(self, seconds: float, block_private: bool):
        self.block_private = block_private
        self.fired = False
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    @classmethod
    def current(cls) -> Guard | None:
        return getattr(cls._local, "guard", None)

    def __enter__(self) -> Guard:
        self._outer = Guard.current()
        Guard._local.guard = self
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()
        Guard._local.guard = self._outer

    def watch(self, sock) -> None:
        with self._lock:
            if sock in self._socks:
                return
            self._socks.append(sock)
            if self.fired:
                _shutdown(sock)

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            for sock in self._socks:
                _shutdown(sock)


def _shutdown(sock) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class GuardedConnection:
    """Mixed into urllib3's connections: connect to the checked address, and let the guard watch the socket."""

    def _new_conn(self):
        guard = Guard.current()
        if guard is None or not guard.block_private:
            sock = super()._new_conn()
        else:
            name = self._dns_host
            self._dns_host = checked_address(name, self.port)  # the name stays in Host and SNI (self.host
            try:                                               # is read again after the socket is made)
                sock = super()._new_conn()
            finally:
                self._dns_host = name
        if guard is not None:
            guard.watch(sock)
        return sock

    def getresponse(self, *args, **kwargs):
        guard = Guard.current()
        if guard is not None and self.sock is not None:  # a kept-alive connection: watched from here on
            guard.watch(self.sock)
        return super().getresponse(*args, **kwargs)


class GuardedHTTPConnection(GuardedConnection, HTTPConnection):
    pass


class GuardedHTTPSConnection(GuardedConnection, HTTPSConnection):
    pass


class GuardedHTTPPool(HTTPConnectionPool):
    ConnectionCls = GuardedHTTPConnection


class GuardedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = GuardedHTTPSConnection


class GuardedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": GuardedHTTPPool, "https": GuardedHTTPSPool}


BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))
META_CHARSET = re.compile(rb"<meta[^>]+charset\s*=\s*[\"']?\s*([\w.:-]+)", re.I)
XML_ENCODING = re.compile(rb"^\s*<\?xml[^>]+encoding\s*=\s*[\"']([\w.:-]+)")


# the WHATWG Encoding Standard's text encodings, by Python codec name: a label naming anything else (zlib,
# base64, rot13, uu, punycode...) is no charset here, whatever Python's codec registry would do with it
TEXT_CODECS = frozenset((
    "utf-8", "cp866", "iso8859-2", "iso8859-3", "iso8859-4", "iso8859-5", "iso8859-6", "iso8859-7", "iso8859-8",
    "iso8859-10", "iso8859-13", "iso8859-14", "iso8859-15", "iso8859-16", "koi8-r", "koi8-u", "mac-roman",
    "cp874", "cp1250", "cp1251", "cp1252", "cp1253", "cp1254", "cp1255", "cp1256", "cp1257", "cp1258",
    "mac-cyrillic", "gbk", "gb18030", "big5", "euc_jp", "iso2022_jp", "shift_jis", "euc_kr", "utf-16-be",
    "utf-16-le"))
WHATWG_ALIASES = {"iso8859-1": "cp1252", "ascii": "cp1252", "iso8859-9": "cp1254", "iso8859-11": "cp874",
                  "tis-620": "cp874", "gb2312": "gbk", "utf-16": "utf-16-le", "cp949": "euc_kr"}


def codec_name(label: str | None) -> str | None:
    """Python's name for a charset label; None when unknown or not a WHATWG text encoding. Like browsers
    (WHATWG Encoding), ``iso-8859-1`` and ``us-ascii`` labels mean windows-1252."""
    try:
        name = codecs.lookup(label.strip()).name if label else None
    except (LookupError, ValueError, TypeError):
        return None
    name = WHATWG_ALIASES.get(name, name)
    return name if name in TEXT_CODECS else None


def utf8_counts(body: bytes) -> tuple[int, int]:
    """Read as UTF-8: (non-ASCII characters decoded, invalid sequences). Text in another charset practically
    never forms valid multi-byte sequences, so ``(n > 0, 0)`` means UTF-8 and ``(0, n)`` means not."""
    text = body.decode("utf-8", "replace")
    bad = text.count("\ufffd")
    return len(text) - len(text.encode("ascii", "ignore")) - bad, bad


def decode_html(body: bytes, header_charset: str | None) -> tuple[str, str]:
    """Decode a page; returns ``(text, charset used)``. WHATWG order: a byte-order mark, then the HTTP header's
    charset, then ``<meta charset>`` (or an XML declaration) in the first 4 KB, then detection
    (UTF-8 when its valid multi-byte characters outnumber its invalid bytes two to one, else
    ``charset-normalizer``, else windows-1252). One exception to trusting a declaration: a declared
    non-UTF-8 charset over bytes that are all valid UTF-8, with non-ASCII text (servers often send a default
    ``ISO-8859-1`` for UTF-8 pages), decodes as UTF-8. Bad bytes become U+FFFD, never mojibake."""
    for bom, charset in BOMS:
        if body.startswith(bom):
            return body[len(bom):].decode(charset, "replace"), charset
    head = body[:4096]
    declared = [m.group(1).decode("ascii") for m in (META_CHARSET.search(head), XML_ENCODING.search(head)) if m]
    charset = next(filter(None, map(codec_name, [header_charset, *declared])), None)
    good, bad = utf8_counts(body) if charset != "utf-8" and not body.isascii() else (0, 0)
    if good and (bad == 0 or (charset is None and bad * 2 <= good)) or (charset is None and body.isascii()):
        charset = "utf-8"
    if charset is None:
        guess = charset_normalizer.from_bytes(body[:65536]).best()
        charset = codec_name(guess.encoding if guess else None) or "cp1252"
    return body.decode(charset, "replace"), charset


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
    """A requests session with our politeness and bounds. Build one per worker and run (``DoFn.setup``): the
    robots cache and the hosts deferred for this run live as long as the client."""

    def __init__(self, settings: HttpSettings):
        self.settings = settings
        self.session = requests.Session()
        self.session.headers.update({"User-Agent": settings.user_agent, "Accept-Encoding": "gzip, deflate"})
        retry = CappedRetry(
            total=settings.retries, connect=settings.retries, read=settings.retries, status=settings.retries,
            redirect=False, backoff_factor=settings.backoff, backoff_max=10.0,
            status_forcelist=(429, 500, 502, 503, 504), allowed_methods=frozenset({"GET", "HEAD"}),
            raise_on_status=False, respect_retry_after_header=True,
        )
        retry.max_retry_after = settings.max_retry_after
        adapter = GuardedAdapter(max_retries=retry, pool_connections=64, pool_maxsize=64)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.throttle = HostThrottle(settings.host_delay)
        self._robots: dict[str, Protego | None] = {}  # origin -> rules; None = allow all
        self._robots_lock = threading.Lock()
        self._deferred: dict[str, HostDeferred] = {}  # host -> why it is left for the next run

    def close(self) -> None:
        self.session.close()

    # -- raw requests -------------------------------------------------------------------------
    def check_target(self, url: str) -> None:
        """Scheme, and (when configured) address of a URL about to be requested: every redirect hop too."""
        check_scheme(url)
        problem = url_problem(url)
        if problem:
            raise FetchError(f"{problem}: not followed", url=url)
        # the address itself is checked when connecting (GuardedConnection): resolved once, pinned, fail closed

    def _open(self, url: str, headers: dict[str, str] | None, hop=None) -> requests.Response:
        """The final response of ``url``, redirects followed one hop at a time, each hop checked."""
        for n in range(self.settings.max_redirects + 1):
            try:
                self.check_target(url)
                if n and hop is not None:
                    hop(url)
                resp = self.session.get(url, headers=headers, stream=True, allow_redirects=False,
                                        timeout=(self.settings.connect_timeout, self.settings.read_timeout))
            except FetchError:
                raise
            except BlockedAddress as e:
                raise FetchError(str(e), url=url) from None
            except requests.exceptions.RetryError as e:
                raise FetchError(f"gave up after retries: {e}", url=url) from None
            except Exception as e:  # requests, urllib3 (LocationParseError), socket, idna: all one failure
                raise FetchError(f"{type(e).__name__}: {_short(e)}", url=url) from None
            try:
                target = self.session.get_redirect_target(resp)
                url = urljoin(url, target) if target else url
            except Exception as e:  # a Location header that is no URL ("http://[::1/x")
                resp.close()
                raise FetchError(f"bad redirect target: {type(e).__name__}: {_short(e)}", url=url) from None
            if not target:
                return resp
            resp.close()
        raise FetchError(f"more than {self.settings.max_redirects} redirects", url=url)

    def get(self, url: str, *, max_bytes: int | None = None, headers: dict[str, str] | None = None,
            truncate: bool = False, hop=None) -> Response:
        """GET with every bound applied. Raises :class:`FetchError` (:class:`HostDeferred` when the host asks
        for more than ``max_retry_after``); other HTTP errors are returned, not raised (``truncate``: a body over
        ``max_bytes`` is cut there instead of failing). ``hop(url)`` is called before each redirect hop is
        requested. ``total_timeout`` is a
        wall clock over the whole exchange (redirects, retries, headers, body): the :class:`Guard` shuts the
        sockets down at the deadline however the server drips."""
        with Guard(self.settings.total_timeout, self.settings.block_private_addresses) as guard:
            try:
                return self._get(url, max_bytes or self.settings.max_bytes, headers, guard, truncate, hop)
            except FetchError as e:
                if guard.fired and not isinstance(e, HostDeferred):
                    raise self._late(url) from None
                raise

    def _late(self, url: str) -> FetchError:
        return FetchError(f"response not complete within {self.settings.total_timeout:g}s", url=url)

    def _get(self, url: str, limit: int, headers: dict[str, str] | None, guard: Guard, truncate: bool,
             hop) -> Response:
        resp = self._open(url, headers, hop)
        try:
            wait = retry_after_seconds(resp.headers.get("Retry-After"))
            if (resp.status_code == 429 or resp.status_code >= 500) and (wait or 0) > self.settings.max_retry_after:
                raise HostDeferred(f"HTTP {resp.status_code} with Retry-After {wait:.0f}s (more than "
                                   f"{self.settings.max_retry_after:g}s): {DEFERRED}",
                                   status=resp.status_code, url=url)
            if resp.status_code == 429:
                raise HostDeferred(f"HTTP 429 (too many requests) after retries: {DEFERRED}",
                                   status=429, url=url)
            chunks, size = [], 0
            while True:
                if guard.fired:
                    raise self._late(url)
                chunk = resp.raw.read1(CHUNK, decode_content=True)
                if not chunk:
                    break
                size += len(chunk)
                if size > limit and truncate:
                    chunks.append(chunk[:len(chunk) - (size - limit)])
                    break
                if size > limit:
                    raise FetchError(f"body larger than {limit} bytes (decoded)", status=resp.status_code, url=url)
                chunks.append(chunk)
            if guard.fired:  # a socket shut down by the watchdog reads as a (truncated) end of body
                raise self._late(url)
        except FetchError:
            raise
        except Exception as e:  # urllib3 decode errors, resets mid-body, timeouts
            raise FetchError(f"{type(e).__name__} while reading body: {_short(e)}", status=resp.status_code, url=url) from None
        finally:
            resp.close()
        hdrs = {k.lower(): v for k, v in resp.headers.items()}
        return Response(url=resp.url, status=resp.status_code, headers=hdrs, body=b"".join(chunks))

    # -- politeness --------------------------------------------------------------------------
    def robots(self, url: str) -> Protego | None:
        """Parsed robots.txt of the URL's origin; None = allow all (none there, or 4xx). Raises
        :class:`HostDeferred` when robots.txt answers 5xx or cannot be fetched (RFC 9309: try later);
        that outcome is not cached here, the host is deferred for this client's life (one run)."""
        parts = urlsplit(url)
        origin = urlunsplit((parts.scheme, parts.netloc, "", "", ""))
        with self._robots_lock:
            if origin in self._robots:
                return self._robots[origin]
        try:
            # RFC 9309: parse at least 500 KiB; a longer file is cut there and parsed, not refused
            resp = self.get(origin + "/robots.txt", max_bytes=ROBOTS_MAX, truncate=True)
        except HostDeferred:
            raise
        except FetchError as e:
            raise HostDeferred(f"robots.txt unreachable ({e}): {DEFERRED}", status=e.status,
                               url=url) from None
        if resp.status >= 500:
            raise HostDeferred(f"robots.txt answered HTTP {resp.status}: {DEFERRED}",
                               status=resp.status, url=url)
        try:
            rules = Protego.parse(resp.body.decode("utf-8", "replace")) if resp.status < 400 else None
        except Exception as e:  # protego on a hostile file: unreadable rules are treated like 5xx
            raise HostDeferred(f"robots.txt unreadable ({type(e).__name__}: {_short(e)}): {DEFERRED}",
                               status=resp.status, url=url) from None
        with self._robots_lock:
            self._robots[origin] = rules
        return rules

    def crawl_delay(self, url: str) -> float:
        rules = self.robots(url) if self.settings.respect_robots else None
        delay = rules.crawl_delay(self.settings.user_agent) if rules is not None else None
        return max(self.settings.host_delay, min(float(delay or 0), self.settings.max_crawl_delay))

    def allowed(self, url: str) -> bool:
        if not self.settings.respect_robots:
            return True
        rules = self.robots(url)
        return rules is None or rules.can_fetch(url, self.settings.user_agent)

    def polite_get(self, url: str, **kwargs) -> Response:
        """robots check, then one request at a time per host, spaced by the host's delay. Once a host is
        deferred (:class:`HostDeferred`), its other URLs raise the same at once, without a request."""
        check_scheme(url)
        problem = url_problem(url)
        if problem:
            raise FetchError(f"{problem}: not followed", url=url)
        host = urlsplit(url).netloc.lower()
        try:
            if host in self._deferred:
                why = self._deferred[host]
                raise HostDeferred(str(why), status=why.status, url=url)
            if not self.allowed(url):
                raise FetchError("disallowed by robots.txt", stage="robots", url=url)
            with self.throttle.lock(host):
                self.throttle.wait(host)
                try:
                    return self.get(url, hop=lambda target: self._redirect_hop(host, target), **kwargs)
                finally:  # the delay runs from the end of one request to the start of the next
                    self.throttle.done(host, self.crawl_delay(url))
        except HostDeferred as e:
            self._deferred.setdefault(host, e)
            raise
        except FetchError:
            raise
        except Exception as e:  # whatever a library raises on hostile input is this URL's failure
            raise FetchError(f"{type(e).__name__}: {_short(e)}", url=url) from None


    def _redirect_hop(self, host: str, url: str) -> None:
        """A redirect to another host obeys that host's deferral, robots.txt and throttle."""
        other = urlsplit(url).netloc.lower()
        if other == host:
            return
        if other in self._deferred:
            why = self._deferred[other]
            raise HostDeferred(str(why), status=why.status, url=url)
        if not self.allowed(url):
            raise FetchError("redirect target disallowed by robots.txt", stage="robots", url=url)
        self.throttle.wait(other)  # not under the other host's lock: two hosts redirecting to each other
        self.throttle.done(other, self.crawl_delay(url))  # must not wait on each other


def _short(e: Exception, limit: int = 300) -> str:
    text = str(e).replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "…"
