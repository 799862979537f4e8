"""What every command shares: exit statuses, and the arguments read the same way."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from jobfleet.errors import InvalidOption

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def parse_tags(pairs: Sequence[str]) -> dict[str, str]:
    tags = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidOption(f"--tag takes KEY=VALUE, got {pair!r}")
        tags[key] = value
    return tags


def add_jobs_module(parser: argparse.ArgumentParser, what: str = "declaring jobs") -> None:
    parser.add_argument("--jobs-module", action="append", default=[], metavar="M",
                        help=f"module (or .py file) {what}; repeatable")
