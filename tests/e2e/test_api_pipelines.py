"""Pipelines and re-runs over HTTP: a real `jobfleet serve`, real workers; the links
between runs as `GET /v1/orchestrations/{id}` gives them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import Server, ServerFactory, eventually

pytestmark = pytest.mark.slow

ENDED = {"Completed", "Errored", "Cancelled"}
SOURCES = [{"source": s} for s in range(3)]
ETL = [{"job": "transform", "params_from": "sample_jobs:rows_of"},
       {"job": "load", "params_from": "sample_jobs:batch_of"}]


def post(server: Server, path: str, body: Any = None) -> httpx.Response:
    return httpx.post(server.url + path, headers=server.headers(), json=body, timeout=30)


def get(server: Server, path: str, **params: Any) -> Any:
    reply = httpx.get(server.url + path, headers=server.headers(), params=params, timeout=30)
    assert reply.status_code == 200, reply.text
    return reply.json()


def ended(server: Server, oid: str) -> dict[str, Any]:
    assert eventually(lambda: get(server, f"/v1/orchestrations/{oid}")["status"] in ENDED, 60)
    found: dict[str, Any] = get(server, f"/v1/orchestrations/{oid}")
    return found


def pipeline_end(server: Server, first: str, stages: int) -> list[dict[str, Any]]:
    """Wait for the pipeline's last started stage to end and the pipeline to say so."""
    def settled() -> bool:
        links = get(server, f"/v1/orchestrations/{first}")["links"]
        last = links["stages"][-1]
        return last["status"] in ENDED and (len(links["stages"]) == stages
                                            or any(s["next_note"] for s in links["stages"]))

    assert eventually(settled, 120)
    return [get(server, f"/v1/orchestrations/{s['id']}")
            for s in get(server, f"/v1/orchestrations/{first}")["links"]["stages"]]


def nothing_created(server: Server) -> bool:
    return bool(get(server, "/v1/orchestrations")["orchestrations"] == [])


def test_a_three_stage_pipeline_runs_and_each_stage_links_the_others(
    serve: ServerFactory,
) -> None:
    server = serve()
    created = post(server, "/v1/orchestrations",
                   {"job_name": "extract", "params": SOURCES, "then": ETL})
    assert created.status_code == 202, created.text
    first = created.json()["orchestration_id"]

    stages = pipeline_end(server, first, 3)

    assert [(s["job_name"], s["status"], s["total"]) for s in stages] == [
        ("extract", "Completed", 3), ("transform", "Completed", 9), ("load", "Completed", 1)]
    ids = [s["orchestration_id"] for s in stages]
    listed = [{"id": i, "job_name": s["job_name"], "status": "Completed", "stage": n,
               "next_note": None} for n, (i, s) in enumerate(zip(ids, stages, strict=True), 1)]
    for n, stage in enumerate(stages):
        links = stage["links"]
        assert links["pipeline"] == first and links["stage"] == n + 1
        assert links["stages_total"] == 3 and links["stages"] == listed
        assert links["parent"] == (ids[n - 1] if n else None)
        assert links["next"] == (ids[n + 1] if n < 2 else None)
        assert links["next_note"] is None and links["rerun_of"] is None
    [loaded] = get(server, f"/v1/orchestrations/{ids[2]}/results")["successes"]
    assert loaded["params"] == {"values": [0, 2, 4, 20, 22, 24, 40, 42, 44]}


def test_a_pipeline_that_stops_says_why_in_the_stage_where_it_stopped(
    serve: ServerFactory,
) -> None:
    server = serve()
    first = post(server, "/v1/orchestrations", {
        "job_name": "extract", "params": SOURCES, "then": ETL, "tags": {"poison": "21"},
    }).json()["orchestration_id"]

    stages = pipeline_end(server, first, 3)

    assert [s["status"] for s in stages] == ["Completed", "Errored"]
    links = stages[1]["links"]
    assert links["next"] is None and links["stages_total"] == 3
    assert "ended Errored" in links["next_note"]
    assert [s["next_note"] for s in links["stages"]] == [None, links["next_note"]]


