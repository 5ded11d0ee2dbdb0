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

from warta.transforms.extract import ExtractArticles, clean_text, detect_language, extract_article, read_meta

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
    monkeypatch.setattr("warta.transforms.extract.detect_language", lambda text, hint=None: None)
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


# --- Real-page failure classes, on small hand-made pages (none copied from a publisher) ---------------

PARAS = [
    "The city council voted on Tuesday to extend the night bus network to the northern districts after months of debate.",
    "Supporters said the change would help shift workers who now walk long distances after the last train has left.",
    "Opponents questioned the cost, which the transport office put at four million a year, and asked for a review.",
    "The first new routes are due to start running in the spring, once drivers have been hired and trained for them.",
    "A spokesperson for the operator said timetables would be published online several weeks before the launch.",
]
LEAD = "Night buses will reach the northern districts from spring, after a long fight over who pays for them."


def story(*blocks: str, head: str = "", title: str = "Night buses for the north") -> str:
    return (f"<html><head><title>{title}</title>{head}</head><body><nav><a href='/'>Home</a> <a href='/city'>City</a>"
            f"</nav><main><article><h1>{title}</h1>{''.join(blocks)}</article></main>"
            "<footer><p>Copyright Example Media Group. All rights reserved, reproduction prohibited.</p></footer>"
            "</body></html>")


def paras(items) -> str:
    return "".join(f"<p>{p}</p>" for p in items)


def en_page(html: str, url: str = "https://news.example/city/night-buses") -> dict:
    return page(html, url=url, language="en")


def test_lead_above_the_article_container_is_kept():
    html = story(f'<p class="article__lead">{LEAD}</p>', f'<div class="article-body">{paras(PARAS)}</div>')
    text = extract_article(en_page(html))["text"]
    assert text.splitlines()[0] == LEAD and PARAS[-1] in text


def test_body_split_across_sibling_containers_is_kept_whole():
    html = story(f'<div class="article-body">{paras(PARAS[:3])}</div>',
                 '<figure><img src="/bus.jpg"><figcaption>A night bus.</figcaption></figure>',
                 f'<div class="article-body">{paras(PARAS[3:])}</div>')
    text = extract_article(en_page(html))["text"]
    for p in PARAS:
        assert p in text


def test_international_boilerplate_is_dropped():
    html = story(paras(PARAS[:3]), "<p>Trending</p>", "<p>Advertisement</p>", paras(PARAS[3:]),
                 "<h2>Related stories</h2><ul><li><a href='/a'>Council approves the new cycle lanes on the main road "
                 "after a vote</a></li></ul>",
                 "<p>Support independent journalism: if you value our reporting, please donate today.</p>")
    text = extract_article(en_page(html))["text"]
    assert all(p in text for p in PARAS)
    for junk in ("Trending", "Advertisement", "Related stories", "cycle lanes", "donate"):
        assert junk not in text, junk


def test_text_only_in_jsonld_article_body_is_found():
    body = " ".join(PARAS)
    ld = json.dumps({"@context": "https://schema.org", "@type": "NewsArticle", "headline": "Night buses",
                     "articleBody": body})
    html = story("<div id='app'>Loading…</div>", head=f'<script type="application/ld+json">{ld}</script>')
    assert extract_article(en_page(html))["text"] == body


def test_text_only_in_script_json_state_is_found():
    state = json.dumps({"props": {"pageProps": {"story": {"id": 7, "contentHtml": paras(PARAS)}}}})
    html = story("<div id='root'></div>", f'<script id="__NEXT_DATA__" type="application/json">{state}</script>')
    assert extract_article(en_page(html))["text"].splitlines() == PARAS


