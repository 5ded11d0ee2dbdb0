"""The bundled offline example, plus page and feed builders shared with the tests and benchmarks.

``examples/site/`` holds sample outlets (Indonesian and English) as static files with ``http://warta-example.invalid`` where
the server address goes. ``serve_example()`` serves them on loopback and yields a feeds file for them.
"""

from __future__ import annotations

import html
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Iterator

import yaml

from pipeline.loopback import LoopbackServer, Route

SITE = Path(__file__).resolve().parents[1] / "examples" / "site"
EXAMPLE_PORT = 8737
CONTENT_TYPES = {".xml": "application/rss+xml; charset=utf-8", ".atom": "application/atom+xml; charset=utf-8",
                 ".html": "text/html; charset=utf-8", ".txt": "text/plain; charset=utf-8"}


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


def site_routes(base: str, site: Path = SITE) -> dict[str, Route]:
    routes = {}
    for f in sorted(site.rglob("*")):
        if f.is_file() and f.suffix in CONTENT_TYPES and f.name != "feeds.yaml":
            body = f.read_text(encoding="utf-8").replace("http://warta-example.invalid", base)
            routes["/" + f.relative_to(site).as_posix()] = Route(body, CONTENT_TYPES[f.suffix])
    return routes


@contextmanager
def serve_example(site: Path = SITE) -> Iterator[tuple[Path, dict]]:
    """Serve the sample outlets; yield (feeds file, setting overrides suited to a loopback demo)."""
    try:  # a fixed port keeps the example's URLs stable from run to run
        server = LoopbackServer(port=EXAMPLE_PORT)
    except OSError:
        server = LoopbackServer()
    with server:
        server.routes.update(site_routes(server.base, site))
        spec = yaml.safe_load((site / "feeds.yaml").read_text(encoding="utf-8"))
        for feed in spec["feeds"]:
            feed["url"] = feed["url"].replace("http://warta-example.invalid", server.base)
        with tempfile.TemporaryDirectory(prefix="warta-example-") as tmp:
            feeds_file = Path(tmp) / "feeds.yaml"
            feeds_file.write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
            yield feeds_file, {"http.host_delay": 0.05}
