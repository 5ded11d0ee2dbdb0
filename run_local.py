#!/usr/bin/env python3
"""Run warta on this machine, for scripts: `python run_local.py FLAGS` is always `warta run FLAGS` (as before);
`python run_local.py COMMAND ARGS` is `warta COMMAND ARGS`; alone it prints the usage (exit 2), like `warta`."""

import logging

logging.getLogger().setLevel(logging.ERROR)  # quiet import-time notices from Beam; the CLI sets up logging

from warta.pipeline.cli import main  # noqa: E402

if __name__ == "__main__":
    main(flags_run=True)
