"""The arithmetic of the benchmarks' write tally (jobfleet.dev.write_tally)."""

from __future__ import annotations

from jobfleet.dev.write_tally import kind_of, most_in_window


def test_a_documents_kind_is_its_path_without_ids() -> None:
    assert kind_of("jobfleet_orchestrations/abc/shards/3") == "jobfleet_orchestrations/*/shards/*"
    assert kind_of("jobfleet_leases/f00") == "jobfleet_leases/*"


def test_the_busiest_window_counts_writes_less_than_its_width_apart() -> None:
    once_a_second = [0.0, 1.0, 2.0, 3.0, 4.0]
    assert most_in_window(once_a_second, 1.0) == 1
    assert most_in_window(once_a_second, 10.0) == 5
    burst_then_quiet = [0.0, 0.05, 0.1, 30.0]
    assert most_in_window(burst_then_quiet, 1.0) == 3
    assert most_in_window([], 1.0) == 0
