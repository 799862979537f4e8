"""The dev stack's stand-in for the Cloud Scheduler job that runs `jobfleet sweep` every
minute in production: the same sweep, in a loop, against the stack's emulators.

    python -m jobfleet.dev.sweeper --every 60
"""

from __future__ import annotations

import argparse
import sys
import time

from jobfleet.errors import JobfleetError
from jobfleet.fleet import JobFleet

DEFAULT_EVERY_SECONDS = 60.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m jobfleet.dev.sweeper")
    parser.add_argument("--every", type=float, default=DEFAULT_EVERY_SECONDS, metavar="S")
    args = parser.parse_args(argv)
    with JobFleet() as fleet:
        while True:
            try:
                done = {k: n for k, n in fleet.sweep().items() if n}
                if done:
                    print(f"jobfleet sweep: {done}", flush=True)
            except JobfleetError as exc:  # the next round tries again
                print(f"jobfleet sweep failed: {exc}", file=sys.stderr, flush=True)
            time.sleep(args.every)


if __name__ == "__main__":
    main()
