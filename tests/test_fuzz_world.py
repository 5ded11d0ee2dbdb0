"""Fuzzing: hypothesis generates hostile hosts on loopback, next to one healthy outlet, and a whole `warta run`
goes through them in-process (DirectFnRunner, one worker, NER off).

Hostile hosts answer with random status codes, headers (Location, Retry-After, Content-Type and charset,
Content-Encoding), redirect chains to malformed, other-scheme or closed targets, truncated or dripping bodies,
malformed feeds (broken XML, HTML, billion laughs, garbage) and malformed robots.txt. Every generated world must:

* exit 0;
* store the healthy outlet's articles;
* keep the invariant: every entry a poll yields ends as exactly one of an article (or a duplicate decision
  in the index), an error row, or an entry pending in the backlog;
* finish within the run budget (plus one response's ``total_timeout`` and a fixed allowance for the commit).

The short profile runs with the tests; ``bench/bench_fuzz.py`` runs a long one and reports worlds and hosts tried.
"""

from __future__ import annotations

import gzip
import json
import os
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from warta.lake.state import key64
from warta.net.urls import normalize_url
from warta.pipeline import cli
from warta.pipeline.loopback import LoopbackServer
from warta.transforms import feeds as feeds_module

FIXTURES = Path(__file__).resolve().parent / "fixtures"
BUDGET = 30.0  # --max-run-time of each world (worlds take ~10 s; the rest is room for a loaded machine)
SLACK = 1.0 + 15.0  # one response's total_timeout past the deadline, plus committing and Beam's start and end
SETTINGS = """
http: {host_delay: 0, total_timeout: 1, read_timeout: 0.5, connect_timeout: 0.5, retries: 0, backoff: 0.01,
       max_retry_after: 1, max_bytes: 300000, max_redirects: 3}
ner: {enabled: false}
"""
CLOSED_PORT = 9  # discard: nothing listens on loopback there, connections are refused at once
LOCATIONS = ["http://[::1/x", "http://127.0.0.1:99999/a", "file:///etc/passwd", "javascript:alert(1)", "//",
             "http://" + "a" * 70 + ".example/x", f"http://127.0.0.1:{CLOSED_PORT}/x", "http://localhost:0/",
             "\u00e9\u00e9", "http://user:pa ss@127.0.0.1/x", ""]
RETRY_AFTER = ["1", "\u00b2", "-5", "Wed, 21 Oct 2015 07:28:00 GMT", "99999999999", "soon", "0"]
CONTENT_TYPES = ["text/html", "text/html; charset=utf-8", "text/html; charset=zlib", "text/html; charset=base64",
                 "text/html; charset=rot13", "text/html; charset=utf-16", "text/html; charset=\"\"",
                 "application/pdf", "", "application/rss+xml; charset=uu_codec", "text/html; charset=x" * 30]
ENCODINGS = [None, "gzip", "gzip-broken", "deflate", "br", "x-unknown", "gzip, gzip"]
STATUSES = [200, 200, 200, 200, 204, 301, 302, 304, 307, 404, 410, 429, 500, 503, 599]
PAGE_BODIES = ["article", "article", "garbage", "empty", "truncated", "drip", "bomb", "binary"]
FEED_BODIES = ["rss", "rss", "atom", "malformed", "html", "laughs", "empty", "garbage", "truncated", "drip"]
ROBOTS = ["allow", "allow", "disallow", "500", "404", "garbage", "huge", "redirect-bad", "drip"]
ENTRY_LINKS = ["page", "page", "page", "redirect", "malformed", "other-scheme", "closed", "relative"]


@dataclass
class Reply:
    status: int = 200
    content_type: str = "text/html"
    encoding: str | None = None
    retry_after: str | None = None
    location: str | None = None
    body: str = "article"


@dataclass
class Host:
    robots: str = "allow"
    feed: Reply = field(default_factory=Reply)
    links: list[str] = field(default_factory=list)  # ENTRY_LINKS, one per feed entry
    pages: list[Reply] = field(default_factory=list)


def replies(bodies: list[str]) -> st.SearchStrategy[Reply]:
    return st.builds(Reply, status=st.sampled_from(STATUSES), content_type=st.sampled_from(CONTENT_TYPES),
                     encoding=st.sampled_from(ENCODINGS), retry_after=st.none() | st.sampled_from(RETRY_AFTER),
                     location=st.none() | st.sampled_from(LOCATIONS + ["next", "loop"]),
                     body=st.sampled_from(bodies))


