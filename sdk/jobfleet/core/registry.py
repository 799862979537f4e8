"""Declaring jobs with `@job` and finding them by name.

A module fills the registry when it is imported, before any JobFleet exists, so
the worker and the SDK find the same jobs by importing the same modules.
"""

from __future__ import annotations

import importlib
import inspect
import os
import runpy
import sys
import traceback
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from jobfleet.core.resources import Resources
from jobfleet.errors import ConfigurationError, JobNotImportable, UnknownJob

T = TypeVar("T")

DEFAULT_RETRIES = 2
DEFAULT_BACKOFF = 1.0


@dataclass(slots=True)
class JobDefinition:
    name: str
    target: Any  # the decorated class or function
    retries: int = DEFAULT_RETRIES
    backoff: float = DEFAULT_BACKOFF
    timeout: float | None = None
    source: str = ""  # module name, or a file path for a script's jobs
    importable: bool = True  # False when declared where no worker can import it
    webhooks: tuple[str, ...] = ()  # the default when a kick-off names none
    resources: Resources | None = None  # None: the base worker class
    _params_type: Any = field(default=None, repr=False)
    _resolved: bool = field(default=False, repr=False)

    @property
    def function(self) -> Callable[..., Any]:
        """The callable an attempt runs: `run` of a fresh instance, or the function."""
        target: Any = self.target
        fn = getattr(target(), "run") if inspect.isclass(target) else target  # noqa: B009
        return typing.cast(Callable[..., Any], fn)

    @property
    def _declared(self) -> Callable[..., Any]:
        """The function as written (unbound `run` for a class), for introspection."""
        target: Any = self.target
        fn = getattr(target, "run") if inspect.isclass(target) else target  # noqa: B009
        return typing.cast(Callable[..., Any], fn)

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self._declared)

    @property
    def params_type(self) -> Any:
        """The annotation of the params argument, resolved lazily (it may be a string)."""
        if not self._resolved:
            fn = self._declared
            try:
                hints = typing.get_type_hints(fn)
            except Exception:
                hints = {}
            names = [p for p in inspect.signature(fn).parameters if p != "self"]
            self._params_type = hints.get(names[0]) if names else None
            self._resolved = True
        return self._params_type


_REGISTRY: dict[str, JobDefinition] = {}
_SCRIPT_RUN_NAME = "__jobfleet_main__"
_loading_script: list[str] = []  # the script file import_jobs is running, if any
_SCRIPTS: dict[str, dict[str, Any]] = {}  # script files run, with their globals


def job(
    name: str,
    *,
    retries: int = DEFAULT_RETRIES,
    backoff: float = DEFAULT_BACKOFF,
    timeout: float | None = None,
    webhooks: Iterable[str] = (),
    resources: Resources | None = None,
) -> Callable[[T], T]:
    """Register a class with a `run(self, params)` method, or a function of `params`.

    `webhooks` receive the completion event of each kick-off that names none (checked
    at kick-off, where the settings that allow URLs are known). `resources` is the
    machine its tasks need (core/resources.py); None runs them on the base worker."""
    if not name or not isinstance(name, str):
        raise ValueError("a job needs a non-empty string name")
    if retries < 0 or backoff < 0 or (timeout is not None and timeout <= 0):
        raise ValueError("retries and backoff must be >= 0 and timeout > 0")
    hooks = (webhooks,) if isinstance(webhooks, str) else tuple(webhooks)
    if isinstance(webhooks, str) or not all(isinstance(u, str) for u in hooks):
        raise ValueError("webhooks is a list of URL strings")
    if resources is not None and not isinstance(resources, Resources):
        raise ValueError("resources is a jobfleet.Resources(cpu=, memory=, task_timeout=, ...)")
    if resources is not None and timeout is not None and (
        timeout > resources.task_timeout_seconds
    ):
        raise ValueError(
            f"job {name!r}: its attempt timeout ({timeout:g} s) is longer than its task"
            f" timeout ({resources.task_timeout_seconds} s); Cloud Run would stop the task"
            " first"
        )

    def register(target: T) -> T:
        if inspect.isclass(target) and not callable(getattr(target, "run", None)):
            raise TypeError(f"job class {target.__name__} needs a run(self, params) method")
        if not inspect.isclass(target) and not callable(target):
            raise TypeError("@job decorates a class or a function")
        source, importable = declared_in(target)
        _REGISTRY[name] = JobDefinition(
            name=name, target=target, retries=retries, backoff=backoff, timeout=timeout,
            source=source, importable=importable, webhooks=hooks, resources=resources,
        )
        return target

    return register


