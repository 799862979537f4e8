"""The numbers /metrics shows, and the limits of kick-off options."""

from __future__ import annotations

import pytest

from jobfleet.core.models import Counts, OrchestrationSnapshot, RunOptions, Status
from jobfleet.core.options import check_options, parse_tag_filter
from jobfleet.core.stats import job_stats
from jobfleet.errors import InvalidOption

OPTIONS = RunOptions(retries=1, backoff=1.0, timeout=None, parallelism=2)


def snap(job: str, status: Status, counts: Counts, took: float | None) -> OrchestrationSnapshot:
    return OrchestrationSnapshot(
        id=f"{job}-{status}", job_name=job, status=status, counts=counts, options=OPTIONS,
        tags={}, created_at=100.0, finished_at=None if took is None else 100.0 + took,
    )


def test_dead_letters_and_throughput_are_per_job_and_ignore_cancelled_work() -> None:
    stats = job_stats([
        snap("report", Status.ERRORED, Counts(total=10, succeeded=8, failed=2), took=5.0),
        snap("report", Status.CANCELLED, Counts(total=10, succeeded=2, cancelled=8), took=5.0),
        snap("report", Status.IN_PROGRESS, Counts(total=4, in_progress=1, pending=3), None),
        snap("cleanup", Status.COMPLETED, Counts(total=3, succeeded=3), took=1.0),
    ])

    report = stats["report"]
    assert (report.completed, report.errored, report.cancelled) == (10, 2, 8)
    assert report.dead_letter_ratio == pytest.approx(2 / 12)
    assert report.throughput == pytest.approx(12 / 10.0)  # 12 ran to an end in 10 s
    assert report.durations == [5.0, 5.0]  # the running one has no duration yet
    assert report.orchestrations == {
        Status.ERRORED: 1, Status.CANCELLED: 1, Status.IN_PROGRESS: 1,
    }
    assert stats["cleanup"].dead_letter_ratio == 0.0


def test_a_job_with_nothing_finished_has_no_ratio_and_no_throughput() -> None:
    stats = job_stats([snap("x", Status.IN_PROGRESS, Counts(total=2, pending=2), None)])
    assert (stats["x"].dead_letter_ratio, stats["x"].throughput) == (0.0, 0.0)


@pytest.mark.parametrize(
    ("options", "tags", "words"),
    [
        (RunOptions(1, 1.0, None, 100_001), {}, "parallelism must be a whole number from 1"),
        (RunOptions(101, 1.0, None, 1), {}, "retries must be a whole number from 0 to 100"),
        (RunOptions(1, 1.0, 0.0, 1), {}, "timeout must be > 0"),
        (RunOptions(True, 1.0, None, 1), {}, "retries"),  # a bool is not a count
        (OPTIONS, {"team:x": "a"}, "must not contain ':' or '='"),
        (OPTIONS, {"googx": "a"}, "not starting 'goog'"),
        (OPTIONS, {"status": "a"}, "reserved for the completion event"),
        (OPTIONS, {"k": "v" * 1025}, "longer than 1024 bytes"),
        (OPTIONS, {f"k{i}": "v" for i in range(65)}, "at most 64 tags"),
        # argv bytes that are not UTF-8 arrive as surrogate escapes; JSON can carry a lone
        # surrogate too. Neither can be stored or published.
        (OPTIONS, {"k": b"\xff".decode("utf-8", "surrogateescape")},
         "tag 'k' has a value that is not valid UTF-8 text"),
        (OPTIONS, {"k\udcff": "v"}, "is not valid UTF-8 text; give tags as UTF-8 text"),
    ],
)
def test_options_out_of_range_are_refused_by_name(
    options: RunOptions, tags: dict[str, str], words: str
) -> None:
    with pytest.raises(InvalidOption, match=words.replace("(", r"\(")):
        check_options(options, tags)


def test_a_tag_filter_is_key_colon_value_and_the_value_may_hold_colons() -> None:
    assert parse_tag_filter("team:data:eu") == ("team", "data:eu")
    assert parse_tag_filter("team:") == ("team", "")
    for bad in ("team", ":data", ""):
        with pytest.raises(InvalidOption, match="KEY:VALUE"):
            parse_tag_filter(bad)
