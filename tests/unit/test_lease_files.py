"""A worker's lease file says it is alive without taking the database's lock."""

from __future__ import annotations

from pathlib import Path

from jobfleet.backends.local.lease_files import LeaseFiles
from jobfleet.backends.local.store import SqliteStore


def test_a_renewed_lease_file_keeps_its_owner_alive_though_its_rows_expired(
    tmp_path: Path,
) -> None:
    files = LeaseFiles(tmp_path / "leases")
    assert files.until("o/e/task-0/attempt-0/h/1") == 0.0
    files.renew("o/e/task-0/attempt-0/h/1", 130.0)
    assert files.until("o/e/task-0/attempt-0/h/1") == 130.0
    assert files.until("o/e/task-0/attempt-0/h/2") == 0.0


def test_stale_claims_spare_an_owner_whose_file_was_renewed(tmp_path: Path) -> None:
    """The rows' lease ran out (their update was held up), the file's did not."""
    from jobfleet.core.models import NewInstance, NewOrchestration, RunOptions

    store = SqliteStore(tmp_path / "jobfleet.db")
    new = NewOrchestration("o-1", "j", RunOptions(0, 1.0, None, 1), {}, 0.0)
    store.create_orchestration(new, [[NewInstance("j-1", 0, 0, {"n": 0})]])
    store.claim("o-1", 0, "alive", limit=1, now=100.0, lease=30.0)
    store.claim("o-1", 0, "dead", limit=1, now=100.0, lease=30.0)  # nothing left to claim
    LeaseFiles(tmp_path / "leases").renew("alive", 200.0)
    assert store.stale_claims("o-1", now=150.0) == []
    assert [c.owner for c in store.stale_claims("o-1", now=250.0)] == ["alive"]
    store.close()
