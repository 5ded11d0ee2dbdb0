"""pipeline.cli: worker processes and torch threads sized to the machine, whichever flags set them."""

from __future__ import annotations

from apache_beam.options.pipeline_options import DirectOptions

from warta.config.settings import Settings
from warta.pipeline.options import usable_cpus
from warta.pipeline.runner import beam_options, sized_to_machine


def direct(options) -> tuple[int, str]:
    d = options.view_as(DirectOptions)
    return d.direct_num_workers, d.direct_running_mode


def test_workers_become_direct_runner_processes_unless_beam_flags_say_otherwise():
    assert direct(beam_options([], None, None, workers=3)) == (3, "multi_processing")
    assert direct(beam_options([], None, None, workers=1)) == (1, "in_memory")  # one in-process worker
    given = ["--direct_num_workers", "2", "--direct_running_mode", "multi_threading"]
    assert direct(beam_options(given, None, None, workers=4)) == (2, "multi_threading")
    assert direct(beam_options(["--direct_num_workers", "0"], None, None))[0] == usable_cpus()


def test_torch_threads_times_worker_processes_never_exceed_the_cpus():
    cpus = usable_cpus()
    for args, procs in (([], 1), (["--direct_num_workers", str(cpus), "--direct_running_mode", "multi_processing"], cpus),
                        (["--direct_num_workers", "64", "--direct_running_mode", "multi_processing"], 64),
                        (["--direct_num_workers", "4", "--direct_running_mode", "multi_threading"], 1)):
        threads = sized_to_machine(Settings(), beam_options(args, None, None), None).ner.threads
        assert threads == max(1, cpus // procs), args
    assert sized_to_machine(Settings(ner={"threads": 3}), beam_options([], None, None, workers=2), None).ner.threads == 3
    assert sized_to_machine(Settings(), beam_options([], "dask", "tcp://x:1"), "dask").ner.threads is None


def test_quiet_workers_log_only_errors_and_our_messages():
    options = beam_options([], None, None, quiet=True).get_all_options()
    assert options["default_sdk_harness_log_level"] == "ERROR"
    assert "warta" in options["sdk_harness_log_level_overrides"]
    assert beam_options([], None, None).get_all_options().get("default_sdk_harness_log_level") is None  # --verbose
