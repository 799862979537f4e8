"""Every example of the README (and of the local and HTTP API guides) runs as written.

The code blocks are taken from the Markdown and executed, in order, against a fresh
`JOBFLEET_HOME`:

- `sh` blocks run in `bash -e`, in a scratch folder whose `.venv` is this test run's
  virtual environment (the one the README's test command makes, with the dev extra); each
  must exit 0. A block that makes the virtual environment itself
  (`python3 -m venv .venv ...`) runs in a fresh copy of the repository's tracked files,
  as in a new clone.
- A block whose last command is `jobfleet serve` keeps running: it is started in the
  background, the blocks after it run once `/healthz` answers, and it is stopped at the
  end. So that tests on one machine do not collide on port 8080, the server gets a free
  port through `PORT` (which `serve` reads) and `localhost:8080` in later blocks is
  pointed at it.
- `python` blocks are saved as a script in the scratch folder and run with this
  environment's Python (the README says "save it as batch.py and run python batch.py").
  A block whose first line is a comment naming a file (`# nightly.py`) is saved under
  that name too, for the blocks after it to use (`--jobs-module nightly.py`).
- `text` blocks are not code. Every block names its language, so no example can
  escape the test by leaving it out.
- A block preceded by `<!-- not run: REASON -->` is skipped; REASON must be one of
  `NOT_RUN_REASONS`, and the marker is used sparingly (see the last test).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import eventually

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent
DOCUMENTS = ["README.md", "docs/local.md", "docs/http-api.md"]
NOT_RUN_REASONS = {
    "needs Google Cloud": "a real project, which no test has",
    "the test suite itself; .ci/run runs it verbatim": "it would run this test again",
}
MAX_NOT_RUN_IN_README = 2
KNOWN_LANGUAGES = {"sh", "python", "text"}
FENCE = re.compile(
    r"(?:<!-- not run: (?P<reason>[^>]*?) -->\n)?^```(?P<lang>[^\n`]*)\n(?P<code>.*?)^```$",
    re.MULTILINE | re.DOTALL,
)
SAVED_AS = re.compile(r"# (?P<name>[\w-]+\.py)\n")
SERVE = re.compile(r"^(?:\S*/)?jobfleet serve\b", re.MULTILINE)


@dataclass(frozen=True)
class Block:
    document: str
    line: int
    lang: str
    code: str
    not_run: str | None

    @property
    def serves(self) -> bool:
        last = [ln for ln in self.code.splitlines() if ln.strip()][-1]
        return bool(SERVE.match(last.strip()))

    @property
    def makes_the_venv(self) -> bool:
        return self.code.lstrip().startswith("python3 -m venv .venv")

    def __str__(self) -> str:
        return f"{self.document} line {self.line}"


def blocks(document: str) -> list[Block]:
    text = (ROOT / document).read_text()
    return [
        Block(document, text.count("\n", 0, m.start("code")), m["lang"].strip(), m["code"],
              m["reason"])
        for m in FENCE.finditer(text)
    ]


def free_port() -> int:
    from jobfleet.dev.emulators import free_port as pick

    return pick()


def fresh_clone(into: Path) -> Path:
    """The repository's tracked files (what a clone holds), without any venv or state."""
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True
    ).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / name)
    return into


@dataclass
class Runner:
    workspace: Path
    env: dict[str, str]
    servers: list[subprocess.Popen[bytes]]
    port: int | None = None

    def run(self, block: Block, tmp_path: Path) -> None:
        if block.lang == "python":
            script = self.workspace / f"example_{block.line}.py"
            script.write_text(block.code)
            named = SAVED_AS.match(block.code)
            if named:
                (self.workspace / named["name"]).write_text(block.code)
            done = subprocess.run([sys.executable, script.name], cwd=self.workspace,
                                  env=self.env, capture_output=True, text=True, timeout=300)
        elif block.serves:
            self.serve(block, tmp_path)
            return
        else:
            code = block.code
            if self.port is not None:
                code = code.replace("localhost:8080", f"localhost:{self.port}")
            cwd = self.workspace
            if block.makes_the_venv:
                cwd = fresh_clone(tmp_path / "clone")
            done = subprocess.run(["bash", "-e", "-c", code], cwd=cwd, env=self.env,
                                  capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (
            f"{block} exited {done.returncode}:\n{block.code}\n"
            f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
        )

    def serve(self, block: Block, tmp_path: Path) -> None:
        self.port = free_port()
        log = tmp_path / f"serve-{block.line}.log"
        with log.open("wb") as out:
            server = subprocess.Popen(
                ["bash", "-e", "-c", block.code], cwd=self.workspace,
                env={**self.env, "PORT": str(self.port)}, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped as one below
            )
        self.servers.append(server)

        def healthy() -> bool:
            if server.poll() is not None:
                raise AssertionError(f"{block}: the server exited:\n{log.read_text()}")
            try:
                url = f"http://127.0.0.1:{self.port}/healthz"
                with urllib.request.urlopen(url, timeout=2) as reply:
                    return bool(reply.status == 200)
            except (urllib.error.URLError, ConnectionError):
                return False

        assert eventually(healthy, timeout=60), f"{block}: no answer:\n{log.read_text()}"


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[Runner]:
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / ".venv").symlink_to(VENV)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("JOBFLEET_") and k not in ("PORT", "PYTHONPATH")}
    env["JOBFLEET_HOME"] = str(tmp_path / "home")  # fresh: nothing in it yet
    run = Runner(workspace, env, [])
    yield run
    for server in run.servers:
        os.killpg(server.pid, signal.SIGTERM)
    for server in run.servers:
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_example_runs_as_written(document: str, runner: Runner, tmp_path: Path) -> None:
    found = blocks(document)
    assert found, f"{document} has no code blocks"
    for block in found:
        assert block.lang in KNOWN_LANGUAGES, f"{block}: say the block's language"
        if block.not_run is not None or block.lang == "text":
            continue
        runner.run(block, tmp_path)


def test_the_not_run_marker_is_used_sparingly_and_for_known_reasons() -> None:
    readme = blocks("README.md")
    marked = [b for b in readme if b.not_run is not None]
    runnable = [b for b in readme if b.lang != "text"]
    assert len(marked) <= MAX_NOT_RUN_IN_README, [str(b) for b in marked]
    assert len(marked) * 3 <= len(runnable)
    for document in DOCUMENTS:
        for block in blocks(document):
            if block.not_run is not None:
                assert block.not_run in NOT_RUN_REASONS, f"{block}: {block.not_run!r}"
    # A marker that no block follows would silently skip nothing: it must sit on the line
    # right before a fence.
    for document in DOCUMENTS:
        text = (ROOT / document).read_text()
        assert len(re.findall(r"^<!-- not run:", text, re.MULTILINE)) == sum(
            b.not_run is not None for b in blocks(document)
        ), document


def test_the_readme_test_command_is_what_ci_runs() -> None:
    suite = [b for b in blocks("README.md")
             if b.not_run == "the test suite itself; .ci/run runs it verbatim"]
    assert len(suite) == 1
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert suite[0].code.strip() in ci


def test_the_changelog_keeps_one_heading_of_each_kind_per_release() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    releases = re.split(r"^## ", text, flags=re.MULTILINE)[1:]
    assert [r.splitlines()[0] for r in releases].count("Unreleased") == 1
    kinds = ["Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"]
    for release in releases:
        headings = re.findall(r"^### (.+)$", release, re.MULTILINE)
        assert len(headings) == len(set(headings)), release.splitlines()[0]
        assert headings == sorted(headings, key=kinds.index), release.splitlines()[0]
