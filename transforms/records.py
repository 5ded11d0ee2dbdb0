"""Row shapes shared by the stages: errors/ rows and timestamps; failure records from errors/ rows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import apache_beam as beam

STAGES = ("poll", "robots", "fetch", "extract", "ner", "write")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def error_row(stage: str, error: str, *, url: str | None = None, feed_url: str | None = None,
              source: str | None = None, status: int | None = None) -> dict[str, Any]:
    """One `errors/` row. ``error`` is kept to one line of bounded length."""
    assert stage in STAGES, stage
    message = " ".join(str(error).split())
    return {
        "url": url, "feed_url": feed_url, "source": source, "stage": stage,
        "error": message[:1000], "status": status, "at": utcnow(),
    }


def error_from(exc: BaseException, stage: str, element: dict[str, Any] | None) -> dict[str, Any]:
    """Turn an exception raised while processing ``element`` into an errors/ row. The row's ``url`` is the
    element's (the entry link the poll gave: what failures and accounting are keyed on); a redirect hop the
    error happened at is named in the message."""
    element = element or {}
    hop = getattr(exc, "url", None)
    url = element.get("url") or hop
    message = f"{type(exc).__name__}: {exc}" if not getattr(exc, "stage", None) else str(exc)
    if hop and hop != url:
        message += f" (at {hop})"
    return error_row(getattr(exc, "stage", None) or stage, message, url=url, feed_url=element.get("feed_url"),
                     source=element.get("source"), status=getattr(exc, "status", None))


class _FailureRecordFn(beam.DoFn):
    def __init__(self, failures_loader):
        self.failures_loader = failures_loader

    def setup(self):
        self.failures = self.failures_loader()

    def process(self, err: dict[str, Any]):
        record = self.failures.record(err)
        if record:
            yield record


@dataclass(eq=False)
class RecordFailures(beam.PTransform):
    """errors/ rows in; failure records (attempts, next retry time: :mod:`lake.failures`) out. Feed-level
    failures are not recorded: the feed is polled again next run anyway."""

    failures_loader: Any  # zero-arg callable returning the current lake.failures.Failures

    def __post_init__(self):
        super().__init__()

    def expand(self, errors):
        return errors | "Record" >> beam.ParDo(_FailureRecordFn(self.failures_loader))
