"""Stage 5 — named entities with Stanza, on batches of documents.

Text is split into sentences and tokens by :mod:`transforms.segment` (so every entity carries exact
character offsets into ``text``) and handed to Stanza pre-tokenised. One Stanza pipeline per language
is built once per worker process, from local files only, with downloads disabled.
"""

from __future__ import annotations

import gc
import logging
import threading
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apache_beam as beam

from config.settings import NerSettings
from transforms.outputs import batches, split
from transforms.records import error_from
from transforms.segment import sentences

log = logging.getLogger(__name__)
ERRORS = "errors"
REPO_MODELS = Path(__file__).resolve().parents[1] / "models" / "stanza"
LABELS = {"PERSON": "PER", "PER": "PER", "ORGANIZATION": "ORG", "ORGANISATION": "ORG", "ORG": "ORG",
          "GPE": "LOC", "LOCATION": "LOC", "PLACE": "LOC", "LOC": "LOC"}


def model_paths(lang: str, settings: NerSettings) -> dict[str, str] | None:
    """Where the NER model of ``lang`` lives: explicit config, then ``model_dir/<lang>/``, then the repo."""
    if lang in settings.languages:
        return dict(settings.languages[lang])
    for base in ([Path(settings.model_dir)] if settings.model_dir else []) + [REPO_MODELS]:
        model, pretrain = base / lang / "ner.pt", base / lang / "ner_pretrain.pt"
        if model.exists():
            paths = {"ner_model_path": str(model)}
            if pretrain.exists():
                paths["ner_pretrain_path"] = str(pretrain)
            return paths
    return None


def build_pipeline(lang: str, paths: dict[str, str], threads: int | None = None):
    """A Stanza tokenize(pretokenized)+NER pipeline from local files; never touches the network."""
    import stanza
    import torch

    if threads:
        torch.set_num_threads(threads)
    return stanza.Pipeline(
        # dir holds a resources.json, so Stanza never looks for its hub
        lang, dir=str(REPO_MODELS), processors="tokenize,ner", tokenize_pretokenized=True,
        download_method=None, allow_unknown_language=True, use_gpu=False, logging_level="WARN", **paths,
    )


class NerModel:
    """A Stanza NER model loaded for tagging only, from local files.

    It is Stanza's own ``Trainer.load``; ``Trainer.__init__`` would also build the SGD optimizer used
    for training, and creating any torch optimizer imports torch's compiler stack (1.5 s of CPU in
    every worker process, every run). ``tests/test_ner.py`` checks the tags equal ``stanza.Pipeline``'s.
    """

    def __init__(self, paths: dict[str, str], threads: int | None = None, batch_size: int = 32):
        import torch
        from stanza.models.common.pretrain import Pretrain
        from stanza.models.ner.trainer import Trainer

        if threads:
            torch.set_num_threads(threads)
        pretrain = Pretrain(paths["ner_pretrain_path"]) if paths.get("ner_pretrain_path") else None
        charlms = {"charlm_forward_file": paths.get("ner_forward_charlm_path"),
                   "charlm_backward_file": paths.get("ner_backward_charlm_path")}
        trainer = Trainer.__new__(Trainer)
        trainer.load(paths["ner_model_path"], pretrain, charlms)
        if trainer.args.get("predict_tagset") is None:
            trainer.args["predict_tagset"] = 0
        trainer.model.eval()
        self.trainers = [trainer]
        self.configs = [{**trainer.args, "batch_size": batch_size}]


class _TokenTexts:
    """What Stanza's NER ``DataLoader`` reads from a ``Document``: the token texts of each sentence.
    Handing it this instead of a Document skips building Stanza's Document/Token/Word objects (a fifth
    of the tagging CPU, measured); the models, batching and decoding are Stanza's own."""

    def __init__(self, sents: list[list[str]]):
        self.sents = sents

    def get(self, fields, as_sentences=True, from_token=True):
        return [[[w, None, None] for w in s] for s in self.sents]


