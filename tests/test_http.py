"""net.http: bounds, politeness and hostile responses, against the loopback server."""

from __future__ import annotations

import gzip
import socket
import threading
import time
import zlib

import pytest
from conftest import closed_port

from warta.config.settings import HttpSettings
from warta.net import http
from warta.net.http import FetchError, HostDeferred, HttpClient, decode_html, is_private_host
from warta.pipeline.loopback import Route
from warta.transforms.extract import extract_article
from warta.transforms.fetch import fetch_one


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


def test_robots_rfc9309_wildcards_and_longest_match(server):
    server.routes["/robots.txt"] = Route("User-agent: *\nDisallow: /news/\nAllow: /news/public/\n"
                                         "Disallow: /*.pdf$\n", "text/plain")
    c = client()
    assert c.allowed(server.url("/news/public/a.html"))  # the longer Allow wins over the earlier Disallow
    assert not c.allowed(server.url("/news/secret.html"))
    assert not c.allowed(server.url("/files/report.pdf"))  # `*` and `$`
    assert c.allowed(server.url("/files/report.pdf?page=2"))
    assert c.allowed(server.url("/other.html"))


def test_robots_5xx_defers_the_host_to_the_next_run_and_404_means_allow(server):
    server.routes["/robots.txt"] = Route("oops", status=503)
    server.routes["/a"] = Route("<p>a</p>")
    server.routes["/b"] = Route("<p>b</p>")
    first_run = client(retries=0)
    for path in ("/a", "/b"):
        kind, row = fetch_one({"url": server.url(path), "feed_url": "f", "source": "s"}, first_run)
        # a transient fetch error (retried next run), not a remembered "disallowed by robots.txt"
        assert (kind, row["stage"], row["status"]) == ("error", "fetch", 503)
        assert "host deferred, retried later" in row["error"]
    assert server.paths_requested() == ["/robots.txt"]  # the host is left alone for the rest of the run
    server.routes["/robots.txt"] = Route("User-agent: *\nAllow: /\n", "text/plain")
    assert client().polite_get(server.url("/a")).status == 200  # the next run's client asks again
    del server.routes["/robots.txt"]
    assert client().polite_get(server.url("/b")).status == 200


def test_unreachable_robots_defers_the_host():
    with pytest.raises(HostDeferred, match="robots.txt unreachable"):
        client(retries=0).polite_get(f"http://127.0.0.1:{closed_port()}/a")


def run_bounded(fn, seconds: float = 30):
    """fn() in a daemon thread; (finished, result or exception). Guards against the hour-long sleep."""
    box = {}

    def target():
        try:
            box["out"] = fn()
        except Exception as e:
            box["out"] = e
    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    return not t.is_alive(), box.get("out")


def test_long_retry_after_defers_the_host_instead_of_sleeping(server):
    server.routes["/busy"] = Route("slow down", status=429, headers={"Retry-After": "3600"}, conditional=False)
    server.routes["/b"] = Route("<p>b</p>")
    server.routes["/c"] = Route("<p>c</p>")
    c = client(retries=3)
    entries = [{"url": server.url(p), "feed_url": "f", "source": "s"} for p in ("/busy", "/b", "/c")]
    finished, rows = run_bounded(lambda: [fetch_one(e, c) for e in entries])
    assert finished, "a 429 with Retry-After: 3600 held the host"
    assert [(kind, row["stage"], row["status"]) for kind, row in rows] == [("error", "fetch", 429)] * 3
    assert all("host deferred, retried later" in row["error"] for _, row in rows)
    assert [row["url"] for _, row in rows] == [e["url"] for e in entries]
    assert server.paths_requested().count("/busy") == 1  # not retried, not waited for
    assert "/b" not in server.paths_requested() and "/c" not in server.paths_requested()


def test_long_retry_after_on_a_feed_poll_is_an_error_not_a_wait(server):
    when = "Wed, 21 Oct 2099 07:28:00 GMT"  # HTTP-date form
    server.routes["/feed.xml"] = Route("busy", status=503, headers={"Retry-After": when}, conditional=False)
    finished, out = run_bounded(lambda: client(retries=2).get(server.url("/feed.xml")))
    assert finished and isinstance(out, HostDeferred) and out.status == 503
    assert server.paths_requested() == ["/feed.xml"]


def test_rate_limited_host_is_deferred_after_the_retries(server):
    server.routes["/a"] = Route("slow down", status=429, conditional=False)
    server.routes["/b"] = Route("<p>b</p>")
    c = client(retries=1)
    for path in ("/a", "/b"):
        with pytest.raises(HostDeferred, match="HTTP 429"):
            c.polite_get(server.url(path))
    assert server.paths_requested() == ["/robots.txt", "/a", "/a"]


