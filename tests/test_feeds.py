"""transforms.feeds: parsing, conditional GET, caps, hostile feeds; the PollFeeds transform."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import given, settings
from hypothesis import strategies as st
from pages import atom_feed, rss_feed

from warta.config.settings import Feed, HttpSettings
from warta.lake.failures import Failures
from warta.lake.state import key64
from warta.net.http import HttpClient
from warta.net.urls import normalize_url
from warta.pipeline.loopback import Route
from warta.transforms.feeds import PollFeeds, feed_entries, parse_feed, poll_feed
from warta.transforms.records import utcnow

HTTP = HttpSettings(host_delay=0, total_timeout=3, read_timeout=2, retries=0)
WHEN = datetime(2024, 11, 12, 3, 0, tzinfo=timezone.utc)


def items(base, n, start=0):
    return [{"title": f"t{i}", "link": f"{base}/a/{i}.html", "published": WHEN} for i in range(start, start + n)]


def test_rss_and_atom_entries_with_utc_dates(server):
    server.routes["/rss"] = Route(rss_feed(title="x", link=server.base, items=items(server.base, 2)), "application/rss+xml")
    server.routes["/atom"] = Route(atom_feed(title="x", link=server.base, items=items(server.base, 2)), "application/atom+xml")
    c = HttpClient(HTTP)
    for path in ("/rss", "/atom"):
        res = poll_feed(Feed(name="x", url=server.url(path)), c, None, set(), 100)
        assert res.state["status"] == "ok" and not res.errors
        assert [e["url"] for e in res.entries] == [f"{server.base}/a/0.html", f"{server.base}/a/1.html"]
        assert all(e["feed_published_at"] == WHEN for e in res.entries)


def test_plus0700_pubdate_converts_to_utc(server):
    body = (f"<rss version='2.0'><channel><title>x</title><item><title>a</title><link>{server.base}/a</link>"
            "<pubDate>Tue, 12 Nov 2024 10:00:00 +0700</pubDate></item></channel></rss>")
    server.routes["/rss"] = Route(body, "application/rss+xml")
    res = poll_feed(Feed(name="x", url=server.url("/rss")), HttpClient(HTTP), None, set(), 10)
    assert res.entries[0]["feed_published_at"] == WHEN


def test_conditional_get_makes_unchanged_feed_cost_one_request(server):
    server.routes["/rss"] = Route(rss_feed(title="x", link=server.base, items=items(server.base, 3)), "application/rss+xml")
    c = HttpClient(HTTP)
    first = poll_feed(Feed(name="x", url=server.url("/rss")), c, None, set(), 100)
    assert first.state["etag"]
    server.requests.clear()
    again = poll_feed(Feed(name="x", url=server.url("/rss")), c, first.state, set(), 100)
    assert again.state["status"] == "unchanged" and again.entries == []
    assert server.paths_requested() == ["/rss"]
    assert server.requests[0][2]["if-none-match"] == first.state["etag"]


def test_a_feed_with_failures_due_is_polled_in_full(server):
    """An unchanged feed would answer 304 and its failed items would wait for its next change."""
    server.routes["/rss"] = Route(rss_feed(title="x", link=server.base, items=items(server.base, 3)), "application/rss+xml")
    c, feed = HttpClient(HTTP), Feed(name="x", url=server.url("/rss"))
    first = poll_feed(feed, c, None, set(), 100)
    failed = first.entries[0]
    rec = Failures().record({**failed, "stage": "fetch", "error": "HTTP 503", "status": 503, "at": utcnow()})
    waiting = Failures({rec["key"]: rec})
    assert poll_feed(feed, c, first.state, set(), 100, waiting).state["status"] == "unchanged"
    due = Failures({rec["key"]: {**rec, "retry_at": utcnow()}})
    again = poll_feed(feed, c, first.state, set(), 100, due)
    assert again.state["status"] == "ok" and [e["url"] for e in again.entries] == [e["url"] for e in first.entries]


def test_seen_urls_are_skipped_and_cap_leaves_the_rest_for_later(server):
    server.routes["/rss"] = Route(rss_feed(title="x", link=server.base, items=items(server.base, 10)), "application/rss+xml")
    c = HttpClient(HTTP)
    seen: set[int] = set()
    polls = []
    for _ in range(4):
        res = poll_feed(Feed(name="x", url=server.url("/rss")), c, None, seen, 4)
        polls.append(res)
        seen |= {key64(normalize_url(e["url"])) for e in res.entries}
    assert [len(p.entries) for p in polls] == [4, 4, 2, 0]
    assert polls[0].state["status"] == "capped" and polls[0].state["etag"] is None  # next poll refetches
    assert len(seen) == 10


def test_unreadable_feeds_become_errors(server):
    server.routes["/html"] = Route("<html><body><p>home page</p></body></html>", "text/html")
    server.routes["/gone"] = Route("gone", status=410)
    server.routes["/garbage"] = Route(bytes(range(256)) * 50, "application/octet-stream")
    c = HttpClient(HTTP)
    for path, expect in (("/html", "not a readable feed"), ("/gone", "HTTP 410"), ("/garbage", "not a readable feed")):
        res = poll_feed(Feed(name="x", url=server.url(path)), c, None, set(), 10)
        assert res.state["status"] == "failed" and res.entries == []
        assert len(res.errors) == 1 and expect in res.errors[0]["error"] and res.errors[0]["stage"] == "poll"


def test_billion_laughs_is_bounded(server):
    lol = ("<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'>"
           + "".join(f"<!ENTITY lol{i} '{('&lol' + (str(i - 1) if i > 1 else '') + ';') * 10}'>" for i in range(1, 10))
           + "]><rss version='2.0'><channel><title>&lol9;</title>"
           + f"<item><title>a</title><link>{server.base}/a</link></item></channel></rss>")
    server.routes["/lol"] = Route(lol, "application/rss+xml")
    t0 = time.monotonic()
    res = poll_feed(Feed(name="x", url=server.url("/lol")), HttpClient(HTTP), None, set(), 10)
    assert time.monotonic() - t0 < 5
    assert res.state["status"] in ("ok", "failed")  # recorded, never a hang or crash
    try:
        parsed = parse_feed(lol.encode())
    except ValueError:
        return  # refused as unreadable: fine
    assert len(parsed.feed.get("title", "")) < 10_000  # 10^9 "lol"s were not expanded


def test_links_with_other_schemes_are_recorded_not_followed(server):
    bad = ["file:///etc/passwd", "javascript:alert(1)", "ftp://x/y", "data:text/html,hi"]
    its = [{"title": "b", "link": u, "published": WHEN} for u in bad] + items(server.base, 1)
    server.routes["/rss"] = Route(rss_feed(title="x", link=server.base, items=its), "application/rss+xml")
    res = poll_feed(Feed(name="x", url=server.url("/rss")), HttpClient(HTTP), None, set(), 10)
    assert [e["url"] for e in res.entries] == [f"{server.base}/a/0.html"]
    assert len(res.errors) == len(bad) and all("unsupported URL scheme" in e["error"] for e in res.errors)


def test_huge_feed_is_capped(server):
    server.routes["/rss"] = Route(rss_feed(title="x", link=server.base, items=items(server.base, 3000)),
                                  "application/rss+xml")
    res = poll_feed(Feed(name="x", url=server.url("/rss")), HttpClient(HTTP), None, set(), 500)
    assert len(res.entries) == 500 and res.state["status"] == "capped"


def test_poll_feeds_transform(server):
    server.routes["/rss"] = Route(rss_feed(title="x", link=server.base, items=items(server.base, 2)), "application/rss+xml")
    feeds = [Feed(name="ok", url=server.url("/rss")), Feed(name="missing", url=server.url("/none"))]
    seen_url = f"{server.base}/a/0.html"
    with TestPipeline() as p:
        out = p | beam.Create(feeds) | PollFeeds(HTTP, {}, 10, lambda: {key64(seen_url)})
        assert_that(out.entries | "Urls" >> beam.Map(lambda e: e["url"]), equal_to([f"{server.base}/a/1.html"]))
        assert_that(out.errors | "ErrSrc" >> beam.Map(lambda e: (e["source"], e["status"])),
                    equal_to([("missing", 404)]), label="errors")
        assert_that(out.feed_state | "St" >> beam.Map(lambda s: (s["source"], s["status"])),
                    equal_to([("ok", "ok"), ("missing", "failed")]), label="state")


FEED_PIECES = ["<?xml version='1.0'?>", "<rss version='2.0'>", "<channel>", "<item>", "</item>", "<title>",
               "</title>", "<link>http://127.0.0.1/a</link>", "<link>javascript:x</link>", "<pubDate>",
               "Tue, 12 Nov 2024 10:00:00 +0700", "</pubDate>", "<!DOCTYPE x [<!ENTITY a 'b'>]>", "&a;", "&amp;",
               "<feed xmlns='http://www.w3.org/2005/Atom'>", "<entry>", "<link href='http://x/y'/>", "\x00", "é",
               "<![CDATA[", "]]>", "</channel></rss>"]


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.binary(max_size=2000),
                 st.lists(st.sampled_from(FEED_PIECES), max_size=60).map(lambda xs: "".join(xs).encode("utf-8"))))
def test_fuzz_feed_parsing_raises_only_the_documented_error(body):
    """Any bytes: a parsed feed with well-formed entries, or ValueError (which poll_feed records)."""
    feed = Feed(name="fuzz", url="http://127.0.0.1/feed")
    try:
        parsed = parse_feed(body)
    except ValueError:
        return
    for item in feed_entries(parsed, feed):
        if "error" in item:
            continue
        assert item["url"].lower().startswith(("http://", "https://"))
        assert item["feed_published_at"] is None or item["feed_published_at"].tzinfo is not None


def test_only_http_links_are_fetched_a_non_url_atom_id_is_one_error(server):
    body = ("<?xml version='1.0'?><feed xmlns='http://www.w3.org/2005/Atom'><title>x</title>"
            "<entry><id>1</id><title>a</title></entry>"
            "<entry><id>tag:x.example,2024:5</id><title>b</title></entry>"
            f"<entry><id>{server.base}/a/from-id.html</id><title>c</title></entry>"
            "<entry><id>right</id><link rel='alternate' href='/a/relative.html'/><title>d</title></entry>"
            "</feed>")
    server.routes["/feed/atom"] = Route(body, "application/atom+xml")
    res = poll_feed(Feed(name="x", url=server.url("/feed/atom")), HttpClient(HTTP), None, set(), 10)
    assert [e["url"] for e in res.entries] == [f"{server.base}/a/from-id.html", f"{server.base}/a/relative.html"]
    assert [e["url"] for e in res.errors] == ["1", "tag:x.example,2024:5"]
    assert all("not an http(s) URL" in e["error"] for e in res.errors)


def test_wib_naive_and_day_first_feed_times(server):
    def rss(pub):
        return (f"<rss version='2.0'><channel><title>x</title><language>id</language><item><title>a</title>"
                f"<link>{server.base}/a</link><pubDate>{pub}</pubDate></item></channel></rss>")
    c = HttpClient(HTTP)
    for pub, tz, want, explicit in (
            ("Tue, 12 Nov 2024 10:00:00 WIB", None, WHEN, True),
            ("Tue, 12 Nov 2024 10:00:00 WITA", None, WHEN - timedelta(hours=1), True),
            ("2024-11-12T10:00:00", None, WHEN, False),  # naive: the language's zone (id: Asia/Jakarta)
            ("12/11/2024 10:00", None, WHEN, False),  # day first in Indonesian
            ("2024-11-12T10:00:00", "Asia/Jayapura", WHEN - timedelta(hours=2), False)):
        server.routes["/rss"] = Route(rss(pub), "application/rss+xml", conditional=False)
        res = poll_feed(Feed(name="x", url=server.url("/rss"), timezone=tz), c, None, set(), 10)
        entry = res.entries[0]
        assert (entry["feed_published_at"], entry["feed_time_explicit"]) == (want, explicit), pub
        assert entry["timezone"] == (tz or "Asia/Jakarta")


def test_feed_timezone_must_be_an_iana_name():
    with pytest.raises(ValueError):
        Feed(name="x", url="http://127.0.0.1/feed", timezone="WIB/Nowhere")
    assert Feed(name="x", url="http://127.0.0.1/feed", timezone="Asia/Makassar").timezone == "Asia/Makassar"


def test_entry_errors_are_written_once_until_they_expire(server):
    its = [{"title": "b", "link": "javascript:alert(1)", "published": WHEN}] + items(server.base, 1)
    server.routes["/rss"] = Route(rss_feed(title="x", link=server.base, items=its), "application/rss+xml",
                                  conditional=False)
    feed, c = Feed(name="x", url=server.url("/rss")), HttpClient(HTTP)
    first = poll_feed(feed, c, None, set(), 10)
    assert len(first.errors) == 1
    failures = Failures()
    rec = failures.record(first.errors[0])
    failures.records[rec["key"]] = rec
    assert poll_feed(feed, c, None, set(), 10, failures).errors == []  # recorded: not written again
    rec["retry_at"] = rec["last_at"] - timedelta(seconds=1)  # expired: written again
    assert len(poll_feed(feed, c, None, set(), 10, failures).errors) == 1


def test_failed_entries_wait_for_their_retry_time(server):
    server.routes["/rss"] = Route(rss_feed(title="x", link=server.base, items=items(server.base, 2)),
                                  "application/rss+xml", conditional=False)
    feed, c = Feed(name="x", url=server.url("/rss")), HttpClient(HTTP)
    failures = Failures()
    err = {"url": f"{server.base}/a/0.html", "feed_url": feed.url, "source": "x", "stage": "fetch",
           "error": "HTTP 503", "status": 503, "at": datetime.now(timezone.utc)}
    rec = failures.record(err)
    failures.records[rec["key"]] = rec
    assert [e["url"] for e in poll_feed(feed, c, None, set(), 10, failures).entries] == [f"{server.base}/a/1.html"]
    rec["retry_at"] = datetime.now(timezone.utc) - timedelta(minutes=1)
    assert len(poll_feed(feed, c, None, set(), 10, failures).entries) == 2


MALFORMED = ["http://host.example:99999/a",  # port out of range
             "http://[::1/x",  # unclosed IPv6 literal
             "http://" + "a" * 70 + ".example/x",  # a host label over 63 characters
             "http://exa mple.example/x"]  # a space in the host


def test_malformed_links_are_one_error_each_and_the_rest_of_the_feed_is_kept(server):
    its = [{"title": "b", "link": u, "published": WHEN} for u in MALFORMED] + items(server.base, 2)
    server.routes["/rss"] = Route(rss_feed(title="x", link=server.base, items=its), "application/rss+xml")
    res = poll_feed(Feed(name="x", url=server.url("/rss")), HttpClient(HTTP), None, set(), 10)
    assert res.state["status"] == "ok"
    assert [e["url"] for e in res.entries] == [f"{server.base}/a/{i}.html" for i in range(2)]
    assert len(res.errors) == len(MALFORMED)
    assert all(e["stage"] == "poll" and "not followed" in e["error"] for e in res.errors)


def test_poll_feed_never_raises_whatever_a_library_raises(server, monkeypatch):
    server.routes["/rss"] = Route(rss_feed(title="x", link=server.base, items=items(server.base, 2)),
                                  "application/rss+xml")
    import warta.transforms.feeds as feeds

    def boom(*a, **k):
        raise RuntimeError("surprise")
    monkeypatch.setattr(feeds, "entry_time", boom)  # every entry's own processing fails
    res = poll_feed(Feed(name="x", url=server.url("/rss")), HttpClient(HTTP), None, set(), 10)
    assert res.entries == [] and len(res.errors) == 2 and all("surprise" in e["error"] for e in res.errors)
    monkeypatch.setattr(feeds, "parse_feed", boom)  # the feed as a whole fails
    res = poll_feed(Feed(name="x", url=server.url("/rss")), HttpClient(HTTP), None, set(), 10)
    assert res.state["status"] == "failed" and len(res.errors) == 1 and "surprise" in res.errors[0]["error"]


def test_a_feed_that_parses_to_nothing_is_an_error_row(server):
    """Billion laughs with the items inside the entities: the parser refuses the expansion and finds no entry;
    that is recorded, not taken for a quiet feed."""
    lol = ("<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol0 '<item><title>a</title><link>http://a/1</link></item>'>"
           + "".join(f"<!ENTITY lol{i} '{('&lol' + str(i - 1) + ';') * 10}'>" for i in range(1, 10))
           + "]><rss version='2.0'><channel><title>t</title>&lol9;</channel></rss>")
    server.routes["/lol"] = Route(lol, "application/rss+xml")
    res = poll_feed(Feed(name="x", url=server.url("/lol")), HttpClient(HTTP), None, set(), 10)
    assert res.entries == [] and res.state["status"] == "failed"
    assert len(res.errors) == 1 and "no entries" in res.errors[0]["error"]
    server.routes["/empty"] = Route("<rss version='2.0'><channel><title>t</title></channel></rss>",
                                    "application/rss+xml")
    res = poll_feed(Feed(name="x", url=server.url("/empty")), HttpClient(HTTP), None, set(), 10)
    assert res.errors == [] and res.state["status"] == "ok"  # a well-formed empty feed is just empty


def test_error_rows_keep_other_scheme_urls_whole():
    body = (b'<rss version="2.0"><channel><title>x</title><item><title>p</title><link>file:///etc/passwd</link>'
            b'</item><item><title>q</title><link>http:///a.example/x</link></item></channel></rss>')
    got = list(feed_entries(parse_feed(body, "application/rss+xml"), Feed(name="a", url="http://x/f")))
    assert got[0]["url"] == "file:///etc/passwd" and "unsupported URL scheme" in got[0]["error"]
    assert got[1]["url"] == "http://a.example/x"  # http(s) keep feedparser's repair
