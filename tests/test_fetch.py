"""transforms.fetch: the FetchPages transform, per-host politeness, and hostile pages end to end
through fetch + extract: every input becomes an article or an errors/ row, in bounded time."""

from __future__ import annotations

import os
import time

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from conftest import seed_article
from pages import wordpress_page

from warta.config.settings import HttpSettings
from warta.net.urls import host_of
from warta.pipeline.loopback import Route
from warta.transforms.extract import ExtractArticles
from warta.transforms.fetch import FetchPages, one_entry_per_page, pages_within, plan_groups

HTTP = HttpSettings(host_delay=0, total_timeout=3, read_timeout=2, retries=0, max_bytes=2_000_000)


def entry(url):
    return {"url": url, "feed_url": "http://feed", "source": "s", "language": "id", "feed_title": None,
            "feed_authors": [], "feed_published_at": None}


def test_hostile_pages_become_articles_or_errors(server):
    title, paras = seed_article()
    good = wordpress_page(title=title, paragraphs=paras, url="x", published=None, author=None)
    rng = os.urandom(200_000)
    cases = {
        "/good.html": Route(good),
        "/random.html": Route(rng, "text/html"),
        "/badutf8.html": Route(good.encode("utf-8").replace(b"Rusia", b"R\xffs\xfeia"), "text/html; charset=utf-8"),
        "/oneline.html": Route("<html><body><p>" + "kata " * 350_000 + "</p></body></html>"),
        "/nul.html": Route(b"\x00" * 100_000, "text/html"),
    }
    server.routes.update(cases)
    urls = [server.url(p) for p in cases]
    t0 = time.monotonic()
    with TestPipeline() as p:
        pages = p | beam.Create([entry(u) for u in urls]) | FetchPages(HTTP)
        arts = pages.pages | ExtractArticles()
        done = ((arts.articles | "A" >> beam.Map(lambda a: ("article", a["url"].rsplit("/", 1)[1])),
                 (pages.errors, arts.errors) | "E" >> beam.Flatten() | "EU" >> beam.Map(
                     lambda e: ("error", e["url"].rsplit("/", 1)[1])))
                | beam.Flatten())
        assert_that(done | "Name" >> beam.Map(lambda kv: kv[1]), equal_to([u.rsplit("/", 1)[1] for u in urls]))
        assert_that(done | "Good" >> beam.Filter(lambda kv: kv[0] == "article") | "N2" >> beam.Map(lambda kv: kv[1]),
                    equal_to(["good.html", "badutf8.html", "oneline.html"]), label="articles")
    assert time.monotonic() - t0 < 60


def test_hosts_in_parallel_each_host_serial(server):
    """Two hosts (127.0.0.1 and localhost), delay 0.3 s: requests to one host are >= 0.3 s apart,
    while the two hosts are fetched at the same time."""
    seen = []

    def page(req):
        seen.append((req.headers["Host"].split(":")[0], time.monotonic()))
        req._send(200, b"<p>x</p>", "text/html")

    for i in range(4):
        server.routes[f"/p{i}.html"] = page
    port = server.base.rsplit(":", 1)[1]
    urls = [f"http://{h}:{port}/p{i}.html" for h in ("127.0.0.1", "localhost") for i in range(4)]
    settings = HttpSettings(host_delay=0.3, retries=0, respect_robots=False)
    with TestPipeline() as p:
        out = p | beam.Create([entry(u) for u in urls]) | FetchPages(settings)
        assert_that(out.pages | beam.Map(lambda r: r["status"]), equal_to([200] * 8))
    by_host = {h: sorted(t for hh, t in seen if hh == h) for h in ("127.0.0.1", "localhost")}
    for times in by_host.values():
        assert len(times) == 4
        assert all(b - a >= 0.29 for a, b in zip(times, times[1:]))  # polite per host
    a, b = by_host.values()
    assert a[0] < b[-1] and b[0] < a[-1]  # the two hosts overlapped in time


def test_plan_groups_balances_pages_and_never_splits_a_host():
    sizes = {"a.id": 50, "b.id": 40, "c.id": 30, "d.id": 20, "e.id": 10, "f.id": 10}
    entries = [entry(f"http://{h}/{i}.html") for h, n in sizes.items() for i in range(n)]
    groups = plan_groups(reversed(entries), 2)
    assert len(groups) == 2
    loads = sorted(sum(len(es) for _, es in g) for g in groups)
    assert loads == [80, 80]
    hosts = [h for g in groups for h, _ in g]
    assert sorted(hosts) == sorted(sizes)  # each host in exactly one group
    for g in groups:
        for host, es in g:
            assert {host_of(e["url"]) for e in es} == {host}
            assert [e["url"] for e in es] == sorted(e["url"] for e in es)
    assert plan_groups(entries, 2) == groups  # the input order does not matter
    assert len(plan_groups(entries[:3], 4)) == 1  # no empty groups


