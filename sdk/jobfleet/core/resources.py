"""What machine a job's tasks need: CPU, memory, task timeout, task retries, image.

Jobs that declare the same resources share a worker class; each class is a Cloud Run
job of its own (`{JOBFLEET_CLOUD_RUN_JOB}-{class name}`), made by the Terraform module
from the list `jobfleet worker-classes` prints. A job that declares nothing runs on the
base Cloud Run job (`JOBFLEET_CLOUD_RUN_JOB`).

The limits are Cloud Run's (jobs, second generation): whole CPUs from 1 to 8, memory
from 512 MiB to 32 GiB with a floor and a ceiling per CPU count, a task timeout of up
to 168 hours and up to 10 task retries. A task retry restarts a task that died (out
of memory, a crash in native code, SIGKILL) on the shard it was running; the attempt
retries of `@job(retries=)` are jobfleet's own.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import timedelta

CPUS = (1, 2, 4, 6, 8)
MIN_MEMORY_MIB = 512
MAX_MEMORY_MIB = 32 * 1024
# Cloud Run: more memory needs more CPUs, and more CPUs need a floor of memory.
MIN_CPUS_FOR_MEMORY_MIB = ((24 * 1024, 8), (16 * 1024, 6), (8 * 1024, 4), (4 * 1024, 2))
MIN_MEMORY_MIB_FOR_CPUS = {4: 2 * 1024, 6: 4 * 1024, 8: 4 * 1024}
MAX_TASK_TIMEOUT_SECONDS = 168 * 3600
MAX_TASK_RETRIES = 10
DEFAULT_TASK_TIMEOUT_SECONDS = 3600
DEFAULT_TASK_RETRIES = 3
_MEMORY = re.compile(r"^([1-9][0-9]*)(Mi|Gi)$")


@dataclass(frozen=True, slots=True)
class Resources:
    """`@job(resources=Resources(cpu=4, memory="8Gi", task_timeout=timedelta(hours=1)))`.

    `task_timeout` bounds one task (a shard of instances, run one after another), not
    one attempt; `max_retries` is how often Cloud Run restarts a task that died."""

    cpu: int = 1
    memory: str = "512Mi"
    task_timeout: int | timedelta = DEFAULT_TASK_TIMEOUT_SECONDS
    max_retries: int = DEFAULT_TASK_RETRIES
    image: str | None = None  # None: the deployment's image

    def __post_init__(self) -> None:
        check_resources(self)

    @property
    def task_timeout_seconds(self) -> int:
        timeout = self.task_timeout
        return int(timeout.total_seconds()) if isinstance(timeout, timedelta) else timeout

    @property
    def memory_mib(self) -> int:
        match = _MEMORY.match(self.memory)
        assert match is not None  # checked in __post_init__
        return int(match[1]) * (1024 if match[2] == "Gi" else 1)

    @property
    def class_name(self) -> str:
        """The worker class, from the values: jobs that declare the same share it.
        Lower case, digits and hyphens, as Cloud Run job names must be."""
        name = (
            f"c{self.cpu}-m{self.memory.lower()}-t{self.task_timeout_seconds}"
            f"-r{self.max_retries}"
        )
        if self.image:
            name += "-i" + hashlib.sha256(self.image.encode()).hexdigest()[:8]
        return name


def check_resources(resources: Resources) -> None:
    """Raise ValueError naming the first value Cloud Run would refuse."""
    cpu = resources.cpu
    if isinstance(cpu, bool) or cpu not in CPUS:
        raise ValueError(f"resources cpu must be one of {', '.join(map(str, CPUS))}, got {cpu!r}")
    memory = resources.memory
    if not isinstance(memory, str) or not _MEMORY.match(memory):
        raise ValueError(
            f"resources memory must be a size like '512Mi' or '8Gi', got {memory!r}"
        )
    mib = resources.memory_mib
    if not MIN_MEMORY_MIB <= mib <= MAX_MEMORY_MIB:
        raise ValueError(f"resources memory must be from 512Mi to 32Gi, got {memory!r}")
    for above, cpus in MIN_CPUS_FOR_MEMORY_MIB:
        if mib > above and cpu < cpus:
            raise ValueError(
                f"resources memory {memory} needs at least {cpus} CPUs on Cloud Run, got {cpu}"
            )
    floor = MIN_MEMORY_MIB_FOR_CPUS.get(cpu, 0)
    if mib < floor:
        raise ValueError(
            f"resources cpu {cpu} needs at least {floor // 1024}Gi of memory on Cloud Run,"
            f" got {memory}"
        )
    timeout = resources.task_timeout
    if isinstance(timeout, bool) or not isinstance(timeout, int | timedelta):
        raise ValueError(
            f"resources task_timeout must be whole seconds or a timedelta, got {timeout!r}"
        )
    seconds = resources.task_timeout_seconds
    if not 1 <= seconds <= MAX_TASK_TIMEOUT_SECONDS:
        raise ValueError(
            f"resources task_timeout must be from 1 s to {MAX_TASK_TIMEOUT_SECONDS} s"
            f" (168 hours, Cloud Run's limit), got {seconds} s"
        )
    retries = resources.max_retries
    if isinstance(retries, bool) or not isinstance(retries, int) or not (
        0 <= retries <= MAX_TASK_RETRIES
    ):
        raise ValueError(
            f"resources max_retries must be a whole number from 0 to {MAX_TASK_RETRIES},"
            f" got {retries!r}"
        )
    image = resources.image
    if image is not None and (not isinstance(image, str) or not image or " " in image):
        raise ValueError(f"resources image must be an image reference, got {image!r}")
