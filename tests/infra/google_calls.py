"""Who calls what on Google Cloud, and what the Terraform module grants for it.

`CALLS` is every Google API call the SDK's code makes (client, method), the IAM
permissions it needs and the roles of the deployment whose code makes it.
`calls_in_code()` finds the calls in the code, so the table cannot fall behind it.
`OTHER_NEEDS` are the permissions of what is not the SDK's code: Cloud Scheduler and
Eventarc calling Cloud Run, Cloud Build deploying. `PREDEFINED` is what the granted
predefined roles hold, from Google's IAM role reference (only the permissions that
matter here are listed). `grants()` reads the module's bindings per service account.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

from infra.terraform_files import Module, accounts_in, local_ref, role_names_in, text, unquote

SDK = Path(__file__).resolve().parents[2] / "sdk" / "jobfleet"
NOT_DEPLOYED = "client"  # a user's own process: a laptop, CI, their next-stage subscriber

FIRESTORE = (
    "datastore.entities.get", "datastore.entities.list", "datastore.entities.create",
    "datastore.entities.update", "datastore.entities.delete",
)
LAUNCH = ("api", "completion")  # kick-offs, pipelines' next stages, the sweep's recoveries
SCHEDULES = ("api", "deployer")  # schedule changes through the API; `jobfleet schedules sync`
ACT_AS = "iam.serviceAccounts.actAs"

# (client, method): (permissions, roles whose code calls it)
CALLS: dict[tuple[str, str], tuple[tuple[str, ...], tuple[str, ...]]] = {
    # backends/gcp/cloud_run.py: one RunJob with overrides per kick-off; cancel; state.
    ("run.Jobs", "run_job"): (("run.jobs.runWithOverrides",), LAUNCH),
    ("run.Executions", "cancel_execution"): (("run.executions.cancel",), LAUNCH),
    ("run.Executions", "get_execution"): (("run.executions.get",), ("api",)),  # the sweep
    # backends/gcp/cloud_scheduler.py: create, update, pause or resume a schedule's job.
    # A job whose OIDC token is the scheduler's account needs actAs on that account.
    ("scheduler", "get_job"): (("cloudscheduler.jobs.get",), SCHEDULES),
    ("scheduler", "create_job"): (("cloudscheduler.jobs.create", ACT_AS), SCHEDULES),
    ("scheduler", "update_job"): (("cloudscheduler.jobs.update", ACT_AS), SCHEDULES),
    ("scheduler", "pause_job"): (("cloudscheduler.jobs.pause",), SCHEDULES),
    ("scheduler", "resume_job"): (("cloudscheduler.jobs.enable",), SCHEDULES),
    ("scheduler", "delete_job"): (("cloudscheduler.jobs.delete",), SCHEDULES),
    ("scheduler", "list_jobs"): (("cloudscheduler.jobs.list",), SCHEDULES),
    # backends/gcp/pubsub.py: the completion event, published by whoever settles.
    ("pubsub.Publisher", "publish"): (("pubsub.topics.publish",), LAUNCH),
    # ensure_topic: on the emulator only (PubSubEventBus.create_missing) and for
    # subscribers; in a deployment Terraform makes the topics, and a publisher that
    # finds none says so (TopicMissing) instead of creating it.
    ("pubsub.Publisher", "create_topic"): (("pubsub.topics.create",), (NOT_DEPLOYED,)),
    # backends/gcp/subscriptions.py and pubsub.py: subscribers of the events
    # (jobfleet.subscribe, `jobfleet events --follow`), the user's own processes.
    ("pubsub.Subscriber", "create_subscription"): (
        ("pubsub.subscriptions.create", "pubsub.topics.attachSubscription"), (NOT_DEPLOYED,)),
    ("pubsub.Subscriber", "get_subscription"): (("pubsub.subscriptions.get",), (NOT_DEPLOYED,)),
    ("pubsub.Subscriber", "update_subscription"): (
        ("pubsub.subscriptions.update",), (NOT_DEPLOYED,)),
    ("pubsub.Subscriber", "delete_subscription"): (
        ("pubsub.subscriptions.delete",), (NOT_DEPLOYED,)),
    ("pubsub.Subscriber", "subscribe"): (("pubsub.subscriptions.consume",), (NOT_DEPLOYED,)),
    # backends/gcp/cloud_logging.py: `jobfleet logs` and the API's log routes.
    ("logging", "list_entries"): (("logging.logEntries.list",), ("api",)),
    # webhooks.py: the signing secret, by whoever delivers webhooks (first attempts in
    # the completion service, retries in the API's sweep).
    ("secretmanager", "access_secret_version"): (("secretmanager.versions.access",), LAUNCH),
    # backends/gcp/firestore_*.py: the store, in every process that opens it.
    ("firestore", "*"): (FIRESTORE, ("worker", "api", "completion", "deployer")),
}

# What the code does not call but the deployment needs, per role.
OTHER_NEEDS: dict[str, tuple[str, ...]] = {
    # Cloud Scheduler POSTs fires and the sweep to the API with this account's token.
    "scheduler": ("run.routes.invoke",),
    # Eventarc delivers the shard updates to the completion service as this account.
    "trigger": ("run.routes.invoke", "eventarc.events.receiveEvent"),
    # cloudbuild.yaml: read the uploaded sources, push the image, find the labelled
    # jobs and services and update their image (they run as other accounts), write
    # the build's logs.
    "deployer": (
        "storage.objects.get", "artifactregistry.repositories.uploadArtifacts",
        "run.jobs.list", "run.services.list", "run.jobs.update", "run.services.update",
        ACT_AS, "logging.logEntries.create",
    ),
}

# The predefined roles the module grants, and the permissions of theirs that matter
# here (Google's IAM roles reference: run, datastore, cloudscheduler, logging, pubsub,
# secretmanager, iam, artifactregistry, storage, eventarc).
PREDEFINED: dict[str, frozenset[str]] = {
    "roles/datastore.user": frozenset(FIRESTORE),
    "roles/run.developer": frozenset({
        "run.jobs.get", "run.jobs.list", "run.jobs.run", "run.jobs.runWithOverrides",
        "run.jobs.update", "run.executions.get", "run.executions.list",
        "run.executions.cancel", "run.services.get", "run.services.list",
        "run.services.update",
    }),
    "roles/run.invoker": frozenset({"run.routes.invoke", "run.jobs.run"}),
    "roles/run.viewer": frozenset({
        "run.jobs.get", "run.jobs.list", "run.services.get", "run.services.list",
    }),
    "roles/cloudscheduler.admin": frozenset({
        "cloudscheduler.jobs.create", "cloudscheduler.jobs.delete",
        "cloudscheduler.jobs.enable", "cloudscheduler.jobs.get", "cloudscheduler.jobs.list",
        "cloudscheduler.jobs.pause", "cloudscheduler.jobs.run", "cloudscheduler.jobs.update",
    }),
    "roles/logging.viewer": frozenset({"logging.logEntries.list", "logging.logs.list"}),
    "roles/logging.logWriter": frozenset({"logging.logEntries.create"}),
    "roles/pubsub.publisher": frozenset({"pubsub.topics.publish"}),
    "roles/secretmanager.secretAccessor": frozenset({"secretmanager.versions.access"}),
    "roles/iam.serviceAccountUser": frozenset({ACT_AS, "iam.serviceAccounts.get"}),
    "roles/artifactregistry.writer": frozenset({
        "artifactregistry.repositories.uploadArtifacts",
        "artifactregistry.repositories.downloadArtifacts",
    }),
    "roles/storage.objectViewer": frozenset({"storage.objects.get", "storage.objects.list"}),
    "roles/eventarc.eventReceiver": frozenset({"eventarc.events.receiveEvent"}),
}

# -- the calls in the code -----------------------------------------------------------

# The module a client comes from, and the client classes of it (label, import path).
CLIENTS: dict[str, list[tuple[str, str]]] = {
    "google.cloud.run_v2": [("run.Jobs", "JobsClient"), ("run.Executions", "ExecutionsClient")],
    "google.cloud.scheduler_v1": [("scheduler", "CloudSchedulerClient")],
    "google.cloud.pubsub_v1": [("pubsub.Publisher", "PublisherClient"),
                               ("pubsub.Subscriber", "SubscriberClient")],
    "google.cloud.logging_v2": [("logging", "Client")],
    "google.cloud.secretmanager": [("secretmanager", "SecretManagerServiceClient")],
}
# Client members that make no call to Google, or are the library's own plumbing.
NOT_RPC = re.compile(
    r"^(_.*|.*_path|parse_.*|common_.*|from_service_account.*|get_mtls.*|[A-Z_]+|api|"
    r"api_endpoint|transport|universe_domain|target|close|closed|stop|resume_publish|"
    r"open_telemetry_enabled|ensure_cleanup_and_commit_timer_runs|logger|logging_api|"
    r"metric|metrics_api|sink|sinks_api|setup_logging|flush_handlers|get_default_handler|"
    r"get_operation|list_operations|delete_operation|wait_operation|get_location|"
    r"list_locations|get_iam_policy|set_iam_policy|test_iam_permissions)$"
)
FIRESTORE_MODULES = ("google.cloud.firestore", "google.cloud.firestore_v1")


def rpc_methods() -> dict[str, dict[str, str]]:
    """For each client module: RPC method name -> client label."""
    import importlib

    found: dict[str, dict[str, str]] = {}
    for module_name, clients in CLIENTS.items():
        module = importlib.import_module(module_name)
        methods = found.setdefault(module_name, {})
        for label, class_name in clients:
            for name in dir(getattr(module, class_name)):
                if not NOT_RPC.match(name):
                    methods.setdefault(name, label)
    return found


def _imports(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def calls_in_code(package: Path = SDK) -> dict[tuple[str, str], set[str]]:
    """(client, method) -> where: attribute calls and method names handed over as text
    (`self._call("get_job", ...)`) in the files that import that client's module;
    ("firestore", "*") for the files that use Firestore. The dev stand-ins (jobfleet.dev)
    are not deployed and are left out."""
    methods = rpc_methods()
    found: dict[tuple[str, str], set[str]] = {}
    for path in sorted(package.rglob("*.py")):
        if path.is_relative_to(package / "dev"):
            continue
        tree = ast.parse(path.read_text(), str(path))
        imported = _imports(tree)
        where = str(path.relative_to(package))
        if imported & set(FIRESTORE_MODULES):
            found.setdefault(("firestore", "*"), set()).add(where)
        for module_name, by_name in methods.items():
            if not any(i == module_name or i.startswith(module_name + ".") for i in imported):
                continue
            for node in ast.walk(tree):
                name = None
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                    name = node.func.attr
                elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                    name = node.value
                if name in by_name:
                    found.setdefault((by_name[name], name), set()).add(where)
    return found


def needs(role: str) -> set[str]:
    """Every permission a role's code and deployment need."""
    wanted = {p for (perms, roles) in CALLS.values() if role in roles for p in perms}
    return wanted | set(OTHER_NEEDS.get(role, ()))


