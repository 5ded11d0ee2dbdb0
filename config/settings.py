"""Feeds file and settings: YAML in, validated pydantic models out.

Every problem with a file becomes one :class:`ConfigError` naming the file and, for each field at fault,
its dotted path and what is wrong (all of them at once; an unknown key with the known key it most resembles),
so the CLI can print it and exit 2.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import lxml.etree
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from warta.config import __version__

CONFIG_DIR = Path(__file__).resolve().parent
DEFAULT_FEEDS = CONFIG_DIR / "feeds.yaml"



def valid_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (an IANA name such as Asia/Jakarta)") from None
    return name

class ConfigError(ValueError):
    """A feeds or settings file is unreadable or invalid."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


FEED_NAME_RULE = "letters, digits, '.', '_' and '-', starting with a letter or digit (no spaces)"


class Feed(Strict):
    name: str = Field(description=f"becomes the `source` column: {FEED_NAME_RULE}")
    url: str
    language: str | None = Field(None, pattern=r"^[a-z]{2}$", description="ISO 639-1; detected per article if absent")
    timezone: str | None = Field(None, description="IANA zone for times printed without an offset; "
                                 "default from the language (transforms/dates.py), else UTC")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", v):
            raise ValueError(f"{v!r} is not a valid feed name: use {FEED_NAME_RULE}")
        return v

    @field_validator("timezone")
    @classmethod
    def _iana(cls, v: str | None) -> str | None:
        return valid_zone(v) if v else v

    @field_validator("url")
    @classmethod
    def _http_only(cls, v: str) -> str:
        if not v.lower().startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return v


class HttpSettings(Strict):
    user_agent: str = Field(f"warta/{__version__} (+https://github.com/warta-news/warta)",
                            description="sent with every request")
    connect_timeout: float = Field(5.0, gt=0, description="seconds to connect")
    read_timeout: float = Field(15.0, gt=0, description="seconds between two reads of a response")
    total_timeout: float = Field(30.0, gt=0, description="seconds for a whole response, however slowly it drips")
    max_bytes: int = Field(5_000_000, ge=1, description="cap on a page's decoded body (compression bombs stop there)")
    max_feed_bytes: int = Field(10_000_000, ge=1, description="cap on a feed's decoded body")
    max_redirects: int = Field(5, ge=0, description="redirect hops followed; each hop's scheme (and address) checked")
    retries: int = Field(2, ge=0, description="retries on connection errors, 429 and 5xx, with backoff")
    backoff: float = Field(0.5, ge=0, description="backoff factor between retries (seconds, doubling)")
    max_retry_after: float = Field(60.0, ge=0, description="a longer Retry-After is not waited for: the host's "
                                   "pages become error rows retried on a later run")
    respect_robots: bool = Field(True, description="obey robots.txt (RFC 9309); 5xx or unreachable: the host waits")
    host_delay: float = Field(1.0, ge=0, description="seconds between requests to one host (a larger robots "
                              "crawl-delay wins)")
    max_crawl_delay: float = Field(30.0, ge=0, description="a robots crawl-delay above this is clamped")
    fetch_threads: int = Field(64, ge=1, description="hosts fetched (and feeds polled) at once per worker; one "
                               "connection per host")
    block_private_addresses: bool = Field(False, description="refuse hosts resolving to private, loopback or "
                                          "link-local addresses (multi-tenant deployments)")


class NerSettings(Strict):
    enabled: bool = Field(True, description="tag people, places and organisations")
    model_dir: str | None = Field(None, description="folder holding <lang>/ner.pt and <lang>/ner_pretrain.pt "
                                  "for languages other than id")
    stanza_dir: str | None = Field(None, description="Stanza resources folder searched for other languages' "
                                   "default NER models; default: $STANZA_RESOURCES_DIR, else Stanza's cache")
    languages: dict[str, dict[str, str]] = Field({}, description="explicit Stanza paths per language, e.g. "
                                                 "{en: {ner_model_path: ..., ner_pretrain_path: ...}}")
    batch_size: int = Field(32, ge=1, description="documents per NER batch on CPU")
    parallelism: int = Field(8, ge=1, description="when set, Dask shuffles articles into 4x this many NER "
                             "groups; else the fallback when warta cannot read the runner's size")
    threads: int | None = Field(None, ge=1, description="torch threads per worker process; default: CPUs / "
                                "worker processes")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when torch sees a GPU")
    gpu_batch_size: int = Field(128, ge=1, description="documents per NER batch when tagging on CUDA")
    precision: Literal["int8", "fp32"] = Field(
        "int8", description="CPU tagging: int8 quantizes each worker's NER models once after loading (dynamic "
        "int8 LSTM and Linear layers: faster, same entities, F1 within 0.005 of fp32, see models/README.md); "
        "fp32: the weights as trained. CUDA always tags in fp32")


