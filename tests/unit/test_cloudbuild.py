"""cloudbuild.yaml, checked as Cloud Build would read it for a manual build
(`gcloud builds submit`), and against the Dockerfile and the code it runs."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from deploy_support import env_names_read
from image_support import DOCKERFILE, ROOT, read
from jobfleet.config import Settings

CONFIG = ROOT / "cloudbuild.yaml"
# What Cloud Build substitutes in every build; the others ($SHORT_SHA, $BRANCH_NAME...)
# only in builds started by a trigger.
BUILT_IN = {"PROJECT_ID": "acme-prod", "BUILD_ID": "b-123", "PROJECT_NUMBER": "123456789",
            "LOCATION": "us-central1"}
REFERENCE = re.compile(r"\$\$|\$\{(\w+)\}|\$(\w+)")
STEPS = ["build", "push", "deploy", "schedules-sync"]


def load(path: Path = CONFIG) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(path.read_text())
    return config


def resolve(text: str, values: dict[str, str]) -> str:
    """Substitute as Cloud Build does: `$$` is a `$` for the step's shell."""
    def one(match: re.Match[str]) -> str:
        if match[0] == "$$":
            return "$"
        name = match[1] or match[2]
        if name not in values:
            raise KeyError(name)
        return values[name]

    return REFERENCE.sub(one, text)


def substitutions(config: dict[str, Any]) -> dict[str, str]:
    """The user substitutions' defaults, each resolved (dynamic substitutions: one may
    name another, or a built-in)."""
    defined: dict[str, str] = {k: str(v) for k, v in config.get("substitutions", {}).items()}
    resolved: dict[str, str] = {}
    for _ in defined:
        for name, value in defined.items():
            try:
                resolved[name] = resolve(value, {**BUILT_IN, **resolved})
            except KeyError:
                continue
    return resolved


def strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for value in node.values() for s in strings(value)]
    if isinstance(node, list):
        return [s for value in node for s in strings(value)]
    return []


def unresolved(config: dict[str, Any]) -> set[str]:
    """The `$X` and `${X}` a manual build has no value for."""
    known = set(BUILT_IN) | set(config.get("substitutions", {}))
    missing: set[str] = set()
    for text in strings({k: v for k, v in config.items() if k != "substitutions"}) + [
        str(v) for v in config.get("substitutions", {}).values()
    ]:
        for match in REFERENCE.finditer(text):
            name = match[1] or match[2]
            if name and name not in known:
                missing.add(name)
    return missing


def resolved_config() -> dict[str, Any]:
    config = load()
    values = {**BUILT_IN, **substitutions(config)}
    rendered: dict[str, Any] = yaml.safe_load(resolve(CONFIG.read_text(), values))
    return rendered


def step(config: dict[str, Any], step_id: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [s for s in config["steps"] if s["id"] == step_id]
    [one] = found
    return one


def test_every_substitution_has_a_value_in_a_manual_build() -> None:
    config = load()
    assert unresolved(config) == set()
    assert set(config["substitutions"]) >= {"_REGION", "_PREFIX", "_JOBS_DIR"}
    assert config["substitutions"]["_REGION"] == "us-central1"  # the SDK's DEFAULT_REGION
    assert config["options"]["dynamicSubstitutions"] is True  # _IMAGE names others


def test_a_copy_naming_a_trigger_only_substitution_or_an_unescaped_shell_variable_fails() -> None:
    config = load()
    tagged_by_commit = copy.deepcopy(config)
    tagged_by_commit["substitutions"]["_IMAGE"] = config["substitutions"]["_IMAGE"].replace(
        "${BUILD_ID}", "$SHORT_SHA")
    assert unresolved(tagged_by_commit) == {"SHORT_SHA"}
    unescaped = copy.deepcopy(config)
    script = step(unescaped, "deploy")["args"][1]
    step(unescaped, "deploy")["args"][1] = script.replace('"$$job"', '"$job"')
    assert unresolved(unescaped) == {"job"}


def test_every_user_substitution_is_used() -> None:
    """Cloud Build refuses a substitution that nothing names."""
    config = load()
    text = " ".join(strings({k: v for k, v in config.items() if k != "substitutions"})
                    + [str(v) for v in config["substitutions"].values()])
    for name in config["substitutions"]:
        assert re.search(r"\$\{?" + name + r"\b", text), name


def test_the_steps_build_push_deploy_then_sync_schedules_in_order() -> None:
    config = resolved_config()
    assert [s["id"] for s in config["steps"]] == STEPS
    assert not any("waitFor" in s for s in config["steps"])  # each waits for the one before
    image = "us-central1-docker.pkg.dev/acme-prod/jobfleet/jobs:b-123"
    build, push, deploy, sync = (step(config, i) for i in STEPS)
    assert build["args"][0] == "build" and build["args"][-1] == "."
    assert build["args"][build["args"].index("-t") + 1] == image
    assert push["args"] == ["push", image]
    script = deploy["args"][1]
    assert "metadata.labels.jobfleet-image=deployment" in script
    assert f"gcloud run jobs update \"$job\" --region=us-central1 --image={image}" in script
    assert f"gcloud run services update \"$service\" --region=us-central1 --image={image}" in script
    assert sync["name"] == image and sync["args"] == ["schedules", "sync"]
    assert config["images"] == [image]


def test_the_build_names_the_dockerfile_and_build_arguments_it_has() -> None:
    config = resolved_config()
    args = step(config, "build")["args"]
    assert ROOT / args[args.index("-f") + 1] == DOCKERFILE
    given = dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "--build-arg")
    image = read()
    assert set(given) <= set(image.args(image.stages[0])) | set(image.global_args)
    assert (ROOT / given["JOBS_DIR"] / "pyproject.toml").is_file()
    assert given["JOBS_MODULES"] == image.args(image.stages[0])["JOBS_MODULES"]


def test_schedules_sync_gets_the_settings_the_code_reads_for_the_deployed_api() -> None:
    config = resolved_config()
    env = dict(e.split("=", 1) for e in step(config, "schedules-sync")["env"])
    assert set(env) <= env_names_read()
    settings = Settings.from_env({**env, "JOBFLEET_BACKEND": "gcp"})
    assert settings.project == "acme-prod" and settings.region == "us-central1"
    # Cloud Run's deterministic URL of the API service `jobfleet-api`
    assert settings.api_url == "https://jobfleet-api-123456789.us-central1.run.app"
    assert settings.scheduler_service_account == (
        "jobfleet-scheduler@acme-prod.iam.gserviceaccount.com")
    for tool_step in ("build", "push", "deploy"):
        assert set(step(config, tool_step).get("env", [])) <= {"DOCKER_BUILDKIT=1"}


def test_the_build_runs_as_the_deployer_and_logs_to_cloud_logging() -> None:
    config = resolved_config()
    assert config["serviceAccount"] == (
        "projects/acme-prod/serviceAccounts/jobfleet-deployer@acme-prod.iam.gserviceaccount.com")
    assert load()["substitutions"]["_PREFIX"] == "jobfleet"  # the literal name above
    assert config["options"]["logging"] == "CLOUD_LOGGING_ONLY"

    from jobfleet.cli.main import _parser

    assert _parser().parse_args(step(config, "schedules-sync")["args"]).command == "schedules"
