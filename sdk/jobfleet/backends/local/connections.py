"""The embedded store's connections: one pair per thread on one SQLite file (WAL), and
the write lock taken up front (`BEGIN IMMEDIATE`), waited out however long another
process holds it. `SqliteStore` (store.py) builds the Store port on them.
"""

from __future__ import annotations

import sqlite3
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_PATIENCE = 3600.0  # seconds of waiting for the write lock before giving up


class SqliteConnections:
    """Safe to share between threads: each thread gets connections of its own."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._opened: set[sqlite3.Connection] = set()
        self._opened_lock = threading.Lock()
        self._use_wal()

    def _use_wal(self, patience: float = 10.0) -> None:
        """Switch a new file to WAL (persistent). SQLite answers 'locked' at once, without
        waiting, when another process is creating the same file, so wait here."""
        deadline = time.monotonic() + patience
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    class _Held:
        """One thread's connections. When the thread ends its thread-local slot, and so
        this, is dropped, and a finalizer closes them: a store shared by short-lived
        threads (a server's request pool, its live feeds) keeps no file open for them."""

        __slots__ = ("__weakref__", "db", "watch")

        def __init__(self) -> None:
            self.db: sqlite3.Connection | None = None
            self.watch: sqlite3.Connection | None = None

    def _held(self) -> _Held:
        held: SqliteConnections._Held | None = getattr(self._local, "held", None)
        if held is None:
            held = self._local.held = SqliteConnections._Held()
        return held

    def _connect(self, held: _Held) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0,
                             check_same_thread=False)
        db.execute("PRAGMA synchronous=NORMAL")
        with self._opened_lock:
            self._opened.add(db)
        weakref.finalize(held, SqliteConnections._forget, self._opened, self._opened_lock, db)
        return db

    @staticmethod
    def _forget(
        opened: set[sqlite3.Connection], lock: threading.Lock, db: sqlite3.Connection
    ) -> None:
        with lock:
            opened.discard(db)
        db.close()

    @property
    def _db(self) -> sqlite3.Connection:
        held = self._held()
        if held.db is None:
            held.db = self._connect(held)
        return held.db

    @property
    def _watch(self) -> sqlite3.Connection:
        """A connection that never writes, so its data_version moves on every commit,
        this store's own included."""
        held = self._held()
        if held.watch is None:
            held.watch = self._connect(held)
        return held.watch

    def release_thread(self) -> None:
        """Close the calling thread's connections now (a thread that is done with the
        store); the next call from this thread opens new ones."""
        held: SqliteConnections._Held | None = getattr(self._local, "held", None)
        self._local.held = None
        for db in (held.db, held.watch) if held is not None else ():
            if db is not None:
                SqliteConnections._forget(self._opened, self._opened_lock, db)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        self._begin()
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _begin(self) -> float:
        """Take the write lock, waiting out another process that holds it for long (a
        worker must not crash because a neighbour is slow); returns the seconds waited."""
        started = time.monotonic()
        while True:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                return time.monotonic() - started
            except sqlite3.OperationalError as exc:
                waited = time.monotonic() - started
                if "locked" not in str(exc) or waited > LOCK_PATIENCE:
                    raise
                print(f"jobfleet: {self.path} has been locked by another process for"
                      f" {waited:.0f} s; still waiting", file=sys.stderr, flush=True)

    def close(self) -> None:
        with self._opened_lock:
            opened = list(self._opened)
            self._opened.clear()
        for db in opened:
            db.close()
        self._local = threading.local()