@st.composite
def hosts(draw) -> Host:
    n = draw(st.integers(0, 6))
    feed = draw(replies(FEED_BODIES))
    if draw(st.integers(0, 2)):  # two worlds in three: a feed that answers, so its entries meet the hostile pages
        feed.status, feed.location, feed.retry_after = 200, None, None
        feed.encoding = draw(st.sampled_from([None, None, "gzip", "deflate"]))
        feed.body = draw(st.sampled_from(["rss", "atom", "rss", "malformed", "drip"]))
    if draw(st.booleans()):
        feed.content_type = "application/rss+xml"
    return Host(robots=draw(st.sampled_from(ROBOTS)), feed=feed,
                links=draw(st.lists(st.sampled_from(ENTRY_LINKS), min_size=n, max_size=n)),
                pages=draw(st.lists(replies(PAGE_BODIES), min_size=n, max_size=n)))


MAX_HOSTS = 8
worlds = st.lists(hosts(), min_size=3, max_size=MAX_HOSTS)


# -- serving ----------------------------------------------------------------------------------------
def article_html(base: str, tag: str) -> str:
    text = (FIXTURES / "en/story-0.html").read_text()
    return text.replace("</title>", f" {tag}</title>", 1)


def rss(items: list[tuple[str, str]]) -> str:
    entries = "".join(f"<item><title>{t}</title><link>{link}</link><pubDate>Tue, 12 Nov 2024 10:00:00 +0000"
                      f"</pubDate></item>" for t, link in items)
    return f"<?xml version='1.0'?><rss version='2.0'><channel><title>x</title>{entries}</channel></rss>"


def atom(items: list[tuple[str, str]]) -> str:
    entries = "".join(f"<entry><title>{t}</title><id>{link}</id><link href='{link}'/>"
                      f"<updated>2024-11-12T10:00:00Z</updated></entry>" for t, link in items)
    return f"<?xml version='1.0'?><feed xmlns='http://www.w3.org/2005/Atom'><title>x</title>{entries}</feed>"


def laughs(items: list[tuple[str, str]]) -> str:
    lol = "".join(f"<!ENTITY lol{i} '{('&lol' + str(i - 1) + ';') * 10}'>" for i in range(1, 10))
    return (f"<?xml version='1.0'?><!DOCTYPE r [<!ENTITY lol0 '{rss(items)[60:-22]}'>{lol}]>"
            "<rss version='2.0'><channel><title>x</title>&lol9;</channel></rss>")


def body_bytes(kind: str, base: str, items: list[tuple[str, str]], tag: str) -> bytes:
    return {
        "article": lambda: article_html(base, tag).encode(),
        "rss": lambda: rss(items).encode(), "atom": lambda: atom(items).encode(),
        "malformed": lambda: rss(items)[:-40].replace("</title>", "&bogus;</title>", 1).encode(),
        "html": lambda: b"<html><body><h1>Not a feed</h1></body></html>",
        "laughs": lambda: laughs(items).encode(),
        "empty": lambda: b"", "garbage": lambda: os.urandom(64) + b"<rss<<item>&&",
        "binary": lambda: b"\x00\xff\xfe" * 500,
        "truncated": lambda: (rss(items) if items else article_html(base, tag)).encode(),
        "drip": lambda: (rss(items) if items else article_html(base, tag)).encode(),
        "bomb": lambda: b"<html><body>" + b"a" * 2_000_000 + b"</body></html>",
    }[kind]()


def encode(body: bytes, encoding: str | None) -> bytes:
    if encoding in ("gzip", "gzip, gzip"):
        body = gzip.compress(body)
        return gzip.compress(body) if encoding == "gzip, gzip" else body
    if encoding == "gzip-broken":
        return b"\x1f\x8b\x08\x08\x00\x00\x00\x00\x00\x03name" + os.urandom(40)
    if encoding == "deflate":
        return zlib.compress(body)
    return body


