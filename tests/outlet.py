"""A WordPress-like outlet on loopback for the backfill tests: paged feed, robots.txt, sitemap index.

``posts`` posts spread evenly over the two years before ``END`` (newest first), each on its own small
page with distinct text. The feed serves ``per_page`` items per page at ``/feed/`` and ``/feed/?paged=N``
(404 past the last page). ``robots.txt`` disallows ``/rahasia/`` (every 50th post lives there) and lists
``/sitemap_index.xml``, an index of three sitemaps by age: the oldest plain (its ``lastmod`` more than a
year back), the middle one gzipped, the newest a Google News sitemap.
"""

from __future__ import annotations

import gzip
import random
from datetime import date, datetime, timedelta, timezone

from pages import rss_feed, wordpress_page

from warta.pipeline.loopback import Route

END = datetime(2024, 11, 12, 12, 0, tzinfo=timezone.utc)
SINCE = (END - timedelta(days=365)).date()
WORDS = ("pemerintah rakyat kota desa harga beras pasar sekolah guru murid jalan banjir hujan polisi "
         "presiden menteri rapat warga bantuan dana proyek jembatan listrik air bersih rumah sakit dokter "
         "pasien petani nelayan ikan laut pulau gunung hutan sungai sawah panen kopi teh gula minyak "
         "bensin mobil motor kereta bandara kapal pelabuhan kantor bank uang pajak ekspor impor pabrik "
         "buruh gaji kerja usaha toko online digital internet sinyal telepon berita media wartawan").split()


class Outlet:
    def __init__(self, server, posts: int = 2000, per_page: int = 50):
        self.server, self.base, self.per_page = server, server.base, per_page
        step = timedelta(days=730) / posts
        self.posts = []  # newest first: (url, published, title)
        for i in range(posts):
            published = END - i * step
            folder = "rahasia" if i % 50 == 7 else f"{published:%Y/%m}"
            url = f"{self.base}/{folder}/berita-{i}/"
            self.posts.append((url, published, f"Berita nomor {i}"))
        r = server.routes
        for i, (url, published, title) in enumerate(self.posts):
            rng = random.Random(i)
            paras = [" ".join(rng.choice(WORDS) for _ in range(40)).capitalize() + "." for _ in range(3)]
            r[url[len(self.base):]] = Route(wordpress_page(title=title, paragraphs=paras, url=url,
                                                           published=published, author="Redaksi"))
        pages = [self.posts[i:i + per_page] for i in range(0, posts, per_page)]
        self.feed_pages = len(pages)
        for n, chunk in enumerate(pages, 1):
            body = rss_feed(title="Outlet", link=self.base + "/", items=[
                {"title": t, "link": u, "published": p, "author": "Redaksi"} for u, p, t in chunk])
            r["/feed/" if n == 1 else f"/feed/?paged={n}"] = Route(body, "application/rss+xml")
        r["/robots.txt"] = Route(f"User-agent: *\nDisallow: /rahasia/\n\nSitemap: {self.base}/sitemap_index.xml\n",
                                 "text/plain")
        third = posts // 3
        newest, middle, oldest = self.posts[:third], self.posts[third:2 * third], self.posts[2 * third:]
        r["/sitemap-old.xml"] = Route(urlset(oldest), "application/xml")
        r["/sitemap-2.xml.gz"] = Route(gzip.compress(urlset(middle).encode()), "application/x-gzip")
        r["/news-sitemap.xml"] = Route(urlset(newest, news=True), "application/xml")
        children = [("/news-sitemap.xml", newest), ("/sitemap-2.xml.gz", middle), ("/sitemap-old.xml", oldest)]
        r["/sitemap_index.xml"] = Route(
            '<?xml version="1.0" encoding="UTF-8"?>\n<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
            + "".join(f"<sitemap><loc>{self.base}{path}</loc><lastmod>{items[0][1].isoformat()}</lastmod></sitemap>"
                      for path, items in children) + "</sitemapindex>", "application/xml")
        # another site's post listed in the news sitemap: not this outlet's
        self.foreign = "http://elsewhere.example/berita/"

    def in_range(self, since: date = SINCE) -> set[str]:
        """Posts published on or after ``since`` (UTC days) that robots.txt allows."""
        return {u for u, p, _ in self.posts if p.date() >= since and "/rahasia/" not in u}

    def disallowed_in_range(self, since: date = SINCE) -> set[str]:
        return {u for u, p, _ in self.posts if p.date() >= since and "/rahasia/" in u}

    def feeds_yaml(self, path):
        path.write_text(f"feeds:\n  - name: outlet\n    url: {self.base}/feed/\n    language: id\n")
        return path


def urlset(posts, news: bool = False) -> str:
    ns = ' xmlns:news="http://www.google.com/schemas/sitemap-news/0.9"' if news else ""
    items = []
    for url, published, title in posts:
        extra = (f"<news:news><news:publication><news:name>Outlet</news:name><news:language>id</news:language>"
                 f"</news:publication><news:publication_date>{published.isoformat()}</news:publication_date>"
                 f"<news:title>{title}</news:title></news:news>") if news else ""
        items.append(f"<url><loc>{url}</loc><lastmod>{published.isoformat()}</lastmod>{extra}</url>")
    if news:
        items.append("<url><loc>http://elsewhere.example/berita/</loc></url>")
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"'
            f"{ns}>{''.join(items)}</urlset>")
