"""What the lake says, as plain numbers: the query layer behind ``warta report`` and ``warta stats``.

Knows nothing of HTML. Everything is read defensively: files are read with the contract's columns (columns other
writers add are ignored, columns older files lack are null; any partition layout and file count), and state keys
that an older or newer writer lacks count as unknown.

Two clocks: the **content** sections (articles per outlet and day, syndication, entities) use the article's day,
as in the lake's ``date=`` partitions (published day, else fetch day, UTC); the **operations** sections (feed
health, errors, runs) use wall-clock time (``fetched_at``, ``at``, the run's commit time). Both windows are
``days`` long; the content window ends on ``until`` (default: the latest article day not after today), the
operations window at the last run's commit (else now).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds

from warta.lake.commit import RUNS
from warta.lake.schema import ARTICLE_READ_SCHEMA, ARTICLE_SCHEMA, ERROR_SCHEMA, upgrade_entities
from warta.lake.state import FEEDS_FILE
from warta.lake.store import Store

BACKLOG = "_state/backlog"  # entries polled but not fetched yet (run budget), a JSON list per run
OK_STATUSES = ("ok", "capped", "unchanged")
UNKNOWN_LANGUAGE = "??"
DAY = "coalesce(published_at, fetched_at)::date"  # the article's day, as in the date= partitions
DATE_PARTITION = re.compile(r"/date=(\d{4}-\d{2}-\d{2})/")
SCHEMAS = {"articles": ARTICLE_SCHEMA, "errors": ERROR_SCHEMA}
READ_SCHEMAS = {"articles": ARTICLE_READ_SCHEMA, "errors": ERROR_SCHEMA}
ARTICLE_COLUMNS = [c for c in ARTICLE_SCHEMA.names if c not in ("text", "entities")]


def run_started(run_id: str) -> datetime | None:
    """Run ids start with their UTC start time (``YYYYmmddTHHMMSS-…``)."""
    try:
        return datetime.strptime(run_id[:15], "%Y%m%dT%H%M%S").replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def partition_day(path: str) -> date | None:
    """The day of a ``…/date=YYYY-MM-DD/…`` file, None in other layouts (``ingest_date=``, ``month=``: their
    files are read whole)."""
    found = DATE_PARTITION.search(path)
    return date.fromisoformat(found.group(1)) if found else None


def _rows(cur: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


@dataclass
class Window:
    content_start: date
    content_end: date  # inclusive
    ops_start: datetime
    ops_end: datetime

    @property
    def days(self) -> int:
        return (self.content_end - self.content_start).days + 1

    @property
    def previous_start(self) -> date:
        return self.content_start - timedelta(days=self.days)

    def day_list(self) -> list[date]:
        return [self.content_start + timedelta(days=i) for i in range(self.days)]


class Lake:
    """A lake opened for reading over a window, as in-memory DuckDB tables: ``articles`` (every contract column
    but ``text`` and ``entities``, plus ``day``), ``mentions`` (one row per entity of the articles of the window
    and the one before it) and ``errors`` (the operations window); files are read once, through pyarrow (fast on
    many small files, any fsspec filesystem), skipping date= partitions outside the window where possible. The
    lake's state (runs, feeds, backlog) as plain Python."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None, days: int = 7,
                 until: date | None = None, now: datetime | None = None, copies: bool = False):
        self.store = Store(url, storage_options or {})
        self.con = duckdb.connect()
        self.con.execute("SET TimeZone = 'UTC'")
        self.files = {name: self.store.list(name, ".parquet") for name in SCHEMAS}
        self.feeds: dict[str, dict[str, Any]] = self.store.read_json(FEEDS_FILE, default={}) or {}
        self.run_ids = sorted(p.rsplit("/", 1)[1][:-5] for p in self.store.list(RUNS, ".json"))
        now = now or datetime.now(timezone.utc)
        days_of = [partition_day(f) for f in self.files["articles"]]
        dated = None not in days_of  # date= partitions hold article days: the window is known from the names
        latest = max((d for d in days_of if d and d <= now.date()), default=None) if dated else None
        self.window = w = self._window(days, until or latest or now.date(), now)
        # entities only for the window and the one before it (all of them in other layouts)
        near = [d is None or w.previous_start <= d <= w.content_end for d in days_of]
        rows = pa.concat_tables([
            self.read("articles", [f for f, n in zip(self.files["articles"], near) if n], ARTICLE_COLUMNS + ["entities"]),
            self.read("articles", [f for f, n in zip(self.files["articles"], near) if not n], ARTICLE_COLUMNS)],
            promote_options="default")
        self.con.register("article_rows", rows)
        self.con.execute(f"CREATE TEMP TABLE articles AS SELECT * EXCLUDE (entities), {DAY} AS day FROM article_rows")
        if until is None and not dated:
            self.window = w = self._window(days, None, now)
        # one row per entity, under its canonical form; a syndicated copy's entities count only with ``copies``
        self.con.execute(f"CREATE TEMP TABLE mentions AS SELECT coalesce(language, ?) AS language, article_id, day, "
                         f"unnest(entities) AS e FROM (SELECT *, {DAY} AS day FROM article_rows) "
                         f"WHERE day BETWEEN ? AND ? {'' if copies else 'AND duplicate_of IS NULL'}",
                         [UNKNOWN_LANGUAGE, w.previous_start, w.content_end])
        self.con.execute(f"CREATE TEMP TABLE untagged AS SELECT coalesce(language, ?) AS language, count(*) AS articles "
                         f"FROM (SELECT *, {DAY} AS day FROM article_rows) WHERE day BETWEEN ? AND ? "
                         f"AND len(coalesce(entities, [])) = 0 GROUP BY ALL ORDER BY language",
                         [UNKNOWN_LANGUAGE, w.content_start, w.content_end])
        self.con.register("error_rows", self.read("errors", self.since(self.files["errors"], w.ops_start.date())))
        self.con.execute('CREATE TEMP TABLE errors AS SELECT * FROM error_rows WHERE "at" BETWEEN ? AND ?',
                         [w.ops_start, w.ops_end])

    def read(self, dataset: str, files: list[str], columns: list[str] | None = None) -> pa.Table:
        """The contract's ``columns`` of the files, as one Arrow table: columns other writers added are left
        out, columns older files lack are null."""
        schema = READ_SCHEMAS[dataset]  # entities of either schema version (upgraded below)
        schema = pa.schema([schema.field(c) for c in columns]) if columns else schema
        if not files:
            return upgrade_entities(schema.empty_table())
        paths = [self.store.path(rel) for rel in files]
        return upgrade_entities(ds.dataset(paths, schema=schema, format="parquet",
                                           filesystem=None if self.store.is_local else self.store.fs).to_table())

    @staticmethod
    def since(files: list[str], day: date) -> list[str]:
        """The files, less those of date= partitions before ``day`` (other layouts: all of them)."""
        return [f for f in files if (partition_day(f) or day) >= day]

    def _window(self, days: int, until: date | None, now: datetime) -> Window:
        if until is None:  # the latest article day not after today
            until = self.con.execute("SELECT max(day) FROM articles WHERE day <= ?", [now.date()]).fetchall()[0][0]
            until = until or now.date()
        ops_end = now
        if self.run_ids:
            last = self.store.read_json(f"{RUNS}/{self.run_ids[-1]}.json", default={}) or {}
            committed = last.get("committed_at")
            ops_end = datetime.fromisoformat(committed) if committed else (run_started(self.run_ids[-1]) or now)
        return Window(until - timedelta(days=days - 1), until, ops_end - timedelta(days=days), ops_end)

    def sql(self, query: str, *params: Any) -> list[dict[str, Any]]:
        return _rows(self.con.execute(query, list(params)))

    def runs(self, since: datetime | None = None) -> list[dict[str, Any]]:
        """Run manifests (oldest first) of the runs started at or after ``since`` (by their id)."""
        out = []
        for run_id in self.run_ids:
            started = run_started(run_id)
            if since is not None and started is not None and started < since:
                continue
            manifest = self.store.read_json(f"{RUNS}/{run_id}.json", default=None)
            if manifest is not None:
                out.append(manifest)
        return out

    def backlog(self) -> list[dict[str, Any]]:
        """Entries left pending for a later run (any writer that stores a JSON list per file)."""
        entries = []
        for rel in self.store.list(BACKLOG, ".json"):
            try:
                data = json.loads(self.store.read_bytes(rel))
            except ValueError:
                continue
            entries += [e for e in data if isinstance(e, dict)] if isinstance(data, list) else []
        return entries


