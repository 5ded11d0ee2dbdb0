"""Backfill discovery: sitemap parsing, feed paging, and a whole WordPress-like outlet on loopback."""

from __future__ import annotations

import gzip
import json
from datetime import date, datetime, timezone

import feedparser
import pytest
from outlet import SINCE, Outlet
from pages import atom_feed, rss_feed

from warta.config.settings import Feed, HttpSettings
from warta.net.http import HttpClient
from warta.net.urls import normalize_url
from warta.pipeline.loopback import Route
from warta.transforms.discover import Discovery, next_feed_page, parse_sitemap, same_site, ungzip

SM = 'xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"'


@pytest.fixture
def client():
    c = HttpClient(HttpSettings(host_delay=0, retries=0, total_timeout=5))
    yield c
    c.close()


def test_parse_sitemap_index_urlset_and_google_news():
    kind, items = parse_sitemap(f"<sitemapindex {SM}><sitemap><loc> http://a/s1.xml </loc>"
                                f"<lastmod>2024-01-02</lastmod></sitemap><sitemap><loc>http://a/s2.xml</loc></sitemap>"
                                f"</sitemapindex>".encode())
    assert kind == "index"
    assert items == [{"loc": "http://a/s1.xml", "lastmod": datetime(2024, 1, 2, tzinfo=timezone.utc)},
                     {"loc": "http://a/s2.xml", "lastmod": None}]
    kind, items = parse_sitemap(
        f'<urlset {SM} xmlns:news="http://www.google.com/schemas/sitemap-news/0.9"><url><loc>http://a/1</loc>'
        "<news:news><news:publication_date>2024-03-04T05:06:07+07:00</news:publication_date>"
        "<news:title>Judul</news:title></news:news></url><url><loc>http://a/2</loc></url></urlset>".encode())
    assert kind == "urlset"
    assert items[0] == {"loc": "http://a/1", "lastmod": None, "title": "Judul",
                        "published": datetime(2024, 3, 3, 22, 6, 7, tzinfo=timezone.utc)}
    assert items[1]["published"] is None and items[1]["title"] is None


def test_gzipped_sitemaps_are_read_and_bounded():
    body = f"<urlset {SM}><url><loc>http://a/1</loc></url></urlset>".encode()
    assert parse_sitemap(ungzip(gzip.compress(body), 10_000))[1][0]["loc"] == "http://a/1"
    assert ungzip(body, 10) == body  # not gzipped: as is
    with pytest.raises(ValueError, match="larger than"):
        ungzip(gzip.compress(b" " * 100_000), 10_000)


@pytest.mark.parametrize("body", [b"<html><body>Not found</body></html>", b"", b"\x00\x01garbage",
                                  b"<rss><channel></channel></rss>"])
def test_what_is_not_a_sitemap_is_an_error(body):
    with pytest.raises(ValueError):
        parse_sitemap(body)


def test_entities_in_sitemaps_are_not_expanded():
    laughs = (b'<?xml version="1.0"?><!DOCTYPE u [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">'
              b'<!ENTITY c SYSTEM "file:///etc/passwd">]>'
              b'<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
              b"<url><loc>http://a/&b;&c;</loc></url></urlset>")
    _, items = parse_sitemap(laughs)
    assert all("aaaa" not in i["loc"] and "root:" not in i["loc"] for i in items)


def test_next_feed_page_follows_rfc5005_links_else_wordpress_paged():
    linked = feedparser.parse(b'<feed xmlns="http://www.w3.org/2005/Atom"><link rel="prev-archive" href="arsip/3"/>'
                              b"</feed>")
    assert next_feed_page(linked, "http://a/feed/", 1) == "http://a/feed/arsip/3"
    plain = feedparser.parse(rss_feed(title="t", link="http://a/", items=[]).encode())
    assert next_feed_page(plain, "http://a/feed/", 1) == "http://a/feed/?paged=2"
    assert next_feed_page(plain, "http://a/?feed=rss2&paged=4", 4) == "http://a/?feed=rss2&paged=5"


def test_same_site_accepts_www_and_subdomains_only():
    assert same_site("http://www.a.id/x", "a.id") and same_site("http://news.a.id/x", "www.a.id")
    assert not same_site("http://b.id/x", "a.id") and not same_site("http://evila.id/x", "a.id")


