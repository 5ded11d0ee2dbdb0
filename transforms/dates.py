"""Publication times from feeds and pages: local-time zones, Indonesian zone names and day-first dates.

A time with an explicit offset (``+07:00``, ``Z``, ``GMT``, ``WIB``) is taken as written. A naive one is read
in the feed's time zone (``Feed.timezone``, else the default of its language below), else as UTC.
Languages that write dates day first read ``05/11/2024`` as 5 November.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from dateutil import parser as dateparser

# Feed language -> time zone, only where the language's news is (almost all) written in one zone.
# Indonesian outlets overwhelmingly print WIB; set `timezone` on a feed in WITA/WIT (Makassar, Jayapura).
LANGUAGE_TIMEZONES = {
    "id": "Asia/Jakarta", "ms": "Asia/Kuala_Lumpur", "th": "Asia/Bangkok", "vi": "Asia/Ho_Chi_Minh",
    "ja": "Asia/Tokyo", "ko": "Asia/Seoul", "de": "Europe/Berlin", "it": "Europe/Rome", "nl": "Europe/Amsterdam",
    "pl": "Europe/Warsaw", "cs": "Europe/Prague", "sk": "Europe/Bratislava", "hu": "Europe/Budapest",
    "ro": "Europe/Bucharest", "el": "Europe/Athens", "fi": "Europe/Helsinki", "sv": "Europe/Stockholm",
    "da": "Europe/Copenhagen", "nb": "Europe/Oslo", "no": "Europe/Oslo", "uk": "Europe/Kyiv", "tr": "Europe/Istanbul",
}
# Languages whose news sites write numeric dates day first (05/11/2024 = 5 November).
DAY_FIRST = frozenset({
    "id", "ms", "de", "fr", "es", "it", "nl", "pt", "pl", "cs", "sk", "hu", "ro", "el", "fi", "sv", "da", "nb",
    "no", "uk", "ru", "tr", "vi", "th",
})
# Zone abbreviations met in news datelines (Indonesian WIB/WITA/WIT first), as UTC offsets.
ZONE_NAMES = {name: int(hours * 3600) for name, hours in {
    "WIB": 7, "WITA": 8, "WIT": 9, "UTC": 0, "GMT": 0, "Z": 0, "EST": -5, "EDT": -4, "CST": -6, "CDT": -5,
    "MST": -7, "MDT": -6, "PST": -8, "PDT": -7, "CET": 1, "CEST": 2, "EET": 2, "EEST": 3, "BST": 1, "JST": 9,
    "KST": 9, "SGT": 8, "MYT": 8, "ICT": 7, "IST": 5.5, "AEST": 10, "AEDT": 11}.items()}
_YEAR_FIRST = re.compile(r"\s*\d{4}\D")
_DOTTED_TIME = re.compile(r"(?<![\d.])(\d{1,2})\.(\d{2})(?![\d.])")  # "pukul 10.00 WIB"


class _IndonesianNames(dateparser.parserinfo):
    """English and Indonesian month and day names (``Selasa, 12 Agustus 2024 10:00 WIB``)."""

    MONTHS = [("Jan", "January", "Januari"), ("Feb", "February", "Februari"), ("Mar", "March", "Maret"),
              ("Apr", "April"), ("May", "Mei"), ("Jun", "June", "Juni"), ("Jul", "July", "Juli"),
              ("Aug", "August", "Agu", "Agt", "Agus", "Agustus"), ("Sep", "Sept", "September"),
              ("Oct", "October", "Okt", "Oktober"), ("Nov", "November", "Nop", "Nopember"),
              ("Dec", "December", "Des", "Desember")]
    WEEKDAYS = [("Mon", "Monday", "Sen", "Senin"), ("Tue", "Tuesday", "Sel", "Selasa"), ("Wed", "Wednesday", "Rab", "Rabu"),
                ("Thu", "Thursday", "Kam", "Kamis"), ("Fri", "Friday", "Jum", "Jumat", "Jum'at"),
                ("Sat", "Saturday", "Sab", "Sabtu"), ("Sun", "Sunday", "Min", "Minggu", "Ahad")]
    JUMP = dateparser.parserinfo.JUMP + ["pukul", "jam", "pkl"]


_NAMES = {df: _IndonesianNames(dayfirst=df) for df in (False, True)}


@dataclass(frozen=True)
class When:
    at: datetime  # in UTC
    explicit: bool  # the source gave an offset or zone; False: read in the feed's zone (or UTC)


def zone(name: str | None) -> timezone | ZoneInfo:
    """The named IANA zone, or UTC for None."""
    return ZoneInfo(name) if name else timezone.utc


def default_timezone(language: str | None) -> str | None:
    return LANGUAGE_TIMEZONES.get(language or "")


def day_first(language: str | None) -> bool:
    return (language or "") in DAY_FIRST


def in_zone(dt: datetime, tz: str | None) -> When:
    """``dt`` as written (aware: explicit; naive: read in ``tz``, else UTC) as a :class:`When`."""
    if dt.tzinfo is None:
        return When(dt.replace(tzinfo=zone(tz)).astimezone(timezone.utc), False)
    return When(dt.astimezone(timezone.utc), True)


def parse_local(value: Any, dayfirst: bool = False) -> datetime | None:
    """A date/time string as written: aware when it states an offset or a known zone name, naive when it
    does not; None if unreadable (or its zone name is unknown: better no time than a wrong one)."""
    if not value or not isinstance(value, str):
        return None
    text = value.strip()
    try:
        return dateparser.isoparse(text)
    except (ValueError, OverflowError):
        pass
    names = _NAMES[dayfirst and not _YEAR_FIRST.match(text)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", dateparser.UnknownTimezoneWarning)
        try:
            dt = dateparser.parse(_DOTTED_TIME.sub(r"\1:\2", text), parserinfo=names, tzinfos=ZONE_NAMES)
        except (ValueError, OverflowError, TypeError):
            return None
    return None if caught else dt


def parse_when(value: Any, tz: str | None = None, dayfirst: bool = False) -> When | None:
    """A date/time string in, its UTC time and whether it carried its own offset out (None if unreadable)."""
    dt = parse_local(value, dayfirst)
    return in_zone(dt, tz) if dt is not None else None


def parse_utc(value: Any, tz: str | None = None) -> datetime | None:
    """A date/time string as UTC (a time without an offset read in ``tz``, else UTC), or None."""
    when = parse_when(value, tz)
    return when.at if when else None


def plausible(dt: datetime | None, fetched_at: datetime) -> datetime | None:
    """Reject dates in the future (beyond a day of clock skew) or before the web news era."""
    if dt is None:
        return None
    if dt > fetched_at + timedelta(days=1) or dt.year < 1995:
        return None
    return dt


def best_time(candidates: list[When | None], fetched_at: datetime) -> datetime | None:
    """The first plausible time that carries its own offset, else the first plausible one."""
    ok = [c for c in candidates if c is not None and plausible(c.at, fetched_at)]
    return next((c.at for c in ok if c.explicit), ok[0].at if ok else None)
