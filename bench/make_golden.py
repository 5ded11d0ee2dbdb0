"""Regenerate the golden extraction fixtures in tests/golden (HTML -> expected JSON). Run once
(``python bench/make_golden.py``); the outputs are committed and the tests read only them.

Each fixture is an article page in a layout real Indonesian outlets use (WordPress themes, and
detik-, kompas- and tribun-like templates), with their boilerplate: "Baca Juga" links, ad and scroll
markers, photo captions, share and comment widgets, related-article lists. The expected text is the
article's own paragraphs, written down when the page is built, never the extractor's output.
Text comes from the JurnalPatroliNews seed article (tests/fixtures/seed) and NERGrit sentences (see
models/README.md), read from ../shared/data: only regenerating needs it, the tests read the committed files.
"""

from __future__ import annotations

import html
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "tests" / "golden"  # where the fixtures are written
sys.path.insert(0, str(ROOT))
from tests.pages import wordpress_page  # noqa: E402
from warta.transforms.segment import detokenize  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
esc = html.escape


def nergrit(n):
    source = DATA / "ner/nergrit/train.txt"
    if not source.exists():
        sys.exit(f"make_golden: {source} is missing: regenerating the golden files needs ../shared/data "
                 "(the tests themselves only read the committed files)")
    out, cur = [], []
    for line in source.read_text().splitlines():
        if not line.strip():
            if len(cur) > 15:
                out.append(detokenize(cur))
            cur = []
        else:
            cur.append(line.split("\t")[0])
    return out[:n]


def detik(title, paras, date, author):
    body = []
    for i, p in enumerate(paras):
        body.append(f"<p>{esc(p)}</p>")
        if i == 0:
            body.append('<table class="linksisip"><tr><td><div class="lihatjg"><strong>Baca juga:</strong> '
                        '<a href="/berita/d-1/harga-bbm">Harga BBM Turun Mulai Besok</a></div></td></tr></table>')
        if i == 1:
            body.append('<div class="parallaxindetail scrollpage"><div class="para_caption">'
                        '<p>ADVERTISEMENT</p><p>SCROLL TO CONTINUE WITH CONTENT</p></div></div>')
    return f"""<!DOCTYPE html><html lang="id"><head><meta charset="utf-8"><title>{esc(title)}</title>
<meta name="dtk:publishdate" content="{date}"><meta name="author" content="{esc(author)}">
<script type="application/ld+json">{json.dumps({"@context": "https://schema.org", "@type": "NewsArticle",
  "headline": title, "datePublished": date.replace(" ", "T") + "+07:00", "author": {"@type": "Person", "name": author}})}</script>
</head><body><div class="container"><nav class="navbar"><a href="/">detikNews</a><a href="/berita">Berita</a>
<a href="/daerah">Daerah</a><a href="/internasional">Internasional</a></nav>
<article class="detail"><div class="detail__header"><h1 class="detail__title">{esc(title)}</h1>
<div class="detail__author">{esc(author)} - detikNews</div><div class="detail__date">Selasa, 12 Nov 2024 10:00 WIB</div></div>
<div class="detail__media"><figure class="detail__media-image"><img src="/img/a.jpg">
<figcaption class="detail__media-caption">Ilustrasi (Foto: Getty Images/iStockphoto)</figcaption></figure></div>
<div class="detail__body-text itp_bodycontent">{''.join(body)}</div>
<div class="detail__body-tag"><a href="/tag/a">pilkada</a> <a href="/tag/b">jakarta</a></div>
<div class="share-box">Bagikan <a>Facebook</a> <a>Twitter</a> <a>WhatsApp</a> <a>Salin Tautan</a></div>
</article><div class="box cb-mostpop"><h2>Berita Terpopuler</h2><ul><li><a href="/1">Prabowo lantik menteri baru di Istana</a></li>
<li><a href="/2">Banjir rendam ratusan rumah di Bekasi pagi ini</a></li></ul></div>
<div id="komentar"><h3>Komentar</h3><p>Belum ada komentar. Jadilah yang pertama berkomentar.</p></div>
</div><footer>Copyright @ 2024 detikcom. All right reserved</footer></body></html>"""


