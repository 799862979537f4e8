"""Worker leases as small files beside the database, one per claim owner.

A heartbeat writes its owner's lease here before it writes the rows it holds. The file
needs no lock, so a worker whose database write waits behind another process (a long
kick-off, a process stopped inside a write) still shows it is alive, the way Firestore's
lease documents do; a reaper counts a claim as expired only when neither its row nor its
owner's file reaches the present.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


class LeaseFiles:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _file(self, owner: str) -> Path:
        return self.folder / hashlib.sha256(owner.encode()).hexdigest()[:40]

    def renew(self, owner: str, until: float) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self._file(owner)
        partial = target.with_suffix(f".{os.getpid()}")
        partial.write_text(repr(until))
        os.replace(partial, target)

    def until(self, owner: str) -> float:
        """When the owner's lease runs out (0 when it never renewed one)."""
        try:
            return float(self._file(owner).read_text())
        except (OSError, ValueError):
            return 0.0

