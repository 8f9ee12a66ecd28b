"""The ``kwneuro-pydra`` command: the DTI BIDS app, its status, cache maintenance, the demo.

One module per command (`run`, `status`, `cancel`, `ls`, `prune`, `clear`, `demo`), each with
``add_parser(commands, parents)`` and ``run(args) -> int``. Errors are one line on stderr
(a traceback with ``-v``); exit status 0 on success, 1 when something failed, 2 for usage
errors (the app's `AppError` and `BidsError` included), 130 on Ctrl-C. The commands parse,
call the library (`kwneuro_pydra.app` for ``run``, ``status``, ``cancel`` and ``demo``) and
print.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import NoReturn

from kwneuro_pydra._version import __version__
from kwneuro_pydra.app import AppError, BidsError
from kwneuro_pydra.cli import cancel, clear, demo, ls, prune, run, status
from kwneuro_pydra.cli._common import UsageError, logging_to_console

__all__ = ["main"]

_COMMANDS = (run, status, cancel, ls, prune, clear, demo)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        sys.exit(2)


def _parser() -> argparse.ArgumentParser:
    verbosity = _Parser(add_help=False)
    group = verbosity.add_argument_group("output")
    group.add_argument(
        "-v",
        "--verbose",
        dest="verbosity",
        action="count",
        default=0,
        help="more detail (-vv for debug); tracebacks on errors",
    )
    group.add_argument(
        "-q",
        "--quiet",
        dest="verbosity",
        action="store_const",
        const=-1,
        help="only errors and where the results are",
    )
    parser = _Parser(
        prog="kwneuro-pydra",
        description="DTI on BIDS datasets with a content-addressed cache; cache maintenance.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    for command in _COMMANDS:
        command.add_parser(commands, [verbosity])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``kwneuro-pydra`` command line.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` when None.

    Returns:
        The exit status: 0 success, 1 a failure (e.g. a subject failed), 2 a usage error.
    """
    args = _parser().parse_args(argv)
    with logging_to_console(args.verbosity), _interrupting_this_process_only():
        return _run(args)


@contextlib.contextmanager
def _interrupting_this_process_only() -> Iterator[None]:
    """Ctrl-C interrupts this process, not the workers it forks (Pydra's ``cf`` pool).

    A terminal sends SIGINT to every process of the command: forked workers inherit this
    handler and ignore it, so they print nothing; this process stops the run and says so
    once. (Only in the main thread, where Python runs signal handlers.)
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pid = os.getpid()

    def interrupt(number: int, frame: FrameType | None) -> None:
        if os.getpid() == pid:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _run(args: argparse.Namespace) -> int:
    try:
        status: int = args.run(args)
    except (UsageError, AppError, BidsError) as error:
        sys.stderr.write(f"kwneuro-pydra {args.command}: error: {error}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"kwneuro-pydra {args.command}: interrupted (rerun to resume)\n")
        _quiet_teardown()
        return 130
    except Exception as error:
        if args.verbosity > 0:
            traceback.print_exc()
        else:
            logging.getLogger(__name__).debug("traceback", exc_info=True)
        reason = str(error).splitlines()[0] if str(error) else ""
        sys.stderr.write(
            f"kwneuro-pydra {args.command}: error: {type(error).__name__}: {reason}"
            f"{'' if args.verbosity > 0 else ' (-v shows the traceback)'}\n"
        )
        return 1
    return status


def _quiet_teardown() -> None:
    """After Ctrl-C, keep the abandoned Pydra run from printing as the process ends.

    Its coroutines and tasks, cut off in the middle, are collected later: asyncio logs each
    ("Task was destroyed but it is pending!"), Python prints each coroutine's exception
    ("Exception ignored in ...") and warns of those never awaited, hundreds of lines under
    the one that says what happened. The cache keeps every step that finished; a rerun
    resumes from there.
    """
    logging.getLogger("asyncio").disabled = True
    sys.unraisablehook = lambda unraisable: None
    warnings.simplefilter("ignore", RuntimeWarning)
