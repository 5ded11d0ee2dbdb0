"""config.settings: the feeds file and settings validation."""

from pathlib import Path

import pytest

from warta.config.settings import DEFAULT_FEEDS, ConfigError, Settings, load_feeds, load_settings

CONFIG = Path(__file__).resolve().parents[1] / "config"


def test_shipped_files_are_valid():
    feeds = load_feeds(DEFAULT_FEEDS)
    assert feeds[0].name == "jurnalpatrolinews" and all(f.language == "id" for f in feeds)
    assert load_settings(CONFIG / "settings.example.yaml") == Settings()  # the example documents the defaults


def test_overrides_and_errors(tmp_path):
    s = load_settings(None, {"http.host_delay": 0, "dedup.near_threshold": 0.9})
    assert s.http.host_delay == 0 and s.dedup.near_threshold == 0.9
    bad = tmp_path / "s.yaml"
    bad.write_text("http:\n  host_delay: soon\n")
    with pytest.raises(ConfigError, match="http.host_delay"):
        load_settings(bad)
    bad.write_text("htp: {}\n")
    with pytest.raises(ConfigError, match="htp"):
        load_settings(bad)


@pytest.mark.parametrize("text, match", [
    ("feeds: []", "non-empty"),
    ("feeds:\n  - name: a b\n    url: http://x/", "feeds.0.name"),
    ("feeds:\n  - name: a\n    url: ftp://x/", "http"),
    ("feeds:\n  - name: a\n    url: http://x/\n  - name: a\n    url: http://y/", "unique"),
    ("feeds:\n  - name: a\n    url: http://x/\n    language: indonesian", "feeds.0.language"),
    ("- just a list", "mapping"),
    ("feeds:\n  - name: Kompas\n    url: http://x/\n  - name: kompas\n    url: http://y/", "unique, ignoring case"),
    ("feeds:\n  - name: a\n    url: http://x/\n    1: 2", "feeds.0: keys must be names"),
    ("feeds:\n  - name: a\n    url: http://x/\n    ? [1, 2]\n    : 3", "invalid YAML"),
])
def test_bad_feeds_files(tmp_path, text, match):
    f = tmp_path / "feeds.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_feeds(f)


def test_settings_docs_are_generated_from_the_models_and_agree():
    """#24: one source for the settings reference. Every setting has a description; the README table, the
    --help epilog and settings.example.yaml are what config/docs.py generates from the pydantic models."""
    from conftest import ROOT

    from warta.config import docs
    from warta.pipeline.options import EPILOG

    rows = docs.settings_rows()
    assert all(about for _, _, about in rows), [k for k, _, about in rows if not about]
    assert {"http.max_retry_after", "ner.stanza_dir", "ner.device", "ner.gpu_batch_size", "extract.profiles",
            "parallelism", "runner"} <= {k for k, _, _ in rows}
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert docs.with_table(readme) == readme, "README settings table is stale: python -m warta.config.docs"
    assert (ROOT / "config" / "settings.example.yaml").read_text(encoding="utf-8") == docs.example_yaml()
    for key, _, _ in rows:
        assert f"  {key} = " in EPILOG
    # the example file is a valid settings file that gives the defaults
    assert load_settings(ROOT / "config" / "settings.example.yaml") == Settings()


@pytest.mark.parametrize("runner, ok", [("dask", True), ("FlinkRunner", True), ("DIRECT", True),
                                        ("apache_beam.runners.dask.dask_runner.DaskRunner", True),
                                        ("dsak", False), ("flink", False)])
def test_runner_in_settings_is_a_known_name_or_a_beam_runner(tmp_path, runner, ok):
    p = tmp_path / "s.yaml"
    p.write_text(f"runner: {runner}\n")
    if ok:
        assert load_settings(p).runner == runner
    else:
        with pytest.raises(ConfigError, match="unknown runner"):
            load_settings(p)


def feeds_error(tmp_path, text: str) -> str:
    """The ConfigError message load_feeds gives for a feeds file holding ``text``."""
    f = tmp_path / "feeds.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_feeds(f)
    return str(e.value)


def test_a_mistyped_feed_key_is_named_with_what_it_resembles(tmp_path):
    msg = feeds_error(tmp_path, "feeds:\n  - name: kompas\n    ulr: https://kompas.example/feed\n")
    assert "feeds.0.ulr: unknown key (did you mean `url`?)" in msg
    assert "feeds.0.url: missing (required)" in msg


def test_every_problem_in_one_message(tmp_path):
    s = tmp_path / "settings.yaml"
    s.write_text("http:\n  host_dealy: 2\n  retries: many\nlake:\n  layout: days\nnerr: {}\n"
                 "extract:\n  profiles:\n    example.com: {bodyy: //p}\n")
    with pytest.raises(ConfigError) as e:
        load_settings(s)
    lines = str(e.value).splitlines()
    assert lines[0] == f"{s}: 5 problems:"
    assert {line.strip() for line in lines[1:]} >= {
        "http.host_dealy: unknown key (did you mean `host_delay`?)",
        "nerr: unknown key (did you mean `ner`?)",
        "extract.profiles.example.com.bodyy: unknown key (did you mean `body`?)"}
    assert any(line.strip().startswith("http.retries:") for line in lines)
    assert any(line.strip().startswith("lake.layout:") for line in lines)
    msg = feeds_error(tmp_path, "feeds:\n  - name: a\n    url: ftp://x/\n  - {name: b, url: 'http://y/', languge: en}\n"
                                "  - {name: a, url: 'http://z/'}\n")
    assert [line.strip() for line in msg.splitlines()[1:]] == [
        "feeds.0.url: must be an http(s) URL", "feeds.1.languge: unknown key (did you mean `language`?)"]


def test_a_feed_name_rule_is_said_in_words(tmp_path):
    msg = feeds_error(tmp_path, "feeds:\n  - name: my feed\n    url: http://x/\n")
    assert "'my feed' is not a valid feed name: use letters, digits, '.', '_' and '-'" in msg and "no spaces" in msg
    assert "[A-Za-z0-9]" not in msg and "pattern" not in msg


def test_null_sections_with_overrides_and_the_cli_exit_2(tmp_path, capsys):
    from warta.pipeline.cli import run
    f = tmp_path / "s.yaml"
    f.write_text("http: null\nner: 3\n")
    with pytest.raises(ConfigError, match="ner: expected a mapping of settings"):
        load_settings(f, {"ner.enabled": False})
    f.write_text("http: null\n")
    assert load_settings(f, {"http.total_timeout": 3}).http.total_timeout == 3  # an empty section, then the flag
    with pytest.raises(ConfigError, match="http"):
        load_settings(f)
    feeds = tmp_path / "feeds.yaml"
    feeds.write_text("feeds:\n  - name: a\n    url: http://x/\n    1: 2\n")
    code = run(["--feeds", str(feeds), "--config", str(f), "--output", str(tmp_path / "out"), "--timeout", "3"])
    assert code == 2 and "Traceback" not in capsys.readouterr().err
