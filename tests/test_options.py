"""pipeline.options: our flags, Beam's options, and nothing else; the CPUs a run may use."""

from __future__ import annotations

import os

import pytest

from warta.pipeline.command import Exit
from warta.pipeline.options import split_args, usable_cpus


def test_beam_options_pass_and_unknown_arguments_are_named():
    ns, beam_args, overrides = split_args(["--feeds", "f.yaml", "--direct_num_workers", "2",
                                           "--direct_running_mode=multi_processing", "--host-delay", "0"])
    assert str(ns.feeds) == "f.yaml" and overrides == {"http.host_delay": 0.0}
    assert beam_args == ["--direct_num_workers", "2", "--direct_running_mode=multi_processing"]
    with pytest.raises(Exit, match=r"unknown arguments: --feds f.yaml"):
        split_args(["--feds", "f.yaml"])
    with pytest.raises(Exit, match=r"unknown arguments: x.yaml compact"):
        split_args(["x.yaml", "compact"])


def test_options_after_a_bare_double_dash_go_to_beam_unchecked():
    _, beam_args, _ = split_args(["--workers", "1", "--", "--flink_master", "host:8081"])
    assert beam_args == ["--flink_master", "host:8081"]


def test_durations_and_workers():
    ns, _, _ = split_args(["--max-run-time", "90s", "--workers", "3", "--every", "15m"])
    assert (ns.max_run_time, ns.workers, ns.every) == (90, 3, 900)
    with pytest.raises(Exit, match=r"argument --max-run-time: invalid interval 'soon'") as e:
        split_args(["--max-run-time", "soon"])
    assert e.value.code == 2


def test_usable_cpus_follow_the_affinity_mask():
    assert 1 <= usable_cpus() <= len(os.sched_getaffinity(0))