def handler(reply: Reply, body: bytes, next_path: str, own_path: str):
    location = {"next": next_path, "loop": own_path}.get(reply.location or "", reply.location)

    def handle(req):
        try:
            req.send_response(reply.status)
            req.send_header("Content-Type", reply.content_type)
            if reply.encoding:
                req.send_header("Content-Encoding", reply.encoding.replace("-broken", ""))
            if reply.retry_after is not None:
                req.send_header("Retry-After", reply.retry_after)
            if location is not None:
                req.send_header("Location", location)
            payload = encode(body, reply.encoding)
            extra = 500 if reply.body == "truncated" else 0
            req.send_header("Content-Length", str(len(payload) + extra))
            req.end_headers()
            if reply.body == "drip":
                for i in range(0, min(len(payload), 4000), 200):
                    req.wfile.write(payload[i:i + 200])
                    req.wfile.flush()
                    time.sleep(0.1)
            else:
                req.wfile.write(payload)
            if extra:
                req.close_connection = True
        except (OSError, ValueError):
            pass
    return handle


def robots_route(kind: str, base: str):
    text = {"allow": "User-agent: *\nAllow: /\n", "disallow": "User-agent: *\nDisallow: /\n",
            "garbage": "\x00\xff User-agent: * \n Disallow: /[\n Crawl-delay: -1e999\n",
            "huge": "User-agent: *\nAllow: /\n" + "# pad\n" * 100_000, "drip": "User-agent: *\nAllow: /\n" * 40}
    if kind in ("500", "404"):
        return handler(Reply(status=int(kind), body="empty"), b"", "", "")
    if kind == "redirect-bad":
        return handler(Reply(status=301, location="http://[::1/robots", body="empty"), b"", "", "")
    reply = Reply(content_type="text/plain", body="drip" if kind == "drip" else "article")
    return handler(reply, text[kind].encode(), "", "")


def entry_link(kind: str, base: str, i: int) -> str:
    return {"page": f"{base}/p/{i}.html", "redirect": f"{base}/r/{i}", "relative": f"/p/{i}.html",
            "malformed": ["http://127.0.0.1:99999/x", "http://[::1/x", "http://" + "b" * 70 + ".example/"][i % 3],
            "other-scheme": ["file:///etc/passwd", "javascript:alert(1)", "ftp://x/y"][i % 3],
            "closed": f"http://127.0.0.1:{CLOSED_PORT}/p/{i}.html"}[kind]


def serve(server: LoopbackServer, host: Host, tag: str) -> None:
    base, r = server.base, server.routes
    r.clear()
    r["/robots.txt"] = robots_route(host.robots, base)
    items = []
    for i, (kind, page) in enumerate(zip(host.links, host.pages)):
        items.append((f"{tag} {i}", entry_link(kind, base, i)))
        body = body_bytes(page.body, base, [], f"{tag} {i}")
        r[f"/p/{i}.html"] = handler(page, body, f"/p/{i + 1}.html", f"/p/{i}.html")
        r[f"/r/{i}"] = handler(Reply(status=302, location=f"/p/{i}.html", body="empty"), b"", "", "")
    feed = body_bytes(host.feed.body, base, items, tag)
    r["/feed.xml"] = handler(host.feed, feed, "/feed.xml?again", "/feed.xml")


def serve_healthy(server: LoopbackServer) -> list[str]:
    from warta.pipeline.loopback import Route
    r, base = server.routes, server.base
    r.clear()
    r["/robots.txt"] = Route("User-agent: *\nAllow: /\n", "text/plain")
    urls = []
    for n in range(2):
        r[f"/en/story-{n}.html"] = Route((FIXTURES / f"en/story-{n}.html").read_text())
        urls.append(f"{base}/en/story-{n}.html")
    r["/en/atom.xml"] = Route(atom([(f"Story {n}", u) for n, u in enumerate(urls)]), "application/atom+xml")
    return urls


# -- one world ----------------------------------------------------------------------------------------
class Servers:
    """Loopback servers kept across worlds (starting and stopping one costs ~0.5 s): one healthy, MAX_HOSTS hostile."""

    def __init__(self):
        self.healthy = LoopbackServer().start()
        self.hostile = [LoopbackServer(host=f"127.0.0.{i + 2}").start() for i in range(MAX_HOSTS)]

    def stop(self):
        for s in [self.healthy, *self.hostile]:
            s.stop()


def lake_rows(out: Path, dataset: str, cols: str) -> list[tuple]:
    if not (out / dataset).exists():
        return []
    return duckdb.sql(f"select {cols} from read_parquet('{out}/{dataset}/**/*.parquet', hive_partitioning=true, "
                      "union_by_name=true)").fetchall()


