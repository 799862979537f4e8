"""Settings read from the environment; every one also has an explicit SDK argument."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from jobfleet.core.registry import split_modules
from jobfleet.core.webhooks import SecretSetting, parse_allow, parse_secret
from jobfleet.errors import ConfigurationError
from jobfleet.log_lines import JSON, LOG_FORMATS, TEXT

BACKENDS = ("local", "gcp")
DEFAULT_REGION = "us-central1"
DEFAULT_CLOUD_RUN_JOB = "jobfleet-worker"
DEFAULT_TOPIC = "jobfleet-job-completed"
DEFAULT_LEASE_SECONDS = 30.0
DEFAULT_LOG_LIMIT_BYTES = 64 * 1024 * 1024
DEFAULT_LISTEN_PORT = 8080
DEFAULT_RETENTION_DAYS = 30
# Firestore's TTL must never take a run still going: a Cloud Run task stops at 7 days.
MIN_RETENTION_DAYS = 8


def default_home(env: Mapping[str, str]) -> Path:
    data = env.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(data) / "jobfleet"


@dataclass(frozen=True, slots=True)
class Settings:
    backend: str = "local"
    home: Path = field(default_factory=lambda: default_home(os.environ))
    jobs_modules: tuple[str, ...] = ()
    # The gcp backend's settings (docs/design.md, configuration):
    project: str | None = None
    region: str = DEFAULT_REGION
    cloud_run_job: str = DEFAULT_CLOUD_RUN_JOB
    cloud_run_endpoint: str | None = None
    topic: str = DEFAULT_TOPIC
    # Cloud Scheduler (backends/gcp/cloud_scheduler.py): its API endpoint (None: Google's),
    # the API service's URL its jobs POST fires to, and the service account whose OIDC
    # token they carry (the API lists it in JOBFLEET_API_PRINCIPALS).
    scheduler_endpoint: str | None = None
    api_url: str | None = None
    scheduler_service_account: str | None = None
    # How long a worker's claim lives without a heartbeat: a worker silent for longer
    # is treated as dead (stopped and replaced, its instances recovered).
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    # Past this size a local orchestration's log moves to <log>.1 (a job that prints
    # without end must not fill the disk).
    log_limit_bytes: int = DEFAULT_LOG_LIMIT_BYTES
    # How workers, the API and the function write log lines (log_lines.py): None picks
    # by backend, JSON for Cloud Logging on gcp, readable text locally.
    log_format: str | None = None
    # Where spans go (tracing.py): None, recorded nowhere; "cloud-trace".
    trace_export: str | None = None
    # Webhooks (core/webhooks.py): the signing secret, or the Secret Manager version
    # holding it; which refused kinds of URL are let through ("http", "private").
    webhook_secret: SecretSetting | None = None
    webhook_allow: frozenset[str] = frozenset()
    # How long Firestore keeps an orchestration (with its instances), a schedule's fire
    # and a webhook delivery: each document carries `expire_at`, which the database's TTL
    # policies (infra/) delete after. The local backend keeps its history.
    retention_days: float = DEFAULT_RETENTION_DAYS

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        backend: str | None = None,
        home: str | Path | None = None,
        jobs_modules: list[str] | None = None,
    ) -> Settings:
        env = os.environ if env is None else env
        chosen = backend or env.get("JOBFLEET_BACKEND") or "local"
        if chosen not in BACKENDS:
            raise ConfigurationError(
                f"unknown backend {chosen!r} (JOBFLEET_BACKEND); "
                f"choose one of {', '.join(BACKENDS)}"
            )
        modules = jobs_modules if jobs_modules is not None else split_modules(
            env.get("JOBFLEET_JOBS")
        )
        return cls(
            backend=chosen,
            home=Path(home or env.get("JOBFLEET_HOME") or default_home(env)).expanduser(),
            jobs_modules=tuple(modules),
            project=env.get("GOOGLE_CLOUD_PROJECT") or None,
            region=env.get("JOBFLEET_REGION") or DEFAULT_REGION,
            cloud_run_job=env.get("JOBFLEET_CLOUD_RUN_JOB") or DEFAULT_CLOUD_RUN_JOB,
            cloud_run_endpoint=env.get("JOBFLEET_CLOUD_RUN_ENDPOINT") or None,
            topic=env.get("JOBFLEET_TOPIC") or DEFAULT_TOPIC,
            scheduler_endpoint=env.get("JOBFLEET_CLOUD_SCHEDULER_ENDPOINT") or None,
            api_url=env.get("JOBFLEET_API_URL") or None,
            scheduler_service_account=env.get("JOBFLEET_SCHEDULER_SERVICE_ACCOUNT") or None,
            lease_seconds=_positive(env, "JOBFLEET_LEASE_SECONDS", DEFAULT_LEASE_SECONDS),
            log_limit_bytes=int(
                _positive(env, "JOBFLEET_LOG_LIMIT_BYTES", DEFAULT_LOG_LIMIT_BYTES)
            ),
            log_format=_choice(env, "JOBFLEET_LOG_FORMAT", LOG_FORMATS),
            trace_export=env.get("JOBFLEET_TRACE_EXPORT") or None,
            webhook_secret=parse_secret(env.get("JOBFLEET_WEBHOOK_SECRET")),
            webhook_allow=parse_allow(env.get("JOBFLEET_WEBHOOK_ALLOW")),
            retention_days=_retention(env),
        )

    @property
    def line_format(self) -> str:
        """The log format in effect: the chosen one, else by backend."""
        return self.log_format or (JSON if self.backend == "gcp" else TEXT)

    def require_project(self) -> str:
        if not self.project:
            raise ConfigurationError(
                "the gcp backend needs a project: set GOOGLE_CLOUD_PROJECT"
            )
        return self.project

    @property
    def database(self) -> Path:
        return self.home / "jobfleet.db"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    def log_of(self, orchestration_id: str) -> Path:
        """Where the local supervisor and its workers write an orchestration's output."""
        return self.logs / f"{orchestration_id}.log"

    def environment(self) -> dict[str, str]:
        """The settings as the variables a worker process reads."""
        env = {
            "JOBFLEET_BACKEND": self.backend,
            "JOBFLEET_JOBS": ",".join(self.jobs_modules),
            "JOBFLEET_LEASE_SECONDS": str(self.lease_seconds),
        }
        if self.log_format:
            env["JOBFLEET_LOG_FORMAT"] = self.log_format
        if self.trace_export:
            env["JOBFLEET_TRACE_EXPORT"] = self.trace_export
        if self.backend == "local":
            env["JOBFLEET_HOME"] = str(self.home)
        else:
            env["GOOGLE_CLOUD_PROJECT"] = self.require_project()
            env["JOBFLEET_TOPIC"] = self.topic
        return env

    def worker_environment(
        self,
        job_name: str,
        orchestration_id: str,
        jobs: list[str],
        *,
        shard_offset: int = 0,
        shards: Sequence[int] | None = None,
        traceparent: str | None = None,
    ) -> dict[str, str]:
        """The worker contract (docs/design.md): what every task of an execution reads.
        Task i works on shard `shard_offset + i`, or on `shards[i]` in a recovery;
        TRACEPARENT is the kick-off's trace context, which the workers continue."""
        env = {
            **self.environment(),
            "JOBFLEET_JOBS": ",".join(dict.fromkeys([*self.jobs_modules, *jobs])),
            "JOB_NAME": job_name,
            "ORCHESTRATION_ID": orchestration_id,
        }
        if shards is not None:
            env["JOBFLEET_SHARDS"] = ",".join(map(str, shards))
        else:
            env["JOBFLEET_SHARD_OFFSET"] = str(shard_offset)
        if traceparent:
            env["TRACEPARENT"] = traceparent
        return env


