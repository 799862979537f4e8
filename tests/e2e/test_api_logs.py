"""GET /v1/orchestrations/{id}/logs: a real `jobfleet serve`, real workers."""

from __future__ import annotations

import httpx
import pytest

from conftest import ServerFactory, eventually

pytestmark = pytest.mark.slow


def test_the_logs_of_a_failed_instance_are_one_request_away(serve: ServerFactory) -> None:
    server = serve()
    created = httpx.post(server.url + "/v1/orchestrations", json={
        "job_name": "talkative", "params": [{"n": 0}, {"n": 1, "fail": True}],
    }, timeout=30).json()
    oid = created["orchestration_id"]
    base = f"{server.url}/v1/orchestrations/{oid}"
    assert eventually(lambda: httpx.get(base, timeout=30).json()["status"] != "InProgress",
                      timeout=60)
    [failure] = httpx.get(base + "/results", timeout=30).json()["failures"]

    page = httpx.get(base + "/logs", params={"job_id": failure["job_id"]}, timeout=30).json()

    assert page["truncated"] is False and page["job_id"] == failure["job_id"]
    assert {line["job_id"] for line in page["lines"]} == {failure["job_id"]}
    assert page["lines"][-1]["text"].endswith("RuntimeError: item 1 failed on purpose")
    assert not any("item 0" in line["text"] for line in page["lines"])

    newest = httpx.get(base + "/logs", params={"limit": 1}, timeout=30).json()
    assert newest["truncated"] is True and len(newest["lines"]) == 1
    unknown = httpx.get(f"{server.url}/v1/orchestrations/nope/logs", timeout=30)
    assert unknown.status_code == 404