def ner_tags(model: NerModel, sents: list[list[str]]) -> list[list[str]]:
    """BIOES tags for pre-tokenised sentences."""
    import torch
    from stanza.models.ner.data import DataLoader
    from stanza.models.ner.utils import merge_tags

    order = sorted(range(len(sents)), key=lambda i: len(sents[i]))  # similar lengths share a batch
    texts = _TokenTexts([sents[i] for i in order])
    per_model = []
    with torch.no_grad():
        for trainer, config in zip(model.trainers, model.configs):
            loader = DataLoader(texts, config["batch_size"], config, vocab=trainer.vocab, evaluation=True,
                                preprocess_tags=False, bert_tokenizer=trainer.model.bert_tokenizer)
            per_model.append([tags for batch in loader for tags in trainer.predict(batch)])
    out: list[list[str]] = [[] for _ in sents]
    for i, tags in zip(order, (merge_tags(*x) for x in zip(*per_model))):
        out[i] = list(tags)
    return out


def to_label(label: str) -> str:
    return LABELS.get(label.upper(), label.upper())


class Tagger:
    """Stanza NER models by language, loaded on first use (or by warm_up); tags batches of texts."""

    def __init__(self, settings: NerSettings, paths: dict[str, dict[str, str] | None]):
        self.settings, self.paths = settings, paths
        self._models: dict[str, NerModel] = {}
        self._lock = threading.Lock()

    def warm_up(self, langs) -> None:
        """Start loading the models of ``langs`` in the background; the first ``tag`` call waits for them."""
        for lang in langs:
            if self.paths.get(lang) and lang not in self._models:
                threading.Thread(target=self._warm, args=(lang,), daemon=True, name=f"ner-load-{lang}").start()

    def _warm(self, lang: str) -> None:
        try:
            self.model(lang)
        except Exception:  # reported (and turned into error rows) by the tag call that needs it
            log.warning("could not preload the %s NER model", lang, exc_info=True)

    def model(self, lang: str | None) -> NerModel | None:
        if not lang or not self.paths.get(lang):
            return None
        with self._lock:
            if lang not in self._models:
                self._models[lang] = NerModel(self.paths[lang], self.settings.threads)
                # The models (and torch, stanza) live as long as the process: keep the cyclic garbage
                # collector from walking them again and again while tagging, and at exit (about 1 s).
                gc.freeze()
            return self._models[lang]

    def tag(self, texts: list[str], lang: str | None) -> list[list[dict[str, Any]]] | None:
        """Entities for each text (one Stanza call for the whole batch); None when ``lang`` has no model."""
        model = self.model(lang)
        if model is None:
            return None
        sents, owners = [], []
        for i, text in enumerate(texts):
            for spans in sentences(text):
                sents.append(spans)
                owners.append(i)
        out: list[list[dict[str, Any]]] = [[] for _ in texts]
        if not sents:
            return out
        from stanza.models.ner.utils import decode_from_bioes

        tags = ner_tags(model, [[texts[owners[j]][a:b] for a, b in spans] for j, spans in enumerate(sents)])
        for j, sent_tags in enumerate(tags):
            spans, text = sents[j], texts[owners[j]]
            for ent in decode_from_bioes(sent_tags):
                start, end = spans[ent["start"]][0], spans[ent["end"]][1]
                out[owners[j]].append({"text": text[start:end], "label": to_label(ent["type"]),
                                       "start_char": start, "end_char": end})
        return out


_TAGGERS: dict[str, Tagger] = {}
_TAGGERS_LOCK = threading.Lock()


def shared_tagger(settings: NerSettings, paths: dict[str, dict[str, str] | None]) -> Tagger:
    """One Tagger (and so one set of NER models) per process and configuration. Unlike a
    ``Shared`` handle, it outlives the pipeline, so ``--every`` loads the models once per process."""
    key = json.dumps([settings.model_dump(), paths], sort_keys=True, default=str)
    with _TAGGERS_LOCK:
        if key not in _TAGGERS:
            _TAGGERS[key] = Tagger(settings, paths)
        return _TAGGERS[key]


