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
])
def test_bad_feeds_files(tmp_path, text, match):
    f = tmp_path / "feeds.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_feeds(f)