# -- 1. articles per outlet per day ----------------------------------------------------------------
def articles_per_day(lake: Lake) -> list[dict[str, Any]]:
    """(source, day, articles) for every day of the window with at least one article."""
    w = lake.window
    return lake.sql("SELECT source, day, count(*) AS articles FROM articles WHERE day BETWEEN ? AND ? "
                    "GROUP BY ALL ORDER BY source, day", w.content_start, w.content_end)


def outlets(lake: Lake) -> list[str]:
    """Every outlet the lake knows: from the feed state and from the articles."""
    known = {f.get("source") for f in lake.feeds.values()}
    known |= {r["source"] for r in lake.sql("SELECT DISTINCT source FROM articles")}
    return sorted(s for s in known if s)


# -- 2. feed health --------------------------------------------------------------------------------
def feed_health(lake: Lake) -> list[dict[str, Any]]:
    """One row per feed URL, failing feeds first, then by the share of failed entries/pages."""
    w = lake.window
    a = lake.sql("SELECT feed_url, any_value(source) AS source, count(*) AS n FROM articles "
                 "WHERE fetched_at >= ? AND fetched_at <= ? GROUP BY feed_url", w.ops_start, w.ops_end)
    e = lake.sql("SELECT feed_url, any_value(source) AS source, stage, status, (url = feed_url) AS feed_level, "
                 "count(*) AS n FROM errors GROUP BY ALL")  # errors holds the operations window
    pending: dict[str, int] = {}
    for entry in lake.backlog():
        pending[entry.get("feed_url")] = pending.get(entry.get("feed_url"), 0) + 1
    runs_in_window = len(lake.runs(w.ops_start))
    rows: dict[str, dict[str, Any]] = {}

    def row(feed_url: str | None, source: str | None) -> dict[str, Any]:
        r = rows.setdefault(feed_url or "", {
            "feed_url": feed_url or "", "source": source, "last_status": None, "last_poll": None,
            "last_success": None, "entries_new_last_poll": None, "articles": 0, "entry_errors": 0,
            "poll_failures": 0, "errors_by_stage": {}, "errors_by_status": {}, "robots_refusals": 0,
            "pending": 0})
        r["source"] = r["source"] or source
        return r

    for url, state in lake.feeds.items():
        r = row(url, state.get("source"))
        r["last_status"] = state.get("last_status")
        r["last_poll"] = run_started(state.get("last_run") or "")
        success = state.get("last_run") if state.get("last_status") in OK_STATUSES else state.get("last_success")
        r["last_success"] = run_started(success or "")
        r["entries_new_last_poll"] = state.get("entries_new")
    for x in a:
        row(x["feed_url"], x["source"])["articles"] += x["n"]
    for x in e:
        r = row(x["feed_url"], x["source"])
        stages, statuses = r["errors_by_stage"], r["errors_by_status"]
        stages[x["stage"]] = stages.get(x["stage"], 0) + x["n"]
        if x["status"] is not None:
            statuses[str(x["status"])] = statuses.get(str(x["status"]), 0) + x["n"]
        r["poll_failures" if x["feed_level"] else "entry_errors"] += x["n"]
        r["robots_refusals"] += x["n"] if x["stage"] == "robots" else 0
    for url, n in pending.items():
        row(url, None)["pending"] += n
    for r in rows.values():
        attempts = r["articles"] + r["entry_errors"]
        r["entry_error_rate"] = r["entry_errors"] / attempts if attempts else None
        r["runs"] = runs_in_window
        r["failing"] = r["last_status"] == "failed"
    return sorted(rows.values(), key=lambda r: (not r["failing"], -(r["entry_error_rate"] or 0),
                                                 -r["poll_failures"], r["source"] or "", r["feed_url"]))


