"""The local backend's schedule timing: nothing to deploy.

The local scheduler (`jobfleet scheduler`, and the one `jobfleet serve` runs) reads the
schedules from the store every few seconds, so a schedule saved there is live; it also
sweeps every minute.
"""

from __future__ import annotations

from jobfleet.core.schedules import Schedule


class LocalTimer:
    def apply(self, schedule: Schedule) -> None:
        """The store holds the schedule already; the local scheduler reads it from there."""

    def remove(self, name: str) -> None:
        """Likewise: a schedule deleted from the store no longer fires."""

    def deployed(self) -> list[str]:
        return []

    def ensure_sweep(self) -> None:
        """The local scheduler sweeps every minute itself."""
