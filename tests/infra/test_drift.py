"""The Terraform module against the code it deploys: the environment each role gets and
the names the code reads; the Firestore indexes and the queries the code runs; the
roles each service account is granted and the Google calls its code makes; the sweep
job and what the code's ensure_sweep makes; the worker classes and Resources."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from google.cloud import scheduler_v1

import sample_jobs  # noqa: F401  (registers `greet`, the job of the schedule below)
from conftest import Emulators
from deploy_support import env_names_read
from infra.firestore_queries import IndexShape, QueryRecorder
from infra.google_calls import (
    CALLS,
    NOT_DEPLOYED,
    PREDEFINED,
    calls_in_code,
    grants,
    needs,
)
from infra.terraform_files import (
    EXAMPLE,
    ROLES,
    Module,
    first,
    local_ref,
    module,
    text,
    unquote,
)
from jobfleet.backends.gcp.cloud_scheduler import SWEEP_JOB, CloudSchedulerTimer
from jobfleet.backends.gcp.google_apis import client_arguments
from jobfleet.config import DEFAULT_CLOUD_RUN_JOB, DEFAULT_TOPIC, Settings
from jobfleet.core.models import (
    ClaimedInstance,
    ErrorInfo,
    NewInstance,
    NewOrchestration,
    Outcome,
    RunOptions,
    Status,
)
from jobfleet.core.resources import Resources
from jobfleet.core.schedules import Fire, FireState, Trigger, build
from jobfleet.core.webhooks import new_delivery
from jobfleet.core.worker_classes import WorkerClass, cloud_run_job

# -- the environment ---------------------------------------------------------------------

# What each role's code cannot do without (jobfleet/config.py, api/auth.py):
# every process: the gcp backend (Settings.from_env), the project (require_project: the
# Firestore client), the retention of what it writes (expire_at); those that start runs:
# the region and job (CloudRunLauncher's job path) and the topic (PubSubEventBus); the
# API: its audience and principals (authenticator_from_env refuses ID tokens without
# them), and the API URL and scheduler account for Cloud Scheduler jobs
# (CloudSchedulerTimer._api_url, _service_account).
EVERY_PROCESS = {"JOBFLEET_BACKEND", "GOOGLE_CLOUD_PROJECT", "JOBFLEET_RETENTION_DAYS"}
LAUNCHER = {"JOBFLEET_REGION", "JOBFLEET_CLOUD_RUN_JOB", "JOBFLEET_TOPIC"}
REQUIRED_ENV = {
    "worker": EVERY_PROCESS,
    "completion": EVERY_PROCESS | LAUNCHER,
    "api": EVERY_PROCESS | LAUNCHER | {
        "JOBFLEET_API_AUDIENCE", "JOBFLEET_API_PRINCIPALS", "JOBFLEET_API_URL",
        "JOBFLEET_SCHEDULER_SERVICE_ACCOUNT",
    },
}
# Set by Cloud Run itself, which refuses them in a deployment.
RESERVED = {"PORT", "K_SERVICE", "K_REVISION", "K_CONFIGURATION", "CLOUD_RUN_JOB",
            "CLOUD_RUN_EXECUTION", "CLOUD_RUN_TASK_INDEX", "CLOUD_RUN_TASK_ATTEMPT",
            "CLOUD_RUN_TASK_COUNT"}
# Which local each deployed role's containers take their environment from.
ENV_OF = {
    "worker": [("google_cloud_run_v2_job", "worker"),
               ("google_cloud_run_v2_job", "worker_own_image")],
    "api": [("google_cloud_run_v2_service", "api")],
    "completion": [("google_cloud_run_v2_service", "completion")],
}


def role_env(tf: Module, role: str) -> set[str]:
    """The names a role's containers get, checking that each of its resources takes
    them from the same local."""
    sources = set()
    for kind, name in ENV_OF[role]:
        container = first(tf.resource(kind, name), "template", *(
            ["template"] if kind.endswith("_job") else []), "containers")
        sources.add(local_ref(first(container, "dynamic", "env")["for_each"]))
    [source] = sources
    assert source == f"{role}_env", f"{role}'s containers take local.{source}"
    return set(tf.local_map(source))


@pytest.mark.parametrize("role", sorted(REQUIRED_ENV))
def test_each_role_gets_what_its_code_needs_and_only_names_the_code_reads(role: str) -> None:
    given = role_env(module(), role)
    read = env_names_read()
    assert REQUIRED_ENV[role] <= given, f"{role} misses {REQUIRED_ENV[role] - given}"
    assert given <= read, f"{role} is given names no code reads: {given - read}"
    assert not given & RESERVED


def test_the_names_match_the_sdk_defaults() -> None:
    """With the default prefix the module's names are the SDK's defaults, so a client
    that sets nothing but the project finds the deployment."""
    tf = module()
    prefix = unquote(tf.variables["prefix"]["default"])
    worker = unquote(tf.locals["worker_job"]).replace("${var.prefix}", prefix)
    topic = unquote(tf.locals["topic"]).replace("${var.prefix}", prefix)
    assert (worker, topic) == (DEFAULT_CLOUD_RUN_JOB, DEFAULT_TOPIC)
    exports = str(tf.outputs["client_exports"]["value"])
    for name in ("JOBFLEET_BACKEND", "GOOGLE_CLOUD_PROJECT", "JOBFLEET_REGION",
                 "JOBFLEET_CLOUD_RUN_JOB", "JOBFLEET_TOPIC", "JOBFLEET_API_URL"):
        assert name in exports and name in env_names_read()


def test_the_worker_classes_are_named_and_shaped_as_the_code_makes_them() -> None:
    """var.worker_classes takes the entries `jobfleet worker-classes` writes
    (WorkerClass.to_json); each class's Cloud Run job is named as the launcher looks it
    up (cloud_run_job); the example's classes are what Resources names them."""
    tf = module()
    declared = set(re.findall(r"(\w+)\s*=", unquote(tf.variables["worker_classes"]["type"])))
    assert declared == set(WorkerClass(Resources(), ("greet",)).to_json())
    assert '"${local.worker_job}-${c.name}"' in str(tf.locals["worker_jobs"])
    classes = json.loads((EXAMPLE / "worker_classes.auto.tfvars.json").read_text())
    assert classes["worker_classes"]
    for c in classes["worker_classes"]:
        resources = Resources(cpu=c["cpu"], memory=c["memory"], image=c["image"],
                              task_timeout=c["task_timeout_seconds"],
                              max_retries=c["max_retries"])
        assert resources.class_name == c["name"]
        assert WorkerClass(resources, tuple(c["jobs"])).to_json() == c
        job = cloud_run_job(DEFAULT_CLOUD_RUN_JOB, resources)
        assert job == f"{DEFAULT_CLOUD_RUN_JOB}-{c['name']}"