def test_a_page_reached_several_ways_is_planned_once():
    kabar = {**entry("http://a.id/x.html?utm_source=rss#top"), "source": "kabar", "feed_url": "http://a.id/f2"}
    warta = {**entry("http://A.id/x.html"), "source": "warta", "feed_url": "http://a.id/f1"}
    other = entry("http://a.id/y.html")
    assert one_entry_per_page([warta, kabar, other]) == [kabar, other]
    assert one_entry_per_page([kabar, warta, other]) == [kabar, other]  # the first source wins in any order
    planned = [e for g in plan_groups([warta, kabar, other], 2) for _, es in g for e in es]
    assert sorted(e["url"] for e in planned) == [kabar["url"], other["url"]]


def test_past_the_deadline_no_fetch_starts_and_entries_wait_in_the_backlog(server):
    server.routes["/a.html"] = Route("<html><body><p>x</p></body></html>")
    urls = [server.url("/a.html"), server.url("/b.html")]
    with TestPipeline() as p:
        out = p | beam.Create([entry(u) for u in urls]) | FetchPages(HTTP, deadline=time.time() - 1)
        assert_that(out.backlog | "Urls" >> beam.Map(lambda e: e["url"]), equal_to(urls), label="backlog")
        assert_that(out.pages, equal_to([]), label="pages")
    assert not [p for p in server.paths_requested() if p.endswith(".html")]


def test_a_host_takes_only_the_pages_that_fit_the_budget():
    assert pages_within(None, 1.0) == float("inf")
    assert pages_within(time.time() - 1, 1.0) == 0
    assert pages_within(time.time() + 10.5, 1.0) == 11  # the first at once, then one a second
    assert pages_within(time.time() + 10, 0) == float("inf")


def test_entries_waiting_in_the_backlog_are_fetched_first():
    old = {**entry("http://a.id/z.html"), "backlog": True}
    fresh = entry("http://a.id/a.html")
    again = {**entry("http://a.id/y.html?utm_source=rss"), "source": "a"}  # polled again, also in the backlog
    waiting = {**entry("http://a.id/y.html"), "backlog": True}
    [[(_, planned)]] = plan_groups([fresh, old, again, waiting], 1)
    assert [e["url"] for e in planned] == ["http://a.id/y.html?utm_source=rss", "http://a.id/z.html", "http://a.id/a.html"]
    assert planned[0]["backlog"] and planned[0]["source"] == "a"


def test_groups_are_balanced_on_the_pages_the_budget_lets_each_host_fetch():
    huge = [entry(f"http://huge.id/{i}.html") for i in range(30)]
    small = [entry(f"http://s{h}.id/{i}.html") for h in range(6) for i in range(3)]
    groups = plan_groups(huge + small, 2, fits=5)
    hosts = sorted(sorted(h for h, _ in g) for g in groups)
    assert hosts == [["huge.id", "s2.id", "s4.id"], ["s0.id", "s1.id", "s3.id", "s5.id"]]  # 11 vs 12 pages that fit
    assert [h for h, _ in plan_groups(huge + small, 2)[0]] == ["huge.id"]  # without a budget: 30 vs 18


def test_fetch_hosts_settles_every_entry_as_page_error_or_backlog(server, monkeypatch):
    """The plain function behind FetchPages: each entry of each host comes out exactly once, as a page, an
    error row (also when the host's thread itself fails) or backlog (past the deadline)."""
    import warta.transforms.fetch as fetch
    from warta.net.http import HttpClient

    server.routes["/ok.html"] = Route("<html><body><p>x</p></body></html>")
    port = server.base.rsplit(":", 1)[1]
    good = [entry(f"http://127.0.0.1:{port}/ok.html"), entry(f"http://127.0.0.1:{port}/missing.html")]
    broken = [entry(f"http://localhost:{port}/a.html"), entry(f"http://localhost:{port}/b.html")]
    real_pace = fetch.host_pace
    monkeypatch.setattr(fetch, "host_pace", lambda client, url: (_ for _ in ()).throw(RuntimeError("robots blew up"))
                        if url.startswith("http://localhost") else real_pace(client, url))
    client = HttpClient(HttpSettings(host_delay=0, retries=0, respect_robots=False))
    try:
        out = list(fetch.fetch_hosts([("127.0.0.1", good), ("localhost", broken)], client, None, 8))
        late = list(fetch.fetch_hosts([("127.0.0.1", good)], client, time.time() - 1, 8))
    finally:
        client.close()
    kinds = sorted((kind, row["url"].rsplit("/", 1)[1]) for kind, row in out)
    assert kinds == [("error", "a.html"), ("error", "b.html"), ("error", "missing.html"), ("page", "ok.html")]
    assert all("robots blew up" in row["error"] for kind, row in out if row["url"].startswith("http://localhost"))
    assert sorted(kind for kind, _ in late) == ["backlog", "backlog"]
