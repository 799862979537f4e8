"""Jobs that ship with jobfleet: the demo's `process_batch` and the benchmark's `noop`."""

from __future__ import annotations

import time
from typing import Any

from jobfleet.core.registry import job


@job("process_batch", retries=1, backoff=0.05)
class ProcessBatch:
    """Sums a batch of numbers; a batch marked `"poison": true` fails, as real data does."""

    def run(self, params: dict[str, Any]) -> dict[str, Any]:
        time.sleep(float(params.get("seconds", 0.02)))
        if params.get("poison"):
            raise ValueError(f"batch {params.get('batch')} holds a poison record")
        numbers = params.get("numbers", [])
        return {"batch": params.get("batch"), "count": len(numbers), "sum": sum(numbers)}


@job("noop", retries=0)
def noop(params: dict[str, Any]) -> None:
    return None


def demo_params(batches: int = 40) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {"batch": b, "numbers": list(range(b * 10, b * 10 + 10)), "seconds": 0.05}
        for b in range(batches)
    ]
    params[batches // 2]["poison"] = True
    return params