# -- the module's grants -----------------------------------------------------------

def grants(tf: Module) -> dict[str, set[str]]:
    """account role -> the predefined roles bound to its service account, anywhere
    (project, topic, job, service, account, repository, bucket, secret)."""
    granted: dict[str, set[str]] = {}
    for (kind, _), body in tf.resources.items():
        if kind.endswith("_iam_member"):
            for account, role in _bindings(tf, body):
                granted.setdefault(account, set()).add(role)
    return granted


def _bindings(tf: Module, body: dict[str, Any]) -> list[tuple[str, str]]:
    """(account role, predefined role) of one binding resource, through its for_each:
    a local map whose entries name the account (`role`) and maybe the grant (`grant`),
    or any other collection in which the accounts' role names are quoted."""
    member, role = str(body["member"]), body["role"]
    for_each = body.get("for_each")
    source = local_ref(for_each)
    if source is not None and isinstance(tf.locals[source], dict) and "each.value." in member:
        return [
            (text(entry["role"]) or "", text(entry.get("grant", role)) or "")
            for entry in tf.local_map(source).values()
        ]
    assert text(role), f"the role of a binding is not a literal: {role}"
    accounts = accounts_in(member)
    if not accounts and "each.value" in member:
        accounts = role_names_in(tf.locals[source] if source else for_each)
    return [(account, unquote(role)) for account in accounts]
