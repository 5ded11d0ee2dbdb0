"""transforms.ner: a real Stanza model trained here on a few dozen sentences (another language found
through ``ner.model_dir``), the shipped Indonesian model, batching, offsets, and missing models."""

from __future__ import annotations

import subprocess
import sys

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from conftest import FIXTURES, ROOT, seed_article, tiny_corpus
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

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


def check_offsets(text: str, ents: list[dict]) -> None:
    for e in ents:
        assert text[e["start_char"]:e["end_char"]] == e["mention"]
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
    labels = {(e["mention"], e["label"]) for ents in found for e in ents}
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
    found = {(e["mention"], e["label"]) for e in ents}
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
    assert [(e["mention"], e["label"]) for e in ents] == [("Obama", "PER"), ("Paris", "LOC"), ("Google", "ORG")]
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


@hypothesis_settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.integers(0, 2**40), max_size=12), min_size=1, max_size=10).filter(
    lambda rows: any(rows)), st.integers(0, 5), st.integers(0, 9))
def test_padded_long_tensor_equals_stanzas(rows, extra, pad):
    """warta's one-step padding gives Stanza's tensor exactly (shape, dtype, values), for any ragged rows."""
    import torch
    from stanza.models.common.data import get_long_tensor
    ours, theirs = ner.padded_long_tensor(rows, len(rows) + extra, pad), get_long_tensor(rows, len(rows) + extra, pad)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape and torch.equal(ours, theirs)


def test_fast_tensors_only_inside_warta_tagging(monkeypatch):
    """The one-step padding is taken inside ner_tags only (the lean-tagging test above checks its tags):
    stanza.Pipeline elsewhere in the process, e.g. the benchmarks' raw Stanza limit, runs Stanza's own."""
    import stanza.models.ner.data as ner_data
    calls = []
    real = ner.padded_long_tensor
    monkeypatch.setattr(ner, "padded_long_tensor", lambda *a: calls.append(len(a[0])) or real(*a))
    paths = model_paths("id", NerSettings())
    ner_tags(NerModel(paths, 1), [["Joko", "Widodo", "ke", "Surabaya", "."]])
    assert calls  # words and characters of the batch
    calls.clear()
    build_pipeline("id", paths, 1)([["Joko", "Widodo", "ke", "Surabaya", "."]])
    ner_data.get_long_tensor([[1, 2], [3]], 2)
    assert calls == []
