"""The Terraform module and its example: they parse, checkov's checks pass over them
(and fail over a bad snippet, so a pass means something), every skip of a check is
justified where it applies, and the module keeps the deployment's shared rules: one
region, the image label, no basic roles."""

from __future__ import annotations

import json
import re
from pathlib import Path

import hcl2
import pytest

from infra.conftest import Checkov
from infra.terraform_files import EXAMPLE, MODULE, first, module, tf_files, unquote
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
