"""Schemathesis against the served OpenAPI document: whatever a client sends, no 5xx, every
4xx a JSON body that names the problem, and nothing half-created."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case, CheckContext, CheckFunction, Response
from schemathesis.specs.openapi.checks import positive_data_acceptance

from conftest import Server, ServerFactory
from jobfleet.api.app import create_app

pytestmark = pytest.mark.slow

TOKEN = "schemathesis-token"


@schemathesis.check
def names_the_problem(ctx: CheckContext, response: Response, case: Case[Any]) -> bool | None:
    """A refusal is JSON with a stable code and a message a person can act on."""
    if 400 <= response.status_code < 500:
        body = response.json()
        error = body.get("error") if isinstance(body, dict) else None
        assert isinstance(error, dict), f"{response.status_code} without an error object"
        assert isinstance(error.get("code"), str) and error["code"], "no error code"
        assert isinstance(error.get("message"), str) and len(error["message"]) > 10, (
            "no message naming the problem"
        )
    return None


@pytest.fixture
def server(serve: ServerFactory) -> Server:
    return serve(token=TOKEN)


# The document the server serves (the test below checks they are the same), loaded at
# collection so that each operation becomes a test of its own.
OPENAPI = create_app().openapi()
schema = schemathesis.openapi.from_dict(OPENAPI)


def test_the_served_document_is_the_one_under_test(server: Server) -> None:
    served = httpx.get(server.url + "/openapi.json", headers=server.headers(), timeout=30)
    assert served.json() == OPENAPI


# Which job names, params providers and schedules exist, and the params each job
# accepts, is known only at run time: a schema-valid request to these may be refused,
# but only for these reasons (the fire route's header is optional in the schema so that
# its absence is a 400 that names it).
REFUSED_AT_RUN_TIME = {
    "POST /v1/orchestrations": {"unknown_job", "invalid_params", "invalid_option"},
    "POST /v1/schedules": {"invalid_schedule"},
    "PATCH /v1/schedules/{name}": {"invalid_schedule"},
    "POST /v1/schedules/{name}/fire": {"invalid_schedule_time"},
}


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_gets_a_server_error_and_every_refusal_is_named(
    case: Case[Any], server: Server
) -> None:
    refusals = REFUSED_AT_RUN_TIME.get(case.operation.label)
    excluded: list[CheckFunction] = [positive_data_acceptance] if refusals else []
    response = case.call(base_url=server.url, headers=server.headers())
    case.validate_response(response, excluded_checks=excluded)
    positive = case.meta is not None and case.meta.generation.mode.is_positive
    if refusals and positive and response.status_code in (400, 422):
        assert response.json()["error"]["code"] in refusals
    assert_nothing_half_created(server)


def assert_nothing_half_created(server: Server) -> None:
    """Every orchestration that exists holds exactly the instances it counts."""
    listed: Any = httpx.get(server.url + "/v1/orchestrations", headers=server.headers(),
                            params={"limit": 500}, timeout=30).json()
    for o in listed["orchestrations"]:
        jobs = httpx.get(server.url + o["links"]["jobs"], headers=server.headers(),
                         params={"limit": 1000}, timeout=30).json()["jobs"]
        assert len(jobs) == o["total"] > 0
    schedules: Any = httpx.get(server.url + "/v1/schedules", headers=server.headers(),
                               timeout=30).json()
    for made in schedules["schedules"]:  # each one stored is whole and can be read back
        one = httpx.get(server.url + made["links"]["self"], headers=server.headers(), timeout=30)
        assert one.status_code == 200, one.text