class _TagFn(beam.DoFn):
    def __init__(self, settings: NerSettings, paths: dict[str, dict[str, str] | None], warm: tuple[str, ...]):
        self.settings, self.paths, self.warm = settings, paths, warm
        self.entities = beam.metrics.Metrics.counter("warta", "entities")
        self.no_model = beam.metrics.Metrics.counter("warta", "ner_no_model")
        self.failed = beam.metrics.Metrics.counter("warta", "ner_failed")

    def setup(self):
        self.tagger = shared_tagger(self.settings, self.paths)
        if self.settings.enabled:  # models load while the stages before this one fetch and extract
            self.tagger.warm_up(self.warm)

    def process(self, batch: list[dict[str, Any]]):
        by_lang: dict[str | None, list[dict[str, Any]]] = {}
        for art in batch:
            by_lang.setdefault(art.get("language"), []).append(art)
        for lang, arts in by_lang.items():
            try:
                found = self.tagger.tag([a["text"] for a in arts], lang) if self.settings.enabled else None
            except Exception as e:  # a broken model must not lose the articles: write them untagged
                log.exception("NER failed for a batch of %d %s articles", len(arts), lang)
                self.failed.inc(len(arts))
                for a in arts:
                    yield ERRORS, error_from(e, "ner", a)
                found = None
            if found is None:
                self.no_model.inc(len(arts))
                found = [[] for _ in arts]
            for art, ents in zip(arts, found):
                self.entities.inc(len(ents))
                yield "articles", {**art, "entities": ents}


class _PreloadFn(beam.DoFn):
    def __init__(self, settings: NerSettings, paths: dict[str, dict[str, str] | None], langs: tuple[str, ...]):
        self.settings, self.paths, self.langs = settings, paths, langs

    def setup(self):
        shared_tagger(self.settings, self.paths).warm_up(self.langs)

    def process(self, element):
        yield element


@dataclass(eq=False)
class PreloadModels(beam.PTransform):
    """Elements pass through unchanged; every worker that sets this step up starts loading the NER
    models of ``langs`` in the background. Put it on the first stage, so that the models (seconds to
    load) are ready by the time the first pages are extracted."""

    settings: NerSettings
    paths: dict[str, dict[str, str] | None]
    langs: tuple[str, ...] = ()

    def __post_init__(self):
        super().__init__()

    def expand(self, pcoll):
        return pcoll | "Preload" >> beam.ParDo(_PreloadFn(self.settings, self.paths, tuple(self.langs)))


@dataclass(eq=False)
class TagEntities(beam.PTransform):
    """Articles in; articles with ``entities`` out (main) and ``errors``. Batches documents for Stanza.

    ``batching="bundle"`` batches within a bundle (``BatchElements``, no shuffle), so tagging is fused
    with the stages before it and starts with the first fetched pages. ``"shuffle"`` batches through
    a ``GroupByKey`` instead, for runners that drop what ``finish_bundle`` emits (Beam's DaskRunner).
    """

    settings: NerSettings
    paths: dict[str, dict[str, str] | None]  # language -> Stanza model paths (None: no model)
    batching: str = "bundle"
    warm: tuple[str, ...] = ()  # languages whose models are loaded as soon as a worker sets the stage up

    def __post_init__(self):
        super().__init__()

    def expand(self, articles):
        size = max(1, self.settings.batch_size)
        if self.batching == "shuffle":
            batched = batches(articles, lambda a: a["article_id"], self.settings.parallelism, size)
        else:
            batched = articles | "Batch" >> beam.BatchElements(min_batch_size=size, max_batch_size=size)
        tagged = batched | "Tag" >> beam.ParDo(_TagFn(self.settings, self.paths, tuple(self.warm)))
        return split(tagged, ["articles", ERRORS])
