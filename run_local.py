#!/usr/bin/env python3
"""Run warta on this machine (Beam DirectRunner by default). `python run_local.py --help` for all options."""

import logging

logging.getLogger().setLevel(logging.ERROR)  # quiet import-time notices from Beam; the CLI sets up logging

from warta.pipeline.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
