"""A loopback multi-host news world for benchmarks: many outlets, each its own host (127.0.0.N) with an
RSS feed and realistic Indonesian article pages whose text is NERGrit/UD sentences from ../shared/data."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"

from bench.shared import require  # noqa: E402
from tests.pages import rss_feed, wordpress_page  # noqa: E402
from warta.pipeline.loopback import LoopbackServer, Route  # noqa: E402
from warta.transforms.segment import detokenize  # noqa: E402


def indonesian_sentences() -> list[str]:
    require(DATA / "ner/nergrit", "the benchmark news world")
    out, cur = [], []
    for f in ("ner/nergrit/train.txt", "ner/nergrit/valid.txt"):
        for line in (DATA / f).read_text(encoding="utf-8").splitlines():
            if not line.strip():
                if len(cur) >= 8:
                    out.append(detokenize(cur))
                cur = []
            else:
                cur.append(line.split("\t")[0])
    for f in sorted((DATA / "ud").glob("*.conllu")):
        out += [line[9:].strip() for line in f.read_text(encoding="utf-8").splitlines()
                if line.startswith("# text = ") and len(line) > 60]
    return out


def build_world(n_articles: int, n_outlets: int = 20, seed: int = 7, sentences_per_article: int = 12):
    """Routes per outlet: {outlet index: {path: Route}} plus the article texts (for the physical-limit run)."""
    rng = random.Random(seed)
    sents = indonesian_sentences()
    t0 = datetime(2024, 11, 1, tzinfo=timezone(timedelta(hours=7)))
    per = [n_articles // n_outlets + (1 if i < n_articles % n_outlets else 0) for i in range(n_outlets)]
    outlets, texts = [], []
    for o, count in enumerate(per):
        routes: dict[str, Route] = {"/robots.txt": Route("User-agent: *\nDisallow: /admin/\n", "text/plain")}
        items = []
        for a in range(count):
            paras = []
            for _ in range(rng.randint(4, 6)):
                paras.append(" ".join(rng.choice(sents) for _ in range(max(1, sentences_per_article // 5))))
            slug = f"/berita/{o}-{a}.html"
            published = t0 + timedelta(minutes=7 * a + o)
            routes[slug] = Route(wordpress_page(
                title=f"Berita {o}-{a}: " + paras[0][:60], paragraphs=paras, url=slug, published=published,
                author=f"Redaksi {o}", site=f"Outlet {o}", related=[("Baca berita lain", "/lain.html")]))
            items.append({"title": f"Berita {o}-{a}", "link": slug, "published": published})
            texts.append("\n".join(paras))
        outlets.append((routes, items))
    return outlets, texts


@contextmanager
def serve_world(n_articles: int, n_outlets: int = 20, seed: int = 7) -> Iterator[tuple[list[tuple[str, str]], list[str]]]:
    """Serve the world; yields ([(feed name, feed url)], article texts)."""
    outlets, texts = build_world(n_articles, n_outlets, seed)
    with ExitStack() as stack:
        feeds = []
        for o, (routes, items) in enumerate(outlets):
            server = stack.enter_context(LoopbackServer(host=f"127.0.0.{o + 2}"))
            for path, route in routes.items():
                server.routes[path] = route
            absolute = [{**it, "link": server.base + it["link"]} for it in items]
            server.routes["/feed.xml"] = Route(rss_feed(title=f"Outlet {o}", link=server.base + "/", items=absolute),
                                               "application/rss+xml")
            feeds.append((f"outlet{o:03d}", server.url("/feed.xml")))
        yield feeds, texts


def feeds_yaml(feeds: list[tuple[str, str]], path: Path) -> Path:
    lines = ["feeds:"] + [f"  - name: {n}\n    url: {u}\n    language: id" for n, u in feeds]
    path.write_text("\n".join(lines) + "\n")
    return path
