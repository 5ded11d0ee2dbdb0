"""pipeline.models_cmd: `warta models download` against a loopback Stanza model hub (Stanza's own download
code runs), then tagging English with no warta configuration; hub errors; `warta models list`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from conftest import closed_port

from warta.config.settings import Feed, NerSettings, Settings
from warta.pipeline.build import Plan
from warta.pipeline.loopback import LoopbackServer, Route
from warta.pipeline.models_cmd import models
from warta.transforms.ner import REPO_MODELS, Tagger, known_languages, model_paths, model_source

TEXT = ("Presiden Joko Widodo bertemu Vladimir Putin di Moskow pada hari Senin.\n\n"
        "Menurut Kementerian Luar Negeri, pertemuan itu membahas kerja sama Indonesia dan Rusia.")


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def serve_hub(server: LoopbackServer, ner: bytes, pretrain: bytes) -> None:
    """A Stanza-layout hub: resources_<version>.json listing an English NER package ``fake`` (our
    Indonesian model and its word vectors under another language code) and the model files."""
    from stanza.resources.common import DEFAULT_RESOURCES_VERSION

    resources = {
        "url": server.base + "/{lang}/{filename}",
        "en": {"lang_name": "English", "default_processors": {"tokenize": "combined", "ner": "fake"},
               "packages": {"default": {"tokenize": "combined", "ner": "fake"}},
               "tokenize": {"combined": {"md5": "0"}},
               "ner": {"fake": {"md5": md5(ner), "dependencies": [{"model": "pretrain", "package": "fakevec"}]}},
               "pretrain": {"fakevec": {"md5": md5(pretrain)}}},
        "english": {"alias": "en"},
        "fr": {"lang_name": "French", "default_processors": {"tokenize": "gsd"}, "tokenize": {"gsd": {"md5": "0"}}},
    }
    r = server.routes
    r[f"/resources_{DEFAULT_RESOURCES_VERSION}.json"] = Route(json.dumps(resources), "application/json")
    r["/en/ner/fake.pt"] = Route(ner, "application/octet-stream")
    r["/en/pretrain/fakevec.pt"] = Route(pretrain, "application/octet-stream")


@pytest.fixture(scope="module")
def hub():
    with LoopbackServer() as server:
        serve_hub(server, (REPO_MODELS / "id" / "ner.pt").read_bytes(),
                  (REPO_MODELS / "id" / "ner_pretrain.pt").read_bytes())
        yield server


@pytest.fixture(scope="module")
def downloaded(hub, tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("stanza_resources")
    assert models(["download", "en", "--dir", str(base), "--resources-url", hub.base]) == 0
    return base


def test_download_fetches_only_the_ner_package_and_its_dependencies(hub, downloaded):
    assert (downloaded / "resources.json").exists()
    assert sorted(p.relative_to(downloaded).as_posix() for p in downloaded.rglob("*.pt")) == \
        ["en/ner/fake.pt", "en/pretrain/fakevec.pt"]
    assert "/en/tokenize/combined.pt" not in hub.paths_requested()


def test_english_gets_per_loc_org_with_no_warta_config(downloaded, monkeypatch):
    monkeypatch.setenv("STANZA_RESOURCES_DIR", str(downloaded))
    settings = NerSettings()  # nothing configured: the Stanza folder is found as Stanza finds it
    assert model_source("en", settings) == ("stanza", {
        "ner_model_path": str(downloaded / "en/ner/fake.pt"),
        "ner_pretrain_path": str(downloaded / "en/pretrain/fakevec.pt")})
    assert "en" in known_languages(settings)
    # an English page found by language detection (no feed declares en) is tagged too
    plan = Plan(feeds=[Feed(name="kabar", url="http://x.test/rss", language="id")], settings=Settings(),
                store=None, run_id="r", validators={})
    assert plan.ner_paths()["en"] == "stanza"  # only where it was found goes into the job: workers look again

    ents = Tagger(settings, plan.ner_paths()).tag([TEXT], "en")[0]
    for e in ents:
        assert TEXT[e["start_char"]:e["end_char"]] == e["mention"]
    found = {(e["mention"], e["label"]) for e in ents}
    assert {e["label"] for e in ents} <= {"PER", "LOC", "ORG"}
    assert ("Vladimir Putin", "PER") in found and ("Moskow", "LOC") in found


def test_unreachable_hub_is_one_line_and_exit_1(tmp_path, capfd):
    url = f"http://127.0.0.1:{closed_port()}"
    assert models(["download", "en", "--dir", str(tmp_path), "--resources-url", url]) == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"warta: cannot download the Stanza model list from {url}: ")


@pytest.mark.parametrize("broken", ["/en/ner/fake.pt", "/en/pretrain/fakevec.pt"])
def test_a_corrupt_download_fails_and_is_not_used(tmp_path, capfd, broken):
    with LoopbackServer() as server:
        serve_hub(server, (REPO_MODELS / "id" / "ner.pt").read_bytes(),
                  (REPO_MODELS / "id" / "ner_pretrain.pt").read_bytes())
        server.routes[broken] = Route(b"truncated", "application/octet-stream")
        assert models(["download", "en", "--dir", str(tmp_path), "--resources-url", server.base]) == 1
    assert "warta: downloading the en NER model failed: ValueError: md5 for " in capfd.readouterr().err
    assert not (tmp_path / broken.lstrip("/")).exists()
    assert model_paths("en", NerSettings(stanza_dir=str(tmp_path))) is None


def test_language_without_a_stanza_ner_model(hub, tmp_path, capfd):
    assert models(["download", "fr", "en", "--dir", str(tmp_path), "--resources-url", hub.base]) == 2
    captured = capfd.readouterr()
    assert "warta: Stanza has no NER model for 'fr'" in captured.err
    assert f"en: NER fake, pretrain fakevec in {tmp_path}" in captured.out  # the others are still downloaded
    assert models(["download", "id", "--dir", str(tmp_path), "--resources-url", hub.base]) == 0
    assert "id: warta ships its own NER model for id, nothing to download" in capfd.readouterr().err


def test_alias_resolves_to_the_language_folder(downloaded):
    assert model_paths("english", NerSettings(stanza_dir=str(downloaded)))["ner_model_path"].endswith("en/ner/fake.pt")


def test_list_shows_each_language_and_its_source(downloaded, capsys):
    assert models(["list", "--dir", str(downloaded)]) == 0
    lines = [l.split("\t") for l in capsys.readouterr().out.splitlines()]
    assert [(l[0], l[1]) for l in lines] == [("en", "stanza"), ("id", "warta")]


@pytest.mark.parametrize("argv", [["download"], ["download", "en", "--bogus"], ["nope"], []])
def test_usage_errors_exit_2(argv, capsys):
    assert models(argv) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1  # one line, not the usage


def test_run_summary_names_missing_languages_and_the_command():
    from warta.pipeline.cli import summary_line
    counts = dict.fromkeys(["feeds_polled", "feeds_unchanged", "feeds_failed", "entries_new", "pages_fetched",
                            "pages_extracted", "duplicates_exact", "duplicates_near", "entities",
                            "articles_written", "errors_written"], 1)
    assert "NER" not in summary_line({**counts, "no_model": {}}, 1.0)  # all fine: nothing said
    line = summary_line({**counts, "no_model": {"en": 12, "pt": 1}}, 1.0)
    assert line.endswith("| no NER model for en (12 articles), pt (1 article): "
                         "get one with `warta models download en pt`")


@pytest.mark.slow
def test_wheel_carries_the_indonesian_model_and_a_missing_one_stops_the_run(tmp_path):
    """A non-editable install (the wheel, built offline) finds the shipped model beside its code; with the
    model files gone, a run stops at the start with exit 2 and one clear line."""
    import shutil
    import subprocess
    import sys
    import zipfile

    from conftest import ROOT, WITHOUT_CHECKOUT

    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "data", "data-example", "build", "*.egg-info", "__pycache__", ".pytest_cache", "tests"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
                   check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("warta-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"warta/models/stanza/resources.json", "warta/models/stanza/id/ner.pt",
            "warta/models/stanza/id/ner_pretrain.pt", "warta/transforms/ner.py", "warta/pipeline/models_cmd.py"} <= names
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site), "STANZA_RESOURCES_DIR": str(tmp_path / "none"),
           "HOME": str(tmp_path)}
    code = (WITHOUT_CHECKOUT + "import warta.transforms.ner as n; from warta.config.settings import NerSettings; "
            "s = NerSettings(); n.check_ner(s); "
            "print(n.REPO_MODELS); print(n.Tagger(s, {'id': n.model_paths('id', s)}).tag(["
            "'Presiden Vladimir Putin tiba di Kursk.'], 'id')[0])")
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    where, ents = res.stdout.strip().splitlines()[-2:]
    assert where == str(site / "warta" / "models" / "stanza") and "'Vladimir Putin', 'label': 'PER'" in ents

    (site / "warta" / "models" / "stanza" / "id" / "ner.pt").unlink()
    res = subprocess.run([sys.executable, "-c", WITHOUT_CHECKOUT + "from warta.pipeline.cli import main; "
                          "main(['run', '--output', 'lake'])"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith(
        "warta run: configuration error: the Indonesian NER model shipped with warta is missing")
    assert not (tmp_path / "lake").exists()