def test_short_retry_after_is_honoured(server):
    calls = []

    def once_busy(req):
        calls.append(1)
        if len(calls) == 1:
            req._send(429, b"wait", "text/plain", {"Retry-After": "1"})
        else:
            req._send(200, b"<p>ok</p>", "text/html")
    server.routes["/x"] = once_busy
    assert client(retries=2, max_retry_after=5).get(server.url("/x")).status == 200
    assert len(calls) == 2


def test_every_redirect_hop_is_checked_against_private_addresses(server, monkeypatch):
    # resolver stub: 127.0.0.1 passes for a public address, `localhost` resolves to a private one
    real = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **kw: real(
        "10.0.0.5" if host == "localhost" else host, *a, **kw))
    monkeypatch.setattr(http, "private_ip", lambda address: address.startswith("10."))
    port = server.url("").rsplit(":", 1)[1]
    server.routes["/start"] = lambda req: req._send(302, b"", "text/plain", {"Location": "/hop"})
    server.routes["/hop"] = lambda req: req._send(
        301, b"", "text/plain", {"Location": f"http://localhost:{port}/secret"})
    server.routes["/secret"] = Route("<p>internal</p>")
    with pytest.raises(FetchError, match="host localhost resolves to a private address"):
        client(block_private_addresses=True).get(server.url("/start"))
    assert server.paths_requested() == ["/start", "/hop"]  # the private target was never asked
    monkeypatch.undo()
    assert client().get(server.url("/start")).url.endswith("/secret")  # guard off: followed


def test_user_agent_is_ours(server):
    server.routes["/a"] = Route("<p>a</p>")
    client().get(server.url("/a"))
    ua = server.requests[-1][2]["user-agent"]
    assert ua.startswith("warta/") and "+http" in ua


def test_charset_whatwg_order_and_replacement():
    text = "Café São Paulo – “kutipan” dari Sánchez"
    assert decode_html(text.encode("cp1252"), "iso-8859-1") == (text, "cp1252")  # header
    meta = b'<meta charset="windows-1252"><p>' + "Café".encode("cp1252") + b"</p>"
    assert decode_html(meta, None) == (meta.decode("cp1252"), "cp1252")  # <meta>
    assert decode_html(b"\xef\xbb\xbf" + text.encode("utf-8"), "iso-8859-1") == (text, "utf-8")  # BOM first
    assert decode_html(text.encode("utf-8"), None) == (text, "utf-8")  # detected
    xml = b'<?xml version="1.0" encoding="iso-8859-2"?><html><p>' + "Łódź".encode("iso-8859-2") + b"</p></html>"
    assert "Łódź" in decode_html(xml, None)[0]


def test_latin1_header_over_a_utf8_page_is_not_believed():
    page = "<html><body><p>Kata Sánchez, “hari ini” — 25 °C</p></body></html>".encode()
    html, charset = decode_html(page, "ISO-8859-1")
    assert charset == "utf-8" and "Sánchez, “hari ini” — 25 °C" in html and "Ã" not in html


def test_latin1_header_on_a_utf8_page_end_to_end_through_fetch_and_extract(server):
    body = " ".join(["Menurut Sánchez, “pemerintah” akan membangun jembatan baru di Jakarta — kata pejabat."] * 6)
    page = f"<html><head><title>Jembatan</title></head><body><article><p>{body}</p></article></body></html>"
    server.routes["/berita.html"] = Route(page.encode("utf-8"), "text/html; charset=ISO-8859-1")
    kind, fetched = fetch_one({"url": server.url("/berita.html"), "feed_url": "f", "source": "s"}, client())
    assert kind == "page" and fetched["charset"] == "utf-8"
    row = extract_article(fetched)
    assert "Sánchez, “pemerintah”" in row["text"] and "Ã" not in row["text"] and row["charset"] == "utf-8"


def test_one_bad_byte_in_utf8_is_one_replacement_not_mojibake():
    page = "<p>Presiden Joko Widodo berkata “kita maju” di Jakarta. Sánchez</p>".encode()
    page = page.replace(b"berkata", b"berk\xffata")
    for header in ("utf-8", None):
        html, charset = decode_html(page, header)
        assert charset == "utf-8" and "berk\ufffdata “kita maju”" in html and "Sánchez" in html


def test_undeclared_legacy_page_is_detected():
    para = ("Le gouvernement a annoncé hier que les élèves étrangers pourront étudier à l'université "
            "dès la rentrée prochaine, a précisé le ministère de l'Éducation. ")
    page = ("<html><body><p>" + para * 5 + "</p></body></html>").encode("cp1252")
    html, charset = decode_html(page, None)
    assert "annoncé hier que les élèves étrangers" in html and "\ufffd" not in html
    assert decode_html(b"\xff\xfe bad \xc3", None)  # garbage never raises


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


