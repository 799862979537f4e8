"""Choosing the adapters behind the ports from the settings."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

from jobfleet.config import Settings
from jobfleet.core.ports import EventBus, Launcher, LogReader, ScheduleTimer, Store
from jobfleet.errors import ConfigurationError, UnusableHome

GCP_DEFAULT_PARALLELISM = 10
GCP_COMMIT_SPACING = 1.0  # seconds; see Backend.commit_spacing
GCP_EXTRA = 'the gcp backend needs the Google Cloud libraries: pip install "jobfleet[gcp]"'


@dataclass(slots=True)
class Backend:
    store: Store
    launcher: Launcher
    bus: EventBus
    logs: LogReader
    timer: ScheduleTimer
    default_parallelism: int
    # Locally the worker announces completion itself; on Google Cloud the
    # Firestore-triggered function does, and workers only write their instances.
    worker_settles: bool = True
    # The least time between two of a worker's commits of outcomes. On Google Cloud each
    # such commit writes its shard's counter document, which Firestore sustains at about
    # one write a second and whose every write invokes the completion function.
    commit_spacing: float = 0.0

    def close(self) -> None:
        self.store.close()
        self.bus.close()


def default_parallelism(settings: Settings) -> int:
    """Tasks at once when kick-off names none; known without opening anything."""
    return (os.cpu_count() or 2) if settings.backend == "local" else GCP_DEFAULT_PARALLELISM


def check_home(settings: Settings) -> None:
    """Create the local home if missing; UnusableHome naming the path and the problem when
    it cannot hold the store (a file, read-only, not writable, a damaged database)."""
    home, database = settings.home, settings.database
    try:
        home.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UnusableHome(home, "it is a file, not a folder") from None
    except NotADirectoryError:
        raise UnusableHome(home, "a part of its path is a file, not a folder") from None
    except OSError as exc:
        raise UnusableHome(home, f"it cannot be created ({exc.strerror})") from None
    if not home.is_dir():
        raise UnusableHome(home, "it is not a folder")
    if not os.access(home, os.W_OK | os.X_OK):
        raise UnusableHome(home, "the folder is read-only or not writable for this user")
    if database.exists() and not database.is_file():
        raise UnusableHome(home, f"{database} is not a file")
    if database.exists() and not os.access(database, os.R_OK | os.W_OK):
        raise UnusableHome(home, f"{database} is read-only or not readable for this user")


def open_store(settings: Settings) -> Store:
    if settings.backend == "local":
        import sqlite3

        from jobfleet.backends.local.store import SqliteStore

        check_home(settings)
        try:
            return SqliteStore(settings.database)
        except sqlite3.Error as exc:
            raise UnusableHome(settings.home, f"cannot open {settings.database}: {exc}") from None
    try:
        from jobfleet.backends.gcp.firestore_store import FirestoreStore
    except ImportError as exc:
        raise ConfigurationError(f"{GCP_EXTRA} ({exc})") from None
    return FirestoreStore(
        project=settings.require_project(), retention=timedelta(days=settings.retention_days)
    )


def open_bus(settings: Settings) -> EventBus:
    if settings.backend == "local":
        from jobfleet.backends.local.events import LocalEventLog

        return LocalEventLog(settings.database)
    try:
        from jobfleet.backends.gcp.pubsub import PubSubEventBus
    except ImportError as exc:
        raise ConfigurationError(f"{GCP_EXTRA} ({exc})") from None
    return PubSubEventBus(settings.require_project(), settings.topic)


def open_backend(settings: Settings) -> Backend:
    store = open_store(settings)
    if settings.backend == "local":
        from jobfleet.backends.local.launcher import ProcessLauncher
        from jobfleet.backends.local.logs import FileLogs
        from jobfleet.backends.local.timer import LocalTimer

        return Backend(
            store=store,
            launcher=ProcessLauncher(settings),
            bus=open_bus(settings),
            logs=FileLogs(settings),
            timer=LocalTimer(),
            default_parallelism=default_parallelism(settings),
        )
    from jobfleet.backends.gcp.cloud_logging import CloudLoggingLogs
    from jobfleet.backends.gcp.cloud_run import CloudRunLauncher
    from jobfleet.backends.gcp.cloud_scheduler import CloudSchedulerTimer

    return Backend(
        store=store,
        launcher=CloudRunLauncher(settings),
        bus=open_bus(settings),
        logs=CloudLoggingLogs(settings.require_project()),
        timer=CloudSchedulerTimer(settings),
        default_parallelism=default_parallelism(settings),
        worker_settles=False,
        commit_spacing=GCP_COMMIT_SPACING,
    )
