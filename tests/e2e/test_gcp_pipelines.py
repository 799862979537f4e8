"""A three-stage pipeline on the Google Cloud shape, with every trigger delivered again.

On `jobfleet dev up` (the emulators, the Cloud Run stand-in, the completion function), a
second completion function behind a relay route that delivers every trigger event three
more times, shuffled: the stages run one after another, each exactly once, each
announced once on Pub/Sub, and the failed middle stage feeds the last one (`always`).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_gcp_stack import _env_with_tests, _wait_for_port, gcp_fleet, stack, subscribe

import sample_jobs
from conftest import Emulators
from jobfleet import JobFleet, Stage, Status
from jobfleet.core.pipeline import PIPELINE_TAG
from jobfleet.dev.emulators import free_port, stop_group

pytestmark = pytest.mark.slow

__all__ = ["gcp_fleet", "stack"]  # the dev stack fixtures, shared with test_gcp_stack


@pytest.fixture
def duplicating_function(
    stack: dict[str, str], emulators: Emulators, tmp_path: Path
) -> Iterator[None]:
    """A second completion function, sent every trigger event three times, shuffled."""
    env = _env_with_tests({**stack, "JOBFLEET_JOBS": "sample_jobs"})
    port = free_port()
    with open(tmp_path / "function.log", "wb") as log:
        function = subprocess.Popen(
            [sys.executable, "-m", "jobfleet", "function", "--host", "127.0.0.1",
             "--port", str(port)],
            env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT,
        )
    route = None
    try:
        _wait_for_port(port)
        route = emulators.relay.register(stack["GOOGLE_CLOUD_PROJECT"],
                                         f"http://127.0.0.1:{port}/", deliveries=3,
                                         shuffle=True)
        yield
    finally:
        if route is not None:
            emulators.relay.unregister(route)
        stop_group(function)


def test_three_stages_run_once_each_whatever_the_deliveries(
    gcp_fleet: JobFleet, emulators: Emulators, duplicating_function: None
) -> None:
    subscriber, received = subscribe(emulators.project, 'attributes.team = "etl"')
    with subscriber:
        first = gcp_fleet.kick_off(
            "extract", [{"source": s} for s in range(3)], parallelism=2,
            tags={"team": "etl", "poison": "21"},
            then=[Stage("transform", params=sample_jobs.rows_of, parallelism=2),
                  Stage("load", params=sample_jobs.batch_of, when="always")],
        )
        stages = first.wait_pipeline(timeout=600)
        assert [s.job_name for s in stages] == ["extract", "transform", "load"]
        assert [s.status for s in stages] == [Status.COMPLETED, Status.ERRORED,
                                              Status.COMPLETED]
        [loaded] = gcp_fleet.handle(stages[2].id).results()[0]
        assert loaded.params == {"values": [0, 2, 4, 20, 22, 24, 40, 44]}
        assert len(gcp_fleet.history(tag=(PIPELINE_TAG, first.id))) == 3
        for stage in stages:
            assert len(received.of(stage.id, timeout=120)) == 1