def test_title_loses_the_site_name_and_prefers_the_jsonld_headline():
    import lxml.html
    site = '<meta property="og:site_name" content="The Example Herald">'
    for raw in ("Night buses for the north - The Example Herald", "Night buses for the north | City | Example Herald",
                "Night buses for the north – Herald – 12.03.2024"):
        tree = lxml.html.fromstring(f'<html><head><meta property="og:title" content="{raw}">{site}</head>'
                                    "<body></body></html>")
        assert read_meta(tree, "https://www.exampleherald.example/x").title == "Night buses for the north", raw
    ld = '<script type="application/ld+json">{"@type": "NewsArticle", "headline": "Buses &amp; trams at night"}</script>'
    tree = lxml.html.fromstring(f'<html><head><title>Buses</title>{ld}</head></html>')
    assert read_meta(tree, "https://x.example/").title == "Buses & trams at night"
    # a headline HTML-escaped twice is a careless copy: og:title, when there is one, is the headline
    tree = lxml.html.fromstring(f'<html><head><meta property="og:title" content="Night buses">{ld}</head></html>')
    assert read_meta(tree, "https://x.example/").title == "Night buses"
    # a dash inside the headline is not a site name
    tree = lxml.html.fromstring('<html><head><meta property="og:title" content="Left - right - centre: who won"></head></html>')
    assert read_meta(tree, "https://x.example/").title == "Left - right - centre: who won"


def test_jsonld_authors_people_first_split_and_outlet_only_as_last_resort():
    import lxml.html

    def authors(ld: dict, extra: str = "") -> list[str]:
        tree = lxml.html.fromstring(f'<html><head><script type="application/ld+json">{json.dumps(ld)}</script>{extra}'
                                    '<meta property="og:site_name" content="Example Herald"></head><body></body></html>')
        return read_meta(tree, "https://exampleherald.example/a").authors

    art = {"@type": "NewsArticle", "publisher": {"@type": "Organization", "name": "Example Herald"}}
    assert authors({**art, "author": [{"@type": "Person", "name": "Ana Silva"},
                                      {"@type": "Organization", "name": "Example Herald"},
                                      {"@type": "Person", "name": "By Tom Berg"}]},
                   '<meta name="author" content="Someone Else">') == ["Ana Silva", "Tom Berg"]
    assert authors({**art, "author": {"@type": "Person", "name": "Ana Silva und Tom Berg, dpa"}}) == \
        ["Ana Silva", "Tom Berg", "dpa"]
    assert authors({**art, "author": {"@type": "Organization", "name": "Example Herald"}}) == ["Example Herald"]
    assert authors({**art, "author": {"@type": "Person", "name": "ana-silva"}}) == ["Ana Silva"]
    # a desk of the outlet is a byline of its own, beside people or alone
    assert authors({**art, "author": [{"@type": "Person", "name": "Ana Silva"},
                                      {"@type": "Organization", "name": "Example Herald City Desk"}]}) == \
        ["Ana Silva", "Example Herald City Desk"]
    assert authors({**art, "author": {"@type": "NewsMediaOrganization", "name": "Redaktion exampleherald.example"}},
                   '<meta name="author" content="exampleherald.example, Springfield">') == \
        ["Redaktion exampleherald.example"]


def test_site_profile_overrides_body_title_and_date():
    from warta.config.settings import ExtractSettings, SiteProfile
    html = story('<div class="teaser"><p>Short teaser that the generic extractor would happily keep as text.</p></div>',
                 f'<section id="copy">{paras(PARAS)}</section>',
                 '<span class="when" data-ts="2024-03-12T08:30:00+01:00">12 March</span>',
                 title="Generic title")
    profile = SiteProfile(body="//section[@id='copy']/p", title="//div[@class='teaser']/p",
                          date="//span[@class='when']/@data-ts")
    settings = ExtractSettings(profiles={"www.news.example": profile})
    profiles = {h: p.model_dump() for h, p in settings.profiles.items()}
    row = extract_article(en_page(html), profiles=profiles)
    assert row["text"].splitlines() == PARAS
    assert row["title"] == "Short teaser that the generic extractor would happily keep as text."
    assert row["published_at"] == datetime(2024, 3, 12, 7, 30, tzinfo=timezone.utc)
    other = extract_article(en_page(html, url="https://other.example/a"), profiles=profiles)
    assert other["title"] == "Generic title"  # another host: the generic path
    assert other["published_at"] != row["published_at"]
    with pytest.raises(ValueError):
        SiteProfile(body="//p[")


