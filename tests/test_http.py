"""net.http: bounds, politeness and hostile responses, against the loopback server."""

from __future__ import annotations

import gzip
import time
import zlib

import pytest

from config.settings import HttpSettings
from pipeline.loopback import Route
from net.http import FetchError, HttpClient, decode_html, is_private_host


def client(**kw) -> HttpClient:
    base = dict(host_delay=0, total_timeout=2, read_timeout=1, connect_timeout=1, retries=2, backoff=0.01,
                max_bytes=100_000)
    return HttpClient(HttpSettings(**{**base, **kw}))


def bomb_handler(encoding: str, size: int):
    raw = b"<html><body>" + b"a" * size + b"</body></html>"
    body = gzip.compress(raw) if encoding == "gzip" else zlib.compress(raw)

    def handle(req):
        req._send(200, body, "text/html", {"Content-Encoding": encoding})
    return handle, len(body)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compression_bomb_is_capped_on_decoded_size(server, encoding):
    handler, wire = bomb_handler(encoding, 50_000_000)
    server.routes["/bomb"] = handler
    assert wire < 100_000  # small on the wire...
    with pytest.raises(FetchError, match="larger than 100000 bytes"):
        client().get(server.url("/bomb"))  # ...but stopped once the decoded body passes the cap


def test_redirect_loop_and_long_chain_are_capped(server):
    def loop(req):
        req._send(302, b"", "text/plain", {"Location": "/loop"})
    server.routes["/loop"] = loop
    for i in range(10):
        server.routes[f"/hop{i}"] = (lambda n: lambda req: req._send(302, b"", "text/plain",
                                                                      {"Location": f"/hop{n + 1}"}))(i)
    with pytest.raises(FetchError, match="more than 3 redirects"):
        client(max_redirects=3).get(server.url("/loop"))
    with pytest.raises(FetchError, match="redirects"):
        client(max_redirects=3).get(server.url("/hop0"))
    server.routes["/hop10"] = Route("<p>end</p>")
    assert client(max_redirects=20).get(server.url("/hop0")).url.endswith("/hop10")


def test_slow_drip_hits_the_total_deadline(server):
    def drip(req):
        req.send_response(200)
        req.send_header("Content-Type", "text/html")
        req.send_header("Content-Length", "100000")
        req.end_headers()
        try:
            for _ in range(100):
                req.wfile.write(b"<p>x</p>")
                req.wfile.flush()
                time.sleep(0.2)  # every read returns within read_timeout; the whole never finishes
        except OSError:
            pass
    server.routes["/drip"] = drip
    t0 = time.monotonic()
    with pytest.raises(FetchError, match="not complete within 1.5s"):
        client(total_timeout=1.5, read_timeout=1).get(server.url("/drip"))
    assert time.monotonic() - t0 < 4


def test_retries_on_5xx_then_succeeds(server):
    calls = []

    def flaky(req):
        calls.append(1)
        if len(calls) < 3:
            req._send(503, b"busy", "text/plain")
        else:
            req._send(200, b"<p>ok</p>", "text/html")
    server.routes["/flaky"] = flaky
    resp = client(retries=3).get(server.url("/flaky"))
    assert resp.status == 200 and len(calls) == 3


def test_persistent_500_is_returned_after_retries(server):
    server.routes["/down"] = Route("no", status=500)
    resp = client(retries=2).get(server.url("/down"))
    assert resp.status == 500
    assert server.paths_requested().count("/down") == 3


@pytest.mark.parametrize("url", ["file:///etc/passwd", "javascript:alert(1)", "ftp://example.com/x",
                                 "data:text/html,<p>x</p>", "mailto:a@b.c"])
def test_other_schemes_are_never_followed(url):
    with pytest.raises(FetchError, match="unsupported URL scheme"):
        client().get(url)


def test_redirect_to_other_scheme_is_refused(server):
    server.routes["/to-file"] = lambda req: req._send(302, b"", "text/plain", {"Location": "file:///etc/passwd"})
    with pytest.raises(FetchError):
        client().get(server.url("/to-file"))


def test_robots_disallow_and_crawl_delay(server):
    server.routes["/robots.txt"] = Route("User-agent: *\nDisallow: /private/\nCrawl-delay: 1\n", "text/plain")
    server.routes["/a"] = Route("<p>a</p>")
    server.routes["/b"] = Route("<p>b</p>")
    server.routes["/private/x"] = Route("<p>x</p>")
    c = client()
    with pytest.raises(FetchError) as err:
        c.polite_get(server.url("/private/x"))
    assert err.value.stage == "robots"
    t0 = time.monotonic()
    c.polite_get(server.url("/a"))
    c.polite_get(server.url("/b"))
    assert time.monotonic() - t0 >= 1.0  # crawl-delay honoured between the two requests
    assert "/private/x" not in server.paths_requested()
    assert server.paths_requested().count("/robots.txt") == 1  # cached per host


def test_robots_5xx_means_disallow_and_404_means_allow(server):
    server.routes["/robots.txt"] = Route("oops", status=503)
    server.routes["/a"] = Route("<p>a</p>")
    with pytest.raises(FetchError, match="robots"):
        client(retries=0).polite_get(server.url("/a"))
    del server.routes["/robots.txt"]
    assert client().polite_get(server.url("/a")).status == 200


def test_user_agent_is_ours(server):
    server.routes["/a"] = Route("<p>a</p>")
    client().get(server.url("/a"))
    ua = server.requests[-1][2]["user-agent"]
    assert ua.startswith("warta/") and "+http" in ua


def test_charset_from_header_meta_and_fallback():
    text = "Café São Paulo – “kutipan”"
    assert decode_html(text.encode("iso-8859-1", "replace"), "iso-8859-1").startswith("Café São")
    meta = b'<meta charset="windows-1252"><p>' + "Café".encode("cp1252") + b"</p>"
    assert "Café" in decode_html(meta, None)
    assert decode_html(text.encode("utf-8"), None) == text
    assert decode_html(b"\xff\xfe bad \xc3", None)  # invalid UTF-8 never raises


def test_private_address_guard(server):
    assert is_private_host("127.0.0.1") and is_private_host("localhost")
    server.routes["/a"] = Route("<p>a</p>")
    with pytest.raises(FetchError, match="private address"):
        client(block_private_addresses=True).get(server.url("/a"))
    assert server.paths_requested() == []


def test_host_throttle_spaces_requests(server):
    server.routes["/a"] = Route("<p>a</p>")
    c = client(host_delay=0.25)
    t0 = time.monotonic()
    for _ in range(3):
        c.polite_get(server.url("/a"))
    assert time.monotonic() - t0 >= 0.5
