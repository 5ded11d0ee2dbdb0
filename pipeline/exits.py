"""Exit codes of every ``warta`` command, defined once."""

EXIT_OK = 0  # done
EXIT_FAILED = 1  # the run failed; nothing from it was committed (run again)
EXIT_CONFIG = 2  # a usage or configuration error: nothing was done
EXIT_LOCKED = 3  # another run holds the lake's lock
