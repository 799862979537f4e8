"""`/metrics` in Prometheus' text format: what the fleet has done, read from the store at
scrape time (core/stats.py does the sums), and how this server is doing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from jobfleet.api.live import LiveHub
from jobfleet.core.stats import job_stats
from jobfleet.fleet import JobFleet

WINDOW = 1000  # the newest orchestrations a scrape sums over
DURATION_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 24 * 3600.0)


class FleetCollector(Collector):
    def __init__(self, fleet: JobFleet, hub: LiveHub) -> None:
        self.fleet = fleet
        self.hub = hub

    def collect(self) -> Iterator[Metric]:
        stats = job_stats(self.fleet.history(limit=WINDOW))
        window = f" over the newest {WINDOW} orchestrations"
        instances = GaugeMetricFamily(
            "jobfleet_instances", "Job instances by status" + window, labels=["job_name", "status"]
        )
        orchestrations = GaugeMetricFamily(
            "jobfleet_orchestrations", "Orchestrations by status" + window,
            labels=["job_name", "status"],
        )
        ratio = GaugeMetricFamily(
            "jobfleet_dead_letter_ratio",
            "Instances that errored after their last attempt, of those that ran to an end"
            + window, labels=["job_name"],
        )
        throughput = GaugeMetricFamily(
            "jobfleet_throughput_instances_per_second",
            "Instances finished per second of running time of finished orchestrations" + window,
            labels=["job_name"],
        )
        durations = HistogramMetricFamily(
            "jobfleet_orchestration_duration_seconds",
            "Kick-off to end of finished orchestrations" + window, labels=["job_name"],
        )
        for job_name, s in sorted(stats.items()):
            for status, count in (
                ("Completed", s.completed), ("Errored", s.errored), ("Cancelled", s.cancelled),
                ("InProgress", s.in_progress), ("Pending", s.pending),
            ):
                instances.add_metric([job_name, status], count)
            for o_status, count in sorted(s.orchestrations.items()):
                orchestrations.add_metric([job_name, str(o_status)], count)
            ratio.add_metric([job_name], s.dead_letter_ratio)
            throughput.add_metric([job_name], s.throughput)
            durations.add_metric([job_name], _buckets(s.durations), sum(s.durations))
        yield from (instances, orchestrations, ratio, throughput, durations)
        clients = GaugeMetricFamily(
            "jobfleet_sse_clients", "Server-sent-event clients connected to this server"
        )
        clients.add_metric([], self.hub.clients)
        upstreams = GaugeMetricFamily(
            "jobfleet_sse_upstreams",
            "Orchestrations this server follows in the store, one subscription each",
        )
        upstreams.add_metric([], self.hub.upstreams)
        yield from (clients, upstreams)


def _buckets(values: list[float]) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = [
        (f"{bound:g}", float(sum(1 for v in values if v <= bound))) for bound in DURATION_BUCKETS
    ]
    out.append(("+Inf", float(len(values))))
    return out


class Metrics:
    """A registry of this app's own (not the process-global one: several apps may share
    a process, as they do in the tests)."""

    def __init__(self, fleet: JobFleet, hub: LiveHub) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(FleetCollector(fleet, hub))
        self.requests = Histogram(
            "jobfleet_http_request_duration_seconds", "HTTP requests served, by route",
            ["method", "route", "status"], registry=self.registry,
        )

    def observe(self, method: str, route: str, status: int, started: float) -> None:
        self.requests.labels(method, route, str(status)).observe(time.perf_counter() - started)

    def exposition(self) -> Any:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
