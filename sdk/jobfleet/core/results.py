"""Partitioning finished instances into successes and failures."""

from __future__ import annotations

from collections.abc import Iterable

from jobfleet.core.models import Failure, Success

Results = tuple[list[Success], list[Failure] | None]


def partition(outcomes: Iterable[Success | Failure]) -> Results:
    """`failures` is None, not an empty list, when every instance succeeded."""
    successes: list[Success] = []
    failures: list[Failure] = []
    for item in outcomes:
        if isinstance(item, Success):
            successes.append(item)
        else:
            failures.append(item)
    successes.sort(key=lambda s: s.index)
    failures.sort(key=lambda f: f.index)
    return successes, (failures or None)