def run_world(world: list[Host], servers: Servers, tmp: Path) -> dict:
    """Serve ``world``, run `warta run` once in-process, check everything; returns what was counted."""
    healthy_urls = serve_healthy(servers.healthy)
    lines = ["feeds:", "  - name: healthy", f"    url: {servers.healthy.base}/en/atom.xml"]
    for n, (host, server) in enumerate(zip(world, servers.hostile)):
        serve(server, host, f"h{n}")
        lines += [f"  - name: hostile{n}", f"    url: {server.base}/feed.xml"]
    (tmp / "feeds.yaml").write_text("\n".join(lines) + "\n")
    (tmp / "settings.yaml").write_text(SETTINGS)
    out = tmp / "lake"
    yielded: list[dict] = []
    real_poll = feeds_module.poll_feed

    def recording_poll(*args, **kwargs):
        result = real_poll(*args, **kwargs)
        yielded.extend(result.entries)
        return result
    feeds_module.poll_feed = recording_poll  # the DirectFnRunner runs the stages in this process
    start = time.monotonic()
    try:
        code = cli.run(["--feeds", str(tmp / "feeds.yaml"), "--config", str(tmp / "settings.yaml"), "--output",
                        str(out), "--workers", "1", "--no-ner", "--max-run-time", str(BUDGET), "--log-level", "ERROR"])
    finally:
        feeds_module.poll_feed = real_poll
    elapsed = time.monotonic() - start
    assert code == 0, f"exit {code}"
    assert elapsed < BUDGET + SLACK, f"{elapsed:.1f}s"
    stored = {u for (u,) in lake_rows(out, "articles", "url")}
    assert set(healthy_urls) <= stored, (healthy_urls, stored, lake_rows(out, "errors", "url, stage, error")[:8])
    # the invariant: each entry a poll yielded is an article/duplicate (index), an error row or pending
    index = {k for (k,) in lake_rows(out / "_state", "index", "url_key")} if (out / "_state/index").exists() else set()
    errors = {key64(normalize_url(u)) for (u,) in lake_rows(out, "errors", "url") if u}
    pending = set()
    for f in (out / "_state" / "backlog").glob("*.json"):
        pending |= {key64(normalize_url(e["url"])) for e in json.loads(f.read_text())}
    entries = {key64(normalize_url(e["url"])): e["url"] for e in yielded}
    for key, url in entries.items():
        ends = (key in index or key in errors) + (key in pending)
        assert ends == 1, f"entry {url}: index/errors {key in index}/{key in errors}, pending {key in pending}"
    assert not list((out / "_state").glob("pending/*")), "staging left behind"
    return {"entries": len(entries), "seconds": elapsed, "hosts": len(world)}


@pytest.fixture(scope="module")
def servers():
    s = Servers()
    yield s
    s.stop()


PROFILE = int(os.environ.get("WARTA_FUZZ_EXAMPLES", "5"))  # the short profile; bench/bench_fuzz.py: the long one


@settings(max_examples=PROFILE, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(world=worlds)
def test_hostile_worlds_keep_the_invariant(world, servers, tmp_path_factory):
    run_world(world, servers, tmp_path_factory.mktemp("world"))


def test_whatever_a_stage_raises_ends_as_an_error_row(servers, tmp_path, monkeypatch):
    """The invariant per stage: an exception no one expected, in the fetch thread or in extraction, is that
    entry's error row; the other entries and the healthy outlet go on."""
    from warta.transforms import extract, fetch
    real_extract, real_fetch = extract.extract_article, fetch.fetch_page

    def failing_extract(page, **kw):
        if page["url"].endswith("/p/0.html"):
            raise RecursionError("maximum recursion depth exceeded (a parser on deep HTML)")
        return real_extract(page, **kw)

    def failing_fetch(entry, client):
        if entry["url"].endswith("/p/1.html"):
            raise KeyError("a library's own bug")
        return real_fetch(entry, client)
    monkeypatch.setattr(extract, "extract_article", failing_extract)
    monkeypatch.setattr(fetch, "fetch_page", failing_fetch)
    host = Host(feed=Reply(content_type="application/rss+xml", body="rss"), links=["page"] * 3,
                pages=[Reply() for _ in range(3)])
    assert run_world([host], servers, tmp_path)["entries"] == 2 + 3  # the healthy outlet's and these
    base = servers.hostile[0].base
    rows = set(lake_rows(tmp_path / "lake", "errors", "url, stage"))
    assert {(f"{base}/p/0.html", "extract"), (f"{base}/p/1.html", "fetch")} <= rows
    assert f"{base}/p/2.html" in {u for (u,) in lake_rows(tmp_path / "lake", "articles", "url")}