def kompas(title, paras, date, author):
    body = []
    for i, p in enumerate(paras):
        lead = '<strong>JAKARTA, KOMPAS.com</strong> - ' if i == 0 else ""
        body.append(f"<p>{lead}{esc(p)}</p>")
        if i == 1:
            body.append('<p><strong>Baca juga: </strong><a class="inner-link-baca-juga" href="/read/1">'
                        'Menteri Keuangan Umumkan Kebijakan Baru</a></p>')
        if i == 2:
            body.append('<div class="ads-on-body"><div id="div-gpt-ad-1">ADVERTISEMENT</div></div>')
    expected_first = "JAKARTA, KOMPAS.com - " + paras[0]
    page = f"""<!DOCTYPE html><html lang="id"><head><meta charset="utf-8"><title>{esc(title)} - Kompas.com</title>
<meta property="article:published_time" content="{date.replace(' ', 'T')}+07:00">
<meta name="content_author" content="{esc(author)}"><meta name="author" content="{esc(author)}">
<link rel="canonical" href="https://nasional.kompas.com/read/2024/11/12/10000001/berita"></head>
<body><header><div class="nav"><a>News</a><a>Nasional</a><a>Regional</a><a>Megapolitan</a></div></header>
<div class="container"><div class="read__header"><h1 class="read__title">{esc(title)}</h1>
<div class="read__time">Kompas.com - 12/11/2024, 10:00 WIB</div><div class="credit-title-name">Penulis {esc(author)}</div></div>
<div class="photo"><img src="/img/b.jpg"><div class="photo__caption">Presiden memberikan keterangan pers.
KOMPAS.com/ADHYASTA DIRGANTARA</div></div>
<div class="read__content"><div class="clearfix">{''.join(body)}
<p>Dapatkan update berita pilihan dan breaking news setiap hari dari Kompas.com. Mari bergabung di Grup Telegram
"Kompas.com News Update", caranya klik link https://t.me/kompascomupdate, kemudian join.</p></div></div>
<div class="read__tagging"><h3>Tag</h3><a>Politik</a><a>Jakarta</a></div>
<div class="read__more"><h3>Berita Terkait</h3><ul><li><a>DPR Sahkan RUU Anggaran Negara Tahun Depan</a></li>
<li><a>KPK Periksa Pejabat Daerah Terkait Kasus Korupsi</a></li></ul></div></div>
<footer>Copyright 2008 - 2024 PT. Kompas Cyber Media (Kompas Gramedia Digital Group). All Rights Reserved.</footer>
</body></html>"""
    return page, [expected_first] + paras[1:]


def tribun(title, paras, date, author):
    body = []
    for i, p in enumerate(paras):
        lead = "<strong>TRIBUNNEWS.COM, JAKARTA</strong> - " if i == 0 else ""
        body.append(f"<p>{lead}{esc(p)}</p>")
        if i == 0:
            body.append('<p><strong>Baca juga: <a href="/2024/11/12/a">Polisi Tangkap Pelaku Pencurian Motor'
                        '</a></strong></p>')
        if i == 2:
            body.append('<p class="baca-juga"><strong>BACA JUGA</strong>: <a href="/b">Cuaca Ekstrem Melanda</a></p>')
            body.append('<div class="ads-placeholder" id="ads-in-article">Advertisement</div>')
    page = f"""<!DOCTYPE html><html lang="id"><head><meta charset="utf-8"><title>{esc(title)} - Tribunnews.com</title>
<meta name="publishdate" content="{date}"><meta name="author" content="{esc(author)}">
<meta property="og:image" content="https://cdn.tribunnews.com/foto/c.jpg"></head><body>
<div id="header"><ul class="menu"><li>Home</li><li>Nasional</li><li>Bisnis</li><li>Sport</li></ul></div>
<div class="main"><h1 id="arttitle">{esc(title)}</h1><div id="penulis">Penulis: {esc(author)}</div>
<div class="grey">Editor: Tim Redaksi</div><div class="pb10 f16"><img src="/c.jpg">
<div class="arial f12">TRIBUNNEWS.COM/IRWAN RISMAWAN - Suasana di lokasi kejadian.</div></div>
<div class="side-article txt-article multi-fontsize">{''.join(body)}</div>
<div class="mb20"><h3>Artikel ini telah tayang di Tribunnews.com</h3></div>
<div class="tag"><h5>Tags:</h5><a>Jakarta</a></div>
<div class="share"><a>Share</a><a>Facebook</a><a>Twitter</a><a>Whatsapp</a></div>
<div id="terkini"><h3>Berita Terkini</h3><ul><li>Harga emas hari ini naik tipis</li><li>Jadwal KRL terbaru</li></ul></div>
</div></body></html>"""
    return page, ["TRIBUNNEWS.COM, JAKARTA - " + paras[0]] + paras[1:]


