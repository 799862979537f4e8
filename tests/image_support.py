"""The deployment's image as its Dockerfile states it, read for the tests: the stages,
the build arguments' defaults, the install step and the runtime environment. No Docker
engine builds it here, so the replay test runs the install step the Dockerfile names,
with the arguments it passes, and the image's commands with the environment it sets."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "job_image" / "Dockerfile"
INSTALL_SCRIPT = "job_image/install.sh"
_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    text: str


@dataclass(frozen=True)
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[str]:
        return [i.text for i in self.instructions if i.keyword == keyword]


@dataclass(frozen=True)
class Image:
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def runtime(self) -> Stage:
        return self.stages[-1]

    def args(self, stage: Stage) -> dict[str, str]:
        """The stage's build arguments with their defaults (`ARG X=default`)."""
        found: dict[str, str] = {}
        for text in stage.all("ARG"):
            name, _, default = text.partition("=")
            found[name] = default
        return found

    def env(self, stage: Stage, inherited: dict[str, str]) -> dict[str, str]:
        """The stage's ENV over what the base image sets (`inherited`), the build
        arguments at their defaults."""
        env = dict(inherited)
        for text in stage.all("ENV"):
            for pair in shlex.split(text):
                name, _, value = pair.partition("=")
                env[name] = substitute(value, {**self.args(stage), **env})
        return env


def read(path: Path = DOCKERFILE) -> Image:
    lines: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in lines:
        keyword, _, text = line.partition(" ")
        keyword, text = keyword.upper(), text.strip()
        if keyword == "FROM":
            words = text.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(substitute(words[0], global_args), name, []))
        elif not stages and keyword == "ARG":
            name, _, default = text.partition("=")
            global_args[name] = default
        else:
            stages[-1].instructions.append(Instruction(keyword, text))
    return Image(global_args, stages)


def substitute(text: str, values: dict[str, str]) -> str:
    """`$X` and `${X}` as Docker (and a shell) replaces them; unknown ones raise KeyError."""
    return _VARIABLE.sub(lambda m: values[m[1] or m[2]], text)


def install_step(image: Image) -> list[str]:
    """The build stage's RUN of the install script, as argv with the build arguments at
    their defaults."""
    build = image.stages[0]
    runs = [shlex.split(text) for text in build.all("RUN")]
    [argv] = [words for words in runs if INSTALL_SCRIPT in words]
    return [substitute(word, image.args(build)) for word in argv]


def replay_install(venv: Path, python: str) -> subprocess.CompletedProcess[str]:
    """The image's install step into `venv`, from this checkout as the build context (the
    build stage copies the context to its WORKDIR and runs the step there)."""
    image = read()
    argv = install_step(image)
    installed_at = argv[argv.index(INSTALL_SCRIPT) + 1]
    argv = [str(venv) if word == installed_at else word for word in argv]
    return subprocess.run(argv, cwd=ROOT, env={**_base_env(), "PYTHON": python},
                          capture_output=True, text=True, timeout=900)


def runtime_env(venv: Path) -> dict[str, str]:
    """The environment of the image's commands, with its virtualenv at `venv`."""
    image = read()
    argv = install_step(image)
    built = argv[argv.index(INSTALL_SCRIPT) + 1]
    env = image.env(image.runtime, _base_env())
    return {**env, "PATH": env["PATH"].replace(f"{built}/bin", str(venv / "bin"))}


def _base_env() -> dict[str, str]:
    """What a process has before the image's ENV: a PATH without this test run's
    virtualenv, and nothing that points Python at the checkout or configures jobfleet."""
    own_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if p and p != own_bin)
    keep = {k: v for k, v in os.environ.items()
            if not k.startswith(("PYTHON", "VIRTUAL_ENV", "JOBFLEET_"))}
    return {**keep, "PATH": path}
