"""`jobfleet function`: the completion function on functions-framework.

The deployment's image runs it as the Cloud Run service behind the Eventarc trigger
(`jobfleet function`, listening on 0.0.0.0:$PORT), and `jobfleet dev up` starts it
with the same command on loopback: one way to start it, so what runs in production is
what dev and the tests run. The process becomes functions-framework's own command (its
gunicorn server, its CloudEvent parsing) serving `jobfleet.cloud_function.on_shard_updated`.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from jobfleet.config import DEFAULT_LISTEN_PORT, listen_port
from jobfleet.errors import ConfigurationError

TARGET = "on_shard_updated"
SIGNATURE_TYPE = "cloudevent"  # Eventarc delivers CloudEvents
DEFAULT_HOST = "0.0.0.0"  # a container's port is reachable only on all addresses


def add_parser(sub: Any) -> None:
    function = sub.add_parser(
        "function", help="the completion function on functions-framework (the Cloud Run "
        "service behind the Eventarc trigger; `dev up` starts it the same way)",
    )
    function.add_argument("--host", default=DEFAULT_HOST,
                          help=f"address to listen on (default: {DEFAULT_HOST})")
    function.add_argument("--port", type=int, help=f"default: PORT, else {DEFAULT_LISTEN_PORT}")


def command(host: str, port: int | None) -> list[str]:
    """functions-framework's command line for the completion function."""
    from jobfleet import cloud_function  # needs the gcp extra; imported here to say so

    chosen = listen_port(port)
    return [
        sys.executable, "-m", "functions_framework", "--target", TARGET,
        "--source", cloud_function.__file__, "--signature-type", SIGNATURE_TYPE,
        "--host", host, "--port", str(chosen),
    ]


def run(args: argparse.Namespace) -> int:
    """Replace this process with functions-framework's, so that the signals Cloud Run
    and `dev down` send reach its server directly."""
    try:
        argv = command(args.host, args.port)
    except ImportError as exc:
        raise ConfigurationError(
            f"the completion function needs the gcp extra ({exc.name} is missing): "
            "pip install 'jobfleet[gcp]'"
        ) from None
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)
