"""net.urls: normalisation, article ids, plausible canonical URLs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from warta.net.urls import article_id, host_of, normalize_url, plausible_article_url, url_problem


@pytest.mark.parametrize("url, expected", [
    ("HTTP://Example.COM:80/a?utm_source=x&id=5#top", "http://example.com/a?id=5"),
    ("https://x.example/?berita/123", "https://x.example/?berita/123"),  # not key=value: kept as it is
    ("https://x.example/index.php?berita/123&fbclid=abc", "https://x.example/index.php?berita/123"),
    ("https://x.example/a?q=a%20b&flag&gclid=1", "https://x.example/a?q=a+b&flag"),
    ("https://x.example", "https://x.example/"),
])
def test_normalize_url(url, expected):
    assert normalize_url(url) == expected


def test_article_id_ignores_tracking_and_fragments():
    assert article_id("https://x.example/a?utm_medium=rss#c") == article_id("https://x.example/a")
    assert article_id("https://x.example/?berita/1") != article_id("https://x.example/?berita/2")


@pytest.mark.parametrize("canonical, ok", [
    ("https://x.example/", False), ("https://www.x.example", False), ("https://x.example/nasional/", False),
    ("https://x.example/news/nasional", False), ("https://x.example/berita-terkini", False),
    ("https://other.example/berita/1.html", False), ("javascript:x", False), (None, False),
    ("https://www.x.example/berita/1.html", True), ("https://x.example/2024/11/12/judul", True),
    ("https://x.example/nasional/harga-beras-naik", True), ("https://x.example/?p=123", True),
    ("https://m.x.example/harga-beras-naik-lagi", True),
])
def test_plausible_article_url(canonical, ok):
    assert plausible_article_url(canonical, "https://x.example/berita/1.html") is ok


@pytest.mark.parametrize("url, problem", [
    ("http://host.example:99999/a", "Port out of range"),
    ("http://[::1/x", "Invalid IPv6"),
    ("http://" + "a" * 64 + ".example/", "not a valid domain name"),
    ("http://exa mple.example/", "spaces or control"),
    ("http:///nohost", "no host"),
    ("file:///etc/passwd", "unsupported URL scheme 'file'"),
    ("http://[fe80::zz]/", "malformed"),
])
def test_url_problem_names_what_is_wrong(url, problem):
    assert problem in url_problem(url)


@pytest.mark.parametrize("url", ["https://x.example/a", "http://127.0.0.1:8080/b", "http://[::1]:8080/c",
                                 "https://bücher.example/d", "https://a-b.example./e"])
def test_url_problem_accepts_real_urls(url):
    assert url_problem(url) is None


@given(st.text(max_size=80))
def test_normalize_url_and_host_of_are_total(text):
    for url in (text, "http://" + text, "http://x.example:" + text):
        assert isinstance(normalize_url(url), str)
        assert isinstance(host_of(url), str)
        url_problem(url)


def test_file_url_is_kept_whole():
    assert normalize_url("file:///etc/passwd") == "file:///etc/passwd"
