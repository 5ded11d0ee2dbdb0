"""What every ``warta`` command shares: its parser (one-line usage errors, ``--log-level``) and the preamble
(settings, else exit 2; the lake's lock, else exit 3).

A command is a function ``(argv) -> exit status`` decorated with :func:`command`; inside, it raises
:class:`Exit` to stop with a status and a one-line message, which the decorator prints as
``warta COMMAND: message`` before returning the status. So no command writes that plumbing out again::

    @command("warta compact")
    def compact_command(argv):
        ns = parser().parse_args(argv)           # a usage mistake: one line, exit 2
        start_logging(ns)                        # --log-level (every command has it)
        settings = settings_or_exit(ns.config)   # configuration error: exit 2
        store = lake_or_exit(ns.output, settings)  # no lake there: exit 2
        with locked_lake(store, settings):  # another run holds the lake: exit 3
            ...
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

from warta.config.settings import ConfigError, Settings, load_settings
from warta.lake.lock import LockedError, RunLock
from warta.lake.schema import new_run_id
from warta.lake.store import Store
from warta.pipeline.exits import EXIT_CONFIG, EXIT_LOCKED, EXIT_OK
from warta.pipeline.progress import setup_logging

LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]


class Exit(Exception):
    """Stop the command with ``code``; ``message`` (one line) goes to stderr, after ``prog`` (default: the
    command's name)."""

    def __init__(self, code: int, message: str | None = None, prog: str | None = None):
        super().__init__(message)
        self.code, self.message, self.prog = code, message, prog


class CommandParser(argparse.ArgumentParser):
    """argparse, but a mistake is one line naming the command (exit 2), not the whole usage."""

    def error(self, message: str) -> NoReturn:
        raise Exit(EXIT_CONFIG, f"{message} (`{self.prog} --help` lists the flags)", self.prog)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:  # --help, --version
        if message:
            print(message, file=sys.stderr, end="")
        raise Exit(status)


def command_parser(prog: str, description: str, log_level: bool = True, **kw: Any) -> CommandParser:
    ap = CommandParser(prog=prog, description=description, **kw)
    if log_level:
        add_log_level(ap)
    return ap


def add_log_level(ap: argparse.ArgumentParser, verbose: bool = False) -> None:
    ap.add_argument("--log-level", default="INFO", choices=LOG_LEVELS, type=str.upper,
                    help="messages at this level and above (default: %(default)s)")
    if verbose:
        ap.add_argument("--verbose", action="store_true", help="show Beam's and the libraries' own log messages")


def start_logging(ns: argparse.Namespace) -> None:
    setup_logging(ns.log_level, getattr(ns, "verbose", False))


def settings_or_exit(config: Any, overrides: dict[str, Any] | None = None) -> Settings:
    """The settings, or exit 2 with the configuration error."""
    try:
        return load_settings(config, overrides)
    except ConfigError as e:
        raise Exit(EXIT_CONFIG, f"configuration error: {e}") from None


@contextmanager
def locked_lake(store: Store, settings: Settings) -> Iterator[RunLock]:
    """The lake's run lock around a command's block (a new run id; exit 3 when another run holds it)."""
    with lock_or_exit(), RunLock(store, new_run_id(), ttl=settings.lock_ttl) as lock:
        yield lock


@contextmanager
def lock_or_exit() -> Iterator[None]:
    """Around a block that takes the lake's lock: another run holding it is exit 3."""
    try:
        yield
    except LockedError as e:
        raise Exit(EXIT_LOCKED, str(e)) from None


def command(prog: str) -> Callable[[Callable[[list[str]], int | None]], Callable[[list[str]], int]]:
    """Make ``func(argv)`` a command: :class:`Exit` becomes its return status (see :func:`call`)."""
    def wrap(func: Callable[[list[str]], int | None]) -> Callable[[list[str]], int]:
        @functools.wraps(func)
        def run(argv: list[str] | None = None) -> int:
            return call(prog, func, list(argv or []))
        return run
    return wrap


def call(prog: str, func: Callable[[list[str]], int | None], argv: list[str]) -> int:
    """Run a command; :class:`Exit` becomes its status, and its message one line on stderr."""
    try:
        return func(argv) or EXIT_OK
    except Exit as e:
        if e.message:
            print(f"{e.prog or prog}: {e.message}", file=sys.stderr)
        return e.code


def lake_or_exit(output: str, settings: Settings) -> Store:
    """The lake at ``output``, or exit 2 when nothing there was written by warta."""
    store = Store(output, settings.storage_options)
    try:
        found = store.exists("_state") or store.exists("articles")
    except Exception as e:  # unreachable storage, bad credentials
        raise Exit(EXIT_CONFIG, f"cannot read {output}: {type(e).__name__}: {e}") from None
    if not found:
        raise Exit(EXIT_CONFIG, f"no lake at {output} (a lake has _state/ and articles/ folders; "
                                "`warta run --output PATH` makes one)")
    return store
