"""The errors jobfleet raises. Each message says what went wrong and what to do next."""

from __future__ import annotations


class JobfleetError(Exception):
    """Base of every error jobfleet raises on purpose."""


DEMO_JOBS = ("process_batch", "noop")  # declared in jobfleet.demo, imported only on request


class UnknownJob(JobfleetError):
    def __init__(self, name: str, known: list[str]) -> None:
        listed = ", ".join(sorted(known)) or "none registered"
        demo = (f" The demo's {name!r} is in jobfleet.demo: --jobs-module jobfleet.demo."
                if name in DEMO_JOBS else "")
        super().__init__(
            f"unknown job {name!r}; known jobs: {listed}. "
            f"Import the module that declares it with JOBFLEET_JOBS or --jobs-module.{demo}"
        )
        self.name = name


class InvalidParams(JobfleetError):
    """A parameter set was refused before anything was created."""

    def __init__(self, message: str, index: int | None = None) -> None:
        where = f"parameter set {index}: " if index is not None else ""
        super().__init__(f"{where}{message}")
        self.index = index


class InvalidOption(JobfleetError, ValueError):
    """A kick-off option (parallelism, retries, timeout, tags) is out of range."""


class UnknownOrchestration(JobfleetError):
    def __init__(self, orchestration_id: str) -> None:
        super().__init__(
            f"no orchestration {orchestration_id!r}; `jobfleet list` shows the known ones"
        )
        self.orchestration_id = orchestration_id


class ConfigurationError(JobfleetError):
    """A setting is missing or wrong."""


class LaunchFailed(JobfleetError):
    """The workers could not be started; the orchestration was ended Errored."""

    def __init__(self, orchestration_id: str, cause: BaseException) -> None:
        super().__init__(
            f"could not start the workers of orchestration {orchestration_id}: {cause}"
        )
        self.orchestration_id = orchestration_id


class NoEventHistory(JobfleetError):
    def __init__(self, topic: str) -> None:
        super().__init__(
            f"Pub/Sub keeps no history of topic {topic!r}: events published before a "
            "subscription existed cannot be listed. Use `follow()` to see new events, or "
            "`ensure_subscription()` and `EventSubscriber` to consume them durably."
        )


class PublishFailed(JobfleetError):
    def __init__(self, orchestration_id: str, topic: str, cause: BaseException) -> None:
        super().__init__(
            f"could not publish the completion event of orchestration "
            f"{orchestration_id} to {topic}: {cause}. It stays unpublished; the next "
            "completion trigger (or `settle`) publishes it again."
        )


class SubscriptionMismatch(JobfleetError):
    """A subscription of that name exists with another topic or filter (both are immutable)."""


class InvalidSubscription(JobfleetError, ValueError):
    """A subscription setting is out of Pub/Sub's range (names, delivery attempts,
    backoff, push settings); refused before anything is created."""


class SubscriptionBusy(JobfleetError):
    """Another local subscriber consumes this subscription right now."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"local subscription {name!r} is being consumed by another subscriber (in this "
            "or another process); stop it first, or subscribe under another name"
        )
        self.name = name


class WaitTimeout(JobfleetError, TimeoutError):
    def __init__(self, orchestration_id: str, timeout: float) -> None:
        super().__init__(
            f"orchestration {orchestration_id} did not finish within {timeout:g}s; "
            "it keeps running: wait again or cancel it"
        )


class JobTimeout(JobfleetError, TimeoutError):
    """Raised inside a job attempt that ran past its timeout."""

    def __init__(self, timeout: float) -> None:
        super().__init__(f"attempt exceeded its timeout of {timeout:g}s")


class InvalidResult(JobfleetError, ValueError):
    """A job returned a value jobfleet cannot store; the attempt fails (retries apply)."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"the job's result {problem}")


class UnusableHome(ConfigurationError):
    """The local backend's state folder (JOBFLEET_HOME) cannot hold the store."""

    def __init__(self, home: object, problem: str) -> None:
        super().__init__(
            f"cannot use {home} as the jobfleet home: {problem}. Set JOBFLEET_HOME (or pass "
            "--home) to a folder you can write to; it is created if missing."
        )
        self.home = home


class JobNotImportable(JobfleetError):
    """A job declared where no worker can import it (standard input, `python -c`, an
    interactive interpreter or a notebook cell)."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"job {name!r} is declared in __main__ without a file (standard input, "
            "`python -c`, an interactive interpreter or a notebook cell), so no worker can "
            "import it. Put it in a module and name that module in JOBFLEET_JOBS (or "
            "--jobs-module), or declare it in a script file run as `python script.py`."
        )
        self.name = name


class InvalidSchedule(JobfleetError, ValueError):
    """A schedule's declaration is wrong (cron, zone, job, params, options, policy)."""


class UnknownSchedule(JobfleetError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no schedule {name!r}; `jobfleet schedule list` shows the known ones")
        self.name = name


class ScheduleExists(JobfleetError):
    def __init__(self, name: str) -> None:
        super().__init__(
            f"a schedule named {name!r} exists already; update it, or delete it first"
        )
        self.name = name


class FireInProgress(JobfleetError):
    """Another delivery of the same scheduled time is firing it right now."""

    def __init__(self, name: str, scheduled_at: str) -> None:
        super().__init__(
            f"schedule {name!r} at {scheduled_at} is being fired by another delivery; "
            "try again in a few seconds"
        )
        self.name = name


class NothingToRerun(JobfleetError):
    """A re-run was asked of an orchestration with no instance in the chosen states."""