def test_outlet_of_2000_posts_discovers_exactly_the_posts_in_range(server, client):
    outlet = Outlet(server, posts=2000, per_page=50)
    assert outlet.feed_pages == 40
    d = Discovery(Feed(name="outlet", url=outlet.base + "/feed/", language="id"), SINCE)
    d.run(client, deadline=float("inf"))
    assert d.done
    wanted = outlet.in_range() | outlet.disallowed_in_range()  # robots is checked when pages are fetched
    assert set(d.entries) == {normalize_url(u) for u in wanted} and len(wanted) > 900
    assert d.counts["other_domain"] == 1 and d.counts["sitemaps_skipped"] == 1
    assert all(e["source"] == "outlet" and e["language"] == "id" and e["feed_title"] for e in d.entries.values())
    asked = server.paths_requested()
    assert "/sitemap-old.xml" not in asked  # its lastmod is before --since: skipped unread
    assert {"/robots.txt", "/sitemap_index.xml", "/sitemap-2.xml.gz", "/news-sitemap.xml"} <= set(asked)
    feed_pages = [p for p in asked if p.startswith("/feed/")]
    assert len(feed_pages) == len(set(feed_pages)) < 40  # paging stops at the first page older than --since
    assert not any(p.startswith(("/rahasia/", "/20")) for p in asked)  # discovery reads no article page


def test_discovery_resumes_from_its_json_state(server, client):
    outlet = Outlet(server, posts=300, per_page=10)
    feed = Feed(name="outlet", url=outlet.base + "/feed/", language="id")
    whole = Discovery(feed, SINCE)
    whole.run(client, deadline=float("inf"))
    part = Discovery(feed, SINCE)
    for _ in range(7):
        part.step(client)
    state = json.loads(json.dumps(part.state()))
    server.requests.clear()
    resumed = Discovery.resume(feed, SINCE, None, state)
    resumed.run(client, deadline=float("inf"))
    assert resumed.done and resumed.entries == whole.entries
    assert resumed.counts == whole.counts
    again = [p for p in server.paths_requested() if p != "/robots.txt"]
    assert len(again) == len(set(again)) and not set(again) & set(part.visited)
    # another range starts afresh
    assert Discovery.resume(feed, date(2020, 1, 1), None, state).frontier[0]["url"] == feed.url


def test_rfc5005_archive_feeds_are_followed(server, client):
    base = server.base
    for n in range(3):  # current feed -> archive 2 -> archive 1 (prev-archive links)
        items = [{"title": f"a{n}{i}", "link": f"{base}/p/{n}-{i}",
                  "published": datetime(2024, 5, 10 - n, i, tzinfo=timezone.utc)} for i in range(3)]
        body = atom_feed(title="A", link=base, items=items)
        if n < 2:
            link = f'<link rel="prev-archive" href="/archive/{n + 1}"/>'
            body = body.replace("<title>A</title>", "<title>A</title>" + link)
        server.routes["/atom.xml" if n == 0 else f"/archive/{n}"] = Route(body, "application/atom+xml")
    d = Discovery(Feed(name="a", url=base + "/atom.xml"), date(2024, 1, 1))
    d.run(client, deadline=float("inf"))
    assert set(d.entries) == {f"{base}/p/{n}-{i}" for n in range(3) for i in range(3)}
    assert "/atom.xml?paged=2" not in server.paths_requested()


def test_site_ignoring_paged_and_without_sitemaps_ends_quickly(server, client):
    base = server.base
    server.routes["/rss"] = Route(rss_feed(title="x", link=base, items=[
        {"title": "a", "link": base + "/a", "published": datetime(2024, 5, 1, tzinfo=timezone.utc)}]),
        "application/rss+xml")  # "/rss?paged=2" serves the same page again
    d = Discovery(Feed(name="x", url=base + "/rss"), date(2024, 1, 1))
    d.run(client, deadline=float("inf"))
    assert set(d.entries) == {base + "/a"}
    asked = server.paths_requested()
    assert asked.count("/rss?paged=2") == 1 and "/rss?paged=3" not in asked
    assert {"/sitemap.xml", "/sitemap_index.xml", "/wp-sitemap.xml"} <= set(asked)  # the usual paths, all 404


def test_every_discovery_request_waits_for_the_host_delay_and_robots_crawl_delay(server, monkeypatch):
    outlet = Outlet(server, posts=120, per_page=6)
    server.routes["/robots.txt"] = Route(f"User-agent: *\nCrawl-delay: 2\nSitemap: {outlet.base}/sitemap_index.xml\n",
                                         "text/plain")
    client = HttpClient(HttpSettings(host_delay=0.5, retries=0))
    spacing: list[float] = []
    monkeypatch.setattr(client.throttle, "wait", lambda host: None)  # record the spacing instead of sleeping
    monkeypatch.setattr(client.throttle, "done", lambda host, delay=None: spacing.append(delay))
    d = Discovery(Feed(name="outlet", url=outlet.base + "/feed/"), SINCE)
    d.run(client, deadline=float("inf"))
    client.close()
    asked = [p for p in server.paths_requested() if p != "/robots.txt"]
    assert d.done and len(asked) == d.counts["requests"] > 10
    assert spacing == [2.0] * len(asked)  # the larger of host_delay and crawl-delay, after every request