def test_published_time_sources_and_time_zones():
    import lxml.html

    def published(head: str, body: str = "") -> datetime | None:
        return read_meta(lxml.html.fromstring(f"<html><head>{head}</head><body>{body}</body></html>"),
                         "https://x.example/a").published_at

    at = datetime(2024, 4, 26, 18, 44, tzinfo=timezone.utc)
    ld = '{"@type": "NewsArticle", "datePublished": "2024-04-26T20:44:00+0200"}'
    # JSON-LD wrapped in a CDATA comment, or nested as the page's mainEntity
    assert published(f'<script type="application/ld+json">//<![CDATA[\n{ld}\n//]]></script>') == at
    assert published('<script type="application/ld+json">{"@type": "WebPage", "mainEntity": ' + ld + "}</script>") == at
    # a JSON-LD time without zone takes the offset of the same time in a meta tag
    naive = '<script type="application/ld+json">{"@type": "NewsArticle", "datePublished": "2024-04-26 20:44:00.0"}</script>'
    assert published(naive + '<meta name="date" content="2024-04-26T20:44:00+02:00">') == at
    assert published(naive) == datetime(2024, 4, 26, 20, 44, tzinfo=timezone.utc)  # nothing to go by: UTC
    # microdata, a <time> with a time of day (not in navigation), script state
    assert published("", '<time itemprop="datePublished" datetime="2024-04-26T20:44+0200">26 April</time>') == at
    assert published("", '<aside><time datetime="2023-01-01T10:00Z">x</time></aside>'
                         '<time datetime="2024-04-26 20:44:00+02:00">26.04.2024, 20:44</time>') == at
    assert published('<script>var meta = {"section": "City", "publishtime": "2024-04-26T20:44:00+0200"};</script>') == at
    # a zone abbreviation (Indonesian WIB = UTC+7)
    assert published('<meta name="pubdate" content="26 Apr 2024 23:44 WIB">') == datetime(2024, 4, 26, 16, 44, tzinfo=timezone.utc)


def test_title_drops_a_kicker_the_social_title_leaves_out():
    import lxml.html
    ld = '<script type="application/ld+json">{"@type": "NewsArticle", "headline": "City transport: Night buses for the north"}</script>'
    tree = lxml.html.fromstring(f'<html><head>{ld}<meta property="og:title" content="Night buses for the north">'
                                "</head><body><h1>City transport: Night buses for the north</h1></body></html>")
    assert read_meta(tree, "https://x.example/").title == "Night buses for the north"


def test_authors_from_agencies_name_parts_visible_bylines_and_not_buttons():
    import lxml.html

    def authors(head: str, body: str = "") -> list[str]:
        tree = lxml.html.fromstring(f'<html><head><meta property="og:site_name" content="Example Herald">{head}</head>'
                                    f"<body>{body}</body></html>")
        return read_meta(tree, "https://exampleherald.example/a").authors

    def ld(author) -> str:
        return f'<script type="application/ld+json">{json.dumps({"@type": "NewsArticle", "author": author})}</script>'

    # a news agency named beside the reporter is kept; a person given as givenName/familyName is joined
    assert authors(ld([{"@type": "Person", "name": "Ana Silva"}, {"@type": "Organization", "name": "AP"}])) == \
        ["Ana Silva", "AP"]
    assert authors(ld([{"@type": "Person", "givenName": "Anna Maria", "familyName": "Berg"}])) == ["Anna Maria Berg"]
    # meta author is the outlet, article:author the reporter
    assert authors('<meta name="author" content="Example Herald"><meta name="article:author" content="Tom Berg">') == \
        ["Tom Berg"]
    # visible bylines when nothing machine-readable names a person
    assert authors("", "<article><p>von <a href='/autoren/tom-berg'>Dr. Tom Berg</a></p><p>Text.</p></article>") == \
        ["Dr. Tom Berg"]
    assert authors("", "<ul><li><strong>Autorin/Autor</strong> Ana Silva</li></ul>") == ["Ana Silva"]
    # a brand before the byline word, a reporter title after the name, a follow button, a source credit
    assert authors('<meta name="author" content="Weekend von Ana Silva">') == ["Ana Silva"]
    assert authors('<meta name="author" content="Ursula von der Leyen">') == ["Ursula von der Leyen"]
    assert authors('<meta name="author" content="김하나 기자">') == ["김하나"]
    assert authors('<meta name="author" content="Folgen">' + ld({"@type": "Organization", "name": "Example Herald"})) \
        == ["Example Herald"]
    assert authors('<meta name="author" content="Quelle: dpa">' + ld({"@type": "Organization", "name": "Example Herald"})) \
        == ["Example Herald"]


