"""``warta models``: download Stanza NER models (``download LANG…``) and list the NER model of each language.

``download`` is ``stanza.download`` limited to the NER processor and what it depends on (word vectors,
character language models), into the Stanza resources folder the pipeline reads (``ner.stanza_dir``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from warta.config.settings import NerSettings
from warta.pipeline.command import (
    CommandParser,
    add_log_level,
    command,
    command_parser,
    settings_or_exit,
    start_logging,
)
from warta.pipeline.exits import EXIT_CONFIG, EXIT_FAILED, EXIT_OK
from warta.transforms.ner import SHIPPED, known_languages, model_source, stanza_dir, stanza_package, stanza_resources


def parser() -> argparse.ArgumentParser:
    ap = command_parser("warta models", "Stanza NER models for the languages warta tags.", log_level=False)
    sub = ap.add_subparsers(dest="action", required=True, parser_class=CommandParser)
    dl = sub.add_parser("download", help="download the default Stanza NER model of each language",
                        description="Download the default Stanza NER model (and the word vectors and character "
                                    "language models it needs) of each language into the Stanza resources folder.")
    dl.add_argument("langs", nargs="+", metavar="LANG", help="ISO 639-1 language code, e.g. en")
    dl.add_argument("--dir", type=Path, help="Stanza resources folder (default: ner.stanza_dir's default, "
                                             "$STANZA_RESOURCES_DIR or Stanza's cache folder)")
    dl.add_argument("--resources-url", help="where resources_<version>.json is (default: Stanza's)")
    dl.add_argument("--model-url", default="default",
                    help="model URL template with {lang}, {filename}, {resources_version} "
                         "(default: the one resources.json names)")
    ls = sub.add_parser("list", help="the NER model each language gets, and where it comes from")
    ls.add_argument("--config", type=Path, help="settings YAML (ner.model_dir, ner.languages, ner.stanza_dir)")
    ls.add_argument("--dir", type=Path, help="Stanza resources folder (overrides ner.stanza_dir)")
    for p in (dl, ls):
        add_log_level(p)
    return ap


@command("warta models")
def models(argv: list[str]) -> int:
    ns = parser().parse_args(argv)
    start_logging(ns)
    if ns.action == "download":
        return download(ns.langs, ns.dir or stanza_dir(NerSettings()), ns.resources_url, ns.model_url)
    settings = settings_or_exit(ns.config).ner
    if ns.dir:
        settings = settings.model_copy(update={"stanza_dir": str(ns.dir)})
    return list_models(settings)


def download(langs: list[str], base: Path, resources_url: str | None, model_url: str) -> int:
    import requests
    import stanza
    from stanza.resources.common import DEFAULT_RESOURCES_URL, download_resources_json

    hub = resources_url or DEFAULT_RESOURCES_URL
    try:
        download_resources_json(str(base), resources_url=hub)
    except requests.RequestException as e:
        print(f"warta: cannot download the Stanza model list from {hub}: {one_line(e)}", file=sys.stderr)
        return EXIT_FAILED
    resources = stanza_resources(base)
    status = EXIT_OK  # every language is tried; the exit status is the worst outcome
    for lang in langs:
        found = stanza_package(resources, lang)
        if found is None:
            if lang in SHIPPED:
                print(f"{lang}: warta ships its own NER model for {lang}, nothing to download", file=sys.stderr)
                continue
            print(f"warta: Stanza has no NER model for {lang!r}; give warta one with ner.model_dir or "
                  "ner.languages", file=sys.stderr)
            status = max(status, EXIT_CONFIG)
            continue
        try:
            stanza.download(lang, model_dir=str(base), processors="ner", model_url=model_url,
                            download_json=False, logging_level="INFO")
        except Exception as e:  # network, HTTP status, checksum: one line
            discard_corrupt(base, resources, *found)  # so that the pipeline never loads them
            print(f"warta: downloading the {lang} NER model failed: {one_line(e)}", file=sys.stderr)
            status = EXIT_FAILED
            continue
        _, package, deps = found
        extra = "".join(f", {model} {dep}" for model, dep in deps)
        print(f"{lang}: NER {package}{extra} in {base}")
    return status


def discard_corrupt(base: Path, resources: dict, lang: str, package: str, deps: list[tuple[str, str]]) -> None:
    """Delete the files of a NER package whose checksum is not the one resources.json lists (Stanza
    leaves a file that failed its check in place)."""
    from stanza.resources.common import get_md5

    for model, name in [("ner", package), *deps]:
        path = base / lang / model / f"{name}.pt"
        if path.exists() and get_md5(str(path)) != resources[lang].get(model, {}).get(name, {}).get("md5"):
            path.unlink()


def one_line(e: Exception) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def list_models(settings: NerSettings) -> int:
    """One line per language with a model: language, where it comes from, the NER model file."""
    for lang in sorted(known_languages(settings)):
        source, paths = model_source(lang, settings)
        print(f"{lang}\t{source}\t{paths['ner_model_path']}")
    base = stanza_dir(settings)
    resources = stanza_resources(base)
    available = [lang for lang in resources if stanza_package(resources, lang)]
    print(f"Stanza folder {base}: " + (f"{len(available)} languages with a NER model to download "
                                       "(`warta models download LANG`)" if available else "no resources.json"),
          file=sys.stderr)
    return EXIT_OK
