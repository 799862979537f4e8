"""Resources: the worker class a job's declaration names, and every value Cloud Run would
refuse, refused at declaration with the value named."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from jobfleet import Resources, job


def test_the_default_machine_is_a_class_too() -> None:
    assert Resources().class_name == "c1-m512mi-t3600-r3"


def test_the_class_name_says_cpu_memory_timeout_and_retries() -> None:
    resources = Resources(cpu=4, memory="8Gi", task_timeout=3600, max_retries=3)
    assert resources.class_name == "c4-m8gi-t3600-r3"
    assert (resources.task_timeout_seconds, resources.memory_mib) == (3600, 8192)


def test_equal_machines_written_differently_are_one_class() -> None:
    in_seconds = Resources(cpu=2, memory="4Gi", task_timeout=7200)
    as_timedelta = Resources(cpu=2, memory="4Gi", task_timeout=timedelta(hours=2))
    assert in_seconds.class_name == as_timedelta.class_name == "c2-m4gi-t7200-r3"


def test_an_image_of_its_own_makes_a_class_of_its_own() -> None:
    ours = Resources(image="europe-docker.pkg.dev/p/jobfleet/gpu:1")
    theirs = Resources(image="europe-docker.pkg.dev/p/jobfleet/gpu:2")
    assert ours.class_name.startswith("c1-m512mi-t3600-r3-i")
    assert ours.class_name != theirs.class_name
    assert ours.class_name == Resources(image="europe-docker.pkg.dev/p/jobfleet/gpu:1").class_name


def test_the_largest_class_name_is_a_valid_cloud_run_job_name_suffix() -> None:
    name = Resources(cpu=8, memory="32768Mi", task_timeout=604800, max_retries=10,
                     image="x").class_name
    assert name.replace("-", "").isalnum() and name == name.lower()


@pytest.mark.parametrize(("values", "named"), [
    ({"cpu": 3}, "resources cpu must be one of 1, 2, 4, 6, 8, got 3"),
    ({"cpu": True}, "got True"),
    ({"memory": "8GB"}, "resources memory must be a size like '512Mi' or '8Gi', got '8GB'"),
    ({"memory": 512}, "got 512"),
    ({"memory": "256Mi"}, "resources memory must be from 512Mi to 32Gi, got '256Mi'"),
    ({"cpu": 8, "memory": "64Gi"}, "from 512Mi to 32Gi, got '64Gi'"),
    ({"cpu": 1, "memory": "8Gi"}, "resources memory 8Gi needs at least 2 CPUs on Cloud Run, got 1"),
    ({"cpu": 2, "memory": "9Gi"}, "memory 9Gi needs at least 4 CPUs"),
    ({"cpu": 4, "memory": "17Gi"}, "memory 17Gi needs at least 6 CPUs"),
    ({"cpu": 4, "memory": "1Gi"}, "resources cpu 4 needs at least 2Gi of memory on Cloud Run,"
                                  " got 1Gi"),
    ({"task_timeout": 0}, "from 1 s to 604800 s (168 hours, Cloud Run's limit), got 0 s"),
    ({"task_timeout": timedelta(days=8)}, "got 691200 s"),
    ({"task_timeout": 1.5}, "resources task_timeout must be whole seconds or a timedelta,"
                            " got 1.5"),
    ({"max_retries": 11}, "resources max_retries must be a whole number from 0 to 10, got 11"),
    ({"max_retries": -1}, "got -1"),
    ({"image": ""}, "resources image must be an image reference, got ''"),
    ({"image": "a b"}, "got 'a b'"),
])
def test_a_value_cloud_run_would_refuse_is_refused_by_name(
    values: dict[str, Any], named: str
) -> None:
    with pytest.raises(ValueError) as raised:
        Resources(**values)
    assert named in str(raised.value)


def test_an_attempt_timeout_longer_than_the_task_timeout_is_refused(
    clean_registry: None,
) -> None:
    with pytest.raises(ValueError, match=r"'long'.*\(90 s\).*\(60 s\)"):
        job("long", timeout=90, resources=Resources(task_timeout=60))


def test_resources_must_be_a_resources(clean_registry: None) -> None:
    with pytest.raises(ValueError, match=r"jobfleet\.Resources"):
        job("loose", resources={"cpu": 2})  # type: ignore[arg-type]
