"""Peer benchmark: a Celery chord fanning out N no-op tasks into one completion callback.

Everything (redis, worker) is started here and torn down again, so the number is comparable
with jobfleet's run on the same machine and no state leaks between runs.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.metadata
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType, ModuleType

HERE = Path(__file__).resolve().parent
ENV_VAR = "CELERY_BENCH_REDIS_URL"
READY_TIMEOUT = 60.0


def _celery_ok() -> bool:
    try:
        version = importlib.metadata.version("celery")
    except importlib.metadata.PackageNotFoundError:
        return False
    major, minor = (int(part) for part in version.split(".")[:2])
    return (major, minor) >= (5, 4) and importlib.util.find_spec("redis") is not None


def _run(cmd: list[str]) -> None:
    """Run quietly, but surface the installer's output if it fails."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")


def ensure_celery() -> None:
    """Install the peer on demand so the benchmark runs on a fresh machine without extra setup."""
    installed = []
    if not _celery_ok():
        _run([sys.executable, "-m", "pip", "install", "--quiet", "celery[redis]>=5.4"])
        importlib.invalidate_caches()  # so this same process can import what was just installed
        installed.append(f"celery {importlib.metadata.version('celery')} (pip)")
    if shutil.which("redis-server") is None:
        _run(["apt-get", "update"])
        _run(["apt-get", "install", "-y", "redis-server"])
        installed.append("redis-server (apt)")
    print(f"ensure_celery: installed {', '.join(installed) or 'nothing, already present'}")


def _free_port() -> int:
    # Racy in theory (the port is released before redis binds it), fine for a benchmark.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """A default SIGTERM skips finally blocks, which would orphan redis and the worker."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield  # can't, or the caller already decided how to handle it
        return
    signal.signal(signal.SIGTERM, _raise_exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _log_tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


@contextlib.contextmanager
def _process_group(
    cmd: list[str], log: Path, cwd: Path | None = None, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Own session, so teardown can kill the whole tree, prefork children included."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env, start_new_session=True
        )
    try:
        yield proc
    finally:
        # SIGTERM lets redis/celery exit cleanly; SIGKILL then sweeps whatever is left in the
        # group, since the leader can be gone while prefork children linger.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _wait_until(
    ready: Callable[[], object], proc: subprocess.Popen[bytes], log: Path, what: str
) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{_log_tail(log)}")
        try:
            if ready():
                return
        except Exception:  # not up yet: connection refused and friends
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{what} not ready after {READY_TIMEOUT:.0f}s:\n{_log_tail(log)}")


def _load_tasks(redis_url: str) -> ModuleType:
    """Import (or re-import) the app so it binds to this run's redis port."""
    os.environ[ENV_VAR] = redis_url
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    module = sys.modules.get("celery_tasks")
    return importlib.reload(module) if module else importlib.import_module("celery_tasks")


def run_celery_chord(n: int = 10_000, concurrency: int = 2) -> float:
    """Wall seconds from submitting the chord until its callback result is readable."""
    import redis
    from celery import chord, group

    with _sigterm_as_exit(), tempfile.TemporaryDirectory(prefix="celery-bench-") as tmp:
        tmpdir = Path(tmp)
        port = _free_port()
        redis_url = f"redis://127.0.0.1:{port}/0"
        redis_cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1"]
        redis_cmd += ["--save", "", "--appendonly", "no", "--dir", tmp]
        with _process_group(redis_cmd, tmpdir / "redis.log") as redis_proc:
            client = redis.Redis(host="127.0.0.1", port=port)
            _wait_until(client.ping, redis_proc, tmpdir / "redis.log", "redis-server")
            client.close()

            tasks = _load_tasks(redis_url)
            worker_cmd = [sys.executable, "-m", "celery", "-A", "celery_tasks", "worker"]
            worker_cmd += [f"--concurrency={concurrency}", "--pool=prefork", "--loglevel=warning"]
            env = {**os.environ, ENV_VAR: redis_url}
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
            worker_log = tmpdir / "worker.log"
            try:
                with _process_group(worker_cmd, worker_log, cwd=HERE, env=env) as worker:
                    ping = functools.partial(tasks.app.control.ping, timeout=0.5)
                    _wait_until(ping, worker, worker_log, "celery worker")

                    start = time.perf_counter()
                    result = chord(group(tasks.noop.s(i) for i in range(n)), tasks.done.s())
                    # follow_parents=False: by default get() re-checks all n header results
                    # on every poll, which is quadratic and dwarfs the chord itself.
                    # Header failures still surface, as a ChordError on the callback.
                    count = result.apply_async().get(timeout=60 + n / 100, follow_parents=False)
                    elapsed = time.perf_counter() - start
            finally:
                tasks.app.close()
    assert count == n, f"callback saw {count} results, expected {n}"
    return elapsed


if __name__ == "__main__":
    ensure_celery()
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    print(f"celery chord: {n} no-op tasks + callback in {run_celery_chord(n):.2f}s")
