"""Mistakes on the command line, reported in one line with exit code 2."""

from __future__ import annotations

import argparse
import difflib


class UsageError(Exception):
    """A mistake in the command line or its files: reported in one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    """argparse, but an error is one line that points at this (sub)command's --help."""

    def error(self, message):
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def unrecognized(parser: argparse.ArgumentParser, extra: list[str]) -> UsageError:
    """The error for arguments `parser` does not take, suggesting the closest option of its own."""
    options = [o for action in parser._actions for o in action.option_strings if o.startswith("--")]
    hints = []
    for arg in extra:
        flag = arg.split("=", 1)[0]
        if flag.startswith("-"):
            close = difflib.get_close_matches(flag, options, n=1, cutoff=0.6)
            if close:
                hints.append(f"did you mean {close[0]}? ")
    return UsageError(
        f"{parser.prog}: unrecognized arguments: {' '.join(extra)} ({''.join(hints)}see {parser.prog} --help)"
    )
