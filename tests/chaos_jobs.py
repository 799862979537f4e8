"""Jobs the chaos suite (tests/chaos/) kicks off. Workers import this module through
JOBFLEET_JOBS; the tests find it because tests/ is on PYTHONPATH.

Each job that a test must catch in the act leaves a marker file, `running-<n>`, holding
the pid of the worker process running instance n.
"""

from __future__ import annotations

import ctypes
import os
import time
from pathlib import Path
from typing import Any

from jobfleet import job


def _mark_running(params: dict[str, Any]) -> None:
    if "dir" in params:
        (Path(params["dir"]) / f"running-{params['n']}").write_text(str(os.getpid()))


@job("chaos_sleep", retries=0, backoff=0.05)
def chaos_sleep(params: dict[str, Any]) -> int:
    """Marks itself running, then sleeps (in Python: the heartbeat keeps beating)."""
    _mark_running(params)
    time.sleep(float(params.get("seconds", 0.1)))
    return int(params["n"])


@job("chaos_quick", retries=0, backoff=0.05)
def chaos_quick(params: dict[str, Any]) -> int:
    """Returns at once, unless it is poison: then it kills its worker (`os._exit(1)`),
    the way a crash in native code or a stray `sys.exit` in a library would."""
    if params.get("poison"):
        os._exit(1)
    return int(params["n"])


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def hold_gil(seconds: float) -> None:
    """Block in native code for `seconds` while holding the GIL, immune to signals.

    Calls through `ctypes.PyDLL` keep the GIL, so no other Python thread (the worker's
    heartbeat) runs and no Python signal handler (the SIGALRM timeout) runs until the
    call returns. libc's `sleep` would not do: a signal interrupts it (EINTR), so the
    SIGALRM of the attempt timeout would end it early. A mutex wait is not interrupted
    by signals: `pthread_mutex_timedlock` on a mutex this thread already holds (a
    zeroed buffer is glibc's default mutex) blocks until its deadline, the way native
    code stuck on a lock would.
    """
    libc = ctypes.PyDLL(None)
    mutex = ctypes.create_string_buffer(64)
    libc.pthread_mutex_lock(mutex)
    deadline = time.time() + seconds
    until = _Timespec(int(deadline), int((deadline % 1) * 1e9))
    libc.pthread_mutex_timedlock(mutex, ctypes.byref(until))


@job("chaos_gil", retries=0, backoff=0.05)
def chaos_gil(params: dict[str, Any]) -> int:
    """Quick, unless `hold`: then it holds the GIL in native code for that many seconds."""
    if params.get("hold"):
        _mark_running(params)
        hold_gil(float(params["hold"]))
    return int(params["n"])
