"""What every command shares: exit codes, error printing, the consoles.

Exit 0 on success, 1 when the work failed, 2 for a usage or experiment-file error. Data goes to
stdout, messages to stderr. A traceback is shown only with ``--debug`` (or ``TVLS_DEBUG=1``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from rich.console import Console

from tunevlseg.config.loader import ConfigError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class CommandError(Exception):
    """A failure to report in one message; ``code`` is the exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def messages() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def data() -> Console:
    """stdout; when piped or captured, wide enough that tables are not squeezed or cut."""
    return Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 240)


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def run(command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a command, turning known errors into one message and an exit code."""
    debug = getattr(args, "debug", False) or os.environ.get("TVLS_DEBUG") == "1"
    try:
        return command(args)
    except ConfigError as error:
        if debug:
            raise
        print(error, file=sys.stderr)
        return EXIT_USAGE
    except CommandError as error:
        if debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return error.code
    except KeyboardInterrupt:
        print("interrupted; launch again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        if debug:
            raise
        print(f"error: {type(error).__name__}: {error} (rerun with --debug for the traceback)", file=sys.stderr)
        return EXIT_FAILED