def test_the_examples_worker_classes_file_is_what_its_jobs_declare() -> None:
    """The example's tfvars file is what `jobfleet worker-classes` prints for its jobs
    now: a job whose resources changed without the file regenerated would launch onto a
    Cloud Run job that Terraform never made."""
    import os
    import subprocess
    import sys

    root = EXAMPLE.parent
    printed = subprocess.run(
        [sys.executable, "-m", "jobfleet", "worker-classes", "--jobs-module", "acme_jobs.jobs"],
        capture_output=True, text=True, timeout=120, cwd=root,
        env={**os.environ, "PYTHONPATH": str(root), "JOBFLEET_JOBS": ""},
    )
    assert printed.returncode == 0, printed.stderr
    written = (EXAMPLE / "worker_classes.auto.tfvars.json").read_text()
    assert json.loads(written) == json.loads(printed.stdout)
    assert written == printed.stdout, "regenerate it with `jobfleet worker-classes`"

# -- the sweep ---------------------------------------------------------------------------

@pytest.fixture
def scheduler_standin(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from jobfleet.dev.cloud_scheduler import CloudSchedulerStandIn

    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with CloudSchedulerStandIn(project="jobfleet-test", region="us-central1") as standin:
        yield standin


def test_the_sweep_job_is_the_one_ensure_sweep_makes(scheduler_standin: Any) -> None:
    """ensure_sweep runs against the Cloud Scheduler stand-in; the job it made is read
    back and compared, field by field, with the module's. (The API URL is a closed port
    on loopback: the stand-in sends its fires nowhere else.)"""
    api_url = "http://127.0.0.1:9"
    account = "jobfleet-scheduler@jobfleet-test.iam.gserviceaccount.com"
    settings = Settings(backend="gcp", project="jobfleet-test", region="us-central1",
                        scheduler_endpoint=scheduler_standin.url, api_url=api_url,
                        scheduler_service_account=account)
    timer = CloudSchedulerTimer(settings)
    timer.ensure_sweep()
    client = scheduler_v1.CloudSchedulerClient(**client_arguments(scheduler_standin.url))
    made = client.get_job(name=f"{timer.parent}/jobs/{SWEEP_JOB}")

    sweep = module().resource("google_cloud_scheduler_job", "sweep")
    target, retry = first(sweep, "http_target"), first(sweep, "retry_config")
    oidc = first(target, "oidc_token")
    assert text(sweep["name"]) == made.name.rsplit("/", 1)[-1]
    assert text(sweep["description"]) == made.description
    assert text(sweep["schedule"]) == made.schedule
    assert text(sweep["time_zone"]) == made.time_zone
    assert text(sweep["attempt_deadline"]) == f"{made.attempt_deadline.total_seconds():.0f}s"
    assert text(target["http_method"]) == made.http_target.http_method.name
    assert unquote(target["uri"]) == "${local.api_url}" + made.http_target.uri.removeprefix(
        api_url)
    assert made.http_target.oidc_token.audience == api_url
    assert oidc["audience"] == "${local.api_url}"
    assert made.http_target.oidc_token.service_account_email == account
    assert oidc["service_account_email"] == '${google_service_account.role["scheduler"].email}'
    assert retry["retry_count"] == made.retry_config.retry_count
    assert retry["max_doublings"] == made.retry_config.max_doublings
    for key in ("min_backoff_duration", "max_backoff_duration"):
        made_seconds = getattr(made.retry_config, key).total_seconds()
        assert text(retry[key]) == f"{made_seconds:.0f}s"
    assert sweep["region"] == "${var.region}"


# -- the Firestore indexes -----------------------------------------------------------------

def terraform_indexes(tf: Module) -> list[IndexShape]:
    found = []
    for name, entry in tf.local_map("firestore_indexes").items():
        fields = tuple((text(f) or "", text(mode) or "") for f, mode in entry["fields"])
        found.append(IndexShape(name, text(entry["collection"]) or "",
                                text(entry["scope"]) == "COLLECTION_GROUP", fields))
    return found


def exempted_fields(tf: Module) -> set[tuple[str, str]]:
    """(collection group, field) kept out of the single-field indexes."""
    fields = {(text(e["collection"]) or "", text(e["field"]) or "")
              for e in tf.local_map("unindexed_fields").values()}
    groups = tf.locals["ttl_collection_groups"]
    return fields | {(text(g) or "", "expire_at") for g in groups}


def run_every_query(project: str) -> None:
    """The store's operations, each with every filter it takes, as the worker, the
    API, the sweep, the completion function, schedules and webhooks make them."""
    from jobfleet.backends.gcp.firestore_store import FirestoreStore

    store = FirestoreStore(project)
    try:
        now = time.time()
        new = NewOrchestration(
            id=str(uuid.uuid4()), job_name="greet", tags={"team": "data"}, created_at=now,
            options=RunOptions(retries=1, backoff=1.0, timeout=None, parallelism=2),
        )
        batch = [NewInstance(str(uuid.uuid4()), i, i % 2, {"n": i}) for i in range(6)]
        store.create_orchestration(new, [batch])
        oid = new.id
        for job_name in (None, "greet"):
            for status in (None, Status.IN_PROGRESS):
                for tag in (None, ("team", "data")):
                    store.list_orchestrations(job_name=job_name, status=status, tag=tag)
        store.list_orchestrations(before=oid)
        store.get_orchestration(oid)
        claimed: list[ClaimedInstance] = store.claim(oid, 0, "w-1", limit=2, now=now, lease=30)
        store.heartbeat("w-1", now=now, lease=30)
        store.stale_claims(oid, now=now + 60)
        store.stale_claims(oid, now=now + 60, shard=0)
        outcomes = [Outcome(c.job_id, c.index, c.owner, Status.COMPLETED, result=1)
                    for c in claimed]
        store.record_outcomes(oid, outcomes)
        store.next_ready_at(oid, 0)
        store.unfinished_count(oid)
        store.unfinished_count(oid, 1)
        store.unfinished_shards(oid)
        store.progress(oid)
        store.list_instances(oid)
        store.list_instances(oid, status=Status.COMPLETED)
        store.changes_after(oid, after=now - 10)
        list(store.results(oid))
        store.unsettled_orchestrations()
        token = store.wake_token(oid)
        store.wait_for_wake(oid, token, 0.01)
        store.fail_unfinished(oid, 1, ErrorInfo("WorkerLost", "out of retries"), now=now)
        store.cancel(oid, now=now)
        store.create_webhook_deliveries(
            [new_delivery(oid, "https://hooks.example.com/done", "event-1", "{}", now)]
        )
        store.webhook_deliveries(oid)
        store.due_webhook_deliveries(now=now + 1, limit=10)
        schedule = build(name="nightly", job_name="greet", cron="0 3 * * *",
                         params=[{"name": "ada", "count": 1}])
        store.save_schedule(schedule, create=True)
        store.list_schedules()
        fire = Fire(schedule="nightly", scheduled_at=now, trigger=Trigger.CRON,
                    state=FireState.FIRING, attempt=0, fired_at=now, hold_until=now + 60,
                    reason="test")
        store.claim_fire(fire, now=now)
        store.list_fires("nightly")
        empty = NewOrchestration(
            id=str(uuid.uuid4()), job_name="greet", tags={}, created_at=now,
            options=RunOptions(retries=0, backoff=1.0, timeout=None, parallelism=1),
        )
        with pytest.raises(Exception, match="parameter"):  # a kick-off that cleans up
            store.create_orchestration(empty, [[]])
    finally:
        store.close()


QUERYING = ("where", "order_by", "collection_group", "stream", "on_snapshot", "count", "sum", "avg",
            "select", "start_after")


def query_functions() -> set[str]:
    """Every SDK function (file:name) that builds or runs a Firestore query, by reading
    the code: the inventory the recorded queries must cover."""
    import ast

    from infra.google_calls import FIRESTORE_MODULES, SDK, _imports

    found = set()
    for path in SDK.rglob("*.py"):
        if path.is_relative_to(SDK / "dev"):
            continue
        tree = ast.parse(path.read_text())
        if not _imports(tree) & set(FIRESTORE_MODULES):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for inner in ast.walk(node):
                    if (isinstance(inner, ast.Call) and isinstance(inner.func, ast.Attribute)
                            and inner.func.attr in QUERYING):
                        found.add(f"{path.name}:{node.name}")
                        break
    return found


@pytest.fixture(scope="module")
def recorded(emulators: Emulators) -> QueryRecorder:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in emulators.environment().items():
            patch.setenv(name, value)
        recorder = QueryRecorder()
        with recorder.recording():
            run_every_query(f"jobfleet-{uuid.uuid4().hex[:12]}")
    return recorder


def test_the_recorded_queries_cover_every_function_that_queries(
    recorded: QueryRecorder,
) -> None:
    missing = query_functions() - recorded.callers
    assert not missing, f"functions whose queries the run did not make: {sorted(missing)}"


def test_every_query_that_needs_a_composite_index_has_it(recorded: QueryRecorder) -> None:
    indexes = terraform_indexes(module())
    unserved = [
        q for q in recorded.queries
        if q.shape.needs_composite and not any(q.shape.served_by(i) for i in indexes)
    ]
    assert not unserved, "\n".join(f"{q.callers[-1]}: {q.shape}" for q in unserved)


def test_every_index_serves_a_query_the_code_makes(recorded: QueryRecorder) -> None:
    unused = [i.name for i in terraform_indexes(module())
              if not any(shape.served_by(i) for shape in recorded.shapes)]
    assert not unused, f"indexes no query uses: {unused}"


def test_no_query_reads_a_field_kept_out_of_the_indexes(recorded: QueryRecorder) -> None:
    exempt = exempted_fields(module())
    for shape in recorded.shapes:
        assert not {(shape.collection, f) for f in shape.fields} & exempt, shape


# -- the roles ---------------------------------------------------------------------------

def test_the_table_of_google_calls_is_the_code_s() -> None:
    in_code = calls_in_code()
    assert set(in_code) == set(CALLS), (
        f"called but not in the table: {sorted(set(in_code) - set(CALLS))}; "
        f"in the table but no longer called: {sorted(set(CALLS) - set(in_code))}"
    )


@pytest.mark.parametrize("role", ROLES)
def test_each_account_is_granted_what_its_role_needs_and_no_more(role: str) -> None:
    granted = grants(module()).get(role, set())
    assert granted <= set(PREDEFINED), f"roles missing from the table: {granted - set(PREDEFINED)}"
    held = set().union(*(PREDEFINED[g] for g in granted)) if granted else set()
    wanted = needs(role)
    assert wanted <= held, f"{role} lacks {sorted(wanted - held)}"
    for grant in granted:
        assert PREDEFINED[grant] & wanted, f"{role} holds {grant}, which nothing it does needs"


def test_project_wide_grants_are_only_where_no_resource_binding_exists() -> None:
    """Firestore, Cloud Scheduler, Cloud Logging, Eventarc's receiver and the listing of
    Cloud Run resources have no narrower resource; everything else is bound on its
    topic, job, service, account, repository, bucket or secret."""
    project_wide = {text(e["grant"]) for e in module().local_map("project_roles").values()}
    assert project_wide <= {
        "roles/datastore.user", "roles/cloudscheduler.admin", "roles/logging.viewer",
        "roles/logging.logWriter", "roles/eventarc.eventReceiver", "roles/run.viewer",
    }


def test_no_deployed_role_creates_topics_or_subscriptions() -> None:
    """The module makes the topics; subscriptions are the user's processes'."""
    for (client, method), (_, roles) in CALLS.items():
        if client.startswith("pubsub") and method != "publish":
            assert roles == (NOT_DEPLOYED,), (client, method)
