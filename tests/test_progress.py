"""pipeline.progress: worker counts summed by the driver; the progress line; quiet logging."""

from __future__ import annotations

import io
import logging
import time

from warta.pipeline.progress import ProgressLine, QuietFilter, count, progress_text, read_counts


def test_counts_reach_the_driver_and_the_line_shows_them():
    out = io.StringIO()
    with ProgressLine(feeds=4, deadline=time.time() + 60, stream=out) as progress:
        for name, n in (("feeds", 4), ("entries", 10), ("fetched", 6), ("deferred", 1), ("tagged", 5)):
            for i in range(n):
                assert count(i, progress.directory, name) == i  # passes elements through
        deadline = time.monotonic() + 10
        while read_counts(progress.directory).get("tagged") != 5 and time.monotonic() < deadline:
            time.sleep(0.1)
        text, fraction = progress.line()
    assert "feeds polled 4/4" in text and "pages fetched 6, pending 3, deferred 1" in text
    assert "articles tagged 5" in text and fraction == 0.7


def test_estimate_from_the_recent_fetch_rate_within_the_budget():
    c = {"feeds": 2, "entries": 100, "fetched": 40}
    assert progress_text(c, 2, 30.0, left=None, rate=2.0)[0].endswith("0:30 elapsed, ~0:30 left")
    assert progress_text(c, 2, 30.0, left=10.0, rate=2.0)[0].endswith("~0:10 left")  # the budget ends first
    assert "left" not in progress_text(c, 2, 30.0)[0]


def test_progress_line_while_polling_has_no_estimate():
    text, fraction = progress_text({"feeds": 1}, 3, 12.0, None)
    assert text == "feeds polled 1/3 | pages fetched 0, pending 0 | articles tagged 0 | 0:12 elapsed"
    assert fraction is None


def test_quiet_filter_keeps_our_messages_and_others_errors():
    keep = QuietFilter().filter
    rec = lambda name, level: logging.LogRecord(name, level, "", 0, "m", (), None)  # noqa: E731
    assert keep(rec("warta", logging.INFO)) and keep(rec("warta.lake.commit", logging.WARNING))
    assert not keep(rec("root", logging.WARNING)) and not keep(rec("apache_beam.runners", logging.INFO))
    assert keep(rec("apache_beam.runners", logging.ERROR))


def test_model_load_seconds_reach_the_run_this_process_serves():
    from warta.pipeline.progress import note_model_load
    from warta.transforms.ner import _loaded
    out = io.StringIO()
    with ProgressLine(feeds=1, stream=out) as first:
        time.sleep(0.4)
        _loaded("id", 0.3)  # the NER module's hook: a load this run started, before the process counted anything
        count("x", first.directory, "feeds")  # now it knows the run: the load is counted into it
        note_model_load("en", 0.25)  # written at once (no flush delay): the summary reads it
        assert read_counts(first.directory)["model_load_ms"] == 550
        assert "| model load 0.6s |" in first.line()[0]
    assert first.model_load_s == 0.6
    note_model_load("id", 3.0)  # a load the first run started that outlived it: not the second run's
    with ProgressLine(feeds=1, stream=out) as second:  # a later run in the same (long-lived) process
        note_model_load("id", 0.0)  # a warm-up that found the model loaded
        count("x", second.directory, "feeds")
        deadline = time.monotonic() + 10
        while "feeds" not in read_counts(second.directory) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "| model load 0.0s |" in second.line()[0]
    assert second.model_load_s == 0.0
