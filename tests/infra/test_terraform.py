"""The Terraform module and its example: they parse, checkov's checks pass over them
(and fail over a bad snippet, so a pass means something), every skip of a check is
justified where it applies, and the module keeps the deployment's shared rules: one
region, the image label, no basic roles."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import hcl2
import pytest
import yaml

from infra.conftest import Checkov
from infra.terraform_files import EXAMPLE, MODULE, ROOT, Module, first, module, tf_files, unquote
from jobfleet.config import DEFAULT_REGION

SKIP = re.compile(r"#\s*checkov:skip=(\S+?):(.*)$")
BLOCK_START = re.compile(r'^resource\s+"([^"]+)"\s+"([^"]+)"\s*\{\s*$')
IMAGE_LABEL = "${local.deployment_image_label}"


@pytest.mark.parametrize("path", tf_files(MODULE, EXAMPLE), ids=lambda p: p.name)
def test_every_terraform_file_parses(path: Path) -> None:
    with path.open() as f:
        parsed = hcl2.load(f)
    assert parsed, f"{path} holds nothing"


def test_checkov_passes_the_module_and_the_example(checkov: Checkov) -> None:
    for folder in (MODULE, EXAMPLE):
        report = checkov(folder)
        results = report["results"]
        failed = [f"{c['check_id']} {c['resource']}: {c['check_name']}"
                  for c in results["failed_checks"]]
        assert failed == [], f"checkov failed checks over {folder}"
        assert results["parsing_errors"] == []
        assert report["summary"]["passed"] > 0


def test_checkov_fails_a_bad_snippet(checkov: Checkov, tmp_path: Path) -> None:
    """The check can fail: a public bucket and a public topic are caught."""
    (tmp_path / "main.tf").write_text(
        'resource "google_storage_bucket" "open" {\n'
        '  name     = "anyone-reads"\n'
        '  location = "US"\n'
        "}\n"
        'resource "google_pubsub_topic_iam_member" "open" {\n'
        '  topic  = "events"\n'
        '  role   = "roles/pubsub.publisher"\n'
        '  member = "allUsers"\n'
        "}\n"
    )
    report = checkov(tmp_path)
    failed = {c["check_id"] for c in report["results"]["failed_checks"]}
    assert "CKV_GCP_29" in failed  # uniform bucket-level access
    assert "CKV_GCP_99" in failed  # a topic open to anyone


def skips_in(path: Path) -> list[tuple[str, str, str, int]]:
    """(check id, reason, resource address in the file, line) of every skip comment,
    and the resource block it sits in; a skip outside any resource block fails."""
    found = []
    current: str | None = None
    depth = 0
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        start = BLOCK_START.match(line)
        if depth == 0 and start:
            current = f"{start[1]}.{start[2]}"
        skip = SKIP.search(line)
        if skip:
            assert current is not None and depth >= 1, (
                f"{path.name}:{number}: a checkov skip outside a resource block"
            )
            found.append((skip[1], skip[2].strip(), current, number))
        depth += line.count("{") - line.count("}")
        if depth == 0:
            current = None
    return found


def test_every_skip_is_inside_its_resource_with_a_reason(checkov: Checkov) -> None:
    """A skip names a check id, says why, and is one that checkov applied to the
    resource it sits in (a stale skip, or one for the wrong resource, fails)."""
    skips = [s for path in tf_files(MODULE) for s in skips_in(path)]
    assert skips, "the module skips some checks (customer-managed keys)"
    applied = {
        (c["check_id"], c["resource"])
        for c in checkov(MODULE)["results"]["skipped_checks"]
    }
    for check, reason, resource, line in skips:
        assert re.fullmatch(r"CKV2?_[A-Z0-9]+_\d+", check), f"line {line}: {check}"
        assert len(reason.split()) >= 4, f"{resource}: the skip of {check} gives no reason"
        assert any(c == check and r.endswith(resource) for c, r in applied), (
            f"{resource} skips {check}, which checkov does not apply there"
        )


def test_no_basic_roles_anywhere() -> None:
    for path in tf_files(MODULE, EXAMPLE):
        assert not re.search(r"roles/(owner|editor|viewer)\b", path.read_text()), path


def test_one_region_from_one_variable() -> None:
    """Every location is var.region (or another resource's, itself var.region), whose
    default is the SDK's; no region is written anywhere but that default."""
    tf = module()
    assert unquote(tf.variables["region"]["default"]) == DEFAULT_REGION
    placed = 0
    for (kind, name), body in tf.resources.items():
        for key in ("location", "region", "location_id"):
            if key in body:
                placed += 1
                value = str(body[key])
                assert value == "${var.region}" or re.fullmatch(
                    r"\$\{google_[\w.\[\]\"]+\.location\}", value
                ), f"{kind}.{name}.{key} = {value}"
    assert placed >= 10
    for path in tf_files(MODULE):
        if path.name != "variables.tf":
            assert not re.search(r'"(us|europe|asia)-[a-z]+\d"', path.read_text()), path


def test_what_runs_the_deployment_image_carries_the_label_and_keeps_cloud_build_s_image() -> None:
    tf = module()
    on_image = {
        **{f"job.{n}": b for n, b in tf.of_kind("google_cloud_run_v2_job").items()},
        **{f"service.{n}": b for n, b in tf.of_kind("google_cloud_run_v2_service").items()},
    }
    labelled = 0
    for name, body in on_image.items():
        ignored = str(first(body, "lifecycle")["ignore_changes"])
        if '"${var.image}"' in json.dumps(body):
            labelled += 1
            assert body.get("labels") == IMAGE_LABEL, name
            assert "containers[0].image" in ignored, name
        else:  # a worker class with an image of its own: its tfvars rule it
            assert "labels" not in body, name
            assert "image" not in ignored, name
    assert labelled == 3  # the worker jobs (a for_each), the API and the completion service
    assert tf.local_map("deployment_image_label") == {"jobfleet-image": '"deployment"'}


# -- the first apply and the plan ---------------------------------------------------------
# No provider can be downloaded here, so `terraform plan` cannot run: these read the
# expressions instead, with the locals they name written out.

RESOURCE_ATTRIBUTE = re.compile(r"\bgoogle_\w+\.\w+(\[[^\]]*\])?\.\w+")
CLOUD_RUN_BINDINGS = (
    "google_cloud_run_v2_job_iam_member", "google_cloud_run_v2_service_iam_member",
)


def expanded(tf: Module, expression: Any, depth: int = 8) -> str:
    """An expression with each `local.x` replaced by the local's definition, repeatedly."""
    written = str(expression)
    for _ in range(depth):
        longer = re.sub(
            r"\blocal\.(\w+)",
            lambda m: f"({tf.locals[m[1]]})" if m[1] in tf.locals else m[0],
            written,
        )
        if longer == written:
            break
        written = longer
    return written


def gated(tf: Module, body: dict[str, Any]) -> bool:
    """Whether a resource exists only once there is an image (count or for_each on it)."""
    return "var.image" in expanded(tf, f"{body.get('count', '')} {body.get('for_each', '')}")


def binding_follows_its_resource(tf: Module, body: dict[str, Any]) -> bool:
    """A binding on a Cloud Run job or service names it through the resource itself, so
    that it waits for it and exists only when it does (not by a name written anew)."""
    named = expanded(tf, f"{body['name']} {body.get('for_each', '')} {body.get('count', '')}")
    return bool(re.search(r"\bgoogle_cloud_run_v2_(job|service)\.\w+", named))


def for_each_keys_known_when_planning(tf: Module, body: dict[str, Any]) -> bool:
    """A for_each names no attribute of another resource (an e-mail, a name), which is
    unknown until that resource exists: Terraform refuses such keys at plan time."""
    return "for_each" not in body or not RESOURCE_ATTRIBUTE.search(expanded(tf, body["for_each"]))


def test_the_plan_checks_fail_the_forms_they_are_for() -> None:
    """The checks below catch a binding on a job by a name of its own and a for_each
    keyed by an account's e-mail (as the module once had them)."""
    tf = Module(locals={
        "worker_jobs": "${merge({(local.worker_job) = 1}, {})}",
        "worker_job": '${"${var.prefix}-worker"}',
        "job_developers": '${{for pair in setproduct(keys(local.worker_jobs), ["api"]) : '
                          'pair[0] => {job = pair[0], role = pair[1]}}}',
    })
    by_name = {"name": "${each.value.job}", "for_each": "${local.job_developers}"}
    assert not binding_follows_its_resource(tf, by_name)
    by_email = {"for_each": '${toset([google_service_account.role["scheduler"].member])}'}
    assert not for_each_keys_known_when_planning(tf, by_email)
    assert for_each_keys_known_when_planning(tf, {"for_each": "${google_cloud_run_v2_job.worker}"})


def test_bindings_on_cloud_run_jobs_and_services_follow_those_resources() -> None:
    """On the first apply (no image) the jobs on the deployment's image do not exist: a
    binding naming one by its name would fail with 404 (and race its creation later)."""
    tf = module()
    bindings = {
        f"{kind}.{name}": body
        for kind in CLOUD_RUN_BINDINGS for name, body in tf.of_kind(kind).items()
    }
    assert len(bindings) >= 5
    for name, body in bindings.items():
        assert binding_follows_its_resource(tf, body), name


def test_every_for_each_has_keys_known_when_planning() -> None:
    tf = module()
    for (kind, name), body in tf.resources.items():
        assert for_each_keys_known_when_planning(tf, body), f"{kind}.{name}: {body['for_each']}"


def test_what_names_a_part_made_on_the_image_exists_only_with_it() -> None:
    """`x[0]` of a resource with count = 0 fails the plan: whatever indexes a resource
    that waits for the image waits for it too."""
    tf = module()
    waits = {(k, n) for (k, n), body in tf.resources.items() if gated(tf, body)}
    assert ("google_cloud_run_v2_service", "api") in waits
    for (kind, name), body in tf.resources.items():
        for target in re.findall(r"\b(google_\w+)\.(\w+)\[0\]", json.dumps(body)):
            if target in waits:
                assert (kind, name) in waits, f"{kind}.{name} indexes {'.'.join(target)}"


def test_the_sweep_exists_from_the_first_apply_paused_until_the_api_does() -> None:
    """The first build's `jobfleet schedules sync` runs ensure_sweep, which creates the
    sweep job if it is missing: made by a later apply, Terraform's create would fail
    with 409 (already exists)."""
    config = yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())
    assert config["steps"][-1]["args"][:2] == ["schedules", "sync"]
    sweep = module().resource("google_cloud_scheduler_job", "sweep")
    assert "count" not in sweep and "for_each" not in sweep
    assert sweep["paused"] == "${!local.deployed}"


def test_worker_jobs_ask_no_more_parallelism_than_their_task_count() -> None:
    """Cloud Run documents parallelism as at most the task count (the job's own, before
    any kick-off overrides it); 0 is no limit."""
    tf = module()
    assert tf.variables["worker_parallelism"]["default"] == 0
    for name, body in tf.of_kind("google_cloud_run_v2_job").items():
        execution = first(body, "template")
        assert execution["parallelism"] == "${var.worker_parallelism}", name
        assert execution["task_count"] == "${max(var.worker_parallelism, 1)}", name
