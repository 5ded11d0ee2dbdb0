"""WARC input: the reader on its own, and ``warta archive`` end to end (DirectRunner and dask.distributed).

Three WARC files written here with warcio, 300 responses in all: articles of two wanted domains (one
with a ``www.`` and a subdomain host), another domain, non-HTML bodies, non-200 statuses, revisits, a
gzip-encoded body, request records, and 40 article URLs captured in two files.
"""

from __future__ import annotations

import gzip
import io
import os
import random
import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pytest
from conftest import ROOT
from outlet import WORDS
from pages import wordpress_page
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from warta.transforms.warc import read_warc, sites_from

WARC_DATE = datetime(2024, 3, 1, 10, 0, tzinfo=timezone.utc)


def page(url: str, i: int) -> bytes:
    rng = random.Random(i)
    paras = [" ".join(rng.choice(WORDS) for _ in range(40)).capitalize() + "." for _ in range(3)]
    return wordpress_page(title=f"Berita {i}", paragraphs=paras, url=url, published=WARC_DATE - timedelta(days=1),
                          author="Redaksi").encode("utf-8")


def response(w: WARCWriter, url: str, body: bytes, ctype="text/html; charset=utf-8", status="200 OK",
             when: datetime = WARC_DATE, encoding: str | None = None):
    headers = [("Content-Type", ctype)] + ([("Content-Encoding", encoding)] if encoding else [])
    http = StatusAndHeaders(status, headers, protocol="HTTP/1.1")
    w.write_record(w.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=http,
                                        warc_headers_dict={"WARC-Date": when.strftime("%Y-%m-%dT%H:%M:%SZ")}))


def write_warcs(folder: Path) -> tuple[list[Path], dict[str, datetime]]:
    """The three files and the expected articles: {url: fetched_at}."""
    expected: dict[str, datetime] = {}
    files = [folder / "a.warc.gz", folder / "b.warc.gz", folder / "c.warc"]
    n = 0
    for f, path in enumerate(files):
        with open(path, "wb") as out:
            w = WARCWriter(out, gzip=path.suffix == ".gz")
            when = WARC_DATE + timedelta(hours=f)
            for i in range(60):  # articles of the wanted domains (ids 0..59 in a, 40..99 in b, 100..159 in c)
                k = i + 40 * f if f < 2 else 100 + i
                host = ("warta.test", "www.warta.test", "berita.kabar.test")[k % 3]
                url = f"http://{host}/artikel/{k}/"
                response(w, url, page(url, k), when=when)
                expected.setdefault(url, when)  # a's copy of 40..59 is the one kept (b's is a duplicate)
                request = StatusAndHeaders("GET / HTTP/1.1", [], is_http_request=True)
                w.write_record(w.create_warc_record(url, "request", payload=io.BytesIO(b""), http_headers=request))
            for i in range(15):
                url = f"http://lain.test/berita/{f}-{i}/"
                response(w, url, page(url, 1000 + n))
                n += 1
            for i in range(10):
                response(w, f"http://warta.test/gambar/{f}-{i}.jpg", b"\xff\xd8\xff" + b"0" * 300, "image/jpeg")
            for i in range(5):
                url = f"http://warta.test/artikel/{f}-{i}/hilang"
                response(w, url, b"<html><body>Tidak ditemukan</body></html>", status="404 Not Found")
            for i in range(5):
                url = f"http://warta.test/artikel/{i}/"
                http = StatusAndHeaders("200 OK", [("Content-Type", "text/html")], protocol="HTTP/1.1")
                w.write_record(w.create_revisit_record(url, "sha1:AAAA", url, "2024-02-01T00:00:00Z",
                                                       http_headers=http))
            for i in range(4):  # gzip-encoded HTTP bodies (warcio decodes them)
                k = 500 + 10 * f + i
                url = f"http://warta.test/artikel/{k}/"
                response(w, url, gzip.compress(page(url, k)), encoding="gzip", when=when)
                expected[url] = when
            response(w, "http://lain.test/berita/x/", b"{}", "application/json")
    return files, expected


def test_reader_keeps_html_responses_of_wanted_domains(tmp_path):
    files, expected = write_warcs(tmp_path)
    counts: dict[str, int] = {}
    with open(files[0], "rb") as fh:
        pages = list(read_warc(fh, sites_from(domains=["warta.test", "kabar.test"]), set(), 1_000_000, counts))
    assert [p["url"] for p in pages] == [f"http://{('warta.test', 'www.warta.test', 'berita.kabar.test')[k % 3]}"
                                        f"/artikel/{k}/" for k in range(60)] + [f"http://warta.test/artikel/{500 + i}/"
                                                                                for i in range(4)]
    assert counts == {"records": 160, "pages": 64, "not_response": 60, "other_domain": 15, "not_html": 11,
                      "status": 5, "revisit": 5}  # not_response: the request records
    p = pages[0]
    assert p["fetched_at"] == WARC_DATE and p["final_url"] == p["url"] and p["source"] == "warta.test"
    assert "<h1" in p["html"] and "Berita 0" in pages[0]["html"]
    assert "Berita 503" in pages[-1]["html"]  # the gzip-encoded body, decoded
    assert sum(responses(f) for f in files) == 300


def responses(path: Path) -> int:
    from warcio.archiveiterator import ArchiveIterator
    with open(path, "rb") as fh:
        return sum(r.rec_type in ("response", "revisit") for r in ArchiveIterator(fh))


