"""Shared fixtures: a loopback news world (feeds, pages, failure cases) and helpers to read the lake."""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


from pages import atom_feed, rss_feed, wordpress_page  # noqa: E402

from warta.pipeline.loopback import LoopbackServer, Route  # noqa: E402

# Python code that drops this checkout's editable install from the interpreter (its import finder would answer
# before a wheel's files): put it first in `python -c` code that must import warta from an installed wheel.
WITHOUT_CHECKOUT = ("import sys; "
                    "sys.meta_path = [f for f in sys.meta_path if '__editable__' not in getattr(f, '__module__', '')]; "
                    "sys.path = [p for p in sys.path if '__editable__' not in p]; ")
FIXTURES = ROOT / "tests" / "fixtures"  # tests read only these, never the workspace's shared data
WIB = timezone(timedelta(hours=7))
T0 = datetime(2024, 11, 12, 10, 0, tzinfo=WIB)


def seed_article() -> tuple[str, list[str]]:
    lines = [l.strip() for l in (FIXTURES / "seed/jurnalpatrolinews-korea-utara.txt").read_text().splitlines()
             if l.strip()]
    return lines[0], [l for l in lines[1:] if l != "Komentar"]


def english_pages(n: int = 2) -> list[str]:
    """English article pages (made for the tests, with site boilerplate)."""
    return [(FIXTURES / f"en/story-{i}.html").read_text() for i in range(n)]


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def slow_handler(delay: float):
    def handle(req):
        time.sleep(delay)
        try:
            req._send(200, b"<html><body>late</body></html>", "text/html")
        except OSError:
            pass
    return handle


class World:
    """A news world on one loopback server: two Indonesian RSS outlets, one English Atom outlet,
    and every failure case the pipeline must turn into an errors/ row."""

    def __init__(self, server: LoopbackServer):
        self.server = server
        self.base = server.base
        title, paras = seed_article()
        self.seed_title, self.seed_paras = title, paras
        self.id_items: list[dict] = []
        r = server.routes
        r["/robots.txt"] = Route("User-agent: *\nDisallow: /private/\n", "text/plain")
        for i in range(3):
            slug = f"artikel-{i}"
            ps = paras if i == 0 else [f"Paragraf {j} berita {i}: " + p for j, p in enumerate(paras[i:i + 6])]
            self.add_id_page(slug, title if i == 0 else f"Berita nomor {i}", ps, T0 + timedelta(hours=i))
        # failure cases, linked from the same feed
        self.failures = {
            "404": "/id/hilang.html", "500": "/id/rusak.html", "timeout": "/id/lambat.html",
            "pdf": "/id/dokumen.pdf", "oversize": "/id/besar.html", "robots": "/private/rahasia.html",
            "unreachable": f"http://127.0.0.1:{closed_port()}/id/mati.html",
        }
        r["/id/rusak.html"] = Route("error", status=500)
        r["/id/lambat.html"] = slow_handler(5)
        r["/id/dokumen.pdf"] = Route(b"%PDF-1.4 ...", "application/pdf")
        r["/id/besar.html"] = Route("<html><body>" + "<p>isi berita panjang sekali.</p>" * 60000 + "</body></html>")
        r["/private/rahasia.html"] = Route("<html><body><p>secret</p></body></html>")
        latin = wordpress_page(title="Café à São Paulo", paragraphs=[
            "Le café était délicieux à São Paulo, dit-il, et la crème brûlée aussi." * 3] * 3,
            url=self.base + "/id/latin.html", published=T0, author="Zoë", lang="fr").replace("utf-8", "iso-8859-1")
        r["/id/latin.html"] = Route(latin.encode("iso-8859-1"), "text/html; charset=iso-8859-1")
        self.extra_links = [self.base + p if p.startswith("/") else p for p in self.failures.values()]
        self.extra_links.append(self.base + "/id/latin.html")
        self.publish_id_feed()
        # English outlet (Atom) with two pages; one of them also linked with tracking params
        en_items = []
        for n, page in enumerate(english_pages(2)):
            r[f"/en/story-{n}.html"] = Route(page)
            en_items.append({"title": f"Story {n}", "link": f"{self.base}/en/story-{n}.html",
                             "published": datetime(2024, 11, 11, 12 + n, tzinfo=timezone.utc)})
        r["/en/atom.xml"] = Route(atom_feed(title="EN", link=self.base + "/en/", items=en_items),
                                  "application/atom+xml")
        # a second Indonesian outlet that links the first outlet's article with tracking params
        r["/kabar/feed.xml"] = Route(rss_feed(title="Kabar", link=self.base + "/kabar/", items=[
            {"title": title, "link": self.base + "/id/artikel-0.html?utm_source=kabar&utm_medium=rss#top",
             "published": T0}]), "application/rss+xml")
        r["/bad/feed.xml"] = Route("<html><body><h1>Not a feed</h1></body></html>", "text/html")
        r["/broken/feed.xml"] = Route(  # malformed (unclosed tags, bad entity) but readable
            f"<?xml version='1.0'?><rss version='2.0'><channel><title>Broken &nbsp; feed</title>"
            f"<item><title>Berita nomor 1</title><link>{self.base}/id/artikel-1.html</link>"
            f"<pubDate>Tue, 12 Nov 2024 11:00:00 +0700</pubDate></item><item><title>x", "application/rss+xml")

    def add_id_page(self, slug: str, title: str, paras: list[str], published: datetime, author: str = "Redaksi"):
        url = f"{self.base}/id/{slug}.html"
        self.server.routes[f"/id/{slug}.html"] = Route(wordpress_page(
            title=title, paragraphs=paras, url=url, published=published, author=author,
            related=[("Harga beras naik", self.base + "/id/beras.html")], canonical=url))
        self.id_items.append({"title": title, "link": url, "published": published, "author": author})

    def publish_id_feed(self):
        items = self.id_items + [{"title": "gagal", "link": u, "published": T0} for u in self.extra_links]
        self.server.routes["/id/feed.xml"] = Route(
            rss_feed(title="Patroli", link=self.base + "/id/", items=items), "application/rss+xml")

    def feeds_yaml(self, path: Path, *names: str) -> Path:
        feeds = {
            "patroli": (f"{self.base}/id/feed.xml", "id"), "kabar": (f"{self.base}/kabar/feed.xml", "id"),
            "en": (f"{self.base}/en/atom.xml", None), "bad": (f"{self.base}/bad/feed.xml", None),
            "broken": (f"{self.base}/broken/feed.xml", "id"),
            "down": (f"http://127.0.0.1:{closed_port()}/feed.xml", None),
            "missing": (f"{self.base}/nope/feed.xml", None),
        }
        lines = ["feeds:"]
        for n in names or feeds:
            url, lang = feeds[n]
            lines += [f"  - name: {n}", f"    url: {url}"] + ([f"    language: {lang}"] if lang else [])
        path.write_text("\n".join(lines) + "\n")
        return path


