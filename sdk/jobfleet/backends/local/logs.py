"""An orchestration's log lines, from its local log file (the supervisor's and its
workers' output) and the part rotated out of it (`<log>.1`, see supervisor.py)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

from jobfleet.config import Settings
from jobfleet.core.models import OrchestrationSnapshot
from jobfleet.log_lines import LogLine, parse

POLL_SECONDS = 0.2


class FileLogs:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def lines(
        self, orchestration: OrchestrationSnapshot, job_id: str | None, *, last: int | None = None
    ) -> list[LogLine]:
        """Oldest first: the rotated part, then the current file."""
        tail = Tail(self.settings.log_of(orchestration.id))
        kept: deque[LogLine] = deque(maxlen=last)
        kept.extend(line for line in tail.read() if job_id is None or line.job_id == job_id)
        return list(kept)

    def follow(
        self, orchestration: OrchestrationSnapshot, job_id: str | None, ended: Callable[[], bool]
    ) -> Iterator[LogLine]:
        """Every line, then each new one as it is written, until `ended()` (looked at
        before each read, so that what was written up to the end is read)."""
        tail = Tail(self.settings.log_of(orchestration.id))
        while True:
            done = ended()
            for line in tail.read():
                if job_id is None or line.job_id == job_id:
                    yield line
            if done:
                return
            time.sleep(POLL_SECONDS)


class Tail:
    """Reads a log file on from where it stopped, in whole lines. When the file was
    rotated meanwhile (copied to <log>.1, then emptied), the rest of what it had is
    read from <log>.1 first."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.rotated = log.with_name(log.name + ".1")
        self.position = 0
        self.rotated_seen: tuple[int, int] | None = None
        self.started = False

    def read(self) -> Iterator[LogLine]:
        seen = _signature(self.rotated)
        if not self.started:
            self.started = True
            yield from self._lines(self.rotated, 0)
        elif seen != self.rotated_seen and seen is not None:
            yield from self._lines(self.rotated, self.position)
            self.position = 0
        self.rotated_seen = seen
        size = _size(self.log)
        if size is not None and size < self.position:  # emptied: what was left is lost
            self.position = 0
        end = yield from self._lines(self.log, self.position)
        self.position = end

    def _lines(self, path: Path, start: int) -> Generator[LogLine, None, int]:
        """The whole lines from `start`; returns where the last one ends."""
        try:
            with open(path, "rb") as file:
                file.seek(start)
                data = file.read()
        except FileNotFoundError:
            return start
        complete = data.rfind(b"\n") + 1
        for raw in data[:complete].decode("utf-8", "replace").splitlines():
            yield parse(raw)
        return start + complete


def _signature(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_mtime_ns, stat.st_size


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None