def test_reader_skips_urls_already_in_the_lake_and_bounds_bodies(tmp_path):
    from warta.lake.state import key64
    from warta.net.urls import normalize_url

    files, _ = write_warcs(tmp_path)
    seen = {key64(normalize_url("http://warta.test/artikel/0/"))}
    counts: dict[str, int] = {}
    with open(files[0], "rb") as fh:
        urls = [p["url"] for p in read_warc(fh, sites_from(domains=["warta.test"]), seen, 1500, counts)]
    assert "http://warta.test/artikel/0/" not in urls and counts["in_lake"] == 1
    assert urls == [] and counts["too_large"] == 43  # every other warta.test page is larger than 1,500 bytes


def archive(*args, timeout=300):
    return subprocess.run([sys.executable, str(ROOT / "run_local.py"), "archive", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=dict(os.environ))


def lake(out) -> list[tuple]:
    rel = duckdb.sql(f"select url, source, fetched_at, feed_url from read_parquet('{out}/articles/**/*.parquet', "
                     "hive_partitioning=true) order by url")
    return rel.fetchall()


@pytest.mark.slow
def test_archive_writes_each_expected_article_once_on_direct_and_dask(tmp_path, fast_config):
    files, expected = write_warcs(tmp_path)
    direct, dask = tmp_path / "direct", tmp_path / "dask"
    common = ("--config", fast_config, "--no-ner", "--domains", "warta.test,kabar.test")
    a = archive("--warc", *files, "--output", direct, *common)
    assert a.returncode == 0, a.stderr[-3000:]
    rows = lake(direct)
    assert [r[0] for r in rows] == sorted(expected)  # each once, duplicates across files included
    assert all(r[2] == expected[r[0]] for r in rows)  # fetched_at = WARC-Date of the kept capture
    assert {r[1] for r in rows} == {"warta.test", "kabar.test"} and {r[3] for r in rows} == {None}
    summary = a.stderr.strip().splitlines()[-1]
    assert "files=3 " in summary and "revisit=15 " in summary and "other-domain=45 " in summary, summary
    assert f"rows written={len(expected)} " in summary, summary

    b = archive("--warc", str(tmp_path / "*.warc*"), "--output", dask, *common, "--runner", "dask")
    assert b.returncode == 0, b.stderr[-3000:]
    assert "distributed" in b.stderr or "Start worker" in b.stderr
    assert lake(dask) == rows
    strip = lambda res: re.sub(r"\d+\.\d+s$", "", res.stderr.strip().splitlines()[-1].split("warta archive:")[1])
    assert strip(a) == strip(b)

    again = archive("--warc", *files, "--output", direct, *common)  # already in the lake: nothing new
    assert again.returncode == 0 and lake(direct) == rows
    assert f"in-lake={len(expected) + 20} " in again.stderr and "rows written=0 " in again.stderr  # 20 captured twice


@pytest.mark.slow
def test_archive_with_feeds_files_pages_under_the_feed_and_checks_flags(tmp_path, fast_config):
    files, expected = write_warcs(tmp_path)
    feeds = tmp_path / "feeds.yaml"
    feeds.write_text("feeds:\n  - name: kabar\n    url: https://kabar.test/feed/\n    language: id\n")
    out = tmp_path / "lake"
    res = archive("--warc", files[2], "--output", out, "--config", fast_config, "--no-ner", "--feeds", feeds)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = lake(out)
    assert rows and all(r[0].startswith("http://berita.kabar.test/") and r[1] == "kabar" for r in rows)
    assert {r[3] for r in rows} == {"https://kabar.test/feed/"}
    assert archive("--warc", files[0], "--output", out).returncode == 2  # --feeds or --domains is required
    assert archive("--warc", files[0], "--output", out, "--domains", "a.test", "--bogus").returncode == 2


def test_one_bad_record_is_one_error_row_and_the_rest_of_the_file_is_read(tmp_path):
    path = tmp_path / "bad.warc.gz"
    with open(path, "wb") as out:
        w = WARCWriter(out, gzip=True)
        for n, charset in enumerate(("zlib", "base64", "rot13", "uu_codec", "utf-8")):
            url = f"http://warta.test/artikel/{n}/"
            response(w, url, page(url, n), ctype=f"text/html; charset={charset}")
        response(w, "http://warta.test:99999/artikel/port/", page("x", 9))
        url = "http://warta.test/artikel/last/"
        response(w, url, page(url, 10))
    counts, errors = {}, []
    with open(path, "rb") as fh:
        pages = list(read_warc(fh, sites_from(domains=["warta.test"]), set(), 1_000_000, counts, errors))
    # charsets that are no WHATWG text encoding are ignored (the page's own bytes decide), never run as codecs
    assert [p["url"] for p in pages] == [f"http://warta.test/artikel/{n}/" for n in range(5)] + [url]
    assert all(p["charset"] == "utf-8" and "Berita" in p["html"] for p in pages)
    assert [(e["url"], e["stage"]) for e in errors] == [("http://warta.test:99999/artikel/port/", "fetch")]
    assert "Port out of range" in errors[0]["error"] and counts["record_errors"] == 1 and counts["records"] == 7


def test_decoding_accepts_only_whatwg_text_encodings():
    from warta.net.http import codec_name, decode_html
    for label in ("zlib", "base64", "rot13", "hex", "uu", "bz2", "punycode", "idna", "unicode_escape", "utf-32",
                  "raw_unicode_escape", "undefined"):
        assert codec_name(label) is None, label
    assert codec_name("latin1") == "cp1252" and codec_name("gb2312") == "gbk" and codec_name("Shift_JIS") == "shift_jis"
    assert decode_html(b"<p>eJzLSM3JyVcozy/KSQEAGgQEXQ==</p>", "base64")[1] == "utf-8"
