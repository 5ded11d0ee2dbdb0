"""ner.precision: int8 tagging on CPU (transforms.ner.quantize_int8) gives the entities fp32 gives, with the
same offsets and types, and really runs quantized modules. Reads only tests/fixtures and models/."""

from __future__ import annotations

import warnings

import pytest
from conftest import FIXTURES, seed_article, tiny_corpus
from test_ner import check_offsets
from torch import nn
from torch.ao.nn.quantized import dynamic as qdynamic

from warta.config.settings import NerSettings
from warta.models.build_id_ner import read_bio
from warta.transforms.ner import NerModel, Tagger, model_paths, ner_tags, quantize_int8, run_precision


def fixture_texts() -> list[str]:
    """The ten NER fixture sentences and the seed article's paragraphs, as article texts."""
    sents = [" ".join(w for w, _ in s) for s in read_bio(FIXTURES / "ner/id-sentences.bio")]
    title, paras = seed_article()
    return [" ".join(sents[:5]), " ".join(sents[5:]), title + "\n\n" + "\n".join(paras)]


def entities(precision: str, texts: list[str], lang: str = "id", settings: NerSettings | None = None):
    settings = (settings or NerSettings()).model_copy(update={"precision": precision, "threads": 1})
    tagger = Tagger(settings, {lang: model_paths(lang, settings)})
    found = tagger.tag(texts, lang)
    return tagger.model(lang), found


def agreement(a: list[list[dict]], b: list[list[dict]]) -> float:
    """Entities found by both (same text, same offsets, same label) over the larger of the two counts."""
    sa = {(i, e["start_char"], e["end_char"], e["label"]) for i, ents in enumerate(a) for e in ents}
    sb = {(i, e["start_char"], e["end_char"], e["label"]) for i, ents in enumerate(b) for e in ents}
    return len(sa & sb) / max(len(sa), len(sb))


def test_default_precision_is_int8():
    assert NerSettings().precision == "int8"
    assert NerSettings(precision="fp32").precision == "fp32"
    with pytest.raises(ValueError):
        NerSettings(precision="int4")


def test_int8_and_fp32_tag_the_fixtures_with_the_same_entities():
    texts = fixture_texts()
    fp32_model, fp32 = entities("fp32", texts)
    int8_model, int8 = entities("int8", texts)
    assert (fp32_model.precision, int8_model.precision) == ("fp32", "int8")
    assert sum(map(len, fp32)) >= 20  # enough entities for the share to mean something
    assert agreement(fp32, int8) >= 0.95
    for text, ents in zip(texts, int8):
        check_offsets(text, ents)
        assert all(set(e) == {"mention", "label", "start_char", "end_char"} for e in ents)
    assert {e["label"] for ents in int8 for e in ents} == {e["label"] for ents in fp32 for e in ents}


def test_int8_path_runs_quantized_lstm_and_linear_modules():
    model, _ = entities("int8", ["Presiden Joko Widodo tiba di Jakarta."])
    net = model.trainers[0].model
    assert type(net.taggerlstm.lstm) is qdynamic.LSTM
    assert type(net.charmodel.charlstm.lstm) is qdynamic.LSTM
    assert type(net.input_transform) is qdynamic.Linear
    assert all(type(clf) is qdynamic.Linear for clf in net.tag_clfs)
    assert not any(type(m) in (nn.LSTM, nn.Linear) for m in net.modules())  # every LSTM and Linear swapped
    assert type(net.word_emb) is nn.Embedding  # embeddings stay fp32
    fp32, _ = entities("fp32", ["Presiden Joko Widodo tiba di Jakarta."])
    assert type(fp32.trainers[0].model.taggerlstm.lstm) is nn.LSTM


def test_quantizing_is_quiet_but_other_warnings_still_show():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quantize_int8(nn.Sequential(nn.LSTM(4, 8), nn.Linear(8, 2)))
        warnings.warn("something else is deprecated", DeprecationWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["something else is deprecated"]


def test_cuda_keeps_fp32_whatever_the_setting():
    assert run_precision("int8", "cpu") == "int8"
    assert run_precision("fp32", "cpu") == "fp32"
    assert run_precision("int8", "cuda") == "fp32"


def test_int8_on_another_language_model_from_model_dir(tiny_model_dir):
    """A Stanza model of another language (trained here, found through ner.model_dir) quantizes and tags alike."""
    settings = NerSettings(model_dir=str(tiny_model_dir))
    texts = [" ".join(t["text"] for t in s) for s in tiny_corpus(40, 5)]
    fp32_model, fp32 = entities("fp32", texts, "en", settings)
    int8_model, int8 = entities("int8", texts, "en", settings)
    assert type(int8_model.trainers[0].model.taggerlstm.lstm) is qdynamic.LSTM
    assert sum(map(len, fp32)) >= 40
    assert agreement(fp32, int8) >= 0.95


def test_int8_with_character_language_models(charlm_stanza_dir):
    """Stanza's own packages add forward/backward character LMs (LSTMs too): they are quantized and tag."""
    settings = NerSettings(stanza_dir=str(charlm_stanza_dir))
    paths = model_paths("en", settings)
    sents = [[t["text"] for t in s] for s in tiny_corpus(12, 4)]
    model = NerModel(paths, 1, precision="int8")
    net = model.trainers[0].model
    assert net.args["charlm"]
    assert not any(type(m) is nn.LSTM for m in net.modules())
    tags, expected = ner_tags(model, sents), ner_tags(NerModel(paths, 1), sents)
    assert [len(t) for t in tags] == [len(s) for s in sents]
    same = sum(a == b for s, e in zip(tags, expected) for a, b in zip(s, e))
    assert same >= 0.95 * sum(map(len, sents))
