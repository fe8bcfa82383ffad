"""Bad input is an InputError: the CLIs print its one line and exit 2, nothing half-written."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from search_spaces import UnknownSearchSpace

EXIT_BAD_INPUT = 2


class InputError(Exception):
    """A user-supplied file, option or value is wrong; the message names it and what was expected."""


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad option is one line ('<prog>: error: ...') and exit 2, no usage block."""

    def error(self, message: str):  # type: ignore[override]
        prog = self.prog.removeprefix("python -m ")
        print(f"{prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


def run_cli(main: Callable[[], int], prog: str) -> int:
    """Run a CLI's main, turning InputError into one line on stderr and exit code 2."""
    try:
        return main()
    except (InputError, UnknownSearchSpace) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
