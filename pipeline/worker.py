"""The local runner: Beam's FnApiRunner (what the DirectRunner runs batch pipelines on), used directly, and
the long-lived worker pool of ``--every``.

Beam's DirectRunner first tries its Prism runner, downloading a binary from GitHub at run time (offline it
logs the failure and falls back); we skip that step. Its multi_processing mode starts worker processes as
``python -m apache_beam.runners.worker.sdk_worker_main``, whose start-up INFO/WARNING lines (import
warnings, "Logging handler created", options) go straight to the console: quiet, they start through this
module instead, the same worker whose console shows only errors and our own messages.

Those worker processes live as long as one pipeline, so each run loads the NER models again. A
:class:`WorkerPool` instead starts its processes once (``python -m warta.pipeline.worker --pool``): each
serves Beam's external worker pool API (``worker_pool_main``'s servicer, harnesses as threads in that
process) and every pipeline run on a :class:`DirectFnRunner` given the pool runs its SDK harnesses there,
so per-process caches (the NER models of ``shared_tagger``) stay loaded from one poll to the next. A pool
process that dies fails the run in flight (its harnesses are aborted) and is replaced before the next one.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import uuid

if __name__ == "__main__":  # a worker process: before Beam's import-time warnings
    logging.basicConfig(level=logging.ERROR)

from apache_beam.runners.portability.fn_api_runner.fn_runner import ExtendedProvisionInfo, FnApiRunner  # noqa: E402
from apache_beam.runners.portability.fn_api_runner.worker_handlers import GrpcWorkerHandler, WorkerHandler  # noqa: E402
from apache_beam.transforms.environments import Environment, SubprocessSDKEnvironment, python_sdk_capabilities  # noqa: E402

log = logging.getLogger("warta.pipeline.worker")
POOL_URN = "warta:env:worker_pool:v1"
START_TIMEOUT = 120.0  # seconds for a pool process to import Beam and listen


class WorkerDied(RuntimeError):
    """A pool worker process died while a run was using it."""


class DirectFnRunner(FnApiRunner):
    """``--runner direct``: the FnApiRunner as the DirectRunner sets it up; ``quiet`` worker processes;
    with a ``pool``, multi_processing harnesses run in the pool's long-lived processes."""

    def __init__(self, quiet: bool = True, pool: WorkerPool | None = None):
        self.quiet, self.pool = quiet, pool
        super().__init__()

    def run_pipeline(self, pipeline, options):
        from apache_beam.portability.api import beam_provision_api_pb2
        from apache_beam.runners.portability.portable_runner import JobServiceHandle
        encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
        self._provision_info = ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
        return super().run_pipeline(pipeline, options)

    # FnApiRunner.run_pipeline picks the worker environment from --direct_running_mode
    @property
    def _default_environment(self):
        return self._environment

    @_default_environment.setter
    def _default_environment(self, environment) -> None:
        if isinstance(environment, SubprocessSDKEnvironment):
            if self.pool is not None:
                environment = PoolEnvironment(self.pool.id)
            elif self.quiet:
                environment = SubprocessSDKEnvironment.from_command_string(f"{sys.executable} -m warta.pipeline.worker")
        self._environment = environment


class PoolEnvironment(Environment):
    """Harnesses in the processes of the :class:`WorkerPool` ``pool_id`` (of this driver process)."""

    def __init__(self, pool_id: str, capabilities=None, artifacts=(), resource_hints=None):
        super().__init__(python_sdk_capabilities() if capabilities is None else capabilities, artifacts,
                         resource_hints)
        self.pool_id = pool_id

    def __eq__(self, other):
        return super().__eq__(other) and self.pool_id == other.pool_id

    def __hash__(self):
        return hash((super().__hash__(), self.pool_id))

    def to_runner_api_parameter(self, context):
        return POOL_URN, self.pool_id.encode()

    @staticmethod
    def from_runner_api_parameter(payload, capabilities, artifacts, resource_hints, context):
        return PoolEnvironment(payload.decode(), capabilities, artifacts, resource_hints)