class DedupSettings(Strict):
    near_threshold: float = Field(0.8, gt=0, le=1, description="Jaccard similarity above which an article on "
                                  "another outlet is flagged duplicate_of")
    window_days: int = Field(7, ge=1, description="days an article's signature is kept for near-duplicate checks")
    shingle_size: int = Field(5, ge=1, description="words per shingle for MinHash")
    num_perm: int = Field(128, ge=16, description="MinHash permutations")


class LakeSettings(Strict):
    layout: Literal["date_source", "date", "month", "ingest_date"] = Field(
        "date", description="date=<published day> alone (rows sorted by source within files), "
                            "articles/date=<published day>/source=..., month=<published month> alone, or "
                            "ingest_date=<fetch day>/source=...; an existing lake keeps the layout recorded in "
                            "_state/schema.json unless this is set")
    compact_target_mb: int = Field(128, ge=1, description="size of the files compaction writes")
    compact_after_files: int = Field(16, ge=0, description="after a run, compact a partition it touched once it "
                                     "holds this many files (0: never automatically)")
    compact_closed_days: bool = Field(True, description="after a run, compact yesterday's partitions (UTC) that "
                                      "hold several files")
    retention_days: int | None = Field(None, ge=1, description="articles older than this are deleted by compaction")
    errors_retention_days: int | None = Field(None, ge=1, description="errors/ rows older than this are deleted")


class SiteProfile(Strict):
    """XPath expressions for one outlet whose pages the generic extractor gets wrong."""

    body: str | None = Field(None, description="blocks holding the article text, e.g. //div[@class='story']/p")
    title: str | None = Field(None, description="the headline element")
    date: str | None = Field(None, description="an element or attribute holding the published time")

    @field_validator("body", "title", "date")
    @classmethod
    def _valid_xpath(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                lxml.etree.XPath(v)
            except lxml.etree.XPathSyntaxError as e:
                raise ValueError(f"invalid XPath {v!r}: {e}") from None
        return v


class ExtractSettings(Strict):
    profiles: dict[str, SiteProfile] = Field({}, description="per-host XPath profiles: {host: {body, title, date}}")


class Settings(Strict):
    http: HttpSettings = HttpSettings()
    extract: ExtractSettings = ExtractSettings()
    ner: NerSettings = NerSettings()
    dedup: DedupSettings = DedupSettings()
    lake: LakeSettings = LakeSettings()
    max_items_per_feed: int = Field(500, ge=1, description="new entries taken per feed per poll; the rest wait")
    parallelism: int | None = Field(None, ge=1, description="host groups fetched and processed in parallel; "
                                    "default: the runner's slots (DirectRunner worker processes, the Dask cluster's "
                                    "threads, Flink --parallelism, Dataflow --max_num_workers), else ner.parallelism")
    storage_options: dict[str, Any] = Field({}, description="passed to fsspec (endpoint_url, key, secret, ...) and "
                                            "pickled into the job when set; unset, every worker uses its own "
                                            "environment (fsspec/cloud defaults)")
    min_text_chars: int = Field(200, ge=0, description="shorter extracted bodies are an extract error")
    lock_ttl: float = Field(3600.0, gt=0, description="seconds after which another run may take over a silent lock")
    runner: str = Field("direct", description="Beam runner when --runner is not given: direct, dask, or a "
                        "Beam runner name (FlinkRunner, ...)")

    @field_validator("runner")
    @classmethod
    def _runner_name(cls, v: str) -> str:
        if v.lower() in ("direct", "dask") or re.fullmatch(r"[A-Za-z_][\w.]*Runner", v):
            return v
        raise ValueError(f"unknown runner {v!r}: direct, dask, or a Beam runner name such as FlinkRunner")


def _read_yaml(path: str | Path) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:  # libyaml's safe loader when present: 20,000 feeds in 1 s, not 24
            return yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} invalid YAML: {getattr(e, 'problem', None) or e}") from None


