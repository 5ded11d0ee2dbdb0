"""Runner plumbing shared by the commands: Beam options for the runner chosen, the parallel layout, machine
sizing, running a built pipeline, and a local Dask cluster for ``--runner dask`` without an address."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions

from warta.config.settings import Settings
from warta.pipeline.options import usable_cpus
from warta.pipeline.progress import OUR_LOGGERS
from warta.pipeline.worker import DirectFnRunner, WorkerPool
from warta.transforms.ner import ModelLoadError

if TYPE_CHECKING:
    from warta.pipeline.build import Plan

log = logging.getLogger("warta")
_pool: list[WorkerPool] = []  # the long-lived worker pool runs on the DirectRunner use, if any (worker_pool)


def beam_options(beam_args: list[str], runner: str | None, dask_address: str | None,
                 workers: int | None = None, quiet: bool = False) -> PipelineOptions:
    """Beam's options; on the DirectRunner, ``workers`` > 1 worker processes unless Beam's own flags say
    otherwise. ``quiet``: worker processes log only errors, and our own messages."""
    args = list(beam_args)
    if quiet and not any(a.startswith("--default_sdk_harness_log_level") for a in beam_args):
        level = logging.getLevelName(log.getEffectiveLevel())
        args += ["--default_sdk_harness_log_level", "ERROR",
                 "--sdk_harness_log_level_overrides", json.dumps(dict.fromkeys(OUR_LOGGERS, level))]
    name = (runner or "direct").lower()
    if name == "direct":
        args += ["--runner", "DirectRunner"]
        given = PipelineOptions(beam_args).view_as(DirectOptions)
        if workers and workers > 1 and not any(a.startswith("--direct_") for a in beam_args):
            args += ["--direct_num_workers", str(workers), "--direct_running_mode", "multi_processing"]
        elif given.direct_num_workers == 0:  # Beam's "as many as CPUs" (it would count all of the host's)
            args += ["--direct_num_workers", str(usable_cpus())]
    elif name == "dask":
        args += ["--runner", "apache_beam.runners.dask.dask_runner.DaskRunner"]
        if dask_address:
            args += ["--dask_client_address", dask_address]
    else:
        args += ["--runner", runner]
    return PipelineOptions(args, save_main_session=False)


def dask_slots(address: str) -> int:
    """Threads over all workers of the dask.distributed cluster at ``address`` (at least 1)."""
    from distributed import Client
    with Client(address, timeout=30, set_as_default=False) as client:
        return max(1, sum(client.nthreads().values()))


def runner_slots(options: PipelineOptions, runner: str | None) -> int | None:
    """Tasks the runner runs at once: DirectRunner worker processes, a Dask cluster's worker threads (asked
    of its scheduler), Flink's ``--parallelism``, Dataflow's ``--max_num_workers``/``--num_workers``;
    None where the options do not say (then ``parallelism`` or ``ner.parallelism`` decide)."""
    name = (runner or "direct").lower()
    if name == "direct":
        return options.view_as(DirectOptions).direct_num_workers or 1
    if name == "dask":
        from apache_beam.runners.dask.dask_runner import DaskOptions
        return dask_slots(options.view_as(DaskOptions).address)
    given = options.get_all_options(retain_unknown_options=True)
    for flag in ("parallelism", "max_num_workers", "num_workers"):
        if isinstance(given.get(flag), int) and given[flag] > 0:
            return given[flag]
    return None


def parallel_layout(options: PipelineOptions, runner: str | None, settings: Settings) -> tuple[int, str, bool]:
    """(host groups to spread the work over, NER batching, join the sinks) for this runner.

    Groups: ``parallelism``, else the runner's slots (:func:`runner_slots`), else ``ner.parallelism``.
    NER batching: ``bundle`` on the DirectRunner (fused with fetching and extraction, no shuffle);
    ``reshuffle`` on Flink, Spark, Dataflow (a Reshuffle spreads the articles over all workers first);
    ``shuffle`` on Dask, whose Reshuffle is a no-op and which drops what ``finish_bundle`` emits (see
    TagEntities). On Dask the Creates are also split into as many partitions as the cluster has threads
    (``--dask_npartitions``, unless given): a Dask bag keeps its partition count through every step."""
    name = (runner or "direct").lower()
    slots = runner_slots(options, runner)
    if name == "dask":
        from apache_beam.runners.dask.dask_runner import DaskOptions
        dask = options.view_as(DaskOptions)
        if not dask.npartitions and not dask.partition_size:
            dask.npartitions = slots
    # Beam's DaskRunner computes only the graph of the last transform (so all sinks must feed one last step);
    # any runner other than the DirectRunner gets the join, which costs one small extra stage.
    batching = {"direct": "bundle", "dask": "shuffle"}.get(name, "reshuffle")
    return settings.parallelism or slots or settings.ner.parallelism, batching, name != "direct"


def sized_to_machine(settings: Settings, options: PipelineOptions, runner: str | None) -> Settings:
    """Torch threads per worker = CPUs // worker processes (never more busy threads than cores), unless
    ``ner.threads`` is set. Worker processes are those of the DirectRunner's multi_processing mode."""
    if settings.ner.threads or (runner or "direct").lower() != "direct":
        return settings
    direct = options.view_as(DirectOptions)
    procs = (direct.direct_num_workers or 1) if direct.direct_running_mode == "multi_processing" else 1
    threads = max(1, usable_cpus() // procs)
    return settings.model_copy(update={"ner": settings.ner.model_copy(update={"threads": threads})})


def execute(build_fn, plan: Plan, options: PipelineOptions, runner: str | None, verbose: bool = False) -> None:
    """Build a pipeline with ``build_fn(p, plan)`` on the runner chosen and run it to the end."""
    direct = (runner or "direct").lower() == "direct"
    pool = None
    if direct and _pool and options.view_as(DirectOptions).direct_running_mode == "multi_processing":
        pool = _pool[-1]
        pool.ensure()  # replaces worker processes that died since the last run
    p = beam.Pipeline(runner=DirectFnRunner(quiet=not verbose, pool=pool) if direct else None, options=options)
    build_fn(p, plan)
    try:
        result = p.run()
        try:
            result.wait_until_finish()
        except KeyboardInterrupt:  # SIGINT/SIGTERM on the launcher: the job must not go on without it
            cancel(result)
            raise
    except Exception as e:
        found = model_error(e)
        if found is None:
            raise
        raise found from e
    if hasattr(result, "client"):  # DaskRunner opens its own client: close it before the cluster goes
        result.client.close()


def cancel(result) -> None:
    """Cancel a running job where the runner can (Dask, Dataflow, portable runners); the in-process
    DirectRunner stops with the launcher anyway."""
    try:
        result.cancel()
    except (NotImplementedError, AttributeError):
        pass
    except Exception:  # the launcher is going away: report, do not mask the interrupt
        log.warning("could not cancel the job", exc_info=True)


@contextmanager
def worker_pool(size: int, verbose: bool = False) -> Iterator[WorkerPool]:
    """``size`` long-lived worker processes that every DirectRunner run with worker processes uses while
    the block lasts (``--every``): the NER models each process loads stay loaded from one run to the next."""
    with WorkerPool(size, logging.getLevelName(log.getEffectiveLevel()), verbose) as pool:
        _pool.append(pool)
        try:
            yield pool
        finally:
            _pool.remove(pool)


def model_error(e: BaseException) -> ModelLoadError | None:
    """The ModelLoadError a worker raised, however the runner handed it back (the same type from Dask, a
    RuntimeError quoting the worker's traceback from the DirectRunner's worker processes); None for others."""
    seen = e
    while seen is not None:
        if isinstance(seen, ModelLoadError):
            return ModelLoadError(str(seen).split("\n")[0].removeprefix("ModelLoadError: "))
        seen = seen.__cause__ or seen.__context__
    found = re.search(r"ModelLoadError: (.+)", str(e))
    return ModelLoadError(found.group(1).strip()) if found else None


class local_dask_cluster:
    """A local dask.distributed cluster (2 worker processes) for ``--runner dask`` without an address."""

    def __enter__(self) -> str:
        from distributed import LocalCluster
        self.cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
        return self.cluster.scheduler_address

    def __exit__(self, *exc) -> None:
        self.cluster.close()