def test_corrupt_gzip_sitemap_is_an_error_row_not_a_crash(server, client):
    from warta.transforms.discover import CorruptSitemap
    good = gzip.compress(f"<urlset {SM}><url><loc>{server.base}/a/1</loc></url></urlset>".encode())
    for bad in (good[:-12], b"\x1f\x8b\x08\x00garbage", good[:10] + b"\xff" * 30 + good[40:]):
        with pytest.raises(CorruptSitemap):
            ungzip(bad, 100_000)
    server.routes["/robots.txt"] = Route(f"Sitemap: {server.base}/cut.xml.gz\nSitemap: {server.base}/ok.xml.gz\n",
                                         "text/plain")
    server.routes["/cut.xml.gz"] = Route(good[:-12], "application/x-gzip")
    server.routes["/ok.xml.gz"] = Route(good, "application/x-gzip")
    d = Discovery(Feed(name="a", url=server.base + "/feed.xml"), date(2000, 1, 1))
    d.run(client, deadline=float("inf"))
    assert d.done and [e["url"] for e in d.entries.values()] == [server.base + "/a/1"]
    assert [(e["url"], e["stage"]) for e in d.errors] == [(server.base + "/cut.xml.gz", "poll")]
    assert "corrupt gzip sitemap" in d.errors[0]["error"]


def test_429_while_discovering_leaves_the_frontier_for_the_next_run(server, client):
    index = "".join(f"<sitemap><loc>{server.base}/s{i}.xml</loc></sitemap>" for i in range(3))
    server.routes["/robots.txt"] = Route(f"Sitemap: {server.base}/index.xml\n", "text/plain")
    server.routes["/index.xml"] = Route(f"<sitemapindex {SM}>{index}</sitemapindex>", "application/xml")
    for i in range(3):
        server.routes[f"/s{i}.xml"] = Route(f"<urlset {SM}><url><loc>{server.base}/a/{i}</loc></url></urlset>",
                                            "application/xml")
    server.routes["/s1.xml"] = Route("slow down", "text/plain", status=429)
    d = Discovery(Feed(name="a", url=server.base + "/feed.xml"), date(2000, 1, 1))
    d.run(client, deadline=float("inf"))
    assert not d.done and [f["url"] for f in d.frontier] == [server.base + "/s1.xml", server.base + "/s2.xml"]
    state = json.loads(json.dumps(d.state()))
    server.routes["/s1.xml"] = Route(f"<urlset {SM}><url><loc>{server.base}/a/1</loc></url></urlset>",
                                      "application/xml")
    again = Discovery.resume(d.feed, d.since, None, state)
    fresh = HttpClient(HttpSettings(host_delay=0, retries=0, total_timeout=5))  # the next run's client
    again.run(fresh, deadline=float("inf"))
    fresh.close()
    assert again.done and sorted(e["url"] for e in again.entries.values()) == [
        f"{server.base}/a/{i}" for i in range(3)]


def test_sitemap_count_and_depth_are_capped_and_push_is_linear(server, client, monkeypatch):
    import time

    from warta.transforms import discover
    d = Discovery(Feed(name="a", url="http://a.example/feed.xml"), date(2000, 1, 1))
    start = time.perf_counter()
    for i in range(50_000):
        d._push("sitemap", f"http://a.example/s{i}.xml", depth=1)
    assert time.perf_counter() - start < 2  # was O(N²): minutes for 50,000 children
    assert d.counts["sitemaps"] == discover.MAX_SITEMAPS and d.counts["sitemaps_capped"] == 50_000 - 10_000
    d._push("sitemap", "http://a.example/deep.xml", depth=discover.MAX_SITEMAP_DEPTH + 1)
    assert d.frontier[-1]["url"] != "http://a.example/deep.xml"
    # an index that lists itself under new names forever stops at the depth cap
    monkeypatch.setattr(discover, "MAX_SITEMAPS", 100)
    server.routes["/robots.txt"] = Route(f"Sitemap: {server.base}/i0.xml\n", "text/plain")
    for i in range(20):
        server.routes[f"/i{i}.xml"] = Route(
            f"<sitemapindex {SM}><sitemap><loc>{server.base}/i{i + 1}.xml</loc></sitemap></sitemapindex>",
            "application/xml")
    d = Discovery(Feed(name="a", url=server.base + "/feed.xml"), date(2000, 1, 1))
    d.run(client, deadline=float("inf"))
    assert d.done and f"{server.base}/i{discover.MAX_SITEMAP_DEPTH}.xml" in d.visited
    assert f"{server.base}/i{discover.MAX_SITEMAP_DEPTH + 1}.xml" not in d.visited
