"""What every command shares: exit codes, error printing, the consoles.

Exit 0 on success, 1 when the work failed, 2 for a usage or experiment-file error. Data goes to
stdout, messages to stderr. A traceback is shown only with ``--debug`` (or ``TVLS_DEBUG=1``).
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
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


PACKAGE = "tunevlseg"


def package_version() -> str:
    """The installed distribution's version (``unknown`` when run from a tree not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(PACKAGE)
    except PackageNotFoundError:
        return "unknown"


def examples(*lines: str) -> str:
    """An ``--help`` epilog: ``examples:`` and one command per line (``# ...`` comments kept)."""
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def json_keys_help(keys: dict[str, str]) -> str:
    """An ``--help`` paragraph documenting the keys of a command's ``--json`` object."""
    lines = ["--json prints one object with these keys:"]
    for key, text in keys.items():
        first, *rest = textwrap.wrap(f"{key}: {text}", 74)
        lines += [f"  {first}", *(f"    {line}" for line in rest)]
    return "\n".join(lines)


def wrap(text: str, width: int = 79) -> str:
    """Fill each paragraph of a description: the raw formatter would print it as one line."""
    return "\n\n".join(textwrap.fill(" ".join(part.split()), width) for part in text.split("\n\n"))


def parser(prog: str, description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    """The parser every command starts from: ``--version``, ``--debug`` and an epilog of
    examples (laid out as written: the raw-description formatter keeps its lines)."""
    p = argparse.ArgumentParser(
        prog=prog,
        description=wrap(description),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--version",
        action="version",
        version=f"{prog} {package_version()}",
        help="print the command and the tunevlseg version, then exit",
    )
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
        print(
            f"error: {type(error).__name__}: {error} (rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return EXIT_FAILED


def positive_int(text: str) -> int:
    """An argparse ``type`` for counts: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
