"""The Terraform module (infra/) and its example root as data, parsed with python-hcl2,
for the tests that hold them to the code. No Terraform binary and no provider is
needed: the tests read what the files say, not what a plan would make of them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import hcl2

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "infra"
EXAMPLE = ROOT / "examples" / "acme_jobs" / "deploy"
ROLES = ("worker", "api", "completion", "scheduler", "trigger", "deployer")


def tf_files(*folders: Path) -> list[Path]:
    return sorted(p for folder in folders for p in folder.glob("*.tf"))


def text(value: Any) -> str | None:
    """A quoted literal's text ('"x"' -> 'x'); None for an expression ("${...}")."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        inner = value[1:-1]
        return None if "${" in inner else inner
    return None


def unquote(value: Any) -> str:
    """A string as written, without the quotes hcl2 keeps ('"a-${b}"' -> 'a-${b}')."""
    assert isinstance(value, str), value
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


@dataclass
class Module:
    resources: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    locals: dict[str, Any] = field(default_factory=dict)
    variables: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def resource(self, kind: str, name: str) -> dict[str, Any]:
        return self.resources[(kind, name)]

    def of_kind(self, kind: str) -> dict[str, dict[str, Any]]:
        return {name: body for (k, name), body in self.resources.items() if k == kind}

    def local_map(self, name: str) -> dict[str, Any]:
        """A local written as a map literal, its keys unquoted."""
        value = self.locals[name]
        assert isinstance(value, dict), f"local.{name} is not a map literal: {value!r}"
        return {unquote(k): v for k, v in value.items() if k != "__comments__"}


@cache
def module(folder: Path = MODULE) -> Module:
    parsed = Module()
    for path in tf_files(folder):
        with path.open() as f:
            doc = hcl2.load(f)
        for block in doc.get("resource", []):
            for kind, named in block.items():
                for name, body in named.items():
                    parsed.resources[(unquote(kind), unquote(name))] = body
        for block in doc.get("locals", []):
            parsed.locals.update({k: v for k, v in block.items() if k != "__comments__"})
        for block in doc.get("variable", []):
            parsed.variables.update({unquote(k): v for k, v in block.items()})
        for block in doc.get("output", []):
            parsed.outputs.update({unquote(k): v for k, v in block.items()})
    return parsed


def first(body: dict[str, Any], *path: str) -> dict[str, Any]:
    """The nested block at `path` (hcl2 gives each block as a list of one, and a block
    label such as dynamic "env" in quotes)."""
    for name in path:
        blocks = body[name] if name in body else body[f'"{name}"']
        body = blocks[0] if isinstance(blocks, list) else blocks
    return body


def local_ref(expression: Any) -> str | None:
    """'${local.name}' -> 'name'."""
    match = re.fullmatch(r"\$\{local\.(\w+)\}", str(expression))
    return match[1] if match else None


def accounts_in(expression: Any) -> set[str]:
    """The roles whose service account an expression names: role["api"]."""
    return set(re.findall(r'google_service_account\.role\["(\w+)"\]', str(expression)))


def role_names_in(expression: Any) -> set[str]:
    """The role names quoted in an expression ("api", "completion"), of ROLES only."""
    return {name for name in re.findall(r'"(\w+)"', str(expression)) if name in ROLES}