@pytest.fixture
def server():
    with LoopbackServer() as s:
        yield s


@pytest.fixture
def world(server):
    return World(server)


FAST_SETTINGS = """
http:
  host_delay: 0
  total_timeout: 3
  read_timeout: 2
  connect_timeout: 1
  retries: 1
  backoff: 0.01
  max_bytes: 1000000
ner:
  batch_size: 8
"""


@pytest.fixture
def fast_config(tmp_path) -> Path:
    p = tmp_path / "settings.yaml"
    p.write_text(FAST_SETTINGS)
    return p


@pytest.fixture
def s3():
    """An S3 API on loopback (moto server) with bucket `lake`; yields the environment that points clients at it."""
    pytest.importorskip("moto")
    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {"FSSPEC_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    boto3.client("s3", endpoint_url=env["FSSPEC_S3_ENDPOINT_URL"], aws_access_key_id="test",
                 aws_secret_access_key="test", region_name="us-east-1").create_bucket(Bucket="lake")
    yield env
    server.stop()


# -- tiny Stanza NER models trained here (tests/test_ner.py, tests/test_ner_int8.py): once per session --

PEOPLE = ["Alice Smith", "Bob Jones", "Carol White", "David Brown", "Emma Green", "Frank Black"]
PLACES = ["Paris", "London", "Berlin", "Madrid", "Rome", "Vienna"]
ORGS = ["Acme Corp", "Globex Inc", "Initech Ltd", "Umbrella Corp", "Hooli Inc", "Vandelay Ltd"]
TEMPLATES = ["{p} visited {l} with {o} .", "{o} hired {p} in {l} .", "In {l} , {p} joined {o} .",
             "{p} said {o} will open an office in {l} ."]