@pytest.mark.slow
def test_deferred_hosts_do_not_stall_a_run_and_are_fetched_by_the_next(server, tmp_path, fast_config):
    """A loopback world run twice: one host answers 429 with Retry-After: 3600, another's robots.txt answers
    503. The first run finishes at once, leaving each of their pages as one transient error row; once both
    hosts are healthy, the next run stores every article exactly once."""
    import subprocess
    import sys

    import pyarrow.dataset as ds
    from conftest import ROOT, T0, seed_article
    from pages import rss_feed, wordpress_page

    from warta.pipeline.loopback import LoopbackServer

    _, paras = seed_article()
    with LoopbackServer() as other:
        pages = {server.url(f"/berita/{n}.html"): server for n in range(3)}
        pages |= {other.url(f"/b/{n}.html"): other for n in (3, 4)}
        for n, (url, host) in enumerate(pages.items()):
            host.routes[url.split(host.base, 1)[1]] = Route(wordpress_page(
                title=f"Berita {n}", paragraphs=paras[2 * n:2 * n + 2], url=url, published=T0, author="Redaksi"))
        healthy = server.routes["/berita/0.html"]
        server.routes["/berita/0.html"] = Route("slow down", status=429, headers={"Retry-After": "3600"},
                                                conditional=False)
        other.routes["/robots.txt"] = Route("down", status=503)
        server.routes["/feed.xml"] = Route(rss_feed(title="Dua", link=server.base, items=[
            {"title": f"Berita {n}", "link": url, "published": T0} for n, url in enumerate(pages)]),
            "application/rss+xml", conditional=False)  # no validators: the next run sees the same items
        feeds = tmp_path / "feeds.yaml"
        feeds.write_text(f"feeds:\n  - {{name: dua, url: '{server.url('/feed.xml')}', language: id}}\n")
        out = tmp_path / "lake"

        def run():
            res = subprocess.run([sys.executable, str(ROOT / "run_local.py"), "--feeds", str(feeds), "--output",
                                  str(out), "--config", str(fast_config), "--no-ner"],
                                 cwd=ROOT, capture_output=True, text=True, timeout=300)
            assert res.returncode == 0, res.stderr[-3000:]

        def table(name):
            return ds.dataset(str(out / name), format="parquet", partitioning="hive").to_table().to_pylist()

        run()
        errors = table("errors")
        assert sorted((e["url"], e["stage"], e["status"]) for e in errors) == sorted(
            (url, "fetch", 429 if host is server else 503) for url, host in pages.items())
        assert all("host deferred, retried later" in e["error"] for e in errors)
        assert not (out / "articles").exists()
        assert server.paths_requested().count("/berita/0.html") == 1  # neither retried nor waited for
        assert not [p for p in server.paths_requested() + other.paths_requested() if p.startswith(("/berita/1",
                    "/berita/2", "/b/"))]  # the rest of each host was left alone

        server.routes["/berita/0.html"] = healthy
        other.routes["/robots.txt"] = Route("User-agent: *\nAllow: /\n", "text/plain")
        # an hour later (1 h is the first backoff step, and what the 429 asked for): here, made due by hand
        retry = subprocess.run([sys.executable, str(ROOT / "run_local.py"), "errors", "retry", "--output", str(out)],
                               cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert retry.returncode == 0, retry.stderr[-3000:]
        run()
        urls = sorted(r["url"] for r in table("articles"))
        assert urls == sorted(pages)  # every article, once


@pytest.mark.parametrize("location", ["http://[::1/x", "http://" + "a" * 70 + ".example/x",
                                      "http://127.0.0.1:99999/x"])
def test_malformed_redirect_targets_are_fetch_errors(server, location):
    server.routes["/r"] = lambda req: req._send(302, b"", "text/plain", {"Location": location})
    with pytest.raises(FetchError):
        client().get(server.url("/r"))
    kind, row = fetch_one({"url": server.url("/r"), "feed_url": "f", "source": "s"}, client())
    assert kind == "error" and row["stage"] == "fetch"


@pytest.mark.parametrize("value, seconds", [("²", None), ("12", 12.0), ("١٢", None), ("soon", None),
                                            ("Wed, 99 Foo 2099 07:28:00 GMT", None), ("9" * 40, None)])
def test_retry_after_reads_ascii_seconds_or_a_date_only(value, seconds):
    assert http.retry_after_seconds(value) == seconds


def test_retry_after_superscript_digit_is_not_a_crash(server):
    server.routes["/x"] = Route("busy", status=503, headers={"Retry-After": "²"}, conditional=False)
    assert client(retries=1).get(server.url("/x")).status == 503


def test_robots_redirecting_to_an_unparseable_url_defers_the_host_and_keeps_its_pages(server):
    server.routes["/robots.txt"] = lambda req: req._send(301, b"", "text/plain", {"Location": "http://[::1/x"})
    server.routes["/a"] = Route("<p>a</p>")
    c = client(retries=0)
    rows = [fetch_one({"url": server.url(p), "feed_url": "f", "source": "s"}, c) for p in ("/a", "/b")]
    assert [(kind, row["stage"]) for kind, row in rows] == [("error", "fetch")] * 2
    assert all("host deferred" in row["error"] for _, row in rows)


def test_connection_goes_to_the_address_that_was_checked(server, monkeypatch):
    """DNS rebinding: the name is resolved once, checked, and the connection pinned to that address (the
    Host header keeps the name); a second lookup would answer a private address."""
    real, lookups = socket.getaddrinfo, []

    def rebinding(host, *a, **kw):
        if host == "news.example":
            lookups.append(host)
            return real("127.0.0.1" if len(lookups) == 1 else "10.0.0.5", *a, **kw)
        return real(host, *a, **kw)
    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    monkeypatch.setattr(http, "private_ip", lambda address: address.startswith("10."))
    server.routes["/a"] = Route("<p>a</p>")
    port = server.url("").rsplit(":", 1)[1]
    resp = client(block_private_addresses=True).get(f"http://news.example:{port}/a")
    assert resp.status == 200 and lookups == ["news.example"]
    assert server.requests[-1][2]["host"] == f"news.example:{port}"
    with pytest.raises(FetchError, match="private address"):  # a fresh client looks up again: rebound
        client(block_private_addresses=True).get(f"http://news.example:{port}/a")


def test_failed_lookup_is_blocked_when_guarding_private_addresses(monkeypatch):
    def no_such_host(host, *a, **kw):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    with pytest.raises(FetchError, match="could not be resolved.*blocked"):
        client(block_private_addresses=True).get("http://nowhere.example/a")
    assert is_private_host("nowhere.example")  # fail closed


def drip(parts, pause: float):
    """A handler that sends ``parts`` (bytes) one at a time, ``pause`` seconds apart, until the client hangs up."""
    def handle(req):
        try:
            for part in parts:
                req.wfile.write(part)
                req.wfile.flush()
                time.sleep(pause)
        except OSError:
            pass
    return handle


def dripped_headers():
    yield b"HTTP/1.1 200 OK\r\n"
    for i in range(200):
        yield f"X-Drip-{i}: {i}\r\n".encode()


def dripped_gzip_name():
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Encoding: gzip\r\nContent-Length: 100000\r\n\r\n"
    yield head + b"\x1f\x8b\x08\x08" + b"\x00" * 4 + b"\x00\x03"  # FLG.FNAME: a file name follows
    while True:
        yield b"a"


def dripped_chunks():
    yield b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nTransfer-Encoding: chunked\r\n\r\n"
    while True:
        yield b"1\r\na\r\n"


@pytest.mark.parametrize("parts,pause", [(dripped_headers, 0.5), (dripped_gzip_name, 0.05), (dripped_chunks, 0.05)],
                         ids=["headers", "gzip-fname", "chunks"])
def test_total_timeout_is_a_wall_clock_however_the_server_drips(server, parts, pause):
    server.routes["/drip"] = drip(parts(), pause)
    start = time.monotonic()
    with pytest.raises(FetchError, match="not complete within 2s"):
        client(total_timeout=2, read_timeout=1, retries=0).get(server.url("/drip"))
    assert time.monotonic() - start < 2 + 1


def test_robots_txt_over_500_kib_is_cut_and_parsed(server):
    rules = "User-agent: *\nDisallow: /private/\n"
    server.routes["/robots.txt"] = Route(rules + "# padding\n" * 80_000, "text/plain")  # ~800 KB
    server.routes["/a"] = Route("<p>a</p>")
    c = client(max_bytes=10_000)
    assert c.polite_get(server.url("/a")).status == 200
    with pytest.raises(FetchError, match="robots"):
        c.polite_get(server.url("/private/x"))


def test_redirect_to_another_host_obeys_its_robots_txt(server):
    from warta.pipeline.loopback import LoopbackServer
    with LoopbackServer(host="127.0.0.2") as other:
        other.routes["/robots.txt"] = Route("User-agent: *\nDisallow: /\n", "text/plain")
        other.routes["/page"] = Route("<p>other</p>")
        server.routes["/go"] = lambda req: req._send(302, b"", "text/plain", {"Location": other.url("/page")})
        with pytest.raises(FetchError, match="redirect target disallowed by robots.txt"):
            client().polite_get(server.url("/go"))
        assert other.paths_requested() == ["/robots.txt"]