def main():
    seed = [l.strip() for l in (ROOT / "tests" / "fixtures/seed/jurnalpatrolinews-korea-utara.txt").read_text().splitlines()
            if l.strip()]
    seed_title, seed_paras = seed[0], [l for l in seed[1:] if l != "Komentar"]
    sents = nergrit(60)
    groups = [sents[i:i + 5] for i in range(0, 45, 5)]
    fixtures = []
    from datetime import datetime, timedelta, timezone
    wib = timezone(timedelta(hours=7))
    fixtures.append(("wordpress-seed", wordpress_page(
        title=seed_title, paragraphs=seed_paras, url="https://www.jurnalpatrolinews.co.id/internasional/korea-utara/",
        published=datetime(2024, 11, 12, 10, 0, tzinfo=wib), author="Redaksi",
        related=[("Putin Ancam Barat", "https://www.jurnalpatrolinews.co.id/a"),
                 ("Zelensky Minta Bantuan", "https://www.jurnalpatrolinews.co.id/b")],
        image="https://www.jurnalpatrolinews.co.id/img/x.jpg",
        canonical="https://www.jurnalpatrolinews.co.id/internasional/korea-utara/"), seed_paras,
        {"title": seed_title, "authors": ["Redaksi"], "published_at": "2024-11-12T03:00:00+00:00",
         "canonical_url": "https://www.jurnalpatrolinews.co.id/internasional/korea-utara/"}))
    for k, g in enumerate(groups[:2]):
        title = f"Berita daerah nomor {k + 1} hari ini"
        fixtures.append((f"wordpress-{k + 1}", wordpress_page(
            title=title, paragraphs=g, url=f"https://warta.example/{k}", published=None, author=None,
            related=[("Lihat juga berita lain", "https://warta.example/z")]), g,
            {"title": title, "authors": [], "published_at": None, "canonical_url": None}))
    for k, g in enumerate(groups[2:4]):
        title = f"Pemerintah umumkan kebijakan nomor {k + 1}"
        fixtures.append((f"detik-{k + 1}", detik(title, g, "2024-11-12 10:00:00", "Andi Saputra"), g,
                         {"title": title, "authors": ["Andi Saputra"], "published_at": "2024-11-12T03:00:00+00:00",
                          "canonical_url": None}))
    for k, g in enumerate(groups[4:6]):
        title = f"DPR bahas anggaran tahap {k + 1}"
        page, expected = kompas(title, g, "2024-11-12 10:00:00", "Fika Nurul Ulya")
        fixtures.append((f"kompas-{k + 1}", page, expected,
                         {"title": title, "authors": ["Fika Nurul Ulya"],
                          "published_at": "2024-11-12T03:00:00+00:00",
                          "canonical_url": "https://nasional.kompas.com/read/2024/11/12/10000001/berita"}))
    for k, g in enumerate(groups[6:8]):
        title = f"Polisi ungkap kasus nomor {k + 1}"
        page, expected = tribun(title, g, "2024-11-12 10:00:00", "Reza Deni")
        fixtures.append((f"tribun-{k + 1}", page, expected,
                         {"title": title, "authors": ["Reza Deni"],
                          "published_at": "2024-11-12T10:00:00+00:00", "canonical_url": None}))
    for name, page, paras, meta in fixtures:
        (HERE / f"{name}.html").write_text(page, encoding="utf-8")
        (HERE / f"{name}.json").write_text(json.dumps({"text": "\n".join(paras), **meta}, ensure_ascii=False, indent=1),
                                          encoding="utf-8")


if __name__ == "__main__":
    main()
