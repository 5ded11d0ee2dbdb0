"""Regenerate examples/site/ from ../shared/data (run once; the output is committed).

Indonesian pages: the JurnalPatroliNews seed article, a syndicated near-copy of it, and articles
assembled from NERGrit validation sentences (IndoNLU split; see models/README.md for attribution).
English pages: two pages of the article-extraction-benchmark (MIT), served as fetched.
"""

import gzip
import json
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.pages import atom_feed, rss_feed, wordpress_page  # noqa: E402
from warta.transforms.segment import detokenize  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
SITE = ROOT / "examples" / "site"
WIB = timezone(timedelta(hours=7))


def nergrit_paragraphs(n_articles, per):
    sents, cur = [], []
    for line in (DATA / "ner/nergrit/valid.txt").read_text().splitlines():
        if not line.strip():
            if len(cur) > 12:
                sents.append(detokenize(cur))
            cur = []
        else:
            cur.append(line.split("\t")[0])
    return [sents[i * per:(i + 1) * per] for i in range(n_articles)]


def main():
    seed_file = sorted((DATA / "seed").iterdir())[0]
    lines = [l.strip() for l in seed_file.read_text().splitlines() if l.strip()]
    seed_title, seed_paras = lines[0], [l for l in lines[1:] if l != "Komentar"]
    B = "http://warta-example.invalid"
    (SITE / "patroli").mkdir(parents=True, exist_ok=True)
    (SITE / "kabar").mkdir(parents=True, exist_ok=True)
    (SITE / "world").mkdir(parents=True, exist_ok=True)
    t0 = datetime(2024, 11, 12, 10, 0, tzinfo=WIB)
    groups = nergrit_paragraphs(4, 6)
    patroli = [dict(title=seed_title, slug="korea-utara-pakta-pertahanan", paras=seed_paras, published=t0,
                    author="Redaksi JurnalPatroliNews")]
    for i, g in enumerate(groups[:2]):
        patroli.append(dict(title=g[0][:80].rstrip(",. ") , slug=f"berita-{i + 1}", paras=g,
                            published=t0 + timedelta(hours=i + 1), author="Tim Redaksi"))
    kabar = [dict(title="Korut resmi bergabung dalam perang Rusia-Ukraina", slug="korut-perang",
                  paras=["Kabar.demo – Pyongyang kini resmi menjadi sekutu militer Moskow."] + seed_paras
                  + ["Artikel ini telah tayang sebelumnya di JurnalPatroliNews."],
                  published=t0 + timedelta(hours=5), author="Kabar Demo")]
    for i, g in enumerate(groups[2:]):
        kabar.append(dict(title=g[0][:80].rstrip(",. "), slug=f"kabar-{i + 1}", paras=g,
                          published=t0 + timedelta(hours=6 + i), author=None))
    for outlet, arts, site_name in (("patroli", patroli, "JurnalPatroli Demo"), ("kabar", kabar, "Kabar Demo")):
        items = []
        for a in arts:
            link = f"{B}/{outlet}/{a['slug']}.html"
            related = [("Harga beras naik lagi", f"{B}/{outlet}/beras.html"),
                       ("Gempa guncang Sulawesi", f"{B}/{outlet}/gempa.html")]
            page = wordpress_page(title=a["title"], paragraphs=a["paras"], url=link, published=a["published"],
                                  author=a["author"], site=site_name, related=related,
                                  image=f"{B}/{outlet}/img/{a['slug']}.jpg", canonical=link)
            (SITE / outlet / f"{a['slug']}.html").write_text(page)
            items.append(dict(title=a["title"], link=link + "?utm_source=rss&utm_medium=feed",
                              published=a["published"], author=a["author"]))
        lang = "id" if outlet == "patroli" else None
        (SITE / outlet / "feed.xml").write_text(rss_feed(title=site_name, link=f"{B}/{outlet}/", items=items,
                                                        language=lang))
    truth = json.loads((DATA / "extraction/ground-truth.json").read_text())
    en_items = []
    by_size = sorted(truth, key=lambda i: (DATA / f"extraction/html/{i}.html.gz").stat().st_size)
    for n, page_id in enumerate(by_size[20:22]):
        raw = gzip.decompress((DATA / f"extraction/html/{page_id}.html.gz").read_bytes()).decode("utf-8")
        (SITE / "world" / f"story-{n + 1}.html").write_text(raw)
        en_items.append(dict(title=f"World story {n + 1}", link=f"{B}/world/story-{n + 1}.html",
                             published=datetime(2024, 11, 11, 12 + n, tzinfo=timezone.utc)))
    (SITE / "world" / "atom.atom").write_text(atom_feed(title="World Demo", link=f"{B}/world/", items=en_items))
    (SITE / "robots.txt").write_text("User-agent: *\nDisallow: /private/\n")
    (SITE / "feeds.yaml").write_text(
        "# The bundled offline example: served from loopback by `python run_local.py --example`.\n"
        "feeds:\n"
        f"  - name: jurnalpatroli-demo\n    url: {B}/patroli/feed.xml\n    language: id\n"
        f"  - name: kabar-demo\n    url: {B}/kabar/feed.xml\n"
        f"  - name: world-demo\n    url: {B}/world/atom.atom\n")


if __name__ == "__main__":
    main()
