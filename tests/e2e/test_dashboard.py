"""The dashboard in a real headless Chromium against a real `jobfleet serve`: what a
person watching a fan-out sees, live, without reloading the page."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Dialog,
    Error,
    Locator,
    Page,
    expect,
    sync_playwright,
)

from conftest import Server, ServerFactory, eventually
from jobfleet import JobFleet
from jobfleet.webhooks import deliveries
from webhook_support import SECRET, receiver

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("JOBFLEET_CHROMIUM", "/usr/bin/chromium")
# Without the background-networking flags Chromium stalls on a closed network.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DEMO_JOBS = {"JOBFLEET_JOBS": "sample_jobs,jobfleet.demo"}
ENDED = {"Completed", "Errored", "Cancelled"}
TIMEOUT_MS = 30_000
# What Chromium logs for a request answered 4xx: expected where a test asks for one.
FAILED_LOAD = re.compile(r"Failed to load resource: the server responded with a status of (\d+)")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not os.path.exists(CHROMIUM):
        message = (
            f"needs Chromium at {CHROMIUM}: `sudo apt-get install -y chromium` "
            "(or set JOBFLEET_CHROMIUM to another Chromium)"
        )
        if os.environ.get("JOBFLEET_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{message}; JOBFLEET_REQUIRE_BROWSER=1 forbids skipping")
        pytest.skip(message)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@dataclass
class Tab:
    """A page in a browser context of its own (its own cookies), and the errors its
    console showed."""

    page: Page
    errors: list[str] = field(default_factory=list)

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(message.text)

    def on_page_error(self, error: Error) -> None:
        self.errors.append(f"uncaught: {error.message}")

    def unexpected_errors(self, *expected_statuses: int) -> list[str]:
        """Console errors, but for the failed loads of the statuses a test asked for."""
        unexpected = []
        for text in self.errors:
            failed = FAILED_LOAD.search(text)
            if failed is None or int(failed.group(1)) not in expected_statuses:
                unexpected.append(text)
        return unexpected


@pytest.fixture
def tab(browser: Browser) -> Iterator[Tab]:
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    opened = Tab(page)
    page.on("console", opened.on_console)
    page.on("pageerror", opened.on_page_error)
    yield opened
    context.close()


def kick_off(server: Server, job_name: str, params: list[dict[str, Any]], **options: Any) -> str:
    reply = httpx.post(
        f"{server.url}/v1/orchestrations",
        headers=server.headers(),
        timeout=30,
        json={"job_name": job_name, "params": params, **options},
    )
    assert reply.status_code == 202, reply.text
    orchestration_id: str = reply.json()["orchestration_id"]
    return orchestration_id


def status_of(server: Server, orchestration_id: str) -> dict[str, Any]:
    reply = httpx.get(
        f"{server.url}/v1/orchestrations/{orchestration_id}", headers=server.headers(), timeout=30
    )
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def wait_until_ended(server: Server, orchestration_id: str) -> dict[str, Any]:
    assert eventually(lambda: status_of(server, orchestration_id)["status"] in ENDED, 60)
    return status_of(server, orchestration_id)


def by_id(scope: Page | Locator, test_id: str) -> Locator:
    return scope.get_by_test_id(test_id)


def record_values(page: Page, test_id: str) -> None:
    """Keep every value an element shows, so the test can tell later which it passed."""
    page.evaluate(
        """testId => {
            const node = document.querySelector(`[data-testid="${testId}"]`);
            window.seen = [node.textContent];
            new MutationObserver(() => window.seen.push(node.textContent))
                .observe(node, {childList: true, characterData: true, subtree: true});
            window.sameDocument = true;
        }""",
        test_id,
    )


# -- one orchestration, live ----------------------------------------------------------------


def test_the_page_follows_a_fan_out_live_to_its_failure(serve: ServerFactory, tab: Tab) -> None:
    server = serve(env=DEMO_JOBS)
    params: list[dict[str, Any]] = [
        {"batch": b, "numbers": [b, b + 1], "seconds": 0.3} for b in range(12)
    ]
    params[7]["poison"] = True
    oid = kick_off(server, "process_batch", params, parallelism=2, tags={"team": "data"})
    page = tab.page

    page.goto(f"{server.url}/orchestrations/{oid}")
    expect(by_id(page, "status")).to_have_text("InProgress")
    expect(by_id(page, "job-name")).to_have_text("process_batch")
    expect(by_id(page, "orchestration-id")).to_have_text(oid)
    expect(by_id(page, "count-total")).to_have_text("12")
    expect(by_id(page, "cancel-button")).to_be_enabled()
    record_values(page, "count-succeeded")

    expect(by_id(page, "status")).to_have_text("Errored", timeout=60_000)
    expect(by_id(page, "count-succeeded")).to_have_text("11")
    expect(by_id(page, "count-failed")).to_have_text("1")
    expect(by_id(page, "count-cancelled")).to_have_text("0")
    bar = by_id(page, "progress-bar")
    expect(bar).to_have_attribute("aria-valuenow", "12")
    expect(bar).to_have_attribute("aria-valuemax", "12")
    expect(by_id(page, "cancel-button")).to_be_disabled()
    expect(by_id(page, "live-state")).to_have_text("Finished")

    # The counts rose in steps on the same page: pushed over SSE, not reloaded.
    seen = [int(v) for v in page.evaluate("window.seen")]
    assert seen == sorted(seen), seen
    assert any(0 < v < 11 for v in seen), f"no count between first and last: {seen}"
    assert page.evaluate("window.sameDocument") is True

    failure = by_id(page, "failure-row")
    expect(failure).to_have_count(1)
    expect(by_id(failure, "failure-index")).to_have_text("7")
    assert json.loads(by_id(failure, "failure-params").inner_text()) == params[7]
    expect(by_id(failure, "failure-error-type")).to_have_text("ValueError")
    expect(by_id(failure, "failure-error-message")).to_have_text("batch 7 holds a poison record")
    expect(by_id(failure, "failure-attempts")).to_have_text("2")  # process_batch retries once
    assert tab.unexpected_errors() == []

    # A tab that missed the end still gets told why it cannot cancel.
    page.eval_on_selector("[data-testid=cancel-button]", "button => { button.disabled = false; }")
    page.once("dialog", lambda dialog: dialog.accept())
    by_id(page, "cancel-button").click()
    expect(by_id(page, "error")).to_contain_text("already ended Errored")
    expect(by_id(page, "cancel-button")).to_be_disabled()
    assert tab.unexpected_errors(409) == []


def test_a_failure_row_opens_the_logs_of_its_instance(serve: ServerFactory, tab: Tab) -> None:
    server = serve()
    oid = kick_off(server, "talkative", [{"n": 0}, {"n": 1, "fail": True}])
    wait_until_ended(server, oid)
    page = tab.page

    page.goto(f"{server.url}/orchestrations/{oid}")
    failure = by_id(page, "failure-row")
    expect(failure).to_have_count(1)
    page.get_by_text("Logs", exact=True).click()

    lines = by_id(failure, "failure-logs-lines")
    expect(lines).to_contain_text("RuntimeError: item 1 failed on purpose")
    expect(lines).to_contain_text("stdout line of item 1")
    expect(lines).not_to_contain_text("item 0")
    assert tab.unexpected_errors() == []


def test_cancel_stops_a_long_running_orchestration(serve: ServerFactory, tab: Tab) -> None:
    server = serve()
    oid = kick_off(server, "sleepy", [{"n": n, "seconds": 60} for n in range(4)], parallelism=1)
    page = tab.page
    page.goto(f"{server.url}/orchestrations/{oid}")
    expect(by_id(page, "status")).to_have_text("InProgress")

    def refuse(dialog: Dialog) -> None:
        dialog.dismiss()

    page.once("dialog", refuse)
    by_id(page, "cancel-button").click()
    expect(by_id(page, "cancel-button")).to_be_enabled()
    assert status_of(server, oid)["status"] == "InProgress"

    page.once("dialog", lambda dialog: dialog.accept())
    by_id(page, "cancel-button").click()
    expect(by_id(page, "status")).to_have_text("Cancelled")
    expect(by_id(page, "count-cancelled")).to_have_text("4")
    expect(by_id(page, "count-succeeded")).to_have_text("0")
    expect(by_id(page, "cancel-button")).to_be_disabled()
    expect(by_id(page, "live-state")).to_have_text("Finished")
    expect(by_id(page, "progress-bar")).to_have_attribute("aria-valuenow", "4")
    # What never ran is listed with its params, so it can be kicked off again.
    expect(by_id(page, "failure-status")).to_have_text(["Cancelled"] * 4)
    listed = [json.loads(text) for text in by_id(page, "failure-params").all_inner_texts()]
    assert listed == [{"n": n, "seconds": 60} for n in range(4)]

    api = status_of(server, oid)
    assert (api["status"], api["cancelled"], api["succeeded"]) == ("Cancelled", 4, 0)
    assert tab.unexpected_errors() == []


def test_an_unknown_orchestration_says_so(serve: ServerFactory, tab: Tab) -> None:
    server = serve()
    tab.page.goto(f"{server.url}/orchestrations/no-such-id")
    error = by_id(tab.page, "error")
    expect(error).to_contain_text("not found")
    expect(error).to_contain_text("no-such-id")
    expect(by_id(tab.page, "orchestration")).to_be_hidden()
    assert tab.unexpected_errors(404) == []


# -- the list ---------------------------------------------------------------------------


def test_the_index_lists_orchestrations_live_and_links_to_them(
    serve: ServerFactory, tab: Tab
) -> None:
    server = serve(env=DEMO_JOBS)
    first = kick_off(server, "greet", [{"name": "ada", "count": 1}])
    wait_until_ended(server, first)
    page = tab.page
    page.goto(f"{server.url}/")
    rows = by_id(page, "orchestration-row")
    expect(rows).to_have_count(1)

    params: list[dict[str, Any]] = [
        {"batch": b, "numbers": [b], "seconds": 0.05, "poison": b == 2} for b in range(4)
    ]
    second = kick_off(server, "process_batch", params, tags={"team": "data"})
    expect(rows).to_have_count(2)  # appeared by itself
    newest = rows.first
    expect(newest).to_have_attribute("data-orchestration-id", second)
    expect(by_id(newest, "status")).to_have_text("Errored", timeout=60_000)
    expect(by_id(newest, "count-succeeded")).to_have_text("3")
    expect(by_id(newest, "count-failed")).to_have_text("1")
    expect(by_id(newest, "count-total")).to_have_text("4")
    expect(by_id(newest, "tag")).to_have_text("team=data")
    bar = by_id(newest, "progress-bar")
    expect(bar).to_have_attribute("aria-valuenow", "4")
    expect(bar.locator(".succeeded")).to_have_attribute("style", re.compile(r"width: 75%"))
    expect(bar.locator(".failed")).to_have_attribute("style", re.compile(r"width: 25%"))
    expect(by_id(rows.last, "status")).to_have_text("Completed")

    by_id(newest, "orchestration-link").click()
    expect(page).to_have_url(f"{server.url}/orchestrations/{second}")
    expect(by_id(page, "status")).to_have_text("Errored")
    expect(by_id(page, "failure-row")).to_have_count(1)
    assert tab.unexpected_errors() == []


def test_the_index_pages_and_filters(serve: ServerFactory, tab: Tab) -> None:
    server = serve()
    made = [kick_off(server, "maybe_fail", [{"n": n, "fail": n == 1}]) for n in range(3)]
    for oid in made:
        wait_until_ended(server, oid)
    page = tab.page
    rows = by_id(page, "orchestration-row")
    more = by_id(page, "load-more")

    page.goto(f"{server.url}/?limit=2")
    expect(rows).to_have_count(2)
    expect(rows.first).to_have_attribute("data-orchestration-id", made[2])
    more.click()
    expect(rows).to_have_count(3)
    expect(rows.last).to_have_attribute("data-orchestration-id", made[0])
    expect(more).to_be_hidden()
    # Two refreshes later (each starts once the one before has been shown), the rows
    # "Load more" brought are still there.
    for _ in range(2):
        with page.expect_request(lambda r: "/v1/orchestrations?" in r.url):
            pass
    expect(rows).to_have_count(3)

    page.goto(f"{server.url}/?status=Errored")
    expect(by_id(page, "filter-status")).to_have_value("Errored")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-orchestration-id", made[1])
    assert tab.unexpected_errors() == []


# -- signing in ---------------------------------------------------------------------------


def test_with_a_token_the_dashboard_asks_to_sign_in(serve: ServerFactory, tab: Tab) -> None:
    server = serve(token="secret")
    done = kick_off(server, "greet", [{"name": "ada", "count": 1}])
    wait_until_ended(server, done)
    page = tab.page

    answer = page.goto(f"{server.url}/")
    assert answer is not None and answer.status == 401
    by_id(page, "login-token").fill("not-the-token")
    by_id(page, "login-submit").click()
    expect(by_id(page, "error")).to_contain_text("not valid")
    assert page.context.cookies() == []

    by_id(page, "login-token").fill("secret")
    by_id(page, "login-submit").click()
    expect(by_id(page, "orchestration-row")).to_have_count(1)
    [cookie] = page.context.cookies()
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""  # out of reach of scripts

    # EventSource cannot send a header: the cookie is what lets the live feed in.
    running = kick_off(server, "sleepy", [{"n": 1, "seconds": 3}])
    page.goto(f"{server.url}/orchestrations/{running}")
    expect(by_id(page, "status")).to_have_text("InProgress")
    expect(by_id(page, "live-state")).to_have_text("Live")
    expect(by_id(page, "status")).to_have_text("Completed")
    expect(by_id(page, "count-succeeded")).to_have_text("1")

    page.get_by_role("button", name="Sign out").click()
    expect(by_id(page, "login-token")).to_be_visible()
    assert page.context.cookies() == []
    assert tab.unexpected_errors(401) == []


# -- schedules ----------------------------------------------------------------------------


def test_the_schedules_page_shows_a_schedule_and_run_now_starts_a_run(
    serve: ServerFactory, tab: Tab
) -> None:
    server = serve(args=["--no-scheduler"])
    created = httpx.post(f"{server.url}/v1/schedules", headers=server.headers(), timeout=30, json={
        "name": "morning", "job_name": "greet", "cron": "0 6 * * 1-5",
        "timezone": "Europe/Paris", "params": [{"name": "ada", "count": 1}],
    })
    assert created.status_code == 201, created.text
    page = tab.page
    page.goto(f"{server.url}/")
    page.get_by_role("link", name="Schedules").click()
    expect(page).to_have_url(f"{server.url}/schedules")

    row = by_id(page, "schedule-row")
    expect(row).to_have_count(1)
    expect(by_id(row, "schedule-name")).to_have_text("morning")
    expect(by_id(row, "schedule-cron")).to_have_text("0 6 * * 1-5")
    expect(by_id(row, "schedule-timezone")).to_have_text("Europe/Paris")
    expect(by_id(row, "schedule-state")).to_have_text("Active")
    expect(by_id(row, "schedule-next").locator("time")).to_have_count(1)
    expect(by_id(row, "schedule-fires")).to_have_text("No runs yet")

    by_id(row, "pause-button").click()
    expect(by_id(row, "schedule-state")).to_have_text("Paused")
    expect(by_id(row, "pause-button")).to_have_text("Resume")
    paused = httpx.get(f"{server.url}/v1/schedules/morning", headers=server.headers(), timeout=30)
    assert paused.json()["paused"] is True

    by_id(row, "run-now-button").click()  # a run now, paused or not
    expect(by_id(page, "notice-link")).to_be_visible()
    link = by_id(row, "fire-link")
    expect(link).to_have_count(1)
    expect(by_id(link, "fire-status")).to_have_text("Completed", timeout=60_000)  # refreshed
    runs = httpx.get(f"{server.url}/v1/orchestrations", headers=server.headers(), timeout=30,
                     params={"tag": "schedule:morning"}).json()["orchestrations"]
    assert [r["status"] for r in runs] == ["Completed"]
    link.click()
    expect(page).to_have_url(f"{server.url}/orchestrations/{runs[0]['orchestration_id']}")
    expect(by_id(page, "count-succeeded")).to_have_text("1")

    page.go_back()
    by_id(page, "pause-button").click()
    expect(by_id(page, "schedule-state")).to_have_text("Active")
    assert tab.unexpected_errors() == []


# -- pipelines and re-runs ------------------------------------------------------------------


def test_a_stage_shows_its_pipeline_live_and_links_each_stage(
    serve: ServerFactory, tab: Tab
) -> None:
    server = serve()
    reply = httpx.post(f"{server.url}/v1/orchestrations", headers=server.headers(), timeout=30,
                       json={"job_name": "greet", "params": [{"name": "a", "count": 1}],
                             "then": [{"job": "sleepy", "params": [{"n": 1, "seconds": 2}]},
                                      {"job": "load", "params": [{"values": [1, 2]}]}]})
    assert reply.status_code == 202, reply.text
    first = reply.json()["orchestration_id"]
    page = tab.page
    page.goto(f"{server.url}/orchestrations/{first}")
    page.evaluate("window.sameDocument = true")

    stages = by_id(page, "pipeline-stage")
    expect(stages).to_have_count(3, timeout=60_000)  # stages appear as they start
    expect(by_id(page, "pipeline-stage-status")).to_have_text(["Completed"] * 3,
                                                               timeout=60_000)
    assert page.evaluate("window.sameDocument") is True  # no reload
    expect(by_id(page, "pipeline-stage-link")).to_have_text(["1. greet", "2. sleepy", "3. load"])
    expect(by_id(page, "pipeline-stage-future")).to_have_count(0)
    expect(stages.nth(0)).to_have_attribute("aria-current", "page")
    expect(page.locator(".stages li.current")).to_have_count(1)
    expect(by_id(page, "pipeline-note")).to_be_hidden()
    ids = [stages.nth(n).get_attribute("data-orchestration-id") for n in range(3)]

    by_id(page, "pipeline-stage-link").nth(2).click()
    page.wait_for_url(f"**/orchestrations/{ids[2]}")
    expect(by_id(page, "job-name")).to_have_text("load")
    expect(by_id(page, "pipeline-stage").nth(2)).to_have_attribute("aria-current", "page")
    expect(by_id(page, "pipeline-stage").nth(0)).not_to_have_attribute("aria-current", "page")
    assert tab.unexpected_errors() == []


def test_a_stopped_pipeline_says_why_where_it_stopped(serve: ServerFactory, tab: Tab) -> None:
    server = serve()
    reply = httpx.post(f"{server.url}/v1/orchestrations", headers=server.headers(), timeout=30,
                       json={"job_name": "maybe_fail", "params": [{"n": 1, "fail": True}],
                             "then": [{"job": "greet", "params": [{"name": "b", "count": 2}]},
                                      {"job": "greet", "params": [{"name": "c", "count": 3}]}]})
    first = reply.json()["orchestration_id"]
    wait_until_ended(server, first)
    page = tab.page
    page.goto(f"{server.url}/orchestrations/{first}")
    expect(by_id(page, "pipeline-stage")).to_have_count(1)
    expect(by_id(page, "pipeline-note")).to_have_text(
        "The pipeline stopped after stage 1: the pipeline stops: this stage ended Errored")
    expect(by_id(page, "pipeline-stage-future")).to_have_count(0)
    assert tab.unexpected_errors() == []


def test_re_run_failed_starts_a_run_of_the_failures_and_links_both_ways(
    serve: ServerFactory, tab: Tab, tmp_path: Path
) -> None:
    server = serve()
    broken = tmp_path / "broken"
    broken.write_text("yes")
    oid = kick_off(server, "until_fixed",
                   [{"n": n, "broken": str(broken) if n in (1, 2) else ""} for n in range(4)])
    wait_until_ended(server, oid)
    page = tab.page
    page.goto(f"{server.url}/orchestrations/{oid}")
    button = by_id(page, "rerun-button")
    expect(button).to_be_visible()
    expect(button).to_have_text("Re-run failed")
    expect(by_id(page, "pipeline")).to_be_hidden()
    expect(by_id(page, "reruns")).to_be_hidden()
    broken.unlink()

    button.click()
    page.wait_for_url(re.compile(r".*/orchestrations/(?!" + re.escape(oid) + r")[0-9a-f-]+$"))
    rid = page.url.rsplit("/", 1)[1]
    expect(by_id(page, "status")).to_have_text("Completed")
    expect(by_id(page, "count-total")).to_have_text("2")
    expect(by_id(page, "rerun-of-link")).to_have_attribute("href", f"/orchestrations/{oid}")
    expect(by_id(page, "rerun-button")).to_be_hidden()  # nothing failed in the re-run
    assert status_of(server, rid)["tags"]["rerun_of"] == oid

    by_id(page, "rerun-of-link").click()
    page.wait_for_url(f"**/orchestrations/{oid}")
    expect(by_id(page, "rerun-link")).to_have_count(1)
    expect(by_id(page, "rerun-link")).to_have_attribute("href", f"/orchestrations/{rid}")
    assert tab.unexpected_errors() == []


# -- webhooks ---------------------------------------------------------------------------


def test_the_webhooks_section_shows_a_failed_attempt_then_the_delivery(
    serve: ServerFactory, tab: Tab, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("JOBFLEET_WEBHOOK_SECRET", SECRET)  # the server inherits both
    monkeypatch.setenv("JOBFLEET_WEBHOOK_ALLOW", "http,private")
    server = serve()
    with receiver([500, 200]) as hook:
        oid = kick_off(server, "greet", [{"name": "a", "count": 1}], webhooks=[hook.url])
        wait_until_ended(server, oid)
        page = tab.page
        page.goto(f"{server.url}/orchestrations/{oid}")
        page.evaluate("window.sameDocument = true")

        section = by_id(page, "webhooks")
        expect(section).to_be_visible()
        delivery = by_id(section, "webhook-delivery")
        expect(delivery).to_have_count(1)
        expect(by_id(delivery, "webhook-url")).to_have_text(hook.url)
        expect(by_id(delivery, "webhook-state")).to_have_text("pending")
        expect(by_id(delivery, "webhook-next-attempt")).to_be_visible()
        expect(by_id(delivery, "webhook-attempt-outcome")).to_have_text(["HTTP 500"])
        page.screenshot(path=str(tmp_path / "webhooks-pending.png"), full_page=True)

        with JobFleet() as fleet:  # the same home: the sweep a day's clock would run
            [pending] = deliveries(fleet, oid)
            assert pending.next_attempt_at is not None
            fleet.sweep(now=pending.next_attempt_at)
        assert len(hook.received) == 2

        # The page reads the deliveries again while one is pending: no reload.
        expect(by_id(delivery, "webhook-state")).to_have_text("delivered", timeout=15_000)
        expect(by_id(delivery, "webhook-attempt-outcome")).to_have_text(["HTTP 500", "HTTP 200"])
        expect(by_id(delivery, "webhook-next-attempt")).to_have_count(0)
        assert page.evaluate("window.sameDocument") is True
        page.screenshot(path=str(tmp_path / "webhooks-delivered.png"), full_page=True)
    assert tab.unexpected_errors() == []
