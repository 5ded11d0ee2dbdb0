"""Row shapes shared by the stages: errors/ rows and timestamps."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

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
    """Turn an exception raised while processing ``element`` into an errors/ row."""
    element = element or {}
    return error_row(
        getattr(exc, "stage", None) or stage,
        f"{type(exc).__name__}: {exc}" if not getattr(exc, "stage", None) else str(exc),
        url=getattr(exc, "url", None) or element.get("url"),
        feed_url=element.get("feed_url"),
        source=element.get("source"),
        status=getattr(exc, "status", None),
    )


PERMANENT_MARKERS = ("content type", "larger than", "unsupported URL scheme", "redirects")


def is_permanent(err: dict[str, Any]) -> bool:
    """Will retrying this failed item give the same result? Transient ones (5xx, timeouts) are retried
    the next time their feed changes; permanent ones are remembered and never fetched again."""
    if not err.get("url") or err.get("url") == err.get("feed_url"):
        return False  # feed-level failures: the feed is polled again next run anyway
    if err["stage"] in ("robots", "extract"):
        return True
    status = err.get("status")
    if status is not None and 400 <= status < 500 and status not in (408, 429):
        return True
    return any(m in err["error"] for m in PERMANENT_MARKERS)