Environment.register_urn(POOL_URN, None, PoolEnvironment.from_runner_api_parameter)
_POOLS: dict[str, WorkerPool] = {}


@WorkerHandler.register_environment(POOL_URN, bytes)
class PoolWorkerHandler(GrpcWorkerHandler):
    """One SDK harness of one run, started in (and stopped from) a pool process."""

    def __init__(self, payload: bytes, state, provision_info, grpc_server):
        super().__init__(state, provision_info, grpc_server)
        self.pool = _POOLS[payload.decode()]
        self.process: PoolProcess | None = None

    def start_worker(self) -> None:
        self.pool.start_harness(self)

    def stop_worker(self) -> None:
        self.pool.stop_harness(self)


class PoolProcess:
    """One long-lived worker process: ``python -m warta.pipeline.worker --pool``; it prints the address of
    its worker pool service, and exits when its stdin closes (the driver is gone, even killed)."""

    def __init__(self, on_exit, log_level: str, verbose: bool):
        self.handlers: set[PoolWorkerHandler] = set()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "warta.pipeline.worker", "--pool", log_level, *(["--verbose"] * verbose)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            start_new_session=True)  # Ctrl-C reaches the driver only: it finishes the poll in flight
        self.address = None
        self._on_exit = on_exit

    def wait_ready(self) -> None:
        line = self.proc.stdout.readline().strip()  # the process exits (EOF) if it cannot start
        if not line:
            raise WorkerDied(f"worker process {self.proc.pid} exited with {self.proc.wait()} while starting")
        self.address = line
        from apache_beam.portability.api import beam_fn_api_pb2_grpc
        from apache_beam.runners.worker.channel_factory import GRPCChannelFactory
        self.channel = GRPCChannelFactory.insecure_channel(self.address)
        self.stub = beam_fn_api_pb2_grpc.BeamFnExternalWorkerPoolStub(self.channel)
        threading.Thread(target=self._watch, name=f"warta-pool-{self.proc.pid}", daemon=True).start()

    def _watch(self) -> None:
        self.proc.wait()  # blocks: no CPU while the process lives
        self._on_exit(self)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        if self.alive:
            self.proc.stdin.close()  # the process exits on EOF
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "channel", None) is not None:
            self.channel.close()


def _quiet_lost_streams(previous):
    """Beam's thread reading a harness's control stream dies with a traceback when that harness's process
    dies; the pool reports the death itself (one warning line), so that traceback is left out."""
    def hook(args):
        if args.thread is not None and args.thread.name == "beam_control_read" and any(
                p.deaths for p in _POOLS.values()) and type(args.exc_value).__module__.startswith("grpc"):
            log.debug("control stream of a dead worker process: %r", args.exc_value)
            return
        previous(args)
    hook.quiet_lost_streams = True
    return hook