def errors_by_stage(lake: Lake) -> list[dict[str, Any]]:
    return lake.sql("SELECT source, stage, count(*) AS n FROM errors GROUP BY ALL ORDER BY source, stage")


def errors_by_status(lake: Lake) -> list[dict[str, Any]]:
    return lake.sql("SELECT stage, coalesce(CAST(status AS VARCHAR), 'none') AS status, count(*) AS n FROM errors "
                    "GROUP BY ALL ORDER BY stage, status")


# -- 3. syndication --------------------------------------------------------------------------------
NOT_IN_LAKE = "(not in lake)"


def syndication(lake: Lake, clusters: int = 10) -> dict[str, Any]:
    """Copies (articles with ``duplicate_of``) of the window: copier x original outlet, largest clusters."""
    w = lake.window
    pairs = lake.sql(
        "SELECT c.source AS copier, coalesce(o.source, ?) AS original, count(*) AS copies "
        "FROM articles c LEFT JOIN articles o ON o.article_id = c.duplicate_of "
        "WHERE c.duplicate_of IS NOT NULL AND c.day BETWEEN ? AND ? GROUP BY ALL ORDER BY copies DESC, copier, original",
        NOT_IN_LAKE, w.content_start, w.content_end)
    biggest = lake.sql(
        "SELECT c.duplicate_of AS original_id, any_value(o.title) AS title, any_value(o.source) AS original_source, "
        "count(*) + 1 AS size, list(DISTINCT c.source ORDER BY c.source) AS copier_sources "
        "FROM articles c LEFT JOIN articles o ON o.article_id = c.duplicate_of "
        "WHERE c.duplicate_of IS NOT NULL AND c.day BETWEEN ? AND ? GROUP BY c.duplicate_of "
        "ORDER BY size DESC, original_id LIMIT ?", w.content_start, w.content_end, clusters)
    totals = lake.sql("SELECT count(*) AS articles, count(duplicate_of) AS copies FROM articles "
                      "WHERE day BETWEEN ? AND ?", w.content_start, w.content_end)[0]
    return {"pairs": pairs, "clusters": biggest, **totals}