def _choice(env: Mapping[str, str], name: str, choices: Sequence[str]) -> str | None:
    text = env.get(name)
    if not text:
        return None
    if text.lower() not in choices:
        raise ConfigurationError(f"{name} must be one of {', '.join(choices)}, not {text!r}")
    return text.lower()


def listen_port(port: int | None, env: Mapping[str, str] | None = None) -> int:
    """The port a server of the image listens on (`jobfleet serve`, `jobfleet function`):
    the one given, else Cloud Run's PORT, else 8080 (Cloud Run's default too)."""
    if port is not None:
        return port
    given = (os.environ if env is None else env).get("PORT") or str(DEFAULT_LISTEN_PORT)
    if not given.isdigit():
        raise ConfigurationError(f"PORT must be a port number, got {given!r}")
    return int(given)


def _retention(env: Mapping[str, str]) -> float:
    days = _positive(env, "JOBFLEET_RETENTION_DAYS", DEFAULT_RETENTION_DAYS)
    if days < MIN_RETENTION_DAYS:
        raise ConfigurationError(
            f"JOBFLEET_RETENTION_DAYS must be at least {MIN_RETENTION_DAYS} (a run may last 7"
            f" days, and its history must outlive it), not {days:g}"
        )
    return days


def _positive(env: Mapping[str, str], name: str, default: float) -> float:
    text = env.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise ConfigurationError(f"{name} must be a positive number, not {text!r}")
    return value