class WorkerPool:
    """``size`` worker processes that outlive the pipelines run with ``DirectFnRunner(pool=...)``.

    Each run's harnesses go to the live processes, fewest first. :meth:`ensure` (before each run) replaces
    processes that died; a process that dies during a run aborts that run's harnesses in it, so the run
    fails (nothing of it is committed) instead of waiting forever, and ``deaths`` counts it."""

    def __init__(self, size: int, log_level: str = "INFO", verbose: bool = False):
        self.size, self.log_level, self.verbose = size, log_level, verbose
        self.id = uuid.uuid4().hex
        self.processes: list[PoolProcess] = []
        self.deaths = 0
        self._lock = threading.Lock()
        self._closing = False

    def __enter__(self) -> WorkerPool:
        _POOLS[self.id] = self
        if not getattr(threading.excepthook, "quiet_lost_streams", False):
            threading.excepthook = _quiet_lost_streams(threading.excepthook)
        try:
            self.ensure()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def ensure(self) -> None:
        """Start processes until ``size`` are alive (all of them at once, then wait until each listens)."""
        with self._lock:
            self.processes = [p for p in self.processes if p.alive]
            new = [PoolProcess(self._exited, self.log_level, self.verbose)
                   for _ in range(self.size - len(self.processes))]
            self.processes += new
        for p in new:
            p.wait_ready()
        if new:
            log.debug("worker pool: started %s", ", ".join(str(p.proc.pid) for p in new))

    def pids(self) -> list[int]:
        return [p.proc.pid for p in self.processes if p.alive]

    def start_harness(self, handler: PoolWorkerHandler) -> None:
        from apache_beam.portability.api import beam_fn_api_pb2, endpoints_pb2
        with self._lock:
            live = [p for p in self.processes if p.alive]
            if not live:
                raise WorkerDied("no live worker process in the pool")
            process = min(live, key=lambda p: len(p.handlers))
            process.handlers.add(handler)
            handler.process = process
        control = endpoints_pb2.ApiServiceDescriptor(url=handler.control_address)
        response = process.stub.StartWorker(beam_fn_api_pb2.StartWorkerRequest(
            worker_id=handler.worker_id, control_endpoint=control, artifact_endpoint=control,
            provision_endpoint=control, logging_endpoint=handler.logging_api_service_descriptor()),
            timeout=START_TIMEOUT)
        if response.error:
            raise RuntimeError(f"worker process {process.proc.pid} could not start a harness: {response.error}")

    def stop_harness(self, handler: PoolWorkerHandler) -> None:
        """Let the process forget the harness (whose control stream the runner has just closed)."""
        process = handler.process
        if process is None:
            return
        with self._lock:
            process.handlers.discard(handler)
        if process.alive:
            from apache_beam.portability.api import beam_fn_api_pb2
            try:
                process.stub.StopWorker(beam_fn_api_pb2.StopWorkerRequest(worker_id=handler.worker_id), timeout=30)
            except Exception:  # it died meanwhile: nothing left to stop
                log.debug("worker %s: StopWorker failed", process.proc.pid, exc_info=True)

    def _exited(self, process: PoolProcess) -> None:
        if self._closing:
            return
        with self._lock:
            handlers = list(process.handlers)
            process.handlers.clear()
            self.deaths += 1
        log.warning("worker process %s exited with %s%s", process.proc.pid, process.proc.returncode,
                    "; the run in flight fails and is retried" if handlers else "; it is replaced before the next run")
        error = WorkerDied(f"worker process {process.proc.pid} exited with {process.proc.returncode}")
        for handler in handlers:  # anything the runner waits for from that harness fails now
            handler.control_conn.abort(error)

    def close(self) -> None:
        self._closing = True
        _POOLS.pop(self.id, None)
        for p in self.processes:
            if p.alive:
                p.proc.stdin.close()
        for p in self.processes:
            p.close()
        self.processes = []


def serve_pool(log_level: str, verbose: bool) -> None:
    """A pool process: Beam's external worker pool service, harnesses as threads of this process."""
    from warta.pipeline.progress import setup_logging
    setup_logging(log_level, verbose)
    from apache_beam.runners.worker.worker_pool_main import BeamFnExternalWorkerPoolServicer
    address, server = BeamFnExternalWorkerPoolServicer.start(use_process=False, port=0)
    print(address, flush=True)
    os.dup2(2, 1)  # from now on, what the pipeline's code prints goes to the console, not to the driver's pipe
    sys.stdin.read()  # until the driver closes our stdin or goes away
    server.stop(0)
    os._exit(0)  # harness threads of an aborted run must not keep the process


def main() -> None:
    if sys.argv[1:2] == ["--pool"]:
        return serve_pool(sys.argv[2], "--verbose" in sys.argv[3:])
    from warta.pipeline.progress import QuietFilter
    logging.getLogger().handlers[0].addFilter(QuietFilter())
    from apache_beam.runners.worker import sdk_worker_main
    sdk_worker_main.main(sys.argv)


if __name__ == "__main__":
    main()
