"""The SQLite file is shared by every process that uses the same home."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from jobfleet.backends.local.store import SqliteStore

OPEN_AND_WRITE = """
import sys, time, uuid
from jobfleet.backends.local.store import SqliteStore
from jobfleet.core.models import NewInstance, NewOrchestration, RunOptions
start = float(sys.argv[2])
while time.time() < start:
    pass
store = SqliteStore(sys.argv[1])
options = RunOptions(retries=0, backoff=0.0, timeout=None, parallelism=1)
new = NewOrchestration(str(uuid.uuid4()), "noop", options, {}, time.time())
store.create_orchestration(new, [[NewInstance(str(uuid.uuid4()), 0, 0, {})]])
"""


def test_processes_creating_the_same_new_home_at_once_all_succeed(tmp_path: Path) -> None:
    for round_ in range(3):
        path = tmp_path / f"round-{round_}" / "jobfleet.db"
        start = time.time() + 0.5
        processes = [
            subprocess.Popen([sys.executable, "-c", OPEN_AND_WRITE, str(path), str(start)],
                             stderr=subprocess.PIPE, text=True)
            for _ in range(4)
        ]
        errors = [p.communicate(timeout=60)[1] for p in processes]
        assert [p.returncode for p in processes] == [0, 0, 0, 0], errors
        assert len(SqliteStore(path).list_orchestrations()) == 4
