"""Stage 4 — named entities with Stanza, on batches of documents.

Text is split into sentences and tokens by :mod:`transforms.segment` (so every entity carries exact
character offsets into ``text``; each entity gets its per-article ``canonical`` form, :mod:`transforms.entities`)
and is handed to Stanza pre-tokenised. One model per language is loaded
once per worker process, from local files only (never the network), on ``ner.device``. Where each
language's model comes from: :func:`model_source`; Stanza's entity types become PER/LOC/ORG (``LABELS``).
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import posixpath
import socket
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import apache_beam as beam
import fsspec

from warta.config.settings import ConfigError, NerSettings
from warta.transforms.entities import with_canonical
from warta.transforms.outputs import _bucket, _chunks, split
from warta.transforms.records import error_from
from warta.transforms.segment import sentences

log = logging.getLogger(__name__)
ERRORS = "errors"
# The models shipped inside the installed package, found by each process that imports this module (the
# launcher and every worker alike): paths computed on one machine are never handed to another.
REPO_MODELS = Path(str(files("warta.models") / "stanza"))
SHIPPED = {"id": {"ner_model_path": str(REPO_MODELS / "id" / "ner.pt"),
                  "ner_pretrain_path": str(REPO_MODELS / "id" / "ner_pretrain.pt")}}
# Entity types of Stanza's NER models -> the lake's PER/LOC/ORG (README, "NER models"); others are dropped.
LABELS = {"PER": "PER", "PERSON": "PER", "PERSNAME": "PER",
          "LOC": "LOC", "GPE": "LOC", "FAC": "LOC", "LOCATION": "LOC", "PLACE": "LOC", "PLACENAME": "LOC",
          "GEOGNAME": "LOC",
          "ORG": "ORG", "ORGANIZATION": "ORG", "ORGANISATION": "ORG", "ORGNAME": "ORG"}
# A Stanza NER package's dependencies (resources.json) -> the path arguments NerModel takes
DEPENDENCY_PATHS = {"pretrain": "ner_pretrain_path", "forward_charlm": "ner_forward_charlm_path",
                    "backward_charlm": "ner_backward_charlm_path"}
SENTENCES_PER_PASS = {"cpu": 32, "cuda": 256}  # sentences per Stanza forward pass, by device


def is_url(path: str | Path) -> bool:
    """A remote fsspec URL (``s3://``, ``gs://``, ``https://``, …); local paths and ``file://`` are not."""
    protocol = fsspec.core.split_protocol(str(path))[0]
    return protocol not in (None, "file", "local")


def _join(base: str | Path, *parts: str) -> str:
    return posixpath.join(str(base), *parts) if is_url(base) else str(Path(base, *parts))


def _exists(path: str | Path) -> bool:
    if not is_url(path):
        return Path(path).exists()
    fs, remote = fsspec.core.url_to_fs(str(path))
    return fs.exists(remote)


def _folders(base: str | Path) -> list[str]:
    """Names of the folders directly below ``base``; [] when it is missing."""
    if not is_url(base):
        return [p.name for p in Path(base).iterdir() if p.is_dir()] if Path(base).is_dir() else []
    fs, remote = fsspec.core.url_to_fs(str(base))
    try:
        return [posixpath.basename(e["name"].rstrip("/")) for e in fs.ls(remote, detail=True) if e["type"] == "directory"]
    except FileNotFoundError:
        return []


def model_cache() -> Path:
    """Where this machine keeps its copies of models given as URLs: ``$WARTA_MODEL_CACHE``, else
    ``~/.cache/warta/models`` (Linux)."""
    if os.environ.get("WARTA_MODEL_CACHE"):
        return Path(os.environ["WARTA_MODEL_CACHE"]).expanduser()
    from platformdirs import user_cache_dir
    return Path(user_cache_dir("warta")) / "models"


_COPIES: dict[str, str] = {}
_COPIES_LOCK = threading.Lock()


def local_copy(path: str) -> str:
    """``path`` itself when it is local; for a URL, a copy on this machine's disk (a folder per URL in
    :func:`model_cache`), made once per process with fsspec and the process's own credentials."""
    if not is_url(path):
        return path
    with _COPIES_LOCK:
        if path not in _COPIES:
            key = hashlib.sha256(path.encode("utf-8")).hexdigest()[:16]
            target = model_cache() / key / posixpath.basename(path.rstrip("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")  # other processes may copy it too
            fs, remote = fsspec.core.url_to_fs(path)
            fs.get_file(remote, str(tmp))
            os.replace(tmp, target)
            _COPIES[path] = str(target)
        return _COPIES[path]


def stanza_dir(settings: NerSettings) -> Path | str:
    """``ner.stanza_dir`` (a folder or a URL), else Stanza's own default: ``$STANZA_RESOURCES_DIR``, else its
    cache folder (``~/.cache/stanza/<version>/resources`` on Linux). Worked out without importing Stanza (and torch)."""
    if settings.stanza_dir:
        return settings.stanza_dir if is_url(settings.stanza_dir) else Path(settings.stanza_dir).expanduser()
    if os.environ.get("STANZA_RESOURCES_DIR"):
        return Path(os.environ["STANZA_RESOURCES_DIR"]).expanduser()
    from importlib.metadata import version

    from platformdirs import user_cache_dir
    return Path(user_cache_dir("stanza", "StanfordNLP", version("stanza"))) / "resources"


def stanza_resources(base: Path | str) -> dict[str, Any]:
    """The ``resources.json`` of a Stanza resources folder (or URL); {} when there is none."""
    try:
        if is_url(base):
            with fsspec.open(_join(base, "resources.json"), "rb") as fh:
                data = json.loads(fh.read())
        else:
            data = json.loads((Path(base) / "resources.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def stanza_package(resources: dict[str, Any], lang: str) -> tuple[str, str, list[tuple[str, str]]] | None:
    """(language, package, [(dependency model, package)]) of ``lang``'s default NER in a Stanza
    ``resources.json``, following aliases; None when Stanza lists no NER model for it."""
    seen = set()
    entry = resources.get(lang)
    while isinstance(entry, dict) and "alias" in entry and lang not in seen:
        seen.add(lang)
        lang = entry["alias"]
        entry = resources.get(lang)
    if not isinstance(entry, dict):
        return None
    package = (entry.get("default_processors") or {}).get("ner") or \
        ((entry.get("packages") or {}).get("default") or {}).get("ner")
    if isinstance(package, list):  # several default NER models: warta uses the first
        package = package[0] if package else None
    if not package or package not in (entry.get("ner") or {}):
        return None
    deps = [(d["model"], d["package"]) for d in entry["ner"][package].get("dependencies") or []]
    return lang, package, deps


def stanza_paths(lang: str, base: Path | str, resources: dict[str, Any] | None = None) -> dict[str, str] | None:
    """NerModel paths of ``lang``'s default NER package in the Stanza folder (or URL) ``base``, when downloaded."""
    found = stanza_package(stanza_resources(base) if resources is None else resources, lang)
    if found is None:
        return None
    lang, package, deps = found
    paths = {"ner_model_path": _join(base, lang, "ner", f"{package}.pt")}
    for model, dep in deps:
        if model in DEPENDENCY_PATHS:
            paths[DEPENDENCY_PATHS[model]] = _join(base, lang, model, f"{dep}.pt")
    return paths if all(_exists(p) for p in paths.values()) else None


def model_source(lang: str, settings: NerSettings) -> tuple[str, dict[str, str]] | None:
    """(where from, Stanza model paths) of ``lang``'s NER model, first found of: ``ner.languages``,
    ``ner.model_dir/<lang>/``, the model shipped with warta, the Stanza resources folder. Paths may be
    URLs (:func:`local_copy` fetches them). Each machine answers for itself: workers call it too."""
    if lang in settings.languages:
        return "config", dict(settings.languages[lang])
    if settings.model_dir:
        folder = settings.model_dir
        if _exists(_join(folder, lang, "ner.pt")):
            paths = {"ner_model_path": _join(folder, lang, "ner.pt")}
            if _exists(_join(folder, lang, "ner_pretrain.pt")):
                paths["ner_pretrain_path"] = _join(folder, lang, "ner_pretrain.pt")
            return "model_dir", paths
    if lang in SHIPPED:
        return "warta", dict(SHIPPED[lang])
    paths = stanza_paths(lang, stanza_dir(settings))
    return ("stanza", paths) if paths else None


def model_paths(lang: str, settings: NerSettings) -> dict[str, str] | None:
    found = model_source(lang, settings)
    return found[1] if found else None


def known_languages(settings: NerSettings) -> set[str]:
    """Languages with a NER model: shipped, configured, in ``ner.model_dir`` or downloaded into the Stanza folder."""
    langs = {*SHIPPED, *settings.languages}
    if settings.model_dir:
        langs |= {name for name in _folders(settings.model_dir) if _exists(_join(settings.model_dir, name, "ner.pt"))}
    base = stanza_dir(settings)
    resources = stanza_resources(base)
    if resources:
        langs |= {name for name in _folders(base) if stanza_paths(name, base, resources)}
    return langs


def resolve_device(setting: str) -> str:
    """``cpu`` or ``cuda`` for ``ner.device``; ``cuda`` where torch sees no GPU is a ConfigError."""
    if setting == "cpu":
        return "cpu"
    if setting == "auto" and sys.platform == "linux" and not Path("/proc/driver/nvidia").exists():
        return "cpu"  # no NVIDIA driver, so no CUDA: answered without importing torch (2 s)
    import torch
    if torch.cuda.is_available():
        return "cuda"
    if setting == "cuda":
        raise ConfigError(f"ner.device is cuda, but torch {torch.__version__} sees no CUDA GPU "
                          "(use ner.device: auto or cpu)")
    return "cpu"


def check_ner(settings: NerSettings, runner: str | None = None) -> None:
    """Run-start checks, each a one-line ConfigError: the configured and shipped model files exist, and
    ``ner.device`` is usable (checked here only on the DirectRunner, whose workers are this machine)."""
    if not settings.enabled:
        return
    for lang, paths in settings.languages.items():
        for key, path in paths.items():
            if not _exists(path):
                raise ConfigError(f"ner.languages.{lang}.{key}: no such file {path}")
    if model_source("id", settings)[0] == "warta":
        for path in SHIPPED["id"].values():
            if not Path(path).exists():
                raise ConfigError(f"the Indonesian NER model shipped with warta is missing ({path}): reinstall "
                                  "warta (its wheel carries models/stanza/id/), set ner.languages.id, "
                                  "or run with --no-ner")
    if (runner or "direct").lower() in ("direct", "directrunner"):
        resolve_device(settings.device)


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


def run_precision(precision: str, device: str) -> str:
    """The precision a model runs in: ``ner.precision`` on CPU; on CUDA always fp32."""
    return "int8" if precision == "int8" and device == "cpu" else "fp32"


def quantize_int8(model):
    """``model`` with its LSTM and Linear layers swapped, in place, for dynamic int8 ones (int8 weights,
    activations quantized per batch on the fly); embeddings and the CRF stay fp32. CPU only.

    This is torch's eager ``quantize_dynamic`` (torch is pinned, ``tests/test_ner_int8.py`` checks the
    swap and the entities). torchao's ``quantize_``, which torch's deprecation notice points to, only
    quantizes modules holding a ``weight`` (Linear) and refuses ``nn.LSTM`` (torchao 0.18), where the
    tagging time is spent; the notice and the one about qint8 tensors are silenced, nothing else."""
    import torch
    from torch import nn
    from torch.ao.quantization import quantize_dynamic

    warnings.filterwarnings("ignore", message="torch.ao.quantization is deprecated", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message="torch.quantize_per_tensor, torch.quantize_per_channel",
                            category=UserWarning)
    return quantize_dynamic(model, {nn.LSTM, nn.Linear}, dtype=torch.qint8, inplace=True)


class NerModel:
    """A Stanza NER model loaded for tagging only, from local files.

    It is Stanza's own ``Trainer.load``; ``Trainer.__init__`` would also build the SGD optimizer used
    for training, and creating any torch optimizer imports torch's compiler stack (1.5 s of CPU in
    every worker process, every run). ``tests/test_ner.py`` checks the tags equal ``stanza.Pipeline``'s.
    With ``precision="int8"`` on CPU the loaded model is quantized once (:func:`quantize_int8`);
    on CUDA it stays fp32. ``self.precision`` is what it runs.
    """

    def __init__(self, paths: dict[str, str], threads: int | None = None, batch_size: int | None = None,
                 device: str = "cpu", precision: str = "fp32"):
        import torch
        from stanza.models.common.pretrain import Pretrain
        from stanza.models.ner.trainer import Trainer

        if threads:
            torch.set_num_threads(threads)
        self.device = resolve_device(device)
        pretrain = Pretrain(paths["ner_pretrain_path"]) if paths.get("ner_pretrain_path") else None
        charlms = {"charlm_forward_file": paths.get("ner_forward_charlm_path"),
                   "charlm_backward_file": paths.get("ner_backward_charlm_path")}
        trainer = Trainer.__new__(Trainer)
        trainer.load(paths["ner_model_path"], pretrain, charlms)
        if trainer.args.get("predict_tagset") is None:
            trainer.args["predict_tagset"] = 0
        trainer.model.to(self.device)  # Stanza's predict runs where the model's parameters are
        trainer.model.eval()
        self.precision = run_precision(precision, self.device)
        if self.precision == "int8":
            quantize_int8(trainer.model)
        self.trainers = [trainer]
        self.configs = [{**trainer.args, "batch_size": batch_size or SENTENCES_PER_PASS[self.device]}]


class _TokenTexts:
    """What Stanza's NER ``DataLoader`` reads from a ``Document``: the token texts of each sentence.
    Handing it this instead of a Document skips building Stanza's Document/Token/Word objects (a fifth
    of the tagging CPU, measured); the models, batching and decoding are Stanza's own."""

    def __init__(self, sents: list[list[str]]):
        self.sents = sents

    def get(self, fields, as_sentences=True, from_token=True):
        return [[[w, None, None] for w in s] for s in self.sents]


_fast_tensors = threading.local()


def padded_long_tensor(rows: list[list[int]], batch_size: int, pad_id: int = 0):
    """Stanza's ``get_long_tensor`` for rows of ids (words, characters), padded with ``pad_id``, in one
    step: Stanza fills the tensor row by row (a tenth of a run's CPU, measured); the values are the same."""
    from itertools import chain

    import torch

    lens = [len(r) for r in rows]
    width = max(lens)
    out = torch.full((batch_size, width), pad_id, dtype=torch.long)
    mask = torch.arange(width) < torch.tensor(lens + [0] * (batch_size - len(rows))).unsqueeze(1)
    out[mask] = torch.tensor(list(chain.from_iterable(rows)), dtype=torch.long)
    return out


def _install_fast_tensors() -> None:
    """Route Stanza's NER ``DataLoader`` through :func:`padded_long_tensor`, but only in a thread inside
    :func:`ner_tags`: ``stanza.Pipeline`` elsewhere (and the benchmarks' raw Stanza limit) stays Stanza's own."""
    import stanza.models.ner.data as ner_data
    original = ner_data.get_long_tensor
    if getattr(original, "warta_dispatch", False):
        return

    def get_long_tensor(tokens_list, batch_size, pad_id=0):
        if getattr(_fast_tensors, "on", False) and tokens_list and all(
                isinstance(r, list) and not (r and isinstance(r[0], list)) for r in tokens_list):
            return padded_long_tensor(tokens_list, batch_size, pad_id)
        return original(tokens_list, batch_size, pad_id=pad_id)
    get_long_tensor.warta_dispatch = True
    ner_data.get_long_tensor = get_long_tensor


def viterbi_paths(scores, transitions, lengths: list[int]) -> list[list[int]]:
    """The best tag path of each sentence of a batch (``scores``: sentences x words x tags, padded).

    Stanza's ``viterbi_decode`` runs in numpy, one sentence and one word at a time (a sixth of the
    tagging CPU); this does each step for the whole batch in torch. The sums are the same float32
    additions and ties go to the first maximum, as in numpy, so the paths are the same."""
    import torch

    lengths_t = torch.tensor(lengths)
    trellis, back = scores[:, 0], []
    for t in range(1, scores.shape[1]):
        best, arg = (trellis.unsqueeze(2) + transitions).max(1)
        back.append(arg)
        trellis = torch.where((lengths_t > t).unsqueeze(1), scores[:, t] + best, trellis)  # ended: kept
    last = trellis.argmax(1).tolist()
    back = torch.stack(back, 1).tolist() if back else []
    paths = []
    for i, n in enumerate(lengths):
        path = [last[i]]
        for t in range(n - 2, -1, -1):
            path.append(back[i][t][path[-1]])
        paths.append(path[::-1])
    return paths


def predict(trainer, batch) -> list[list[str]]:
    """Stanza's ``Trainer.predict`` (same model call, tag clean-up and order), decoding with
    :func:`viterbi_paths`; ``tests/test_ner.py`` checks the tags equal ``stanza.Pipeline``'s."""
    from stanza.models.common.utils import unsort
    from stanza.models.common.vocab import VOCAB_PREFIX_SIZE
    from stanza.models.ner.trainer import fix_singleton_tags, unpack_batch

    device = next(trainer.model.parameters()).device
    inputs, orig_idx, word_orig_idx, char_orig_idx, sentlens, wordlens, charlens, charoffsets = \
        unpack_batch(batch, device)
    word, wordchars, wordchars_mask, chars, tags = inputs
    _, logits, trans = trainer.model(word, wordchars, wordchars_mask, tags, word_orig_idx, sentlens, wordlens,
                                     chars, charoffsets, charlens, char_orig_idx)
    columns = [viterbi_paths(x.cpu(), y.cpu(), sentlens) for x, y in zip(logits, trans)]
    tagset = trainer.args["predict_tagset"]
    out = []
    for i in range(len(sentlens)):
        ids = list(zip(*[[max(t, VOCAB_PREFIX_SIZE) for t in col[i]] for col in columns]))
        sent = [x[tagset] if isinstance(x, list) else x for x in trainer.vocab["tag"].unmap(ids)]
        out.append(fix_singleton_tags(sent))
    return unsort(out, orig_idx)


def ner_tags(model: NerModel, sents: list[list[str]]) -> list[list[str]]:
    """BIOES tags for pre-tokenised sentences."""
    import torch
    from stanza.models.ner.data import DataLoader
    from stanza.models.ner.utils import merge_tags

    order = sorted(range(len(sents)), key=lambda i: len(sents[i]))  # similar lengths share a batch
    texts = _TokenTexts([sents[i] for i in order])
    per_model = []
    _install_fast_tensors()
    _fast_tensors.on = True
    try:
        with torch.no_grad():
            for trainer, config in zip(model.trainers, model.configs):
                loader = DataLoader(texts, config["batch_size"], config, vocab=trainer.vocab, evaluation=True,
                                    preprocess_tags=False, bert_tokenizer=trainer.model.bert_tokenizer)
                per_model.append([tags for batch in loader for tags in predict(trainer, batch)])
    finally:
        _fast_tensors.on = False
    out: list[list[str]] = [[] for _ in sents]
    for i, tags in zip(order, (merge_tags(*x) for x in zip(*per_model))):
        out[i] = list(tags)
    return out


def to_label(label: str) -> str | None:
    """PER, LOC or ORG for a Stanza entity type; None for the types the lake does not keep (MISC, DATE, …)."""
    return LABELS.get(label.upper())


_LOAD_HOOKS: list = []  # called with (language, seconds) after each model load, and with 0 s by warm-ups that find it loaded


def on_model_load(hook) -> None:
    """Call ``hook(language, seconds)`` whenever this process loads a NER model (``pipeline.progress`` reports
    it); a warm-up that finds the model already loaded reports 0 s."""
    if hook not in _LOAD_HOOKS:
        _LOAD_HOOKS.append(hook)


def _loaded(lang: str, seconds: float) -> None:
    for hook in _LOAD_HOOKS:
        hook(lang, seconds)


class ModelLoadError(ConfigError):
    """A configured NER model cannot be found or loaded where the tagging runs: the run fails (nothing is
    committed) instead of writing untagged articles and ``ner`` error rows."""


# What a pipeline hands its workers for one language: the model's paths (as given), the name of the place the
# launcher found it ("warta", "config", "model_dir", "stanza": the worker looks there again itself, see
# Plan.ner_paths), or None for no model.
ModelRef = dict[str, str] | str | None


def where_am_i() -> str:
    return f"{socket.gethostname()} (pid {os.getpid()})"


class Tagger:
    """Stanza NER models by language, loaded on first use (or by warm_up); tags batches of texts."""

    def __init__(self, settings: NerSettings, paths: dict[str, ModelRef]):
        self.settings, self.paths = settings, paths
        self._models: dict[str, NerModel] = {}
        self.loaded: dict[str, dict[str, str]] = {}  # language -> the local files its model was loaded from
        self._lock = threading.Lock()

    def warm_up(self, langs) -> None:
        """Start loading the models of ``langs`` in the background; the first ``tag`` call waits for them."""
        for lang in langs:
            if self.paths.get(lang) and lang not in self._models:
                threading.Thread(target=self._warm, args=(lang,), daemon=True, name=f"ner-load-{lang}").start()
            elif lang in self._models:
                _loaded(lang, 0.0)

    def _warm(self, lang: str) -> None:
        try:
            self.model(lang)
        except Exception:  # raised again (and so failing the run) by the tag call that needs it
            log.warning("could not preload the %s NER model", lang, exc_info=True)

    def local_paths(self, lang: str) -> dict[str, str]:
        """The model files of ``lang`` on this machine (URLs copied into the local cache); ModelLoadError
        when this machine finds no model where the launcher found one."""
        ref = self.paths[lang]
        if isinstance(ref, str):
            found = model_source(lang, self.settings)
            if found is None:
                raise ModelLoadError(
                    f"no NER model for {lang!r} on worker {where_am_i()}, though the launcher found one ({ref}): "
                    "install warta on the workers from its wheel, or put the model where every worker reads it "
                    "(ner.languages, ner.model_dir and ner.stanza_dir may be s3://… or other fsspec URLs)")
            ref = found[1]
        try:
            return {key: local_copy(path) for key, path in ref.items()}
        except Exception as e:
            raise ModelLoadError(f"cannot copy the {lang!r} NER model to worker {where_am_i()}: "
                                 f"{type(e).__name__}: {e}") from e

    def model(self, lang: str | None) -> NerModel | None:
        if not lang or not self.paths.get(lang):
            return None
        with self._lock:
            if lang not in self._models:
                paths = self.local_paths(lang)
                started = time.perf_counter()
                try:
                    self._models[lang] = NerModel(paths, self.settings.threads, device=self.settings.device,
                                                  precision=self.settings.precision)
                except Exception as e:
                    raise ModelLoadError(f"the {lang!r} NER model does not load on worker {where_am_i()} from "
                                         f"{paths}: {type(e).__name__}: {e}") from e
                self.loaded[lang] = paths
                _loaded(lang, time.perf_counter() - started)
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
                label = to_label(ent["type"])
                if label is None:
                    continue
                start, end = spans[ent["start"]][0], spans[ent["end"]][1]
                out[owners[j]].append({"mention": text[start:end], "label": label, "start_char": start, "end_char": end})
        return out


_TAGGERS: dict[str, Tagger] = {}
_TAGGERS_LOCK = threading.Lock()


def shared_tagger(settings: NerSettings, paths: dict[str, ModelRef]) -> Tagger:
    """One Tagger (and so one set of NER models) per process and configuration. Unlike a
    ``Shared`` handle, it outlives the pipeline, so ``--every`` loads the models once per process."""
    key = json.dumps([settings.model_dump(), paths], sort_keys=True, default=str)
    with _TAGGERS_LOCK:
        if key not in _TAGGERS:
            _TAGGERS[key] = Tagger(settings, paths)
        return _TAGGERS[key]


class _TagFn(beam.DoFn):
    def __init__(self, settings: NerSettings, paths: dict[str, ModelRef], warm: tuple[str, ...]):
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
            if self.settings.enabled:
                self.tagger.model(lang)  # a model that cannot load is configuration: ModelLoadError fails the run
            try:
                found = self.tagger.tag([a["text"] for a in arts], lang) if self.settings.enabled else None
            except ModelLoadError:
                raise
            except Exception as e:  # one batch failed on its input: write its articles untagged, as error rows
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
                yield "articles", {**art, "entities": with_canonical(ents)}
            trace_batch(len(arts), lang, self.tagger.loaded.get(lang))


def trace_batch(articles: int, lang: str | None, model: dict[str, str] | None) -> None:
    """With ``$WARTA_NER_TRACE`` set to a folder, each tagged batch leaves a small file there naming the
    process that tagged it and where its warta came from (tests/test_cluster.py counts work per worker)."""
    folder = os.environ.get("WARTA_NER_TRACE")
    if not folder:
        return
    import uuid

    import warta
    record = {"host": socket.gethostname(), "pid": os.getpid(), "articles": articles, "language": lang,
              "model": model, "warta": list(warta.__path__)}
    Path(folder, f"{os.getpid()}-{uuid.uuid4().hex}.json").write_text(json.dumps(record))


class _PreloadFn(beam.DoFn):
    def __init__(self, settings: NerSettings, paths: dict[str, ModelRef], langs: tuple[str, ...]):
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
    paths: dict[str, ModelRef]
    langs: tuple[str, ...] = ()

    def __post_init__(self):
        super().__init__()

    def expand(self, pcoll):
        return pcoll | "Preload" >> beam.ParDo(_PreloadFn(self.settings, self.paths, tuple(self.langs)))


def documents_per_batch(settings: NerSettings) -> int:
    """``ner.gpu_batch_size`` when tagging on CUDA, else ``ner.batch_size``. Decided where the graph is
    built: with ``auto``, set ``cuda`` explicitly when the workers have GPUs and this machine has none."""
    if settings.device == "cuda" or settings.device == "auto" and resolve_device("auto") == "cuda":
        return settings.gpu_batch_size
    return settings.batch_size


@dataclass(eq=False)
class TagEntities(beam.PTransform):
    """Articles in; articles with ``entities`` out (main) and ``errors``. Batches documents for Stanza.

    ``batching="bundle"`` batches within a bundle (``BatchElements``, no shuffle), so tagging is fused
    with the stages before it and starts with the first fetched pages (the DirectRunner on one machine).
    ``"reshuffle"``: a ``Reshuffle`` first, so every worker of a cluster tags a share (Flink, Spark,
    Dataflow). ``"shuffle"`` batches through a ``GroupByKey`` into ``4 × spread`` groups instead, for Beam's
    DaskRunner: it drops what ``finish_bundle`` emits and its Reshuffle is a no-op.
    """

    settings: NerSettings
    paths: dict[str, ModelRef]  # language -> model paths, where the launcher found it (see Tagger), or None
    batching: str = "bundle"
    warm: tuple[str, ...] = ()  # languages whose models are loaded as soon as a worker sets the stage up
    spread: int = 0  # tasks the cluster runs at once; 0: ner.parallelism. ner.parallelism, when set, wins

    def __post_init__(self):
        super().__init__()

    def expand(self, articles):
        size = max(1, documents_per_batch(self.settings))
        if self.batching == "shuffle":
            explicit = "parallelism" in self.settings.model_fields_set or not self.spread
            batched = spread_batches(articles, self.settings.parallelism if explicit else self.spread, size)
        elif self.batching == "reshuffle":
            batched = (articles | "Reshuffle" >> beam.Reshuffle()
                       | "Batch" >> beam.BatchElements(min_batch_size=size, max_batch_size=size))
        else:
            batched = articles | "Batch" >> beam.BatchElements(min_batch_size=size, max_batch_size=size)
        tagged = batched | "Tag" >> beam.ParDo(_TagFn(self.settings, self.paths, tuple(self.warm)))
        return split(tagged, ["articles", ERRORS])


def spread_batches(articles, spread: int, size: int):
    """Batches of at most ``size`` articles from ``4 × spread`` shuffle groups (keyed by article id).

    A Dask bag keeps its number of partitions through a GroupByKey, and the articles may all come from
    one partition (one host's pages): ``spread`` empty slot markers from a ``Create`` (one partition
    each, under ``--dask_npartitions``) give the shuffle as many partitions as the cluster has threads."""
    groups = 4 * max(1, spread)
    keyed = articles | "BatchKey" >> beam.Map(lambda a: (_bucket(a["article_id"], groups), a))
    slots = articles.pipeline | "BatchSlots" >> beam.Create([(i, None) for i in range(max(1, spread))])
    return ((keyed, slots) | "BatchSpread" >> beam.Flatten() | "BatchGroup" >> beam.GroupByKey()
            | "BatchChunks" >> beam.FlatMap(_real_chunks, size))


def _real_chunks(keyed, size: int):
    key, items = keyed
    yield from _chunks((key, [x for x in items if x is not None]), size)
