"""transforms.dates: local zones, Indonesian zone and month names, day-first dates, explicit offsets first."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from warta.transforms.dates import When, best_time, default_timezone, parse_when


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


@pytest.mark.parametrize("text, tz, dayfirst, at, explicit", [
    ("2024/11/12 10:00:00", "Asia/Jakarta", True, utc(2024, 11, 12, 3), False),  # year first stays Y/M/D
    ("2024-11-05", "Asia/Jakarta", True, utc(2024, 11, 4, 17), False),
    ("05/11/2024 10:00", "Asia/Jakarta", True, utc(2024, 11, 5, 3), False),
    ("05/11/2024 10:00", None, False, utc(2024, 5, 11, 10), False),  # month first, UTC without a zone
    ("Selasa, 12 Agustus 2024 10:00 WIB", None, True, utc(2024, 8, 12, 3), True),
    ("12 Nov 2024 pukul 10.00 WITA", "Asia/Jakarta", True, utc(2024, 11, 12, 2), True),
    ("Tue, 12 Nov 2024 10:00:00 WIT", None, False, utc(2024, 11, 12, 1), True),
    ("2024-11-12T10:00:00+07:00", "Europe/Berlin", True, utc(2024, 11, 12, 3), True),
    ("05.11.2024 10:00", "Europe/Berlin", True, utc(2024, 11, 5, 9), False),
])
def test_parse_when(text, tz, dayfirst, at, explicit):
    assert parse_when(text, tz, dayfirst) == When(at, explicit)


def test_unreadable_or_unknown_zone_gives_no_time():
    for text in ("kemarin", "Tue, 12 Nov 2024 10:00:00 XYZ", "", None, ["2024-01-01"]):
        assert parse_when(text) is None


def test_explicit_offsets_win_and_implausible_times_are_skipped():
    fetched = utc(2024, 11, 20)
    naive, explicit = When(utc(2024, 11, 12, 10), False), When(utc(2024, 11, 12, 3), True)
    assert best_time([naive, explicit], fetched) == explicit.at
    assert best_time([None, naive], fetched) == naive.at
    assert best_time([When(utc(2031, 1, 1), True), naive], fetched) == naive.at
    assert best_time([None], fetched) is None


def test_default_timezone_only_where_unambiguous():
    assert default_timezone("id") == "Asia/Jakarta"
    assert default_timezone("en") is None and default_timezone(None) is None