# -- 4. entities -----------------------------------------------------------------------------------
def entities(lake: Lake, top: int = 10) -> dict[str, list[dict[str, Any]]]:
    """Per language: the ``top`` entities of each label by articles mentioning them in the window, and the
    ``top`` rising most against the previous window of the same length (articles now minus then). Entities
    are counted under their canonical form (``canonical``: "Putin" in an article naming "Vladimir Putin" is
    him); syndicated copies are left out unless the lake was opened with ``copies``."""
    w = lake.window
    lake.con.execute(
        "CREATE OR REPLACE TEMP TABLE entity_counts AS "
        "SELECT language, e.label AS label, coalesce(e.canonical, e.mention) AS text, "
        "count(DISTINCT article_id) FILTER (WHERE day >= ?) AS articles, "
        "count(DISTINCT article_id) FILTER (WHERE day < ?) AS previous "
        "FROM mentions GROUP BY ALL", [w.content_start, w.content_start])
    tops = lake.sql(
        "SELECT language, label, text, articles, previous FROM entity_counts WHERE articles > 0 "
        "QUALIFY row_number() OVER (PARTITION BY language, label ORDER BY articles DESC, text) <= ? "
        "ORDER BY language, label, articles DESC, text", top)
    rising = lake.sql(
        "SELECT language, label, text, articles, previous, articles - previous AS rise FROM entity_counts "
        "WHERE articles > previous "
        "QUALIFY row_number() OVER (PARTITION BY language ORDER BY articles - previous DESC, articles DESC, "
        "text, label) <= ? ORDER BY language, rise DESC, articles DESC, text, label", top)
    return {"top": tops, "rising": rising}


def untagged(lake: Lake) -> dict[str, Any]:
    """Articles of the window without entities, per language, and the languages the runs of the operations
    window found no NER model for (their ``no_model`` summaries)."""
    no_model = sorted({lang for m in lake.runs(lake.window.ops_start)
                       for lang in ((m.get("summary") or {}).get("no_model") or {})})
    return {"per_language": lake.sql("SELECT language, articles FROM untagged"), "no_model": no_model}


# -- 5. runs ---------------------------------------------------------------------------------------
def run_history(lake: Lake) -> list[dict[str, Any]]:
    w = lake.window
    out = []
    for m in lake.runs(w.ops_start):
        s = m.get("summary") or {}
        committed = m.get("committed_at")
        out.append({"run_id": m.get("run_id"), "started_at": run_started(m.get("run_id") or ""),
                    "committed_at": datetime.fromisoformat(committed) if committed else None,
                    "seconds": s.get("seconds"), "articles": s.get("articles_written"),
                    "errors": s.get("errors_written"), "entries_new": s.get("entries_new"),
                    "entries_pending": s.get("entries_pending"), "feeds_failed": s.get("feeds_failed"),
                    "duplicates_near": s.get("duplicates_near")})
    return out


@dataclass
class Metrics:
    """Everything the report and the stats table show."""

    lake: str
    window: Window
    outlets: list[str]
    articles_per_day: list[dict[str, Any]]
    feed_health: list[dict[str, Any]]
    errors_by_stage: list[dict[str, Any]]
    errors_by_status: list[dict[str, Any]]
    syndication: dict[str, Any]
    entities: dict[str, list[dict[str, Any]]]
    runs: list[dict[str, Any]]
    untagged: dict[str, Any] = field(default_factory=lambda: {"per_language": [], "no_model": []})
    copies_counted: bool = False  # entity counts include syndicated copies
    generated_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=str, sort_keys=True)


def collect(url: str, storage_options: dict[str, Any] | None = None, days: int = 7,
            until: date | None = None, copies: bool = False) -> Metrics:
    lake = Lake(url, storage_options, days, until, copies=copies)
    return Metrics(lake=url, window=lake.window, outlets=outlets(lake), articles_per_day=articles_per_day(lake),
                   feed_health=feed_health(lake), errors_by_stage=errors_by_stage(lake),
                   errors_by_status=errors_by_status(lake), syndication=syndication(lake), entities=entities(lake),
                   runs=run_history(lake), untagged=untagged(lake), copies_counted=copies)
