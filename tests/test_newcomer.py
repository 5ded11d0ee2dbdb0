"""#28, a newcomer's first hour: a CLI that never crawls by surprise, one-line messages, commands that share one
preamble, entities counted once per story under their canonical form, and the README's first-hour queries
run against the example lake."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import ROOT

from warta.lake.commit import RUNS
from warta.lake.metrics import collect
from warta.lake.schema import ARTICLE_SCHEMA, ERROR_SCHEMA, upgrade_entities
from warta.lake.state import SCHEMA_FILE, ensure_datasets, record_schema
from warta.lake.store import Store
from warta.pipeline.cli import COMMANDS, dispatch, usage
from warta.pipeline.report import key_numbers, untagged_line
from warta.transforms.entities import with_canonical


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# -- 1. bare `warta` ---------------------------------------------------------------------------------
def test_bare_warta_prints_the_usage_and_crawls_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert dispatch([]) == 2
    out = capsys.readouterr().out
    assert out == usage() + "\n" and all(f"  {name} " in out for name in COMMANDS)
    assert dispatch(["--output", "lake", "--log-level", "DEBUG"]) == 2  # flags that do not say which feeds
    assert "`warta run ARGS` polls the feeds" in one_line(capsys)
    assert not any(tmp_path.iterdir())  # no ./data, no ./lake


def test_flags_with_feeds_or_example_run_and_run_local_keeps_flags_as_run(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("http: {host_dealy: 1}\n")
    out = str(tmp_path / "lake")
    assert dispatch(["--feeds", str(bad), "--config", str(bad), "--output", out]) == 2  # reached `run`
    assert one_line(capsys).startswith("warta run: configuration error:")
    assert dispatch(["--config", str(bad), "--output", out]) == 2  # `warta`: no command
    assert one_line(capsys).startswith("warta: no command")
    assert dispatch(["--config", str(bad), "--output", out], flags_run=True) == 2  # run_local.py: `run`
    assert one_line(capsys).startswith("warta run: configuration error:")
    res = subprocess.run([sys.executable, str(ROOT / "run_local.py")], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2 and res.stdout.startswith("usage: warta COMMAND")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


# -- 2. help and messages ----------------------------------------------------------------------------
HELP = {"errors": [["errors", "list"], ["errors", "retry"]], "models": [["models", "download"], ["models", "list"]]}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_has_its_own_help_with_log_level(name, capsys):
    for argv in HELP.get(name, [[name]]):
        assert dispatch([*argv, "--help"]) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: warta {' '.join(argv)}") and "--log-level" in out, out


def test_top_help_is_the_command_table_and_errors_help_is_plain(capsys):
    assert dispatch(["--help"]) == 0
    out = capsys.readouterr().out
    assert out == usage() + "\n" and "--max-run-time" not in out and "setting overrides" not in out
    assert dispatch(["errors", "--help"]) == 0
    out = capsys.readouterr().out
    assert "``" not in out and "failures.py" not in out and ":mod:" not in out and "warta errors list" in out


def test_archive_help_lists_no_fetch_flags(capsys):
    assert dispatch(["archive", "--help"]) == 0
    archive = capsys.readouterr().out
    assert dispatch(["backfill", "--help"]) == 0
    backfill = capsys.readouterr().out
    for flag in ("--user-agent", "--host-delay", "--timeout", "--ignore-robots", "--block-private",
                 "--max-items-per-feed"):
        assert flag not in archive and flag in backfill
    assert "--max-bytes" in archive and "--no-ner" in archive


@pytest.mark.parametrize("argv, says", [
    (["run", "--every", "15min"], "warta run: argument --every: invalid interval '15min': use e.g. 30s, 15m, 1h"),
    (["--feeds", "f.yaml", "--every", "15min"], "warta run: argument --every: invalid interval '15min'"),
    (["run", "--workers", "0"], "warta run: --workers must be at least 1"),
    (["run", "--feds", "f.yaml"], "warta run: unknown arguments: --feds f.yaml"),
    (["run", "--log-level", "loud"], "warta run: argument --log-level: invalid choice: 'LOUD'"),
    (["stats"], "warta stats: the following arguments are required: --output"),
    (["report", "--output", "x", "--days", "0"], "warta report: --days must be at least 1"),
    (["compact", "--output", "x", "--target-size", "big"], "warta compact: argument --target-size: invalid size"),
    (["errors", "lst", "--output", "x"], "warta errors: argument {list,retry}: invalid choice: 'lst'"),
    (["models", "download"], "warta models download: the following arguments are required: LANG"),
    (["backfill", "--output", "x", "--since", "yesterday"], "warta backfill: argument --since: invalid"),
    (["runn"], "warta: unknown command 'runn' (did you mean `warta run`?)"),
])
def test_mistakes_are_one_line_and_exit_2(argv, says, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert dispatch(argv) == 2
    assert one_line(capsys).startswith(says)
    assert not any(tmp_path.iterdir())


def test_report_to_an_unwritable_place_is_one_line(tmp_path, capsys):
    (tmp_path / "_state").mkdir()  # an empty lake
    assert dispatch(["report", "--output", str(tmp_path), "--to", "/proc/x/r.html"]) == 2
    assert one_line(capsys) == "warta report: cannot write /proc/x/r.html: No such file or directory"


def test_errors_list_names_a_missing_lake_and_says_when_there_are_no_failures(tmp_path, capsys):
    for argv in (["errors", "list"], ["errors", "retry"], ["stats"], ["compact"]):
        assert dispatch([*argv, "--output", str(tmp_path / "nowhere")]) == 2
        assert one_line(capsys).startswith(f"warta {argv[0]}: no lake at {tmp_path / 'nowhere'}")
    (tmp_path / "lake" / "_state").mkdir(parents=True)
    assert dispatch(["errors", "list", "--output", str(tmp_path / "lake")]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == f"warta errors: no failures remembered in {tmp_path / 'lake'}\n"
    assert dispatch(["errors", "list", "--output", str(tmp_path / "lake"), "--stage", "fetch"]) == 0
    assert one_line(capsys).endswith("matching --stage fetch")


# -- 4. the lake is easy to query --------------------------------------------------------------------
def test_a_dataset_without_files_gets_an_empty_one_with_its_columns(tmp_path):
    store = Store(str(tmp_path))
    assert ensure_datasets(store, {"errors": ERROR_SCHEMA}, "2026-12-03") == ["errors/date=2026-12-03/empty.parquet"]
    assert ensure_datasets(store, {"errors": ERROR_SCHEMA}, "2026-12-04") == []  # once
    rel = duckdb.sql(f"select * from read_parquet('{tmp_path}/errors/**/*.parquet')")
    assert rel.fetchall() == [] and rel.columns[:len(ERROR_SCHEMA)] == ERROR_SCHEMA.names


LEGACY = pa.struct([("text", pa.string()), ("label", pa.string()), ("start_char", pa.int32()),
                    ("end_char", pa.int32())])


def article(i: int, ents: list[dict], day: str = "2026-12-01", language: str = "id", copy_of: str | None = None,
            legacy: bool = False) -> dict:
    when = datetime.fromisoformat(day).replace(hour=8, tzinfo=timezone.utc)
    key = "text" if legacy else "mention"
    return {"article_id": f"a{i}", "url": f"http://x.example/{i}", "source": f"s{i % 2}", "title": f"t{i}",
            "published_at": when, "fetched_at": when + timedelta(hours=1), "language": language, "text": "…",
            "duplicate_of": copy_of, "entities": [{key: m, "label": lb, "start_char": 0, "end_char": len(m)}
                                                  for m, lb in ents]}


def write(store: Store, rel: str, rows: list[dict], legacy: bool = False) -> None:
    schema = ARTICLE_SCHEMA
    if legacy:
        schema = schema.set(schema.get_field_index("entities"), pa.field("entities", pa.list_(LEGACY)))
    else:
        rows = [{**r, "entities": with_canonical(r["entities"])} for r in rows]
    store.write_table(rel, pa.Table.from_pylist(rows, schema=schema))


def test_entity_field_rename_goes_through_the_schema_version_and_old_files_stay_readable(tmp_path):
    store = Store(str(tmp_path))
    old = article(1, [("Putin", "PER")], legacy=True)
    write(store, "articles/date=2026-12-01/source=s1/part-old.parquet", [old], legacy=True)
    old_doc = {"version": 1, "layout": "date_source", "history": [],
               "datasets": {"articles": {"entities": str(pa.list_(LEGACY))}}}
    store.write_json(SCHEMA_FILE, old_doc)
    doc = record_schema(store, {"articles": ARTICLE_SCHEMA}, "date_source")
    assert doc["version"] == 2
    change = doc["history"][-1]["changed"]["articles"]["entities"]
    assert "struct<text: string" in change["from"] and "struct<mention: string" in change["to"]
    assert record_schema(store, {"articles": ARTICLE_SCHEMA}, "date_source")["version"] == 2  # once
    # the upgrade: mention from the legacy field, canonical = the mention
    up = upgrade_entities(pq.read_table(tmp_path / "articles/date=2026-12-01/source=s1/part-old.parquet"))
    assert up.column("entities").to_pylist() == [[{"mention": "Putin", "label": "PER", "start_char": 0,
                                                   "end_char": 5, "canonical": "Putin"}]]
    # a new file beside the old one: warta's readers see one entity column
    write(store, "articles/date=2026-12-01/source=s0/part-new.parquet",
          [article(2, [("Putin", "PER"), ("Vladimir Putin", "PER")])])
    m = collect(str(tmp_path), until=datetime(2026, 12, 1).date())
    assert {(r["text"], r["articles"]) for r in m.entities["top"]} == {("Putin", 1), ("Vladimir Putin", 1)}


# -- 5. entities an analyst can trust ----------------------------------------------------------------
def E(mention: str, label: str = "PER") -> dict:
    return {"mention": mention, "label": label, "start_char": 0, "end_char": len(mention)}


def forms(ents: list[dict]) -> dict[tuple[str, str], str]:
    return {(e["label"], e["mention"]): e["canonical"] for e in with_canonical(ents)}


def test_canonical_forms_within_one_article():
    ents = [E("Putin"), E("Vladimir Putin"), E("Widodo"), E("Joko Widodo"), E("KPK", "ORG"),
            E("Komisi Pemberantasan Korupsi", "ORG"), E("B.I.", "ORG"), E("Bank Indonesia", "ORG"),
            E("AS", "LOC"), E("Amerika Serikat", "LOC"), E("Jakarta", "LOC"), E("Putin", "LOC")]
    got = forms(ents)
    assert got[("PER", "Putin")] == got[("PER", "Vladimir Putin")] == "Vladimir Putin"
    assert got[("PER", "Widodo")] == "Joko Widodo"
    assert got[("ORG", "KPK")] == "Komisi Pemberantasan Korupsi" and got[("ORG", "B.I.")] == "Bank Indonesia"
    assert got[("LOC", "AS")] == "Amerika Serikat" and got[("LOC", "Jakarta")] == "Jakarta"
    assert got[("LOC", "Putin")] == "Putin"  # only within a label
    # skipped function words; nested fuller names; case-insensitive words, the longer mention's spelling
    assert forms([E("DPR", "ORG"), E("Dewan Perwakilan Rakyat", "ORG")])[("ORG", "DPR")] == "Dewan Perwakilan Rakyat"
    assert forms([E("MPU", "ORG"), E("Masyarakat Peduli dan Usaha", "ORG")])[("ORG", "MPU")] == \
        "Masyarakat Peduli dan Usaha"
    assert forms([E("Putin"), E("Vladimir Putin"), E("Vladimir Vladimirovich Putin")])[("PER", "Vladimir Putin")] \
        == "Vladimir Vladimirovich Putin"
    assert forms([E("PUTIN"), E("Vladimir Putin")])[("PER", "PUTIN")] == "Vladimir Putin"


def test_ambiguous_or_unrelated_mentions_keep_their_own_form():
    got = forms([E("Smith"), E("John Smith"), E("Jane Smith"), E("Ali", "PER"), E("Bank Mandiri", "ORG"),
                 E("BM", "ORG"), E("Bumi Makmur", "ORG"), E("Jokowi")])
    assert got[("PER", "Smith")] == "Smith"  # two people
    assert got[("ORG", "BM")] == "BM"  # two long forms spell it
    assert got[("PER", "Jokowi")] == "Jokowi" and got[("PER", "Ali")] == "Ali"
    assert forms([E("Putin"), E("Putin")])[("PER", "Putin")] == "Putin"
    assert with_canonical([]) == []


def test_canonical_forms_do_not_depend_on_order():
    ents = [E("Putin"), E("Vladimir Putin"), E("KPK", "ORG"), E("Komisi Pemberantasan Korupsi", "ORG"), E("Smith"),
            E("John Smith")]
    assert forms(ents) == forms(ents[::-1])
    assert [e["mention"] for e in with_canonical(ents)] == [e["mention"] for e in ents]  # order and offsets kept


def test_stats_count_a_story_once_under_its_canonical_form_and_name_languages_without_a_model(tmp_path, capsys):
    store = Store(str(tmp_path))
    story = [("Vladimir Putin", "PER"), ("Putin", "PER")]
    write(store, "articles/date=2026-12-01/source=s1/part-r.parquet", [article(1, story)])
    write(store, "articles/date=2026-12-01/source=s0/part-r.parquet", [
        article(2, story, copy_of="a1"),  # a syndicated copy
        article(4, [("Putin", "PER")]),  # another story, naming him short
        article(6, [], language="en"), article(8, [], language="pt")])
    store.write_json(f"{RUNS}/20261201T090000-aaaaaaaa.json", {
        "run_id": "20261201T090000-aaaaaaaa", "committed_at": "2026-12-01T09:00:05+00:00",
        "summary": {"articles_written": 5, "errors_written": 0, "no_model": {"en": 1, "pt": 1}}})
    m = collect(str(tmp_path))
    per = {r["text"]: r["articles"] for r in m.entities["top"] if r["label"] == "PER"}
    assert per == {"Vladimir Putin": 1, "Putin": 1}  # the copy not counted; "Putin" beside his full name is him
    assert untagged_line(m) == "2 articles without entities (no model for en, pt)"
    key = dict(key_numbers(m))
    assert key["top PER (copies excluded)"] == "Putin (1), Vladimir Putin (1)"
    assert key["untagged"] == "2 articles without entities (no model for en, pt)"
    with_copies = collect(str(tmp_path), copies=True)
    assert {r["text"]: r["articles"] for r in with_copies.entities["top"] if r["label"] == "PER"}["Vladimir Putin"] == 2
    assert dispatch(["stats", "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^top PER \(copies excluded\)\s+Putin \(1\), Vladimir Putin \(1\)$", out, re.M), out
    assert re.search(r"^untagged\s+2 articles without entities \(no model for en, pt\)$", out, re.M), out
    assert dispatch(["stats", "--output", str(tmp_path), "--with-copies"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^top PER \(copies included\)\s+Vladimir Putin \(2\), Putin \(1\)$", out, re.M), out


# -- 6. the README's first hour, against the example lake --------------------------------------------
def first_hour_blocks() -> list[tuple[str, str]]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Your first hour\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(\w+)\n(.*?)```", section, re.S)


@pytest.fixture(scope="module")
def example_dir(tmp_path_factory):
    """`warta --example` (through run_local.py) in an empty folder: the lake lands in ./data-example."""
    tmp = tmp_path_factory.mktemp("first-hour")
    res = subprocess.run([sys.executable, str(ROOT / "run_local.py"), "--example"], cwd=tmp, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return tmp


@pytest.mark.slow
def test_the_readme_first_hour_runs_against_the_example_lake(example_dir, monkeypatch):
    blocks = first_hour_blocks()
    sql = [code for lang, code in blocks if lang == "sql"]
    python = [code for lang, code in blocks if lang == "python"]
    assert len(sql) >= 3 and len(python) == 1
    monkeypatch.chdir(example_dir)
    results = [duckdb.sql(q).fetchall() for q in sql]
    assert all(results), [q for q, r in zip(sql, results) if not r]  # every query returns rows
    per_day, people, copies, context = results
    assert sum(r[2] for r in per_day) == 8 and sum(r[3] for r in per_day) == 1
    everyone = dict(duckdb.sql(sql[1].replace("limit 10", "")).fetchall())
    assert everyone["Vladimir Putin"] == 1  # one story, counted once, though its copy names him too
    assert "Putin" not in everyone  # "Putin" beside "Vladimir Putin" in the same article is him
    assert people[0] == ("Warren", 2)
    assert [(r[0], r[1]) for r in copies] == [("kabar-demo", "jurnalpatroli-demo")]
    assert all(r[2] for r in context)  # substr(text, start_char + 1, …) is the mention
    inline = re.search(r"`(select stage, source, status, count\(\*\) from read_parquet\('data-example/errors/"
                       r"[^`]*)`", (ROOT / "README.md").read_text(encoding="utf-8")).group(1)
    assert duckdb.sql(inline).fetchall() == []  # a clean run still has a readable errors/ dataset
    exec(compile(python[0], "README first hour", "exec"), {})  # the Polars snippet: explode + unnest


@pytest.mark.slow
def test_the_example_lake_unnests_in_polars_and_records_its_schema(example_dir):
    import polars as pl
    lake = example_dir / "data-example"
    mentions = pl.read_parquet(f"{lake}/articles/**/*.parquet", hive_partitioning=True) \
        .explode("entities").unnest("entities")
    assert {"text", "mention", "label", "start_char", "end_char", "canonical"} <= set(mentions.columns)
    tagged = mentions.filter(pl.col("mention").is_not_null())
    assert tagged.height > 100
    assert all(t[s:e] == m for t, s, e, m in tagged.select("text", "start_char", "end_char", "mention").iter_rows())
    doc = json.loads((lake / "_state" / "schema.json").read_text())
    assert "mention: string" in doc["datasets"]["articles"]["entities"]
    assert "canonical: string" in doc["datasets"]["articles"]["entities"]
