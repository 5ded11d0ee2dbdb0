"""transforms.extract: golden Indonesian layouts (HTML -> expected JSON), metadata, hostile HTML."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transforms.extract import ExtractArticles, clean_text, detect_language, extract_article, read_meta

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.metric import corpus_scores  # noqa: E402

GOLDEN = Path(__file__).parent / "golden"
CASES = sorted(p.stem for p in GOLDEN.glob("*.html"))
FETCHED = datetime(2024, 11, 20, tzinfo=timezone.utc)
BOILERPLATE = ("Baca juga", "BACA JUGA", "Lihat juga", "ADVERTISEMENT", "Advertisement", "SCROLL TO CONTINUE",
               "Bagikan", "Komentar", "Foto:", "Berita Terpopuler", "Berita Terkait", "Dapatkan update", "Tags")


def page(html: str, **extra) -> dict:
    return {"url": "https://warta.example/a?utm_source=x", "feed_url": "https://warta.example/feed",
            "source": "demo", "html": html, "fetched_at": FETCHED, **extra}


@pytest.mark.parametrize("case", CASES)
def test_golden_body_and_metadata(case):
    expected = json.loads((GOLDEN / f"{case}.json").read_text())
    row = extract_article(page((GOLDEN / f"{case}.html").read_text()))
    scores = corpus_scores([(row["text"], expected["text"])])
    assert scores["f1"] >= 0.99, (case, scores)
    for marker in BOILERPLATE:
        assert marker not in row["text"], (case, marker)
    for para in expected["text"].splitlines():  # every paragraph of the article is kept
        assert para in row["text"], (case, para[:60])
    assert row["title"] == expected["title"]
    assert row["authors"] == expected["authors"]
    want = expected["published_at"]
    if want:
        assert row["published_at"] == datetime.fromisoformat(want)
    assert row["canonical_url"] == expected["canonical_url"]
    assert row["language"] == "id"


def test_golden_corpus_f1():
    pairs = []
    for case in CASES:
        expected = json.loads((GOLDEN / f"{case}.json").read_text())
        pairs.append((extract_article(page((GOLDEN / f"{case}.html").read_text()))["text"], expected["text"]))
    assert corpus_scores(pairs)["f1"] >= 0.99


def test_clean_text_drops_boilerplate_lines_only():
    text = ("Paragraf pertama berita.\nBaca Juga: Harga cabai naik\nBACA JUGA: Gempa\nbaca juga : sesuatu\n"
            "Lihat juga: video\nADVERTISEMENT\nSCROLL TO CONTINUE WITH CONTENT\nFoto: Dok. Polri\n"
            "Bagikan: Facebook Twitter WhatsApp\nKomentar\nParagraf kedua yang membaca juga data lama.")
    assert clean_text(text) == "Paragraf pertama berita.\nParagraf kedua yang membaca juga data lama."


HEAD = """<html lang="{lang}"><head>{head}</head><body><article><h1>Judul</h1>
<p>Ini adalah paragraf pertama dari sebuah berita yang cukup panjang untuk dianggap sebagai artikel oleh ekstraktor.</p>
<p>Paragraf kedua melanjutkan cerita dengan rincian tambahan mengenai peristiwa yang terjadi di Jakarta kemarin sore.</p>
<p>Paragraf ketiga menutup berita dengan kutipan dari pejabat setempat yang memberikan keterangan kepada wartawan.</p>
</article></body></html>"""


def html_with(head: str = "", lang: str = "id") -> str:
    return HEAD.format(head=head, lang=lang)


def test_published_time_prefers_feed_then_jsonld_then_meta():
    jsonld = ('<script type="application/ld+json">{"@type": "NewsArticle", "datePublished": '
              '"2024-11-12T10:00:00+07:00", "author": [{"@type": "Person", "name": "Budi"}]}</script>')
    meta = '<meta property="article:published_time" content="2024-11-10T08:00:00+07:00">'
    feed_time = datetime(2024, 11, 13, 1, 0, tzinfo=timezone.utc)
    assert extract_article(page(html_with(jsonld + meta), feed_published_at=feed_time))["published_at"] == feed_time
    assert extract_article(page(html_with(jsonld + meta)))["published_at"] == datetime(2024, 11, 12, 3, tzinfo=timezone.utc)
    assert extract_article(page(html_with(meta)))["published_at"] == datetime(2024, 11, 10, 1, tzinfo=timezone.utc)
    assert extract_article(page(html_with(jsonld)))["authors"] == ["Budi"]


def test_implausible_dates_are_rejected():
    future = '<meta property="article:published_time" content="2031-01-01T00:00:00Z">'
    ancient = '<meta property="article:published_time" content="1970-01-01T00:00:00Z">'
    for head in (future, ancient):
        row = extract_article(page(html_with(head)))
        assert row["published_at"] is None or row["published_at"] < FETCHED + timedelta(days=1)
        assert row["published_at"] is None or row["published_at"].year >= 1995
    bad_feed = extract_article(page(html_with(future), feed_published_at=datetime(2030, 1, 1, tzinfo=timezone.utc)))
    assert bad_feed["published_at"] is None or bad_feed["published_at"].year < 2030


def test_missing_metadata_is_null_not_invented():
    row = extract_article(page(html_with()))
    assert row["canonical_url"] is None and row["authors"] == [] and row["image_url"] is None
    assert row["title"] == "Judul"


def test_canonical_and_image_resolve_relative_urls():
    head = '<link rel="canonical" href="/berita/asli"><meta property="og:image" content="https://cdn.example/x.jpg">'
    row = extract_article(page(html_with(head)))
    assert row["canonical_url"] == "https://warta.example/berita/asli"
    assert row["image_url"] == "https://cdn.example/x.jpg"
    assert row["url"] == "https://warta.example/a"  # tracking parameters dropped


def test_language_feed_wins_else_detected():
    assert extract_article(page(html_with(), language="ms"))["language"] == "ms"
    assert extract_article(page(html_with(lang="en")))["language"] == "id"  # detected from the text, not <html lang>


@pytest.mark.parametrize("html", ["", "   ", "<html></html>", "<p>short</p>", "\x00\x01\x02" * 100])
def test_pages_without_article_raise_clear_errors(html):
    with pytest.raises(ValueError):
        extract_article(page(html))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=3000), st.binary(max_size=3000).map(lambda b: b.decode("latin-1")),
                 st.lists(st.sampled_from(["<p>", "</p>", "<div>", "<script>", "&amp;", "&#0;", "<!--", "<![CDATA[",
                                           "kata ", "Baca Juga:", "\n", "<html>", "<meta charset='x'>"]),
                          max_size=400).map("".join)))
def test_fuzz_extract_stage_never_escapes_dead_letter(html):
    """Through the Beam stage: any input is either an article or an errors/ row, never a crash."""
    try:
        row = extract_article(page(html))
    except ValueError:
        return
    assert isinstance(row["text"], str) and len(row["text"]) >= 200


def test_extract_transform_routes_failures_to_errors():
    good = page((GOLDEN / "wordpress-seed.html").read_text())
    bad = page("<html><body>nothing</body></html>", url="https://warta.example/bad")
    with TestPipeline() as p:
        out = p | beam.Create([good, bad]) | ExtractArticles()
        assert_that(out.articles | beam.Map(lambda r: r["source"]), equal_to(["demo"]))
        assert_that(out.errors | "E" >> beam.Map(lambda e: (e["stage"], e["url"])),
                    equal_to([("extract", "https://warta.example/bad")]), label="errors")


def test_read_meta_handles_jsonld_graph_and_garbage():
    import lxml.html
    tree = lxml.html.fromstring('<html><head><script type="application/ld+json">{not json</script>'
                                '<script type="application/ld+json">{"@graph": [{"@type": "WebPage"}, '
                                '{"@type": "NewsArticle", "datePublished": "2024-01-02T03:04:05Z", '
                                '"author": {"name": "Sari"}}]}</script></head><body></body></html>')
    meta = read_meta(tree, "https://x.example/")
    assert meta.published_at == datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc) and meta.authors == ["Sari"]



ENGLISH = ("The city council approved the new budget on Monday after a long debate about schools, roads "
           "and the hospital. The mayor said the plan would be published next week and that residents could "
           "comment on it until the end of the month. ") * 2
INDONESIAN = ("Pemerintah kota menyetujui anggaran baru pada hari Senin setelah perdebatan panjang tentang "
              "sekolah, jalan, dan rumah sakit. Wali kota mengatakan rencana itu akan diumumkan pekan depan "
              "dan warga dapat memberi tanggapan sampai akhir bulan. ") * 2


def article_html(text: str, lang: str) -> str:
    return f"<html lang='{lang}'><body><article><h1>Judul</h1><p>{text}</p></article></body></html>"


def test_language_precedence_feeds_file_then_text_then_page_then_channel():
    # the feed channel says id(-ID), the page is English: the text decides
    assert extract_article(page(article_html(ENGLISH, "id-ID"), channel_language="id"))["language"] == "en"
    # WordPress defaults: channel and <html lang> say en-US, the text is Indonesian
    assert extract_article(page(article_html(INDONESIAN, "en-US"), channel_language="en"))["language"] == "id"
    # the feeds file's language is the user's word
    assert extract_article(page(article_html(INDONESIAN, "en"), language="ms"))["language"] == "ms"


def test_language_falls_back_to_page_then_channel_when_detection_is_unsure(monkeypatch):
    monkeypatch.setattr("transforms.extract.detect_language", lambda text, hint=None: None)
    assert extract_article(page(article_html(INDONESIAN, "fr"), channel_language="de"))["language"] == "fr"
    assert extract_article(page(article_html(INDONESIAN, ""), channel_language="de"))["language"] == "de"


def test_detect_language_is_confident_or_none():
    assert detect_language(ENGLISH, hint="id") == "en"
    assert detect_language(INDONESIAN) == "id"
    assert detect_language("ok ok ok ok ok ok ok ok ok") is None  # no confident guess on a few words
    assert detect_language("") is None


def test_xhtml_page_with_xml_declaration_is_extracted():
    xhtml = ('<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" '
             '"http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">\n'
             + html_with('<meta property="og:title" content="Judul XHTML"/>').replace(
                 "<html ", '<html xmlns="http://www.w3.org/1999/xhtml" ', 1))
    row = extract_article(page(xhtml))
    assert row["title"] == "Judul XHTML" and "paragraf pertama" in row["text"]


def test_naive_page_times_are_local_to_the_feed_and_explicit_offsets_win():
    wib = {"timezone": "Asia/Jakarta", "language": "id"}
    naive = '<meta property="article:published_time" content="2024/11/12 10:00:00">'
    assert extract_article(page(html_with(naive), **wib))["published_at"] == datetime(2024, 11, 12, 3, tzinfo=timezone.utc)
    day_first = '<meta name="pubdate" content="05/11/2024 10:00">'
    assert extract_article(page(html_with(day_first), **wib))["published_at"] == datetime(2024, 11, 5, 3, tzinfo=timezone.utc)
    named = '<meta name="pubdate" content="Selasa, 12 November 2024 10:00 WITA">'
    assert extract_article(page(html_with(named), **wib))["published_at"] == datetime(2024, 11, 12, 2, tzinfo=timezone.utc)
    # a feed time read without an offset loses to a JSON-LD time that has one
    jsonld = '<script type="application/ld+json">{"@type": "NewsArticle", "datePublished": "2024-11-12T10:00:00+08:00"}</script>'
    feed_naive = {"feed_published_at": datetime(2024, 11, 12, 3, tzinfo=timezone.utc), "feed_time_explicit": False}
    row = extract_article(page(html_with(jsonld), **wib, **feed_naive))
    assert row["published_at"] == datetime(2024, 11, 12, 2, tzinfo=timezone.utc)
    feed_explicit = {**feed_naive, "feed_time_explicit": True}
    assert extract_article(page(html_with(jsonld), **wib, **feed_explicit))["published_at"] == feed_naive["feed_published_at"]


def test_relative_og_image_is_resolved_against_the_page():
    row = extract_article(page(html_with('<meta property="og:image" content="/img/foto.jpg">'),
                               final_url="https://warta.example/berita/a.html"))
    assert row["image_url"] == "https://warta.example/img/foto.jpg"