def tiny_corpus(n: int, seed: int) -> list[list[dict]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        p, l, o = rng.choice(PEOPLE), rng.choice(PLACES), rng.choice(ORGS)
        sent = []
        for tok in rng.choice(TEMPLATES).split():
            if tok in ("{p}", "{l}", "{o}"):
                name, label = {"{p}": (p, "PER"), "{l}": (l, "LOC"), "{o}": (o, "ORG")}[tok]
                for i, w in enumerate(name.split()):
                    sent.append({"text": w, "ner": ("B-" if i == 0 else "I-") + label})
            else:
                sent.append({"text": tok, "ner": "O"})
        out.append(sent)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """Train a real (tiny) Stanza NER model for language 'en' with Stanza's own trainer."""
    import numpy as np
    from stanza.models.common.pretrain import Pretrain

    base = tmp_path_factory.mktemp("models")
    lang = base / "en"
    lang.mkdir()
    train, dev = tiny_corpus(48, 1), tiny_corpus(12, 2)
    (base / "train.json").write_text(json.dumps(train))
    (base / "dev.json").write_text(json.dumps(dev))
    vocab = sorted({t["text"].lower() for s in train + dev for t in s})
    rng = np.random.default_rng(0)
    with open(base / "vec.txt", "w") as fh:
        fh.write(f"{len(vocab)} 16\n")
        for w in vocab:
            fh.write(w + " " + " ".join(f"{x:.4f}" for x in rng.normal(size=16)) + "\n")
    Pretrain(str(lang / "ner_pretrain.pt"), str(base / "vec.txt")).load()
    subprocess.run([sys.executable, "-m", "stanza.models.ner_tagger", "--mode", "train", "--cpu",
                    "--train_file", str(base / "train.json"), "--eval_file", str(base / "dev.json"),
                    "--wordvec_pretrain_file", str(lang / "ner_pretrain.pt"), "--shorthand", "en_tiny",
                    "--save_dir", str(lang), "--save_name", "ner.pt", "--max_steps", "150",
                    "--eval_interval", "50", "--batch_size", "8", "--hidden_dim", "32",
                    "--char_hidden_dim", "16", "--char_emb_dim", "16", "--lr", "0.3"],
                   check=True, capture_output=True, timeout=600)
    assert (lang / "ner.pt").exists()
    return base


@pytest.fixture(scope="session")
def charlm_stanza_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A Stanza resources folder whose default English NER package, like Stanza's own, needs word vectors and
    forward/backward character language models (tiny, random) and was trained with them."""
    import shutil

    import torch
    from stanza.models.common.char_model import CharacterLanguageModel
    from stanza.models.common.vocab import CharVocab

    base = tmp_path_factory.mktemp("stanza_resources")
    en = base / "en"
    vocab = {"char": CharVocab([" ".join(t["text"] for t in s) for s in tiny_corpus(60, 3)], "en")}
    args = {"char_emb_dim": 8, "char_hidden_dim": 16, "char_num_layers": 1, "char_dropout": 0.0,
            "char_rec_dropout": 0.0, "char_unit_dropout": 0.0}
    torch.manual_seed(0)
    for direction in ("forward", "backward"):
        CharacterLanguageModel(args, vocab, is_forward_lm=direction == "forward").save(
            str(en / f"{direction}_charlm" / "tiny.pt"))
    (en / "pretrain").mkdir()
    shutil.copy(tiny_model_dir / "en" / "ner_pretrain.pt", en / "pretrain" / "tiny.pt")
    subprocess.run([sys.executable, "-m", "stanza.models.ner_tagger", "--mode", "train", "--cpu",
                    "--train_file", str(tiny_model_dir / "train.json"), "--eval_file", str(tiny_model_dir / "dev.json"),
                    "--wordvec_pretrain_file", str(en / "pretrain" / "tiny.pt"), "--shorthand", "en_tiny",
                    "--charlm", "--charlm_shorthand", "en_tiny",
                    "--charlm_forward_file", str(en / "forward_charlm" / "tiny.pt"),
                    "--charlm_backward_file", str(en / "backward_charlm" / "tiny.pt"),
                    "--save_dir", str(en / "ner"), "--save_name", "tiny_charlm.pt", "--max_steps", "100",
                    "--eval_interval", "50", "--batch_size", "8", "--hidden_dim", "32",
                    "--char_hidden_dim", "16", "--char_emb_dim", "16", "--lr", "0.3"],
                   check=True, capture_output=True, timeout=600)
    deps = [{"model": m, "package": "tiny"} for m in ("pretrain", "forward_charlm", "backward_charlm")]
    (base / "resources.json").write_text(json.dumps({"en": {
        "lang_name": "English", "default_processors": {"ner": "tiny_charlm"},
        "ner": {"tiny_charlm": {"md5": "-", "dependencies": deps}}}}))
    return base
