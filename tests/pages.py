"""Page and feed builders for the tests and benchmarks (and for regenerating the example site): an article
page shaped like common Indonesian WordPress themes, RSS 2.0 and Atom feeds."""

from __future__ import annotations

import html
from datetime import datetime, timezone
from email.utils import format_datetime


def wordpress_page(*, title: str, paragraphs: list[str], url: str, published: datetime | None, author: str | None,
                   site: str = "Warta Demo", related: list[tuple[str, str]] = (), image: str | None = None,
                   canonical: str | None = None, lang: str = "id") -> str:
    """An article page shaped like common Indonesian WordPress news themes, boilerplate included."""
    esc = html.escape
    body = []
    for i, p in enumerate(paragraphs):
        body.append(f"<p>{esc(p)}</p>")
        if i == 1:
            body.append('<div class="ads"><span>ADVERTISEMENT</span></div>')
            body.append('<p class="scroll">SCROLL TO CONTINUE WITH CONTENT</p>')
        if i == 2 and related:
            t, u = related[0]
            body.append(f'<p><strong>Baca Juga:</strong> <a href="{esc(u)}">{esc(t)}</a></p>')
    for t, u in related[1:]:
        body.append(f'<p>BACA JUGA: <a href="{esc(u)}">{esc(t)}</a></p>')
    meta = []
    if canonical:
        meta.append(f'<link rel="canonical" href="{esc(canonical)}">')
    if published:
        meta.append(f'<meta property="article:published_time" content="{published.isoformat()}">')
    if author:
        meta.append(f'<meta name="author" content="{esc(author)}">')
    if image:
        meta.append(f'<meta property="og:image" content="{esc(image)}">')
    meta.append(f'<meta property="og:title" content="{esc(title)}">')
    figure = (f'<figure><img src="{esc(image)}"><figcaption>Foto: Dok. {esc(site)}</figcaption></figure>'
              if image else "")
    return f"""<!DOCTYPE html>
<html lang="{lang}"><head><meta charset="utf-8"><title>{esc(title)} - {esc(site)}</title>
{chr(10).join(meta)}
</head><body>
<header class="site-header"><nav><a href="/">Beranda</a> <a href="/nasional">Nasional</a>
<a href="/internasional">Internasional</a> <a href="/olahraga">Olahraga</a></nav></header>
<main><article class="post">
<h1 class="entry-title">{esc(title)}</h1>
<div class="entry-meta">Oleh {esc(author or site)} &middot; {published.strftime('%d %B %Y %H:%M') if published else ''}</div>
{figure}
<div class="entry-content">
{chr(10).join(body)}
</div>
<div class="share">Bagikan: <a href="#">Facebook</a> <a href="#">Twitter</a> <a href="#">WhatsApp</a></div>
</article>
<section id="comments"><h3>Komentar</h3><p>Belum ada komentar.</p></section>
<aside class="sidebar"><h3>Berita Terpopuler</h3><ul><li><a href="/a">Harga cabai naik</a></li>
<li><a href="/b">Timnas menang</a></li></ul></aside></main>
<footer>&copy; 2024 {esc(site)}. Hak cipta dilindungi.</footer></body></html>"""


def rss_feed(*, title: str, link: str, items: list[dict], language: str | None = "id") -> str:
    """RSS 2.0; items: {title, link, published (datetime), author?, description?}."""
    out = []
    for it in items:
        pub = f"<pubDate>{format_datetime(it['published'])}</pubDate>" if it.get("published") else ""
        author = f"<dc:creator>{html.escape(it['author'])}</dc:creator>" if it.get("author") else ""
        out.append(f"<item><title>{html.escape(it['title'])}</title><link>{html.escape(it['link'])}</link>"
                   f"<guid>{html.escape(it['link'])}</guid>{pub}{author}"
                   f"<description>{html.escape(it.get('description', ''))}</description></item>")
    lang = f"<language>{language}</language>" if language else ""
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<rss version="2.0" '
            f'xmlns:dc="http://purl.org/dc/elements/1.1/"><channel><title>{html.escape(title)}</title>'
            f"<link>{html.escape(link)}</link>{lang}{''.join(out)}</channel></rss>")


def atom_feed(*, title: str, link: str, items: list[dict]) -> str:
    out = []
    for it in items:
        when = (it.get("published") or datetime(2024, 1, 1, tzinfo=timezone.utc)).isoformat()
        out.append(f"<entry><title>{html.escape(it['title'])}</title><link href=\"{html.escape(it['link'])}\"/>"
                   f"<id>{html.escape(it['link'])}</id><updated>{when}</updated><published>{when}</published>"
                   + (f"<author><name>{html.escape(it['author'])}</name></author>" if it.get("author") else "")
                   + "</entry>")
    return (f'<?xml version="1.0" encoding="utf-8"?>\n<feed xmlns="http://www.w3.org/2005/Atom">'
            f"<title>{html.escape(title)}</title><link href=\"{html.escape(link)}\"/><id>{html.escape(link)}</id>"
            f"<updated>2024-11-12T00:00:00Z</updated>{''.join(out)}</feed>")
