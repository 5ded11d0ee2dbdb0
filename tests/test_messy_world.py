"""End to end on a loopback outlet that does what real ones do: local times without an offset, a homepage
canonical on every page, feed links that redirect to the same page, XHTML, a relative og:image, an Atom id
that is not a URL, a wire story run word for word by another outlet, a page that fails once, a UTF-8 page
served as ISO-8859-1, a host whose robots.txt answers 503 on the first run, and one that answers
`429 Retry-After: 3600`. Run twice (with `warta errors retry` between), every article is in the lake exactly
once, with the right UTC time and text, and the first run did not wait for the busy host."""

from __future__ import annotations

import html
import random
from datetime import datetime, timezone

import pytest
from conftest import seed_article
from pages import rss_feed, wordpress_page
from test_pipeline_e2e import articles, errors, run_cli

from warta.pipeline.loopback import LoopbackServer, Route

pytestmark = pytest.mark.slow

SETTINGS = """
http: {host_delay: 0, total_timeout: 3, read_timeout: 2, connect_timeout: 1, retries: 0, backoff: 0.01}
ner: {enabled: false}
"""


def paragraphs(n: int) -> list[str]:
    """Five paragraphs of the seed article's words, shuffled per page: no two pages are near-duplicates."""
    _, seed = seed_article()
    rng = random.Random(n)
    return [f"Berita {n}, bagian {j}: " + " ".join(rng.sample(p.split(), len(p.split()))) for j, p in enumerate(seed[:5])]


def page(base: str, n: int, published: str, **kw) -> str:
    """A page whose only time is local (WIB) without an offset, and whose canonical/og:url is the homepage."""
    doc = wordpress_page(title=f"Berita nomor {n}", paragraphs=paragraphs(n), url=f"{base}/m/berita/{n}.html",
                         published=None, author="Redaksi", canonical=f"{base}/", **kw)
    head = (f'<meta property="og:url" content="{base}/"><meta name="pubdate" content="{published}">'
            '<meta property="og:image" content="/img/foto.jpg">')
    return doc.replace("</head>", head + "</head>", 1)


def xhtml(doc: str) -> str:
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" "http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">\n'
            + doc.split("\n", 1)[1].replace("<html ", '<html xmlns="http://www.w3.org/1999/xhtml" ', 1)
            .replace('<meta charset="utf-8">', '<meta http-equiv="Content-Type" content="text/html; charset=utf-8"/>'))


def utc(hour: int, day: int = 12) -> datetime:
    return datetime(2024, 11, day, hour, tzinfo=timezone.utc)


def test_messy_outlet_twice_every_article_once_with_utc_times(server, tmp_path):
    with LoopbackServer() as robots_down, LoopbackServer() as busy:
        run_messy_world(server, robots_down, busy, tmp_path)


