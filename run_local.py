#!/usr/bin/env python3
"""Run warta on this machine (Beam DirectRunner by default). `python run_local.py --help` for all options."""

from pipeline.cli import main

if __name__ == "__main__":
    main()
