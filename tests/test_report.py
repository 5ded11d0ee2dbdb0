"""warta report / warta stats on a lake built by the real pipeline (two runs on the loopback world, NER on):
the page's numbers against DuckDB queries on the same lake, the page in headless Chromium, the stats table."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from datetime import date, timedelta
from html.parser import HTMLParser
from pathlib import Path

import duckdb
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import FAST_SETTINGS, ROOT, T0, World
from pages import rss_feed, wordpress_page

from warta.lake.metrics import collect
from warta.pipeline.loopback import LoopbackServer, Route
from warta.pipeline.report import key_numbers, report, stats

pytestmark = pytest.mark.slow
DAY1, DAY2 = date(2024, 11, 12), date(2024, 11, 13)
NEWS = ("Gubernur Jawa Barat Ridwan Kamil meresmikan jembatan baru di Bandung pada hari Rabu bersama "
        "perwakilan Bank Indonesia dan Kementerian Pekerjaan Umum.")  # new names on the second day


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run_local.py"), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Path:
    """Two runs: the world (with a near-copy on a second outlet), then two new articles a day later."""
    tmp = tmp_path_factory.mktemp("report")
    config = tmp / "settings.yaml"
    config.write_text(FAST_SETTINGS)
    out = tmp / "lake"
    with LoopbackServer() as server:
        world = World(server)
        copy = [f"Paragraf {j} berita 1: " + p for j, p in enumerate(world.seed_paras[1:7])]
        copy[0] = copy[0].replace("Paragraf 0", "Bagian pertama")
        url = world.base + "/kabar/salinan.html"
        server.routes["/kabar/salinan.html"] = Route(wordpress_page(
            title="Salinan berita", paragraphs=copy, url=url, published=T0 + timedelta(hours=3), author="Kabar"))
        server.routes["/kabar/feed.xml"] = Route(rss_feed(title="Kabar", link=world.base + "/kabar/", items=[
            {"title": world.seed_title, "link": world.base + "/id/artikel-0.html?utm_source=kabar", "published": T0},
            {"title": "Salinan berita", "link": url, "published": T0 + timedelta(hours=3)}]), "application/rss+xml")
        feeds = world.feeds_yaml(tmp / "feeds.yaml")
        args = ("--feeds", str(feeds), "--output", str(out), "--config", str(config))
        res = run_cli(*args)
        assert res.returncode == 0, res.stderr[-3000:]
        for i in (7, 8):
            world.add_id_page(f"baru-{i}", f"Berita baru {i}", [NEWS] + [
                f"Kalimat {j} berita baru {i}. " + p for j, p in enumerate(world.seed_paras[2:8])],
                T0 + timedelta(days=1, hours=i))
        world.publish_id_feed()
        res = run_cli(*args)
        assert res.returncode == 0, res.stderr[-3000:]
    return out


def sql(query: str) -> list[tuple]:
    return duckdb.sql(query).fetchall()


def page_metrics(html: str) -> dict:
    return json.loads(re.search(r'<script type="application/json" id="warta-metrics">(.*?)</script>', html,
                                re.S).group(1).replace("<\\/", "</"))


def external_references(html: str) -> list[str]:
    """src/href attributes of the page's tags (script bodies are not parsed as tags)."""
    found = []

    class Refs(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.extend(v for k, v in attrs if k in ("src", "href") and v and not v.startswith("#"))

    Refs().feed(html)
    return found


def plotly_figures(html: str) -> list[list[dict]]:
    """The trace lists passed to Plotly.newPlot in the page."""
    decoder, figures = json.JSONDecoder(), []
    for m in re.finditer(r'Plotly\.newPlot\(\s*"[^"]+",\s*', html):
        figures.append(decoder.raw_decode(html, m.end())[0])
    return figures


@pytest.fixture(scope="module")
def page(lake, tmp_path_factory) -> tuple[Path, str]:
    to = tmp_path_factory.mktemp("page") / "report.html"
    assert report(["--output", str(lake), "--to", str(to)]) == 0
    return to, to.read_text(encoding="utf-8")


def test_report_numbers_match_duckdb(lake, page):
    _, html = page
    m = page_metrics(html)
    arts = f"read_parquet('{lake}/articles/**/*.parquet', hive_partitioning=true)"
    errs = f"read_parquet('{lake}/errors/**/*.parquet', hive_partitioning=true)"
    # the window ends on the latest article day; 7 days by default
    assert (m["window"]["content_start"], m["window"]["content_end"]) == (str(DAY2 - timedelta(days=6)), str(DAY2))

    # 1. articles per outlet per day, against the lake's own date= partitions
    expected = {(s, str(d)): n for s, d, n in sql(f"select source, date, count(*) from {arts} group by all")}
    assert {(r["source"], r["day"]): r["articles"] for r in m["articles_per_day"]} == expected
    assert expected[("patroli", str(DAY2))] == 2
    assert set(m["outlets"]) == {"patroli", "kabar", "en", "bad", "broken", "down", "missing"}
    heatmap = plotly_figures(html)[0][0]
    assert heatmap["type"] == "heatmap" and heatmap["y"] == m["outlets"]
    for source, row in zip(heatmap["y"], heatmap["z"]):
        assert row == [expected.get((source, day), 0) for day in heatmap["x"]]

    # 2. feed health: failing feeds first, errors per feed and stage, articles per feed
    health = m["feed_health"]
    assert [f["source"] for f in health[:3]] and {f["source"] for f in health[:3]} == {"bad", "down", "missing"}
    assert all(f["failing"] for f in health[:3]) and not any(f["failing"] for f in health[3:])
    by_url = {f["feed_url"]: f for f in health}
    for feed_url, stage, n in sql(f"select feed_url, stage, count(*) from {errs} group by all"):
        assert by_url[feed_url]["errors_by_stage"][stage] == n
    for feed_url, n in sql(f"select feed_url, count(*) from {arts} group by all"):
        assert by_url[feed_url]["articles"] == n
    for feed_url, status, n in sql(f"select feed_url, status, count(*) from {errs} where status is not null group by all"):
        assert by_url[feed_url]["errors_by_status"][str(status)] == n
    patroli = next(f for f in health if f["source"] == "patroli")
    assert patroli["robots_refusals"] == 1 and patroli["runs"] == 2
    assert sum(f["entries_new_last_poll"] for f in health) == m["runs"][-1]["entries_new"]
    assert patroli["last_success"] is not None and patroli["entry_error_rate"] > 0
    for f in health[:3]:  # failed on both runs, never succeeded
        assert f["poll_failures"] == 2 and f["last_success"] is None

    # 3. syndication
    pairs = sql(f"select c.source, o.source, count(*) from {arts} c join {arts} o on o.article_id = c.duplicate_of "
                f"group by all")
    assert pairs and {(p["copier"], p["original"]): p["copies"] for p in m["syndication"]["pairs"]} == {
        (a, b): n for a, b, n in pairs}
    assert any(a == "kabar" and b != "kabar" for a, b, _ in pairs)  # the planted copy of another outlet's article
    assert m["syndication"]["copies"] == sql(f"select count(duplicate_of) from {arts}")[0][0]
    sizes = sql(f"select count(*) + 1 as n from {arts} where duplicate_of is not null group by duplicate_of order by n desc")
    assert [c["size"] for c in m["syndication"]["clusters"]] == [n for n, in sizes]

    # 4. entities: top per label (articles mentioning, syndicated copies excluded), per language, canonical forms
    counts = sql(f"select language, e.label, e.canonical, count(distinct article_id) from {arts}, unnest(entities) t(e) "
                 f"where duplicate_of is null group by all")
    assert counts, "the shipped Indonesian model tagged nothing"
    expected = {(lang, label, text): n for lang, label, text, n in counts}
    for r in m["entities"]["top"]:
        assert expected[(r["language"], r["label"], r["text"])] == r["articles"]
    for (lang, label) in {(lang, label) for lang, label, _ in expected}:
        best = max(n for (la, lb, _), n in expected.items() if (la, lb) == (lang, label))
        assert max(r["articles"] for r in m["entities"]["top"] if (r["language"], r["label"]) == (lang, label)) == best

    # 5. runs
    runs = sorted(p.stem for p in (lake / "_state/runs").glob("*.json"))
    assert [r["run_id"] for r in m["runs"]] == runs
    assert sum(r["articles"] for r in m["runs"]) == sql(f"select count(*) from {arts}")[0][0]
    assert sum(r["errors"] for r in m["runs"]) == sql(f"select count(*) from {errs}")[0][0]
    assert all(r["seconds"] > 0 for r in m["runs"])


def test_rising_entities_against_the_previous_window(lake):
    m = collect(str(lake), days=1, until=DAY2)
    arts = f"read_parquet('{lake}/articles/**/*.parquet', hive_partitioning=true)"
    per_day = sql(f"select date, language, e.label, e.canonical, count(distinct article_id) from {arts}, "
                  f"unnest(entities) t(e) where date in ('{DAY1}', '{DAY2}') and duplicate_of is null group by all")
    now = {(la, lb, t): n for d, la, lb, t, n in per_day if d == DAY2}
    before = {(la, lb, t): n for d, la, lb, t, n in per_day if d == DAY1}
    rises = {k: now[k] - before.get(k, 0) for k in now if now[k] > before.get(k, 0)}
    assert rises
    for r in m.entities["rising"]:
        key = (r["language"], r["label"], r["text"])
        assert (r["articles"], r["previous"], r["rise"]) == (now[key], before.get(key, 0), rises[key])
    assert max(r["rise"] for r in m.entities["rising"]) == max(rises.values())


def test_page_is_self_contained_and_renders_in_chromium(page, tmp_path):
    path, html = page
    assert external_references(html) == []
    assert len(plotly_figures(html)) == 5  # per day, errors, syndication, entities (id), runs
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run installs it")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--enable-logging=stderr",
             "--v=0", "--virtual-time-budget=10000", "--window-size=1300,4200",
             "--host-resolver-rules=MAP * ~NOTFOUND"]  # offline: no host resolves
    res = subprocess.run([*flags, "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=180)
    console = [line for line in res.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console  # the page logs nothing: no error, no warning
    assert res.stdout.count('class="plotly-graph-div js-plotly-plot"') == 5
    assert res.stdout.count('class="main-svg"') >= 10  # every figure drew its SVG layers
    shot = tmp_path / "report.png"
    subprocess.run([*flags, f"--screenshot={shot}", path.as_uri()], capture_output=True, timeout=180)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000


def test_stats_prints_the_key_numbers(lake, capsys):
    assert stats(["--output", str(lake)]) == 0
    out = capsys.readouterr().out
    total = sql(f"select count(*) from read_parquet('{lake}/articles/**/*.parquet')")[0][0]
    assert re.search(rf"^articles\s+{total}$", out, re.M), out
    assert re.search(r"^feeds failing\s+3 of 7 \(bad, down, missing\)$", out, re.M), out
    copies = sql(f"select count(duplicate_of) from read_parquet('{lake}/articles/**/*.parquet')")[0][0]
    assert re.search(rf"^syndicated copies\s+{copies} ", out, re.M), out
    assert re.search(r"^patroli\s+\d+\s+\d+\s+2024-11-13\s+ok\s+\d+$", out, re.M), out
    assert "<" not in out  # plain text


def test_same_numbers_through_fsspec_and_with_extra_columns(lake, tmp_path):
    """A memory:// copy of the lake, plus a file with a column other writers may add and a backlog entry."""
    fs = fsspec.filesystem("memory")
    for p in lake.rglob("*"):
        if p.is_file():
            fs.pipe_file(f"/report-lake/{p.relative_to(lake).as_posix()}", p.read_bytes())
    local = collect(str(lake))
    remote = collect("memory://report-lake")
    for name in ("articles_per_day", "feed_health", "errors_by_stage", "syndication", "entities", "runs"):
        assert getattr(remote, name) == getattr(local, name), name

    # patroli's rows of the day: their own folder (date_source) or the day's file (date, the default)
    path = next(p for p in sorted(lake.glob("articles/date=2024-11-13/**/*.parquet"))
                if "source=" not in p.parent.name or p.parent.name == "source=patroli")
    one = pq.read_table(path)
    one = one.filter(pa.compute.equal(one.column("source"), "patroli"))
    extra = one.append_column("ingest_note", pa.array(["x"] * one.num_rows))
    buf = pa.BufferOutputStream()
    pq.write_table(extra.set_column(0, "article_id", pa.array([f"new-{i}" for i in range(one.num_rows)])), buf)
    fs.pipe_file(f"/report-lake/{path.parent.relative_to(lake).as_posix()}/part-compacted.parquet",
                 buf.getvalue().to_pybytes())
    feed_url = one.column("feed_url")[0].as_py()
    fs.pipe_file("/report-lake/_state/backlog/20991231T000000-aaaaaaaa.json",
                 json.dumps([{"url": "http://x/1", "feed_url": feed_url, "source": "patroli"}]).encode())
    grown = collect("memory://report-lake")
    count = {(r["source"], r["day"]): r["articles"] for r in grown.articles_per_day}
    assert count[("patroli", DAY2)] == 2 * one.num_rows
    assert next(f for f in grown.feed_health if f["feed_url"] == feed_url)["pending"] == 1
    assert dict(key_numbers(grown))["entries pending"] == "1"
    fs.rm("/report-lake", recursive=True)


def test_empty_lake_and_usage_errors(tmp_path, capsys):
    empty = tmp_path / "empty"
    (empty / "_state").mkdir(parents=True)  # a lake with nothing in it yet
    to = tmp_path / "r.html"
    assert report(["--output", str(empty), "--to", str(to)]) == 0
    html = to.read_text(encoding="utf-8")
    assert "No copies in the window." in html and "No runs in the window." in html
    assert page_metrics(html)["articles_per_day"] == []
    assert stats(["--output", str(empty)]) == 0
    assert report(["--output", str(tmp_path / "absent")]) == 2
    assert "no lake at" in capsys.readouterr().err
    assert report(["--output", str(empty), "--bogus"]) == 2
    assert stats([]) == 2
    assert stats(["--output", str(empty), "--days", "0"]) == 2
    res = run_cli("report", "--output", str(empty), "--to", str(to), timeout=120)
    assert res.returncode == 0, res.stderr
    assert "report" in run_cli("help", timeout=60).stdout


@pytest.mark.parametrize("partition", ["ingest_date=2026-01-01", "month=2026-01"])
def test_other_partition_layouts_give_the_same_numbers(lake, tmp_path, partition):
    """Partitioned by fetch day (ingest_date=) or by month (read whole) and compacted into fewer files:
    same metrics."""
    other = tmp_path / "lake"
    shutil.copytree(lake / "_state", other / "_state")
    for sub in ("articles", "errors"):
        table = pa.concat_tables(pq.read_table(p) for p in sorted((lake / sub).rglob("*.parquet")))
        (other / sub / partition).mkdir(parents=True)
        pq.write_table(table, other / sub / partition / "part-compacted.parquet")
    a, b = collect(str(lake)), collect(str(other))
    assert a.window == b.window
    for name in ("articles_per_day", "feed_health", "errors_by_stage", "syndication", "entities", "runs"):
        assert getattr(b, name) == getattr(a, name), name


def test_embedded_json_escapes_every_angle_bracket():
    from warta.pipeline.report import script_safe_json
    data = {"title": "</script><script>alert(1)</script><!-- x", "a&b": "\\<\u2028", "n": [1, "<SCRIPT"]}
    text = script_safe_json(json.dumps(data))
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == data
