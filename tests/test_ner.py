"""transforms.ner: a real Stanza model trained here on a few dozen sentences (another language found
through ``ner.model_dir``), the shipped Indonesian model, batching, offsets, and missing models."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from conftest import FIXTURES, ROOT, seed_article

import warta.transforms.ner as ner
from warta.config.settings import ConfigError, NerSettings
from warta.pipeline.cli import run
from warta.transforms.ner import (
    REPO_MODELS,
    NerModel,
    TagEntities,
    Tagger,
    build_pipeline,
    check_ner,
    documents_per_batch,
    model_paths,
    ner_tags,
    to_label,
)
from warta.transforms.segment import sentences

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


def check_offsets(text: str, ents: list[dict]) -> None:
    for e in ents:
        assert text[e["start_char"]:e["end_char"]] == e["text"]
        assert e["label"] in {"PER", "LOC", "ORG"} or e["label"].isupper()


def test_tiny_model_from_model_dir_tags_batches_with_exact_offsets(tiny_model_dir):
    settings = NerSettings(model_dir=str(tiny_model_dir))
    paths = {"en": model_paths("en", settings)}
    assert paths["en"]["ner_model_path"].endswith("en/ner.pt")
    tagger = Tagger(settings, paths)
    texts = ["Alice Smith visited Paris with Acme Corp. Later, Bob Jones joined Globex Inc in London.",
             "In Rome, Carol White joined Hooli Inc.\n\nEmma Green said Vandelay Ltd will open an office in Vienna."]
    found = tagger.tag(texts, "en")
    assert len(found) == 2 and all(found)
    for text, ents in zip(texts, found):
        check_offsets(text, ents)
    labels = {(e["text"], e["label"]) for ents in found for e in ents}
    assert ("Paris", "LOC") in labels or ("London", "LOC") in labels


def test_language_without_model_is_reported_not_fatal(tiny_model_dir):
    settings = NerSettings(model_dir=str(tiny_model_dir))
    assert model_paths("fr", settings) is None
    tagger = Tagger(settings, {"fr": None})
    assert tagger.tag(["Bonjour Paris."], "fr") is None


@pytest.mark.parametrize("batching", ["bundle", "shuffle"])
def test_tag_entities_transform_keeps_every_article(tiny_model_dir, batching):
    settings = NerSettings(model_dir=str(tiny_model_dir), batch_size=2)
    arts = [{"article_id": str(i), "text": "Alice Smith visited Paris with Acme Corp.", "language": lang}
            for i, lang in enumerate(["en", "en", "fr", None, "en"])]
    with TestPipeline() as p:
        out = p | beam.Create(arts) | TagEntities(settings, {"en": model_paths("en", settings), "fr": None},
                                                    batching=batching, warm=("en", "fr"))
        assert_that(out.articles | beam.Map(lambda a: (a["article_id"], a["language"] == "en" and bool(a["entities"])
                                                       or a["language"] != "en" and a["entities"] == [])),
                    equal_to([(str(i), True) for i in range(5)]))


def test_segmentation_offsets_cover_the_text():
    title, paras = seed_article()
    text = "\n".join(paras)
    for sent in sentences(text):
        for a, b in sent:
            assert text[a:b].strip() == text[a:b] and text[a:b]


def test_shipped_indonesian_model_loads_offline_with_the_documented_call(tmp_path):
    code = ("import stanza; p = stanza.Pipeline('id', processors='tokenize,ner', tokenize_pretokenized=True, "
            "ner_model_path='models/stanza/id/ner.pt', ner_pretrain_path='models/stanza/id/ner_pretrain.pt', "
            "download_method=None); d = p([['Presiden', 'Vladimir', 'Putin', 'tiba', 'di', 'Kursk', '.']]); "
            "print(sorted({e.type for e in d.ents}))")
    env = {"STANZA_RESOURCES_DIR": str(REPO_MODELS), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert set(eval(res.stdout.strip().splitlines()[-1])) <= {"PER", "LOC", "ORG"}


def test_shipped_model_tags_the_seed_article():
    title, paras = seed_article()
    text = "\n".join(paras)
    settings = NerSettings()
    tagger = Tagger(settings, {"id": model_paths("id", settings)})
    ents = tagger.tag([text], "id")[0]
    check_offsets(text, ents)
    found = {(e["text"], e["label"]) for e in ents}
    assert ("Vladimir Putin", "PER") in found
    assert ("Ukraina", "LOC") in found
    assert ("Kursk", "LOC") in found


def test_lean_tagging_equals_the_stanza_pipeline():
    """NerModel loads without Stanza's training optimizer and ner_tags skips its Document objects; the
    tags must be exactly what a stanza.Pipeline gives."""
    from warta.models.build_id_ner import read_bio
    paths = model_paths("id", NerSettings())
    sents = [[w for w, _ in s] for s in read_bio(FIXTURES / "ner/id-sentences.bio")]
    expected = [[t.ner for t in s.tokens] for s in build_pipeline("id", paths, 1)(sents).sentences]
    assert ner_tags(NerModel(paths, 1), sents) == expected
    assert any(t != "O" for s in expected for t in s)


@pytest.mark.parametrize("stanza_type, label", [
    ("PERSON", "PER"), ("PER", "PER"), ("GPE", "LOC"), ("LOC", "LOC"), ("FAC", "LOC"), ("ORG", "ORG"),
    ("persName", "PER"), ("placeName", "LOC"), ("orgName", "ORG"),
    ("MISC", None), ("NORP", None), ("DATE", None), ("MONEY", None), ("WORK_OF_ART", None)])
def test_stanza_types_map_to_per_loc_org_or_are_dropped(stanza_type, label):
    assert to_label(stanza_type) == label


def test_other_entity_types_are_dropped_with_offsets_kept(monkeypatch):
    text = "Obama visited Paris on Monday with Google staff."
    tags = ["S-PERSON", "O", "S-GPE", "O", "S-DATE", "O", "S-ORG", "O", "O"]
    monkeypatch.setattr(ner, "ner_tags", lambda model, sents: [tags])
    tagger = Tagger(NerSettings(), {"en": {"ner_model_path": "unused"}})
    tagger._models["en"] = object()
    ents = tagger.tag([text], "en")[0]
    assert [(e["text"], e["label"]) for e in ents] == [("Obama", "PER"), ("Paris", "LOC"), ("Google", "ORG")]
    check_offsets(text, ents)


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_device_cpu_and_auto_tag_on_cpu(device):
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: auto would choose it")
    paths = model_paths("id", NerSettings())
    model = NerModel(paths, 1, device=device)
    assert model.device == "cpu" and model.configs[0]["batch_size"] == 32
    assert next(model.trainers[0].model.parameters()).device.type == "cpu"
    sents = [["Presiden", "Vladimir", "Putin", "tiba", "di", "Kursk", "."]]
    assert ner_tags(model, sents) == ner_tags(NerModel(paths, 1), sents)
    assert documents_per_batch(NerSettings(device=device, batch_size=7, gpu_batch_size=99)) == 7


def test_cuda_without_a_gpu_is_a_config_error(tmp_path, capsys):
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    settings = NerSettings(device="cuda")
    with pytest.raises(ConfigError, match="ner.device is cuda, but torch .* sees no CUDA GPU"):
        check_ner(settings)
    check_ner(settings, "DataflowRunner")  # remote workers may have GPUs: checked where they load the model
    assert documents_per_batch(NerSettings(device="cuda", gpu_batch_size=99)) == 99
    cfg = tmp_path / "settings.yaml"
    cfg.write_text("ner:\n  device: cuda\n")
    assert run(["--config", str(cfg), "--output", str(tmp_path / "lake")]) == 2
    assert "sees no CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "lake").exists()


def test_missing_shipped_or_configured_model_fails_at_run_start(tmp_path, monkeypatch):
    check_ner(NerSettings())  # the shipped model is here
    with pytest.raises(ConfigError, match="ner.languages.en.ner_model_path: no such file"):
        check_ner(NerSettings(languages={"en": {"ner_model_path": str(tmp_path / "none.pt")}}))
    monkeypatch.setitem(ner.SHIPPED, "id", {"ner_model_path": str(tmp_path / "ner.pt"),
                                            "ner_pretrain_path": str(tmp_path / "ner_pretrain.pt")})
    with pytest.raises(ConfigError, match="Indonesian NER model shipped with warta is missing"):
        check_ner(NerSettings())
    check_ner(NerSettings(enabled=False))
    check_ner(NerSettings(languages={"id": {"ner_model_path": str(REPO_MODELS / "id" / "ner.pt")}}))


def test_stanza_package_with_charlms_tags_as_stanza_does(charlm_stanza_dir):
    settings = NerSettings(stanza_dir=str(charlm_stanza_dir))
    source, paths = ner.model_source("en", settings)
    en = charlm_stanza_dir / "en"
    assert (source, paths) == ("stanza", {
        "ner_model_path": str(en / "ner" / "tiny_charlm.pt"), "ner_pretrain_path": str(en / "pretrain" / "tiny.pt"),
        "ner_forward_charlm_path": str(en / "forward_charlm" / "tiny.pt"),
        "ner_backward_charlm_path": str(en / "backward_charlm" / "tiny.pt")})
    model = NerModel(paths, 1)
    assert model.trainers[0].model.args["charlm"]  # the character language models are in use
    sents = [[t["text"] for t in s] for s in tiny_corpus(12, 4)]
    expected = [[t.ner for t in s.tokens] for s in build_pipeline("en", paths, 1)(sents).sentences]
    assert ner_tags(model, sents) == expected
    text = "Alice Smith visited Paris with Acme Corp. Later, Bob Jones joined Globex Inc in London."
    ents = Tagger(settings, {"en": paths}).tag([text], "en")[0]
    check_offsets(text, ents)
    assert {e["label"] for e in ents} <= {"PER", "LOC", "ORG"}
