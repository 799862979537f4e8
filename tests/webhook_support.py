"""A webhook receiver on loopback that answers from a script of statuses and verifies
each request with `standardwebhooks`, as a receiver's own code would; and an ended
orchestration with webhooks whose end nobody has announced yet. Run as a script, it is
a process that announces that end (and is killed by the receiver mid-request)."""

from __future__ import annotations

import base64
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from jobfleet import JobFleet
from jobfleet.core.models import NewOrchestration, Outcome, RunOptions, Status
from jobfleet.core.params import instance_batches
from jobfleet.core.registry import get_job

SECRET = "whsec_" + base64.b64encode(b"jobfleet test webhook secret 32b").decode()


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    verified: Any  # the event as `Webhook.verify` returned it, or None
    error: str = ""


@dataclass
class Receiver:
    """Answers the n-th request with `statuses[n]` (the last one from then on); with
    `kill_pid`, SIGKILLs that process on the first request before answering."""

    statuses: Sequence[int]
    kill_pid: int | None = None
    received: list[Received] = field(default_factory=list)
    url: str = ""

    def answer(self, headers: dict[str, str], body: bytes) -> int:
        try:
            verified = Webhook(SECRET).verify(body, headers)
            error = ""
        except WebhookVerificationError as exc:
            verified, error = None, str(exc)
        self.received.append(Received(headers, body, verified, error))
        if self.kill_pid is not None and len(self.received) == 1:
            os.kill(self.kill_pid, signal.SIGKILL)
            time.sleep(0.5)
        return self.statuses[min(len(self.received), len(self.statuses)) - 1]


@contextmanager
def receiver(statuses: Sequence[int], kill_pid: int | None = None) -> Iterator[Receiver]:
    state = Receiver(statuses, kill_pid)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            status = state.answer({k.lower(): v for k, v in self.headers.items()}, body)
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/done?team=data"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def ended_orchestration(fleet: JobFleet, webhooks: list[str]) -> str:
    """An orchestration of `greet` naming `webhooks`, every instance Completed, its end
    not announced: what `settle` starts from. Written to the store directly, so that a
    URL the kick-off would refuse can be there too (a name that resolves elsewhere)."""
    store = fleet.backend.store
    oid = str(uuid.uuid4())
    new = NewOrchestration(
        id=oid, job_name="greet",
        options=RunOptions(retries=0, backoff=0.1, timeout=None, parallelism=1),
        tags={"team": "data"}, created_at=time.time(), webhooks=webhooks,
    )
    params = [{"name": "a", "count": 1}]
    store.create_orchestration(new, instance_batches(get_job("greet"), params, shards=1))
    owner = f"{oid}/test/task-0/attempt-0/host/{os.getpid()}"
    claimed = store.claim(oid, 0, owner, limit=1, now=time.time(), lease=60)
    store.record_outcomes(oid, [
        Outcome(c.job_id, c.index, owner, Status.COMPLETED, result="ok") for c in claimed
    ])
    return oid


def main() -> None:
    """argv: orchestration id. Settles it with the publish claim and the attempt's hold
    both at 1 s, so that a sweep takes over fast once the receiver has killed it."""
    from jobfleet import webhooks
    from jobfleet.core import completion

    completion.STAGE_HOLD_SECONDS = 1.0
    webhooks.ATTEMPT_HOLD_SECONDS = 1.0
    fleet = JobFleet()
    completion.settle(fleet.backend.store, fleet.backend.bus, sys.argv[1], fleet.advance)


if __name__ == "__main__":
    main()
