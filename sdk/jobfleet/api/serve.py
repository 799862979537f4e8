"""`jobfleet serve`: the API and dashboard under uvicorn, on a laptop or as a Cloud Run
service (which sets PORT and needs 0.0.0.0, so it needs a token configured)."""

from __future__ import annotations

import os

from jobfleet.config import Settings, listen_port
from jobfleet.errors import ConfigurationError


def serve(
    host: str = "127.0.0.1",
    port: int | None = None,
    *,
    scheduler: bool = True,
    log_level: str = "info",
) -> None:
    """`scheduler`: on the local backend, fire the home's schedules while serving (the
    local scheduler); on Google Cloud, Cloud Scheduler fires them and this is ignored."""
    try:
        import uvicorn

        from jobfleet.api.access_log import log_config
        from jobfleet.api.app import create_app
        from jobfleet.api.auth import authenticator_from_env, is_loopback
        from jobfleet.api.settings import ApiSettings
    except ImportError as exc:
        raise ConfigurationError(
            f"the HTTP API needs its extra ({exc.name} is missing): "
            "pip install 'jobfleet[api]'"
        ) from None
    authenticator = authenticator_from_env()
    settings = ApiSettings.from_env()
    if authenticator is None and not is_loopback(host):
        raise ConfigurationError(
            f"refusing to listen on {host} with no token configured: anyone who can reach "
            "it could run jobs. Set JOBFLEET_API_TOKEN (or JOBFLEET_API_AUDIENCE and "
            "JOBFLEET_API_PRINCIPALS for Google ID tokens), or listen on 127.0.0.1."
        )
    chosen = listen_port(port)
    uvicorn.run(
        create_app(authenticator=authenticator, settings=settings, local_scheduler=scheduler),
        host=host, port=chosen,
        log_level=log_level, log_config=log_config(Settings.from_env().line_format),
        proxy_headers=True, forwarded_allow_ips="*" if os.environ.get("K_SERVICE") else None,
    )
