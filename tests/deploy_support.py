"""What the deployment files (infra/, cloudbuild.yaml, job_image/) are checked against:
the environment variables the code reads, found in the code itself."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SDK = ROOT / "sdk" / "jobfleet"
# Read through helpers that take the mapping first and the name second.
_NAMED_READERS = {"_positive", "_choice"}


def env_names_read(package: Path = SDK) -> set[str]:
    """Every environment variable name the package reads: `env.get("X")`,
    `os.environ.get("X")`, `env["X"]` (loaded, not stored) and the settings helpers."""
    names: set[str] = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            name = _read_name(node)
            if name:
                names.add(name)
    return names


def _read_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        if node.func.attr == "get" and node.args and _is_env(node.func.value):
            return _text(node.args[0])
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        if node.func.id in _NAMED_READERS and len(node.args) >= 2:
            return _text(node.args[1])
    if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
        if _is_env(node.value):
            return _text(node.slice)
    return None


def _is_env(node: ast.AST) -> bool:
    if isinstance(node, ast.Name):
        return node.id in {"env", "environ"}
    return isinstance(node, ast.Attribute) and node.attr == "environ"


def _text(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.isupper():
        return node.value
    return None
