"""What every command shares: exit statuses, and the arguments read the same way."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from jobfleet.cli import render
from jobfleet.core.models import Status
from jobfleet.errors import InvalidOption
from jobfleet.fleet import Orchestration

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


def exit_code(status: Status) -> int:
    return EXIT_OK if status is Status.COMPLETED or status is Status.IN_PROGRESS else EXIT_FAILED


def follow(orchestration: Orchestration, quiet: bool) -> int:
    """Wait for the end (a live bar or progress lines unless `quiet`); its exit status."""
    snap = orchestration.wait() if quiet else render.progress(orchestration)
    return exit_code(snap.status)