def run_messy_world(server, robots_down, busy, tmp_path):
    base, r = server.base, server.routes
    flaky = {"calls": 0}
    expected: dict[str, datetime] = {}
    for n in range(4):  # homepage canonical on all four, local times only
        r[f"/m/berita/{n}.html"] = Route(page(base, n, f"2024/11/12 {10 + n}:00:00"))
        expected[f"{base}/m/berita/{n}.html"] = utc(3 + n)
    r["/m/berita/4.html"] = Route(xhtml(page(base, 4, "Selasa, 12 November 2024 15:30 WIB")),
                                  "application/xhtml+xml; charset=utf-8")
    expected[f"{base}/m/berita/4.html"] = datetime(2024, 11, 12, 8, 30, tzinfo=timezone.utc)
    r["/m/berita/5.html"] = Route(page(base, 5, "05/11/2024 09:00"))  # day first: 5 November
    expected[f"{base}/m/berita/5.html"] = utc(2, day=5)
    for twin in ("/m/go/5", "/m/berita/5"):  # two feed links, one page
        r[twin] = Route("", status=301, headers={"Location": f"{base}/m/berita/5.html"})

    def once_unavailable(req):  # 503 on the first run, a page after
        flaky["calls"] += 1
        body = page(base, 6, "2024-11-12 20:00") if flaky["calls"] > 1 else "busy"
        req._send(200 if flaky["calls"] > 1 else 503, body.encode(), "text/html; charset=utf-8")
    r["/m/berita/6.html"] = once_unavailable
    expected[f"{base}/m/berita/6.html"] = utc(13)

    latin = page(base, 7, "2024-11-12 21:00").replace("Berita 7, bagian 2:", "Berita 7, bagian 2: Sánchez di Jakarta,")
    r["/m/berita/7.html"] = Route(latin, "text/html; charset=ISO-8859-1")  # the header lies: the bytes are UTF-8
    expected[f"{base}/m/berita/7.html"] = utc(14)
    robots_down.routes["/robots.txt"] = Route("down", status=503)  # RFC 9309: try later, never "disallow all"
    robots_down.routes["/m/berita/8.html"] = Route(page(robots_down.base, 8, "2024-11-12 22:00"))
    expected[f"{robots_down.base}/m/berita/8.html"] = utc(15)
    busy.routes["/m/berita/9.html"] = Route("slow down", status=429, headers={"Retry-After": "3600"}, conditional=False)
    expected[f"{busy.base}/m/berita/9.html"] = utc(16)

    links = ([f"{base}/m/berita/{n}.html" for n in (0, 1, 2, 3, 4, 6, 7)] + [f"{base}/m/go/5?from=rss", f"{base}/m/berita/5"]
             + [f"{robots_down.base}/m/berita/8.html", f"{busy.base}/m/berita/9.html"])
    r["/m/feed.xml"] = Route(rss_feed(title="Messy", link=f"{base}/m/", items=[
        {"title": f"Item {i}", "link": u} for i, u in enumerate(links)]), "application/rss+xml")
    r["/m/atom.xml"] = Route(  # an entry whose id is not a URL: one error row, written once
        "<?xml version='1.0'?><feed xmlns='http://www.w3.org/2005/Atom'><title>Atom</title>"
        "<entry><id>1</id><title>no link</title><updated>2024-11-12T10:00:00</updated></entry></feed>",
        "application/atom+xml", conditional=False)
    wire = wordpress_page(title="Berita nomor 0", paragraphs=paragraphs(0), url=f"{base}/k/salinan.html",
                          published=None, author="Antara")
    r["/k/salinan.html"] = Route(wire)  # word for word on another outlet, timed by its feed (+0700)
    r["/k/feed.xml"] = Route(rss_feed(title="Kabar", link=f"{base}/k/", items=[
        {"title": "Salinan", "link": f"{base}/k/salinan.html", "published": datetime(2024, 11, 12, 18, tzinfo=timezone.utc)}]),
        "application/rss+xml")
    expected[f"{base}/k/salinan.html"] = utc(18)

    feeds = tmp_path / "feeds.yaml"
    feeds.write_text(f"feeds:\n  - {{name: messy, url: '{base}/m/feed.xml', language: id}}\n"
                     f"  - {{name: atom, url: '{base}/m/atom.xml', language: id}}\n"
                     f"  - {{name: kabar, url: '{base}/k/feed.xml', language: id}}\n")
    config = tmp_path / "settings.yaml"
    config.write_text(SETTINGS)
    out = tmp_path / "lake"
    args = ("--feeds", str(feeds), "--output", str(out), "--config", str(config))
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert {e["url"] for e in errors(out) if e["stage"] == "fetch"} == {
        f"{base}/m/berita/6.html", f"{robots_down.base}/m/berita/8.html", f"{busy.base}/m/berita/9.html"}
    assert busy.paths_requested().count("/m/berita/9.html") == 1  # neither waited for nor retried
    robots_down.routes["/robots.txt"] = Route("User-agent: *\nAllow: /\n", "text/plain")
    busy.routes["/m/berita/9.html"] = Route(page(busy.base, 9, "2024-11-12 23:00"))
    retry = run_cli("errors", "retry", "--stage", "fetch", "--source", "messy", "--output", str(out))
    assert retry.returncode == 0, retry.stderr[-3000:]
    second = run_cli(*args)
    assert second.returncode == 0, second.stderr[-3000:]

    rows = articles(out)
    assert sorted(r["url"] for r in rows) == sorted(expected)  # each exactly once
    by_url = {r["url"]: r for r in rows}
    for url, when in expected.items():
        assert by_url[url]["published_at"] == when, url
    for n in range(10):
        host = robots_down.base if n == 8 else busy.base if n == 9 else base
        row = by_url[f"{host}/m/berita/{n}.html"]
        assert html.unescape(paragraphs(n)[1]) in row["text"] and row["source"] == "messy"
        assert row["image_url"] == f"{host}/img/foto.jpg" and row["duplicate_of"] is None
    assert "bagian 2: Sánchez di Jakarta," in by_url[f"{base}/m/berita/7.html"]["text"]
    assert by_url[f"{base}/m/berita/7.html"]["charset"] == "utf-8"
    assert by_url[f"{base}/k/salinan.html"]["duplicate_of"] == by_url[f"{base}/m/berita/0.html"]["article_id"]
    poll_errors = [e for e in errors(out) if e["stage"] == "poll"]
    assert [(e["source"], e["url"]) for e in poll_errors] == [("atom", "1")]