def test_embedded_post_cards_and_ui_labels_are_dropped_ruby_readings_stay_inline():
    card = ('<blockquote class="wp-embedded-content"><p><a href="/city/storm">Buses on the north line are cancelled '
            'tonight because of the storm warning, says the operator</a></p></blockquote>')
    story_card = ("<a href='/city/trams'><div><h2>Trams to run all night</h2><p>RISK: The council says the trams "
                  "could run all night from next year if the budget allows it, officials said.</p></div></a>")
    html = story("<p>Article</p>", "<p>Stand: 22.04.2024, 06:00 Uhr</p>", "<p>By Ana Silva</p>", paras(PARAS[:2]), card, "<p>Article content</p>", paras(PARAS[2:]), story_card,
                 "<p>Quelle: news.example</p>",
                 "<p>Got a story? Get in touch with our news team by emailing us at news@example.com.</p>")
    text = extract_article(en_page(html))["text"]
    assert all(p in text for p in PARAS)
    for junk in ("storm warning", "Article", "Got a story", "budget allows", "Quelle", "Stand", "Ana Silva"):
        assert junk not in text, junk
    ruby = ("<p>東京都の <ruby><rb>知事</rb><rp>（</rp><rt>ちじ</rt><rp>）</rp></ruby> は三日、新しい夜行バスの路線を"
            "発表した。利用者の多い北部の地区から運行を始め、春までに全ての区に広げる計画だという。</p>")
    text = extract_article(page(story(ruby * 4, paras(PARAS)), url="https://news.example/jp/1"))["text"]
    assert "東京都の 知事（ちじ） は三日" in text


def test_text_after_an_empty_bold_tag_is_kept():
    dated = ["The first night line opened in 1998 and ran only on weekends until the city extended it.",
             "Night trams were tried for one summer and stopped again because too few people used them."]
    items = [f"<p><b>{1998 + 10 * i}:</b> <b></b>{p}</p>" for i, p in enumerate(dated)]
    text = extract_article(en_page(story(paras(PARAS), *items)))["text"]
    assert all(p in text for p in PARAS + dated)


def test_bold_byline_atop_the_body_names_the_author_when_the_cms_names_only_the_site():
    ld = ('<script type="application/ld+json">{"@type": "NewsArticle", "author": {"@type": "Person", '
          '"name": "Example Herald"}}</script><meta property="og:site_name" content="Example Herald">')
    html = story("<p><strong>Ana Silva/Tom Berg</strong></p>", paras(PARAS), head=ld)
    row = extract_article(en_page(html, url="https://exampleherald.example/city/night-buses"))
    assert row["authors"] == ["Ana Silva", "Tom Berg"] and "Ana Silva" not in row["text"]
    # a person named in the metadata is kept, and the bold line is left to the body
    html = story("<p><strong>Night Owls Rejoice</strong></p>", paras(PARAS), head='<meta name="author" content="Ana Silva">')
    assert extract_article(en_page(html))["authors"] == ["Ana Silva"]


def test_day_only_date_takes_the_time_of_the_visible_dateline_of_that_day():
    dateline = '<div class="article-meta"><span class="meta_date">erstellt: <b>01. April 2024, 15:25</b></span></div>'
    html = story(dateline, paras(PARAS))
    row = extract_article(en_page(html, url="https://news.example/2024/04/01/night-buses/"))
    assert row["published_at"] == datetime(2024, 4, 1, 15, 25, tzinfo=timezone.utc)
    # a dateline without a clock time leaves the day at midnight
    html = story(dateline.replace(", 15:25", ""), paras(PARAS))
    row = extract_article(en_page(html, url="https://news.example/2024/04/01/night-buses/"))
    assert row["published_at"] == datetime(2024, 4, 1, tzinfo=timezone.utc)


def test_recall_pass_runs_only_when_the_precision_pass_may_have_cut_text(monkeypatch):
    import warta.transforms.extract_body as body
    calls = []
    real_run = body._run
    monkeypatch.setattr(body, "_run", lambda page, url, opts: calls.append(opts) or real_run(page, url, opts))
    extract_article(en_page(story(paras(PARAS * 2))))
    assert body.BROAD not in calls  # the precise pass kept the paragraphs: no second pass
    calls.clear()
    monkeypatch.setattr(body, "BROAD_SKIP", 10.0)  # as if the precise pass had kept little
    extract_article(en_page(story(paras(PARAS * 2))))
    assert body.BROAD in calls


