"""Compaction and retention: a partition's many small files rewritten into few large sorted ones.

Runs under the output's lock, with a commit protocol shaped like a run's (:mod:`lake.commit`):

1. plan: partitions holding several files, at least one not yet compacted; partitions past retention
   (a ``month=`` partition once all of its month is: its rows are kept up to a month past retention);
2. the new files written under ``_state/compact/<id>/<partition>/`` (rows sorted by ``published_at``,
   errors by ``at``; zstd; row groups of about 32 MB; statistics on). A partition over ``SORT_IN_MEMORY_BYTES``
   on disk is streamed instead, record batch by record batch (memory: one batch and one output file's
   buffer), its files one after the other, each in its own order: not sorted across files;
3. ``COMMIT`` marker listing, per partition, the new files and the old files they replace — the commit point;
4. partition by partition: the new files moved into place, then that partition's old files deleted;
5. the staging folder removed.

Killed before 3: the staging is discarded by the next run or compaction; nothing visible changed.
Killed after 3: the next one replays 4–5 (a new file already moved is not staged any more; deleting
an absent file is a no-op), so every row ends in the lake exactly once.
"""

from __future__ import annotations

import io
import logging
import math
import posixpath
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.parquet as pq

from warta.lake import faults
from warta.lake.lock import LockLost
from warta.lake.schema import ARTICLE_SCHEMA, ERROR_SCHEMA, new_run_id, upgrade_entities
from warta.lake.state import ensure_datasets, record_schema
from warta.lake.store import Store, fsync_dir

log = logging.getLogger(__name__)
COMPACT_DIR = "_state/compact"
DATASETS = {"articles": (ARTICLE_SCHEMA, ["published_at", "fetched_at", "article_id"]),
            "errors": (ERROR_SCHEMA, ["at", "url", "stage"])}
ROW_GROUP_BYTES = 32 * 2**20
SORT_IN_MEMORY_BYTES = 256 * 2**20  # a partition this large on disk (compressed) is streamed, not sorted whole
_DAY = re.compile(r"(?:^|/)(?:ingest_)?date=(\d{4}-\d{2}-\d{2})(?:/|$)")
_MONTH = re.compile(r"(?:^|/)month=(\d{4})-(\d{2})(?:/|$)")


@dataclass
class Policy:
    target_bytes: int = 128 * 2**20
    min_files: int = 2  # rewrite a partition holding at least this many files
    retention_days: dict[str, int | None] = field(default_factory=dict)  # dataset -> days (None: keep)
    now: datetime | None = None

    @classmethod
    def from_settings(cls, lake, min_files: int = 2) -> Policy:
        return cls(target_bytes=lake.compact_target_mb * 2**20, min_files=min_files,
                   retention_days={"articles": lake.retention_days, "errors": lake.errors_retention_days})


