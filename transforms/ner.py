"""Stage 5 — named entities with Stanza, on batches of documents.

Text is split into sentences and tokens by :mod:`transforms.segment` (so every entity carries exact
character offsets into ``text``) and handed to Stanza pre-tokenised. One Stanza pipeline per language
is built once per worker process, from local files only, with downloads disabled.
"""

from __future__ import annotations

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


def to_label(label: str) -> str:
    return LABELS.get(label.upper(), label.upper())


class Tagger:
    """Stanza pipelines by language, built on first use; tags batches of texts."""

    def __init__(self, settings: NerSettings, paths: dict[str, dict[str, str] | None]):
        self.settings, self.paths = settings, paths
        self._pipes: dict[str, Any] = {}
        self._lock = threading.Lock()

    def pipeline(self, lang: str | None):
        if not lang or not self.paths.get(lang):
            return None
        with self._lock:
            if lang not in self._pipes:
                self._pipes[lang] = build_pipeline(lang, self.paths[lang], self.settings.threads)
            return self._pipes[lang]

    def tag(self, texts: list[str], lang: str | None) -> list[list[dict[str, Any]]] | None:
        """Entities for each text (one Stanza call for the whole batch); None when ``lang`` has no model."""
        pipe = self.pipeline(lang)
        if pipe is None:
            return None
        sents, owners = [], []
        for i, text in enumerate(texts):
            for spans in sentences(text):
                sents.append(spans)
                owners.append(i)
        out: list[list[dict[str, Any]]] = [[] for _ in texts]
        if not sents:
            return out
        doc = pipe([[texts[owners[j]][a:b] for a, b in spans] for j, spans in enumerate(sents)])
        for j, sent in enumerate(doc.sentences):
            spans, text = sents[j], texts[owners[j]]
            for ent in sent.ents:
                first, last = ent.tokens[0].id[0] - 1, ent.tokens[-1].id[0] - 1
                start, end = spans[first][0], spans[last][1]
                out[owners[j]].append({"text": text[start:end], "label": to_label(ent.type),
                                       "start_char": start, "end_char": end})
        return out


_TAGGERS: dict[str, Tagger] = {}
_TAGGERS_LOCK = threading.Lock()


def shared_tagger(settings: NerSettings, paths: dict[str, dict[str, str] | None]) -> Tagger:
    """One Tagger (and so one set of Stanza pipelines) per process and configuration. Unlike a
    ``Shared`` handle, it outlives the pipeline, so ``--every`` loads the models once per process."""
    key = json.dumps([settings.model_dump(), paths], sort_keys=True, default=str)
    with _TAGGERS_LOCK:
        if key not in _TAGGERS:
            _TAGGERS[key] = Tagger(settings, paths)
        return _TAGGERS[key]


class _TagFn(beam.DoFn):
    def __init__(self, settings: NerSettings, paths: dict[str, dict[str, str] | None]):
        self.settings, self.paths = settings, paths
        self.entities = beam.metrics.Metrics.counter("warta", "entities")
        self.no_model = beam.metrics.Metrics.counter("warta", "ner_no_model")
        self.failed = beam.metrics.Metrics.counter("warta", "ner_failed")

    def setup(self):
        self.tagger = shared_tagger(self.settings, self.paths)

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


@dataclass(eq=False)
class TagEntities(beam.PTransform):
    """Articles in; articles with ``entities`` out (main) and ``errors``. Batches documents for Stanza."""

    settings: NerSettings
    paths: dict[str, dict[str, str] | None]  # language -> Stanza model paths (None: no model)

    def __post_init__(self):
        super().__init__()

    def expand(self, articles):
        tagged = (
            batches(articles, lambda a: a["article_id"], self.settings.parallelism, self.settings.batch_size)
            | "Tag" >> beam.ParDo(_TagFn(self.settings, self.paths))
        )
        return split(tagged, ["articles", ERRORS])