@pytest.mark.parametrize(("then", "named"), [
    ([{"job": "transform", "params_from": "sample_jobs:rows_of"},
      {"job": "nope", "params": [{}]}], "stage 3 (nope): unknown job 'nope'"),
    ([{"job": "transform", "params": [{"row": 1}], "params_from": "sample_jobs:rows_of"}],
     "stage 2 (transform): give params or params_from, not both"),
    ([{"job": "transform", "params_from": "sample_jobs:no_such_function"}],
     "stage 2 (transform): params function 'sample_jobs:no_such_function'"),
    ([{"job": "transform"}], "stage 2 (transform) needs params"),
    ([{"job": "transform", "params_from": "os:system"}],
     "stage 2 (transform): params_from 'os:system' must be 'module:function' in one of the "
     "server's jobs modules (sample_jobs)"),
    ([{"job": "transform", "params_from": "/tmp/anything.py:main"}],
     "params_from '/tmp/anything.py:main' must be"),
])
def test_a_bad_stage_is_refused_by_name_and_nothing_is_created(
    serve: ServerFactory, then: list[dict[str, Any]], named: str
) -> None:
    server = serve()
    refused = post(server, "/v1/orchestrations",
                   {"job_name": "extract", "params": SOURCES, "then": then})
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["code"] == "invalid_option"
    assert named in refused.json()["error"]["message"]
    assert nothing_created(server)


def test_a_stage_whose_when_is_unknown_is_refused_by_the_schema(serve: ServerFactory) -> None:
    server = serve()
    refused = post(server, "/v1/orchestrations", {
        "job_name": "extract", "params": SOURCES,
        "then": [{"job": "transform", "params_from": "sample_jobs:rows_of", "when": "never"}],
    })
    assert refused.status_code == 422
    assert "then.0.when" in refused.json()["error"]["message"]
    assert nothing_created(server)


def test_a_rerun_of_the_failures_succeeds_and_merged_results_are_whole(
    serve: ServerFactory, tmp_path: Path
) -> None:
    server = serve()
    broken = tmp_path / "broken"
    broken.write_text("yes")
    params = [{"n": n, "broken": str(broken) if n in (1, 4) else ""} for n in range(6)]
    original = post(server, "/v1/orchestrations", {"job_name": "until_fixed", "params": params,
                                                   "tags": {"team": "data"}}).json()
    oid = original["orchestration_id"]
    assert original["links"]["rerun"] == f"/v1/orchestrations/{oid}/rerun"
    assert ended(server, oid)["status"] == "Errored"

    none_cancelled = post(server, f"/v1/orchestrations/{oid}/rerun", {"which": ["cancelled"]})
    assert none_cancelled.status_code == 422
    assert none_cancelled.json()["error"]["code"] == "nothing_to_rerun"
    assert [o["orchestration_id"] for o in get(server, "/v1/orchestrations")[
        "orchestrations"]] == [oid]

    broken.unlink()
    made = post(server, f"/v1/orchestrations/{oid}/rerun")  # no body: the failed ones
    assert made.status_code == 201, made.text
    again = made.json()
    rid = again["orchestration_id"]
    assert made.headers["location"] == f"/v1/orchestrations/{rid}"
    assert again["total"] == 2 and again["tags"] == {"team": "data", "rerun_of": oid}
    assert again["links"]["rerun_of"] == oid
    assert ended(server, rid)["status"] == "Completed"
    assert get(server, f"/v1/orchestrations/{oid}")["links"]["reruns"] == [rid]
    reran = get(server, f"/v1/orchestrations/{rid}/results")["successes"]
    assert [s["index"] for s in reran] == [1, 4]

    plain = get(server, f"/v1/orchestrations/{oid}/results")
    assert len(plain["failures"]) == 2 and plain["runs"] is None
    merged = get(server, f"/v1/orchestrations/{oid}/results", merged="true")
    assert merged["complete"] is True and merged["failures"] == []
    assert merged["runs"] == [oid, rid]
    assert [(s["index"], s["result"]) for s in merged["successes"]] == [
        (n, n) for n in range(6)]


def test_a_rerun_of_a_running_orchestration_is_a_conflict(serve: ServerFactory) -> None:
    server = serve()
    oid = post(server, "/v1/orchestrations", {
        "job_name": "sleepy", "params": [{"n": 1, "seconds": 30}],
    }).json()["orchestration_id"]
    try:
        refused = post(server, f"/v1/orchestrations/{oid}/rerun", {"which": ["failed"]})
        assert refused.status_code == 409, refused.text
        assert "still running" in refused.json()["error"]["message"]
    finally:
        post(server, f"/v1/orchestrations/{oid}/cancel")
    assert ended(server, oid)["status"] == "Cancelled"
    cancelled = post(server, f"/v1/orchestrations/{oid}/rerun",
                     {"which": ["cancelled"], "parallelism": 1})
    assert cancelled.status_code == 201, cancelled.text
    assert cancelled.json()["total"] == 1
    post(server, f"/v1/orchestrations/{cancelled.json()['orchestration_id']}/cancel")
    unknown = post(server, "/v1/orchestrations/no-such-run/rerun")
    assert unknown.status_code == 404
