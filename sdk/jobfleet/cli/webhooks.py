"""`jobfleet webhooks ID`: an orchestration's webhook deliveries and their attempts.

`--json` prints the API's body for the same orchestration
(`GET /v1/orchestrations/{id}/webhooks`), stable and documented in docs/local.md.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

from jobfleet import webhooks
from jobfleet.cli.arguments import EXIT_FAILED, EXIT_OK
from jobfleet.core.webhooks import DeliveryState
from jobfleet.fleet import JobFleet

COMMANDS = frozenset({"webhooks"})


def add_parsers(sub: Any) -> None:
    cmd = sub.add_parser("webhooks", help="an orchestration's webhook deliveries and attempts")
    cmd.add_argument("id", metavar="ID")
    cmd.add_argument("--json", action="store_true")


def dispatch(fleet: JobFleet, args: argparse.Namespace) -> int:
    """Exit 1 when a delivery failed for good, else 0."""
    found = webhooks.deliveries(fleet, args.id)
    if args.json:
        print(json.dumps({"orchestration_id": args.id, "webhooks": [d.shown() for d in found]},
                         indent=2))
    elif not found:
        snap = fleet.orchestration(args.id).status()
        print(f"orchestration {args.id} has no webhook deliveries"
              + ("" if not snap.webhooks else " yet: they start when its event is published"))
    for delivery in [] if args.json else found:
        print(f"{delivery.url}  {delivery.state}  ({len(delivery.attempts)} attempts)"
              f"  webhook-id {delivery.event_id}")
        for n, attempt in enumerate(delivery.attempts, start=1):
            outcome = f"HTTP {attempt.status}" if attempt.ok else attempt.error
            print(f"  {n:>2}. {_when(attempt.at)}  {outcome}  {attempt.duration:.2f} s")
        if delivery.next_attempt_at is not None:
            print(f"      next attempt {_when(delivery.next_attempt_at)}")
    failed = any(d.state is DeliveryState.FAILED for d in found)
    return EXIT_FAILED if failed else EXIT_OK


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
