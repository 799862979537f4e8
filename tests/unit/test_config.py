"""Settings from the environment, with explicit arguments winning."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobfleet.config import Settings
from jobfleet.errors import ConfigurationError


def test_defaults_are_the_local_backend_under_the_users_data_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))

    settings = Settings.from_env({})

    assert settings.backend == "local"
    assert settings.home == tmp_path / ".local" / "share" / "jobfleet"
    assert settings.jobs_modules == ()
    assert settings.database == settings.home / "jobfleet.db"
    assert settings.logs == settings.home / "logs"


def test_xdg_data_home_is_honoured(tmp_path: Path) -> None:
    settings = Settings.from_env({"XDG_DATA_HOME": str(tmp_path / "data")})
    assert settings.home == tmp_path / "data" / "jobfleet"


def test_environment_variables_are_read(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "JOBFLEET_BACKEND": "gcp",
            "JOBFLEET_HOME": str(tmp_path / "state"),
            "JOBFLEET_JOBS": "app.jobs, reports ,,scripts/nightly.py",
            "XDG_DATA_HOME": str(tmp_path / "ignored"),
        }
    )

    assert settings.backend == "gcp"
    assert settings.home == tmp_path / "state"
    assert settings.jobs_modules == ("app.jobs", "reports", "scripts/nightly.py")


def test_a_home_with_a_tilde_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert Settings.from_env({"JOBFLEET_HOME": "~/fleet"}).home == tmp_path / "fleet"


def test_the_process_environment_is_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOBFLEET_HOME", str(tmp_path))
    monkeypatch.setenv("JOBFLEET_JOBS", "app.jobs")
    monkeypatch.delenv("JOBFLEET_BACKEND", raising=False)

    settings = Settings.from_env()

    assert (settings.backend, settings.home, settings.jobs_modules) == (
        "local", tmp_path, ("app.jobs",),
    )


def test_explicit_arguments_win_over_the_environment(tmp_path: Path) -> None:
    env = {
        "JOBFLEET_BACKEND": "gcp",
        "JOBFLEET_HOME": str(tmp_path / "from-env"),
        "JOBFLEET_JOBS": "app.jobs",
    }

    settings = Settings.from_env(env, backend="local", home=tmp_path / "given", jobs_modules=[])

    assert settings.backend == "local"
    assert settings.home == tmp_path / "given"
    assert settings.jobs_modules == ()  # an explicit empty list means no modules


@pytest.mark.parametrize(
    ("env", "backend"), [({"JOBFLEET_BACKEND": "aws"}, None), ({}, "aws")], ids=["env", "argument"]
)
def test_an_unknown_backend_is_refused_with_the_choices(
    env: dict[str, str], backend: str | None
) -> None:
    with pytest.raises(ConfigurationError, match=r"unknown backend 'aws'") as info:
        Settings.from_env(env, backend=backend)
    assert "JOBFLEET_BACKEND" in str(info.value)
    assert "local, gcp" in str(info.value)


def test_a_worker_environment_reproduces_the_settings(tmp_path: Path) -> None:
    settings = Settings.from_env({}, home=tmp_path, jobs_modules=["app.jobs", "more.py"])
    assert Settings.from_env(settings.environment()) == settings


def test_history_retention_is_read_and_may_not_be_shorter_than_a_run() -> None:
    from jobfleet.config import Settings
    from jobfleet.errors import ConfigurationError

    assert Settings.from_env(env={}).retention_days == 30
    assert Settings.from_env(env={"JOBFLEET_RETENTION_DAYS": "90"}).retention_days == 90
    with pytest.raises(ConfigurationError, match="JOBFLEET_RETENTION_DAYS must be at least 8"):
        Settings.from_env(env={"JOBFLEET_RETENTION_DAYS": "3"})


def test_servers_of_the_image_listen_on_the_given_port_else_cloud_runs_port() -> None:
    """`jobfleet serve` and `jobfleet function` share the rule: --port, else PORT, else
    8080; a PORT that is not a number is named, not a traceback."""
    from jobfleet.config import listen_port
    from jobfleet.errors import ConfigurationError

    assert listen_port(9000, env={"PORT": "7000"}) == 9000
    assert listen_port(None, env={"PORT": "7000"}) == 7000
    assert listen_port(None, env={}) == 8080
    with pytest.raises(ConfigurationError, match="PORT must be a port number, got 'http'"):
        listen_port(None, env={"PORT": "http"})