def partition_last_day(partition: str) -> date | None:
    """The last day a partition holds rows of: its day (``date=``, ``ingest_date=``), the last day of its
    month (``month=``); None for other paths."""
    if m := _DAY.search(partition):
        return date.fromisoformat(m.group(1))
    if m := _MONTH.search(partition):
        year, month = int(m.group(1)), int(m.group(2))
        return date(year + month // 12, month % 12 + 1, 1) - timedelta(days=1)
    return None


def expired(partition: str, days: int | None, today: date) -> bool:
    last = partition_last_day(partition)
    return bool(days and last and last < today - timedelta(days=days))


def closed_partitions(layout: str, now: datetime) -> list[str]:
    """Partitions that stopped receiving on-time rows: yesterday's (UTC) days; with the ``month`` layout,
    yesterday's month only once it is over (runs on the 1st of a month; during the month its partition is
    the current one, compacted by the touched-partition threshold, not rewritten after every run)."""
    yesterday = now - timedelta(days=1)
    if layout == "month":
        articles = [f"articles/month={yesterday:%Y-%m}"] if yesterday.month != now.month else []
    else:
        articles = [f"articles/{'ingest_date' if layout == 'ingest_date' else 'date'}={yesterday:%Y-%m-%d}"]
    return articles + [f"errors/date={yesterday:%Y-%m-%d}"]


def list_partitions(store: Store, prefixes: Iterable[str]) -> dict[str, list[str]]:
    """Partition directory (``articles/date=…/source=…``) -> its data files, below the given prefixes."""
    parts: dict[str, list[str]] = {}
    for prefix in prefixes:
        for rel in store.list(prefix, ".parquet"):
            if rel.split("/", 1)[0] in DATASETS:
                parts.setdefault(posixpath.dirname(rel), []).append(rel)
    return {p: sorted(set(files)) for p, files in sorted(parts.items())}


def plan(partitions: dict[str, list[str]], policy: Policy) -> tuple[list[str], list[str]]:
    """(partitions to rewrite, partitions to delete for retention)."""
    today = (policy.now or datetime.now(timezone.utc)).date()
    rewrite, expire = [], []
    for part, files in partitions.items():
        if expired(part, policy.retention_days.get(part.split("/", 1)[0]), today):
            expire.append(part)
        elif len(files) >= policy.min_files and any(not posixpath.basename(f).startswith("compact-") for f in files):
            rewrite.append(part)
    return rewrite, expire


def unified(tables: list[pa.Table], base: pa.Schema) -> pa.Table:
    """One table over files written by different schema versions: the union of their columns (the
    current schema first), missing ones null."""
    schema = pa.unify_schemas([base, *(t.schema for t in tables)], promote_options="permissive")

    def conform(t: pa.Table) -> pa.Table:
        own = pa.schema([f for f in schema if f.name in t.schema.names])
        return t.select(own.names).cast(own)

    return pa.concat_tables([conform(t) for t in tables], promote_options="default").select(schema.names)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly ``schema``'s columns, in order (missing ones null)."""
    cols = [table.column(f.name).cast(f.type) if f.name in table.schema.names else pa.nulls(table.num_rows, f.type)
            for f in schema]
    return pa.Table.from_arrays(cols, schema=schema)


def rewrite_partition(store: Store, part: str, files: list[str], target_bytes: int, stage: str) -> list[str]:
    """Write the partition's rows, sorted, as files of about ``target_bytes`` under ``stage``; returns
    the names the new files will have in the lake. Partitions over ``SORT_IN_MEMORY_BYTES`` are streamed
    (:func:`stream_partition`)."""
    if sum(store.fs.size(store.path(f)) for f in files) > SORT_IN_MEMORY_BYTES:
        return stream_partition(store, part, files, target_bytes, stage)
    schema, order = DATASETS[part.split("/", 1)[0]]
    if part.startswith("articles/date=") and "/source=" not in part:  # the date layout: one file, all outlets
        order = ["source", *order]  # one outlet's rows contiguous: its row groups are skipped by the others
    blobs = [store.read_bytes(f) for f in files]
    table = unified([upgrade_entities(pq.read_table(io.BytesIO(b))) for b in blobs], schema)
    table = table.sort_by([(c, "ascending") for c in order if c in table.schema.names])
    row_bytes = max(1.0, sum(map(len, blobs)) / max(1, table.num_rows))
    per_file = max(1, int(target_bytes / row_bytes))
    group = max(1024, min(per_file, int(ROW_GROUP_BYTES / row_bytes)))
    sort = [pq.SortingColumn(table.schema.get_field_index(order[0]))]
    cid = posixpath.basename(stage)
    out = []
    for n in range(max(1, math.ceil(table.num_rows / per_file))):
        rel = f"{part}/compact-{cid}-{n:04d}.parquet"
        buf = io.BytesIO()
        pq.write_table(table.slice(n * per_file, per_file), buf, compression="zstd", row_group_size=group,
                       write_statistics=True, sorting_columns=sort)
        store.write_bytes(f"{stage}/{rel}", buf.getvalue(), durable=True)
        out.append(rel)
    return out


def stream_partition(store: Store, part: str, files: list[str], target_bytes: int, stage: str,
                     batch_rows: int = 8192) -> list[str]:
    """Bounded-memory rewrite: each file read by record batches (``batch_rows``) and written to output
    files of about ``target_bytes``; memory holds one batch and one output file's compressed buffer."""
    base, _ = DATASETS[part.split("/", 1)[0]]
    metas = []
    for f in files:
        with store.fs.open(store.path(f), "rb") as fh:
            metas.append(pq.ParquetFile(fh).metadata)
    schema = pa.unify_schemas([base, *(m.schema.to_arrow_schema() for m in metas)], promote_options="permissive")
    rows = sum(m.num_rows for m in metas)
    row_bytes = max(1.0, sum(store.fs.size(store.path(f)) for f in files) / max(1, rows))
    per_file = max(1, int(target_bytes / row_bytes))
    group = max(1024, min(per_file, int(ROW_GROUP_BYTES / row_bytes)))
    cid, out = posixpath.basename(stage), []
    state = {"buf": None, "writer": None, "rows": 0}

    def close() -> None:
        if state["writer"] is not None:
            state["writer"].close()
            rel = f"{part}/compact-{cid}-{len(out):04d}.parquet"
            store.write_bytes(f"{stage}/{rel}", state["buf"].getvalue(), durable=True)
            out.append(rel)
            state.update(buf=None, writer=None, rows=0)

    for f in files:
        with store.fs.open(store.path(f), "rb") as fh:
            for batch in pq.ParquetFile(fh).iter_batches(batch_size=batch_rows):
                table = conform(pa.Table.from_batches([batch]), schema)
                while table.num_rows:
                    if state["writer"] is None:
                        state["buf"] = io.BytesIO()
                        state["writer"] = pq.ParquetWriter(state["buf"], schema, compression="zstd",
                                                           write_statistics=True)
                    take = min(per_file - state["rows"], table.num_rows)
                    state["writer"].write_table(table.slice(0, take), row_group_size=group)
                    state["rows"] += take
                    table = table.slice(take)
                    if state["rows"] >= per_file:
                        close()
    close()
    return out


def move(store: Store, src: str, dst: str) -> None:
    """Into place in one step for readers: a rename on local disks, a server-side copy (one atomic
    object) then delete on object stores."""
    if store.is_local:
        store.fs.makedirs(posixpath.dirname(store.path(dst)), exist_ok=True)
        store.fs.mv(store.path(src), store.path(dst))
        fsync_dir(posixpath.dirname(store.path(dst)))  # the rename is durable before the old files go
    else:
        store.fs.copy(store.path(src), store.path(dst))
        store.remove(src)


def swap(store: Store, marker: dict, step: Callable[[], None] | None = None) -> None:
    """Steps 4–5: per partition, new files into place, then its old files removed. Safe to repeat.
    ``step`` (the lock's fencing check) runs before each partition: a holder that lost the lock stops."""
    stage = f"{COMPACT_DIR}/{marker['id']}"
    for _part, change in sorted(marker["partitions"].items()):
        if step is not None:
            step()
        for rel in change["new"]:
            if store.exists(f"{stage}/{rel}"):
                move(store, f"{stage}/{rel}", rel)
                faults.point("compact_swap")  # new file visible, old ones still there
        for rel in change["old"]:
            store.remove(rel)
        faults.point("compact_swapped")
    store.remove(stage, recursive=True)


def compact(store: Store, policy: Policy, prefixes: Iterable[str] = ("articles", "errors"),
            compaction_id: str | None = None, fence: Callable[[], None] | None = None) -> dict[str, int]:
    """Compact and expire the partitions below ``prefixes``. The caller holds the output's lock and has
    run recovery; ``fence`` (the lock's check) runs right before the commit point and raises
    :class:`~lake.lock.LockLost` when another process holds the output now (the staging is then dropped).
    Returns counts: partitions rewritten/expired, files before/after."""

    partitions = list_partitions(store, prefixes)
    rewrite, expire = plan(partitions, policy)
    stats = {"partitions_rewritten": len(rewrite), "partitions_expired": len(expire),
             "files_before": sum(map(len, partitions.values())), "files_after": 0}
    if not rewrite and not expire:
        stats["files_after"] = stats["files_before"]
        return stats
    cid = compaction_id or new_run_id()
    stage = f"{COMPACT_DIR}/{cid}"
    changes = {p: {"new": [], "old": partitions[p]} for p in expire}
    for part in rewrite:
        changes[part] = {"new": rewrite_partition(store, part, partitions[part], policy.target_bytes, stage),
                         "old": partitions[part]}
    faults.point("compact_staged")
    if fence is not None:
        try:
            fence()
        except LockLost:
            store.remove(stage, recursive=True)
            raise
    marker = {"id": cid, "partitions": changes, "committed_at": datetime.now(timezone.utc).isoformat()}
    store.write_json(f"{stage}/COMMIT", marker)  # the commit point
    swap(store, marker, fence)
    stats["files_after"] = stats["files_before"] + sum(len(c["new"]) - len(c["old"]) for c in changes.values())
    return stats


def recover_compactions(store: Store) -> list[str]:
    """Finish compactions that passed their commit point; drop the staging of those that did not."""
    replayed = []
    for cid in sorted({p.split("/")[2] for p in store.list(COMPACT_DIR)}):
        try:
            marker = store.read_json(f"{COMPACT_DIR}/{cid}/COMMIT")
        except (ValueError, UnicodeDecodeError) as e:  # cut or emptied: no commit point, the old files stand
            log.warning("%s is unreadable (%s): treated as no commit point", store.full_url(f"{COMPACT_DIR}/{cid}/COMMIT"), e)
            marker = None
        if isinstance(marker, dict) and isinstance(marker.get("partitions"), dict):
            log.warning("completing compaction %s, which was interrupted after its commit point", cid)
            swap(store, marker)
            replayed.append(cid)
        else:
            log.warning("discarding the output of interrupted compaction %s", cid)
            store.remove(f"{COMPACT_DIR}/{cid}", recursive=True)
    return replayed


def expired_days(store: Store, policy: Policy) -> list[str]:
    """Day (``articles/date=…``) or month (``articles/month=…``) folders wholly past their dataset's
    retention: one listing per dataset."""
    today = (policy.now or datetime.now(timezone.utc)).date()
    out = []
    for dataset, days in policy.retention_days.items():
        if not days or not store.exists(dataset):
            continue
        for path in store.fs.ls(store.path(dataset), detail=False):
            folder = f"{dataset}/{posixpath.basename(path.rstrip('/'))}"
            if expired(folder, days, today):
                out.append(folder)
    return out


def record_lake_schema(store: Store, layout: str) -> dict:
    """The schema version, and an empty file in a dataset with none yet (a clean run's ``errors/``)."""
    ensure_datasets(store, {"errors": ERROR_SCHEMA}, datetime.now(timezone.utc).strftime("%Y-%m-%d"))
    return record_schema(store, {name: schema for name, (schema, _) in DATASETS.items()}, layout)


def compact_after_run(store: Store, lake, files: list[str], now: datetime | None = None,
                      fence: Callable[[], None] | None = None) -> dict[str, int] | None:
    """Run by ``warta run`` under its lock right after a commit: records the schema version, then the
    automatic compaction policy: the partitions
    the run touched once they hold ``compact_after_files`` files, closed partitions (yesterday's day; with the
    ``month`` layout, a month the day after it ends: :func:`closed_partitions`) once they hold two, and
    days (months) past retention. Cost follows the run, not the lake: only those
    partitions (and the list of day folders, for retention) are listed."""
    record_lake_schema(store, lake.layout)
    if not lake.compact_after_files:
        return None
    now = now or datetime.now(timezone.utc)
    touched = sorted({posixpath.dirname(f) for f in files if f.split("/", 1)[0] in DATASETS})
    try:
        policy = Policy.from_settings(lake)
        policy.now = now
        stats = compact(store, Policy.from_settings(lake, lake.compact_after_files), touched, fence=fence)
        later = expired_days(store, policy)
        if lake.compact_closed_days:
            later += closed_partitions(lake.layout, now)
        if later:
            closed = compact(store, policy, later, fence=fence)
            stats = {k: stats[k] + closed[k] for k in stats}
        return stats
    except Exception:  # the run is committed; compaction is retried after the next one
        log.exception("automatic compaction failed; the lake is unchanged or will be completed by the next run")
        return None