def declared_in(target: Any) -> tuple[str, bool]:
    """The module name, or the script file, that declares `target`, and whether a
    worker can import it from there."""
    module = getattr(target, "__module__", "")
    if module == "__main__":
        # A script file's jobs are found again by running the file; standard input
        # ("<stdin>"), `python -c`, an interactive session or a notebook has none.
        main_file = getattr(sys.modules["__main__"], "__file__", None) or ""
        importable = os.path.isfile(main_file)
        return (os.path.abspath(main_file) if importable else ""), importable
    if module == _SCRIPT_RUN_NAME and _loading_script:
        return _loading_script[-1], True
    return module, True


def get_job(name: str) -> JobDefinition:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownJob(name, list(_REGISTRY)) from None


def get_launchable_job(name: str) -> JobDefinition:
    """The job, refused when no worker could import it (JobNotImportable)."""
    if _loading_script:  # a worker running the script would kick off again, and so on
        raise ConfigurationError(
            f"{_loading_script[-1]} kicks off {name!r} while jobfleet runs it to find its "
            "jobs; put the kick-off under `if __name__ == \"__main__\":`"
        )
    definition = get_job(name)
    if not definition.importable:
        raise JobNotImportable(name)
    return definition


def known_jobs() -> list[str]:
    return sorted(_REGISTRY)


def job_sources(names: Iterable[str]) -> list[str]:
    return [_REGISTRY[n].source for n in names if n in _REGISTRY and _REGISTRY[n].source]


def import_jobs(modules: Iterable[str]) -> None:
    """Import modules (or run script files, as `__jobfleet_main__`) so their jobs register.

    The working folder is importable, as it is for `python -m`, so `--jobs-module
    myjobs` finds ./myjobs.py from the console script too.
    """
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    for raw in modules:
        spec = raw.strip()
        if not spec:
            continue
        try:
            if spec.endswith(".py"):
                spec = os.path.abspath(spec)
                if spec in _SCRIPTS or any(d.source == spec for d in _REGISTRY.values()):
                    continue
                script_namespace(spec)
            else:
                importlib.import_module(spec)
        except (Exception, SystemExit) as exc:  # whatever the module raises, SyntaxError too
            raise ConfigurationError(
                f"cannot import jobs module {spec!r}: {type(exc).__name__}: {exc}"
                f"{_raised_at(exc, spec)}. Fix the module, or leave it out of JOBFLEET_JOBS "
                "and --jobs-module."
            ) from exc


def script_namespace(path: str) -> dict[str, Any]:
    """The globals of a jobs script file, run once (as `__jobfleet_main__`, so that its
    `if __name__ == "__main__":` part does not run)."""
    if path not in _SCRIPTS:
        _loading_script.append(path)
        try:
            _SCRIPTS[path] = runpy.run_path(path, run_name=_SCRIPT_RUN_NAME)
        finally:
            _loading_script.pop()
    return _SCRIPTS[path]


def find_function(name: str) -> Callable[..., Any]:
    """A module-level function by the name `declared_in` gives it: `module:qualname`,
    or `/path/file.py:qualname`. LookupError saying why when there is none."""
    where, _, qualname = name.rpartition(":")
    if "<locals>" in qualname:
        raise LookupError(f"{qualname} is declared inside a function; declare it at module "
                          "level so that other processes can find it")
    try:
        found: Any = (script_namespace(where) if where.endswith(".py")
                      else vars(importlib.import_module(where)))
        for part in qualname.split("."):
            found = found[part] if isinstance(found, dict) else getattr(found, part)
    except (ImportError, KeyError, AttributeError, OSError) as exc:
        raise LookupError(f"cannot find {name}: {type(exc).__name__}: {exc}") from None
    if not callable(found):
        raise LookupError(f"{name} is not a function")
    return typing.cast(Callable[..., Any], found)


def _raised_at(exc: BaseException, spec: str) -> str:
    """Where in the user's code an import failed: the innermost frame outside jobfleet
    and the import machinery (a SyntaxError names its own file and line)."""
    if isinstance(exc, SyntaxError | ImportError | OSError):
        return ""
    frames = [
        f for f in traceback.extract_tb(exc.__traceback__)
        if not f.filename.startswith("<frozen") and os.path.dirname(__file__) not in f.filename
        and not f.filename.endswith(("runpy.py", "importlib/__init__.py"))
    ]
    return f" (at {frames[-1].filename} line {frames[-1].lineno})" if frames else ""


def split_modules(value: str | None) -> list[str]:
    return [m.strip() for m in (value or "").split(",") if m.strip()]
