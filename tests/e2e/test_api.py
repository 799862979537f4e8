"""The HTTP API end to end: a real `jobfleet serve` process, real workers, real sockets."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest

from conftest import Server, ServerFactory, eventually
from sse_client import Event, aevents, events

pytestmark = pytest.mark.slow

TOKEN = "s3cret-token-for-tests"


def kick_off(server: Server, job_name: str, params: list[Any], **options: Any) -> Any:
    reply = httpx.post(
        server.url + "/v1/orchestrations", headers=server.headers(),
        json={"job_name": job_name, "params": params, **options}, timeout=30,
    )
    assert reply.status_code == 202, reply.text
    return reply.json()


def get(server: Server, path: str, **params: Any) -> Any:
    reply = httpx.get(server.url + path, headers=server.headers(), params=params, timeout=30)
    assert reply.status_code == 200, reply.text
    return reply.json()


def follow(server: Server, path: str, headers: dict[str, str] | None = None) -> list[Event]:
    with httpx.stream(
        "GET", server.url + path, headers={**server.headers(), **(headers or {})}, timeout=60
    ) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        return list(events(reply.iter_lines()))


def metric(server: Server, name: str) -> float:
    text = httpx.get(server.url + "/metrics", headers=server.headers(), timeout=30).text
    found = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)
    assert found, f"{name} not in /metrics"
    return float(found.group(1))


# -- kick-off, status, results ---------------------------------------------------------------


def test_a_fan_out_over_http_reports_counts_results_and_failures_with_params(
    serve: ServerFactory,
) -> None:
    server = serve()
    params = [{"n": n, "fail": n in (2, 5)} for n in range(8)]

    created = kick_off(server, "maybe_fail", params, tags={"team": "data"}, parallelism=2)

    oid = created["orchestration_id"]
    assert created["total"] == 8 and created["links"]["events"].endswith(f"/{oid}/events")
    assert eventually(lambda: get(server, f"/v1/orchestrations/{oid}")["status"] != "InProgress",
                      timeout=60)
    final = get(server, f"/v1/orchestrations/{oid}")
    assert (final["status"], final["succeeded"], final["failed"]) == ("Errored", 6, 2)
    results = get(server, f"/v1/orchestrations/{oid}/results")
    assert results["complete"] is True
    assert [s["result"] for s in results["successes"]] == [0, 10, 30, 40, 60, 70]
    assert [(f["params"], f["error"]["message"]) for f in results["failures"]] == [
        ({"n": 2, "fail": True}, "item 2 failed on purpose"),
        ({"n": 5, "fail": True}, "item 5 failed on purpose"),
    ]
    assert [o["orchestration_id"] for o in get(server, "/v1/orchestrations", tag="team:data")[
        "orchestrations"]] == [oid]
    assert get(server, "/v1/orchestrations", tag="team:other")["orchestrations"] == []


def test_jobs_are_paged_by_index_and_filtered_by_status(serve: ServerFactory) -> None:
    server = serve()
    oid = kick_off(server, "maybe_fail", [{"n": n, "fail": n % 3 == 0} for n in range(25)])[
        "orchestration_id"]
    assert eventually(lambda: get(server, f"/v1/orchestrations/{oid}")["status"] == "Errored",
                      timeout=60)

    seen: list[int] = []
    token: str | None = None
    while True:
        page = get(server, f"/v1/orchestrations/{oid}/jobs", limit=10,
                   **({"page_token": token} if token else {}))
        seen += [j["index"] for j in page["jobs"]]
        token = page["next_page_token"]
        if token is None:
            break
    errored = get(server, f"/v1/orchestrations/{oid}/jobs", status="Errored")["jobs"]

    assert seen == list(range(25))
    assert [j["index"] for j in errored] == [0, 3, 6, 9, 12, 15, 18, 21, 24]
    assert all(j["error"]["type"] == "RuntimeError" and j["attempts"] == 1 for j in errored)


def test_history_pages_newest_first_and_filters_by_job_and_status(serve: ServerFactory) -> None:
    server = serve()
    ids = [kick_off(server, "greet", [{"name": f"n{i}", "count": i}])["orchestration_id"]
           for i in range(5)]
    other = kick_off(server, "maybe_fail", [{"n": 1, "fail": True}])["orchestration_id"]
    assert eventually(lambda: get(server, f"/v1/orchestrations/{other}")["status"] == "Errored",
                      timeout=60)

    first = get(server, "/v1/orchestrations", job_name="greet", limit=3)
    second = get(server, "/v1/orchestrations", job_name="greet", limit=3,
                 page_token=first["next_page_token"])

    listed = [o["orchestration_id"] for o in first["orchestrations"] + second["orchestrations"]]
    assert listed == ids[::-1] and second["next_page_token"] is None
    exactly_full = get(server, "/v1/orchestrations", job_name="greet", limit=5)
    assert len(exactly_full["orchestrations"]) == 5 and exactly_full["next_page_token"] is None
    errored = get(server, "/v1/orchestrations", status="Errored")["orchestrations"]
    assert [o["orchestration_id"] for o in errored] == [other]


def test_a_refused_parameter_set_is_named_and_nothing_is_created(serve: ServerFactory) -> None:
    server = serve()
    params: list[Any] = [{"name": "a", "count": 1}] * 600 + [{"name": "b", "count": -1}]

    reply = httpx.post(server.url + "/v1/orchestrations",
                       json={"job_name": "greet", "params": params}, timeout=30)

    assert reply.status_code == 422
    error = reply.json()["error"]
    assert error["code"] == "invalid_params" and error["index"] == 600
    assert "parameter set 600" in error["message"] and "count" in error["message"]
    assert get(server, "/v1/orchestrations")["orchestrations"] == []


@pytest.mark.parametrize(
    ("body", "code", "words"),
    [
        ({"job_name": "nope", "params": [{}]}, "unknown_job", "unknown job 'nope'"),
        ({"job_name": "greet", "params": []}, "invalid_request", "body.params"),
        ({"job_name": "greet", "params": [{}], "parallelism": 0}, "invalid_request",
         "body.parallelism"),
        ({"job_name": "greet", "params": [{}], "tags": {"a:b": "c"}}, "invalid_option",
         "tag key 'a:b'"),
        ({"job_name": "greet", "params": [{}], "surprise": 1}, "invalid_request",
         "body.surprise"),
    ],
)
def test_bad_kick_offs_get_a_422_naming_the_problem(
    serve: ServerFactory, body: dict[str, Any], code: str, words: str
) -> None:
    server = serve()
    reply = httpx.post(server.url + "/v1/orchestrations", json=body, timeout=30)
    assert reply.status_code == 422
    assert reply.json()["error"]["code"] == code and words in reply.json()["error"]["message"]
    assert get(server, "/v1/orchestrations")["orchestrations"] == []


def test_unknown_orchestrations_and_malformed_json_are_named(serve: ServerFactory) -> None:
    server = serve()
    missing = httpx.get(server.url + "/v1/orchestrations/no-such-id/results", timeout=30)
    broken = httpx.post(server.url + "/v1/orchestrations", content=b"{not json",
                        headers={"content-type": "application/json"}, timeout=30)

    assert missing.status_code == 404
    assert "no orchestration 'no-such-id'" in missing.json()["error"]["message"]
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "invalid_json"


def test_cancel_stops_a_running_orchestration_and_refuses_an_ended_one(
    serve: ServerFactory,
) -> None:
    server = serve()
    oid = kick_off(server, "sleepy", [{"n": n, "seconds": 5} for n in range(6)],
                   parallelism=1)["orchestration_id"]
    done = kick_off(server, "greet", [{"name": "x", "count": 1}])["orchestration_id"]
    assert eventually(lambda: get(server, f"/v1/orchestrations/{done}")["status"] == "Completed",
                      timeout=60)

    cancelled = httpx.post(server.url + f"/v1/orchestrations/{oid}/cancel", timeout=30)
    refused = httpx.post(server.url + f"/v1/orchestrations/{done}/cancel", timeout=30)

    assert cancelled.status_code == 200 and cancelled.json()["status"] == "Cancelled"
    assert cancelled.json()["cancelled"] >= 5
    assert refused.status_code == 409 and "already ended Completed" in refused.text


def test_registered_jobs_come_with_the_json_schema_of_their_params(serve: ServerFactory) -> None:
    server = serve()
    jobs = {j["name"]: j for j in get(server, "/v1/jobs")["jobs"]}
    schema = jobs["greet"]["params_schema"]
    assert schema["required"] == ["name", "count"] and schema["properties"]["count"]["minimum"] == 0
    assert jobs["flaky"]["retries"] == 3
    assert "/v1/orchestrations" in get(server, "/openapi.json")["paths"]


# -- live events ------------------------------------------------------------------------------


def test_events_are_a_snapshot_then_transitions_then_the_completion_event(
    serve: ServerFactory,
) -> None:
    server = serve()
    params = [{"n": n, "seconds": 0.05} for n in range(10)]
    oid = kick_off(server, "sleepy", params, parallelism=2)["orchestration_id"]

    stream = follow(server, f"/v1/orchestrations/{oid}/events")

    kinds = [e.event for e in stream]
    assert kinds[0] == "snapshot" and kinds[-1] == "completed"
    assert stream[0].data["orchestration_id"] == oid
    last = {e.data["index"]: e.data["status"] for e in stream if e.event == "transition"}
    assert last == dict.fromkeys(range(10), "Completed")
    assert all(e.id for e in stream if e.event == "transition")
    assert stream[-1].data["status"] == "Completed" and stream[-1].data["succeeded"] == 10
    progress = [e.data["succeeded"] for e in stream if e.event == "progress"]
    assert progress == sorted(progress) and progress[-1] == 10


def test_last_event_id_resumes_after_the_last_transition_seen(serve: ServerFactory) -> None:
    server = serve()
    params = [{"n": n, "seconds": 0.2} for n in range(8)]
    oid = kick_off(server, "sleepy", params, parallelism=2)["orchestration_id"]
    path = f"/v1/orchestrations/{oid}/events"
    before: list[Event] = []
    with httpx.stream("GET", server.url + path, timeout=60) as reply:
        for event in events(reply.iter_lines()):
            before.append(event)
            if sum(e.event == "transition" for e in before) == 3:
                break  # the connection drops

    resumed = follow(server, path, headers={"Last-Event-ID": before[-1].id or ""})

    seen = {e.id for e in before if e.event == "transition"}
    again = [e for e in resumed if e.event == "transition"]
    assert resumed[0].event == "snapshot" and resumed[-1].event == "completed"
    assert not seen & {e.id for e in again}  # nothing seen twice
    final = {e.data["index"]: e.data["status"] for e in before + again if e.event == "transition"}
    assert final == dict.fromkeys(range(8), "Completed")  # and nothing missed


def test_two_hundred_clients_share_one_upstream_and_all_see_every_transition(
    serve: ServerFactory,
) -> None:
    server = serve()
    oid = kick_off(server, "sleepy", [{"n": n, "seconds": 0.3} for n in range(12)],
                   parallelism=2)["orchestration_id"]
    clients = 200

    async def one(client: httpx.AsyncClient, connected: asyncio.Event, count: list[int]) -> Any:
        async with client.stream("GET", f"/v1/orchestrations/{oid}/events") as reply:
            got: list[Event] = []
            async for event in aevents(reply.aiter_lines()):
                if event.event == "snapshot":
                    count[0] += 1
                    if count[0] == clients:
                        connected.set()
                got.append(event)
            return got

    async def run() -> tuple[list[list[Event]], float, float]:
        limits = httpx.Limits(max_connections=clients + 10)
        async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=120) as client:
            connected, count = asyncio.Event(), [0]
            tasks = [asyncio.create_task(one(client, connected, count)) for _ in range(clients)]
            await asyncio.wait_for(connected.wait(), 60)
            upstreams = await asyncio.to_thread(metric, server, "jobfleet_sse_upstreams")
            listening = await asyncio.to_thread(metric, server, "jobfleet_sse_clients")
            return list(await asyncio.gather(*tasks)), upstreams, listening

    streams, upstreams, listening = asyncio.run(run())

    assert (upstreams, listening) == (1, clients)
    finals = [{e.data["index"]: e.data["status"] for e in s if e.event == "transition"}
              for s in streams]
    assert all(f == dict.fromkeys(range(12), "Completed") for f in finals)
    assert all(s[-1].event == "completed" for s in streams)
    assert eventually(lambda: metric(server, "jobfleet_sse_upstreams") == 0)


def test_an_ended_orchestration_streams_its_end_at_once(serve: ServerFactory) -> None:
    server = serve()
    oid = kick_off(server, "greet", [{"name": "x", "count": 1}])["orchestration_id"]
    assert eventually(lambda: get(server, f"/v1/orchestrations/{oid}")["status"] == "Completed",
                      timeout=60)
    stream = follow(server, f"/v1/orchestrations/{oid}/events")  # returns: the stream ends
    assert [e.event for e in stream] == ["snapshot", "progress", "completed"]


# -- authentication ---------------------------------------------------------------------------


def test_a_static_token_guards_every_route_but_healthz_and_is_never_logged(
    serve: ServerFactory,
) -> None:
    server = serve(token=TOKEN)
    url = server.url

    missing = httpx.get(url + "/v1/orchestrations", timeout=30)
    wrong = httpx.get(url + "/v1/orchestrations", timeout=30,
                      headers={"Authorization": "Bearer not-the-token"})
    right = httpx.get(url + "/v1/orchestrations", headers=server.headers(), timeout=30)

    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert "bearer token" in missing.json()["error"]["message"]
    assert wrong.status_code == 401 and "not-the-token" not in wrong.text
    assert right.status_code == 200
    assert httpx.get(url + "/healthz", timeout=30).status_code == 200
    for path in ("/metrics", "/openapi.json", "/v1/jobs", "/"):
        assert httpx.get(url + path, timeout=30).status_code == 401, path
    kick_off(server, "greet", [{"name": "x", "count": 1}])
    server.process.terminate()
    server.process.wait(10)
    log = server.log.read_text()
    assert "GET /v1/orchestrations" in log  # the access log is on...
    assert TOKEN not in log and "not-the-token" not in log  # ...and holds no token


def test_without_a_token_the_server_refuses_to_listen_beyond_loopback(home: Any) -> None:
    refused = subprocess.run(
        [sys.executable, "-m", "jobfleet", "serve", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True, text=True, timeout=60,
    )
    assert refused.returncode == 2
    assert "refusing to listen on 0.0.0.0" in refused.stderr
    assert "JOBFLEET_API_TOKEN" in refused.stderr


def test_google_id_tokens_are_checked_for_audience_expiry_and_principal(
    serve: ServerFactory,
) -> None:
    from id_token_support import KID, CertsServer
    from integration.test_google_id_tokens import ALLOWED, AUDIENCE, mint
    from jobfleet.dev.id_tokens import make_key

    key = make_key("securetoken.test")
    certs = CertsServer({KID: key.certificate_pem})
    import threading

    threading.Thread(target=certs.serve_forever, args=(0.05,), daemon=True).start()
    try:
        server = serve(env={
            "JOBFLEET_API_AUDIENCE": AUDIENCE, "JOBFLEET_API_PRINCIPALS": ALLOWED,
            "JOBFLEET_API_CERTS_URL": certs.url, "NO_PROXY": "127.0.0.1",
        })

        def status(token: str) -> int:
            reply = httpx.get(server.url + "/v1/orchestrations", timeout=30,
                              headers={"Authorization": f"Bearer {token}"})
            return reply.status_code

        assert status(mint(key)) == 200
        assert status(mint(key, email="someone@else.com")) == 403
        assert status(mint(key, exp=int(time.time()) - 3600, iat=int(time.time()) - 7200)) == 401
        assert status(mint(key, aud="https://another.example")) == 401
        assert status(mint(make_key("rogue"))) == 401
        refused = httpx.get(server.url + "/v1/orchestrations", timeout=30,
                            headers={"Authorization": f"Bearer {mint(key, email='x@y.z')}"})
        assert "x@y.z is not allowed" in refused.json()["error"]["message"]
    finally:
        certs.shutdown()
        certs.server_close()


def test_metrics_count_instances_dead_letters_and_requests(serve: ServerFactory) -> None:
    server = serve()
    oid = kick_off(server, "maybe_fail", [{"n": n, "fail": n < 2} for n in range(8)])[
        "orchestration_id"]
    assert eventually(lambda: get(server, f"/v1/orchestrations/{oid}")["status"] == "Errored",
                      timeout=60)

    text = httpx.get(server.url + "/metrics", timeout=30).text

    def value(series: str) -> float:
        found = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
        assert found, f"{series} not in /metrics:\n{text}"
        return float(found.group(1))

    assert value('jobfleet_instances{job_name="maybe_fail",status="Completed"}') == 6
    assert value('jobfleet_instances{job_name="maybe_fail",status="Errored"}') == 2
    assert value('jobfleet_dead_letter_ratio{job_name="maybe_fail"}') == 0.25
    assert value('jobfleet_orchestrations{job_name="maybe_fail",status="Errored"}') == 1
    assert value('jobfleet_orchestration_duration_seconds_count{job_name="maybe_fail"}') == 1
    assert value('jobfleet_throughput_instances_per_second{job_name="maybe_fail"}') > 0
    assert value('jobfleet_http_request_duration_seconds_count{method="POST",'
                 'route="/v1/orchestrations",status="202"}') == 1


# -- the sweep ------------------------------------------------------------------------------


def test_post_sweep_launches_an_orchestration_whose_kick_off_died(
    serve: ServerFactory,
) -> None:
    from jobfleet import JobFleet
    from stranded import commit_without_launch

    server = serve(token=TOKEN)
    with JobFleet() as fleet:
        oid = commit_without_launch(fleet, "greet", [{"name": "ada", "count": 1}] * 3)

    refused = httpx.post(server.url + "/v1/sweep", timeout=30)
    assert refused.status_code == 401  # the sweep needs the token like everything else
    reply = httpx.post(server.url + "/v1/sweep", headers=server.headers(), timeout=30)
    assert reply.status_code == 200, reply.text
    assert reply.json()["launched"] == 1 and reply.json()["looked_at"] >= 1
    assert eventually(lambda: get(server, f"/v1/orchestrations/{oid}")["status"] == "Completed",
                      timeout=60)
    again = httpx.post(server.url + "/v1/sweep", headers=server.headers(), timeout=30).json()
    assert again["launched"] == 0  # idempotent: launched once