def test_title_ending_in_a_date_gives_the_day():
    html = story(paras(PARAS), title="Night buses for the north | City | Herald | 28.04.2024")
    assert extract_article(en_page(html))["published_at"] == datetime(2024, 4, 28, tzinfo=timezone.utc)


def test_day_only_date_takes_the_earliest_time_the_markup_gives_that_day():
    html = story('<div data-deploy-dt="2024.04.01 18:49" data-first-dt="2024.04.01 18:40"></div>', paras(PARAS),
                 head='<script>var a = {"updated": "2024-04-01T20:00:00+09:00", "other": "2024.03.31 07:00"};</script>')
    row = extract_article(en_page(html, url="https://news.example/2024/04/01/night-buses/"))
    assert row["published_at"] == datetime(2024, 4, 1, 18, 40, tzinfo=timezone.utc)


def test_a_cms_admin_account_is_not_the_author():
    ld = ('<script type="application/ld+json">{"@type": "NewsArticle", "author": {"@id": '
          '"https://dailyherald.example/author/admin/", "name": "Herald D"}}</script>')
    by = '<p class="meta">by <a href="https://dailyherald.example/author/admin/" rel="author">Herald D</a> | 1 April 2024</p>'
    html = story(by, "<p><strong>ANA SILVA</strong></p>", paras(PARAS), head=ld)
    assert extract_article(en_page(html, url="https://dailyherald.example/city/night-buses"))["authors"] == ["ANA SILVA"]


def _title(head: str, h1: str = "") -> str | None:
    import lxml.html
    return read_meta(lxml.html.fromstring(f"<html><head>{head}</head><body><h1>{h1}</h1></body></html>"),
                     "https://www.herald.example/x").title


def _ld_title(headline: str) -> str:
    return f'<script type="application/ld+json">{{"@type": "NewsArticle", "headline": "{headline}"}}</script>'


def test_og_title_wins_where_the_jsonld_headline_only_repeats_the_page_title():
    seo = "Night bus network extended to the north after council vote"
    head = f'{_ld_title(seo)}<meta property="og:title" content="Night buses for the north"><title>{seo} | Herald</title>'
    assert _title(head, seo) == "Night buses for the north"
    # a <title> of its own wording leaves the JSON-LD headline first
    head = head.replace(f"<title>{seo} | Herald", "<title>Buses: the council decides | Herald")
    assert _title(head, seo) == seo


def test_a_kicker_or_section_that_jsonld_and_og_title_both_carry_stays():
    both = "Night buses for the north - Latest news"
    head = f'{_ld_title(both)}<meta property="og:title" content="{both}">'
    assert _title(head, "Night buses for the north") == both
    # only one of them carries it: the h1's shorter headline
    head = f'{_ld_title(both)}<meta property="og:title" content="Night buses for the north">'
    assert _title(head, "Night buses for the north") == "Night buses for the north"
    # the kicker written with another separator still counts
    head = (f'{_ld_title("Transport &amp; city - Night buses for the north")}'
            '<meta property="og:title" content="Transport &amp; city: Night buses for the north">')
    assert _title(head, "Night buses for the north") == "Transport & city: Night buses for the north"


def test_og_title_kicker_shown_in_the_h1_is_part_of_the_headline():
    head = f'{_ld_title("Night buses for the north")}<meta property="og:title" content="Transport / Night buses for the north">'
    assert _title(head, "<span>Transport</span>Night buses for the north") == "Transport / Night buses for the north"
    assert _title(head, "Night buses for the north") == "Night buses for the north"


def test_the_headline_two_candidates_share_after_different_kickers():
    head = '<meta property="og:title" content="City transport: Night buses reach the northern districts">'
    assert _title(head, "Council vote - Night buses reach the northern districts") == "Night buses reach the northern districts"
    # a shared ending that is not a whole headline after a kicker leaves the title alone
    head = '<meta property="og:title" content="Buses for the city reach the northern districts">'
    assert _title(head, "Trams reach the northern districts") == "Buses for the city reach the northern districts"


def test_a_headline_meta_tag_stands_in_for_a_missing_jsonld_headline():
    head = ('<meta name="headline" content="Night buses for the north">'
            '<meta property="og:title" content="Night buses for the north-Cityㅣ Herald">')
    assert _title(head) == "Night buses for the north"
