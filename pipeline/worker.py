"""The local runner: Beam's FnApiRunner (what the DirectRunner runs batch pipelines on), used directly.

Beam's DirectRunner first tries its Prism runner, downloading a binary from GitHub at run time (offline it
logs the failure and falls back); we skip that step. Its multi_processing mode starts worker processes as
``python -m apache_beam.runners.worker.sdk_worker_main``, whose start-up INFO/WARNING lines (import
warnings, "Logging handler created", options) go straight to the console: quiet, they start through this
module instead, the same worker whose console shows only errors and our own messages.
"""

from __future__ import annotations

import logging
import sys

if __name__ == "__main__":  # a worker process: before Beam's import-time warnings
    logging.basicConfig(level=logging.ERROR)

from apache_beam.runners.portability.fn_api_runner.fn_runner import ExtendedProvisionInfo, FnApiRunner  # noqa: E402
from apache_beam.transforms.environments import SubprocessSDKEnvironment  # noqa: E402


class DirectFnRunner(FnApiRunner):
    """``--runner direct``: the FnApiRunner as the DirectRunner sets it up; ``quiet`` worker processes."""

    def __init__(self, quiet: bool = True):
        self.quiet = quiet
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
        if isinstance(environment, SubprocessSDKEnvironment) and self.quiet:
            environment = SubprocessSDKEnvironment.from_command_string(f"{sys.executable} -m warta.pipeline.worker")
        self._environment = environment


def main() -> None:
    from warta.pipeline.progress import QuietFilter
    logging.getLogger().handlers[0].addFilter(QuietFilter())
    from apache_beam.runners.worker import sdk_worker_main
    sdk_worker_main.main(sys.argv)


if __name__ == "__main__":
    main()