def _model_at(model: type[BaseModel] | None, loc: tuple) -> type[BaseModel] | None:
    """The pydantic model holding the fields at ``loc`` (list indexes and dict keys skipped); None off the models."""
    skip = False
    for part in loc:
        if isinstance(part, int) or skip or model is None:
            skip = False
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        args = getattr(field.annotation, "__args__", ())
        skip = getattr(field.annotation, "__origin__", None) is dict  # the next part is a key
        inner = [a for a in (*args, field.annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        model = inner[0] if inner else None
    return model


def _problem(e: dict, model: type[BaseModel], prefix: tuple) -> str:
    loc = ".".join(str(p) for p in (*prefix, *e["loc"]))
    if e["type"] == "extra_forbidden":
        known = list((_model_at(model, e["loc"][:-1]) or BaseModel).model_fields)
        close = difflib.get_close_matches(str(e["loc"][-1]), known, n=1, cutoff=0.6)
        hint = f"did you mean `{close[0]}`?" if close else f"known keys: {', '.join(known)}"
        return f"{loc}: unknown key ({hint})"
    msg = "missing (required)" if e["type"] == "missing" else e["msg"].removeprefix("Value error, ")
    return f"{loc}: {msg}"


def _all_errors(path: str | Path, err: ValidationError, model: type[BaseModel], prefix: tuple = ()) -> list[str]:
    """Every problem pydantic found, unknown keys first (a mistyped key also makes the key it meant "missing")."""
    errors = sorted(err.errors(), key=lambda e: e["type"] != "extra_forbidden")
    return [_problem(e, model, prefix) for e in errors]


def _config_error(path: str | Path, problems: list[str]) -> ConfigError:
    if len(problems) == 1:
        return ConfigError(f"{path}: {problems[0]}")
    return ConfigError(f"{path}: {len(problems)} problems:\n  " + "\n  ".join(problems))


def load_feeds(path: str | Path) -> list[Feed]:
    data = _read_yaml(path)
    if not isinstance(data, dict) or not isinstance(data.get("feeds"), list) or not data["feeds"]:
        raise ConfigError(f"{path}: expected a mapping with a non-empty `feeds:` list")
    feeds, problems = [], []
    for i, item in enumerate(data["feeds"]):
        if not isinstance(item, dict):
            problems.append(f"feeds.{i}: expected a mapping with `name` and `url`")
            continue
        odd = [k for k in item if not isinstance(k, str)]
        if odd:
            problems.append(f"feeds.{i}: keys must be names such as `name` and `url`, not {odd[0]!r}")
            continue
        try:
            feeds.append(Feed(**item))
        except ValidationError as err:
            problems += _all_errors(path, err, Feed, ("feeds", i))
    # names become folder names (state files, partitions): unique also on case-insensitive file systems
    folded: dict[str, list[str]] = {}
    for f in feeds:
        folded.setdefault(f.name.casefold(), []).append(f.name)
    dupes = sorted(" = ".join(names) for names in folded.values() if len(names) > 1)
    if dupes:
        problems.append(f"feed names must be unique, ignoring case: {', '.join(dupes)}")
    if problems:
        raise _config_error(path, problems)
    return feeds


def load_settings(path: str | Path | None, overrides: dict[str, Any] | None = None) -> Settings:
    """Settings from ``path`` (or defaults), then dotted ``overrides`` such as ``{"http.host_delay": 0}``."""
    data: dict[str, Any] = {}
    if path is not None:
        loaded = _read_yaml(path)
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of settings")
        data = loaded or {}
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for n, p in enumerate(parents):
            if node.get(p) is None:  # `http:` left empty (null) in the file
                node[p] = {}
            if not isinstance(node[p], dict):
                raise ConfigError(f"{path or 'settings'}: {'.'.join(parents[:n + 1])}: expected a mapping "
                                  f"of settings, not {node[p]!r} (needed for the override {dotted})")
            node = node[p]
        node[leaf] = value
    try:
        return Settings(**data)
    except ValidationError as err:
        raise _config_error(path or "settings", _all_errors(path, err, Settings)) from None
