"""Prometheus metrics: request latencies observed here, cluster state read at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from starserve.cluster.controller import ClusterMetrics

LATENCY_BUCKETS_S = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0,
                     1.5, 2.0, 3.0, 5.0, 10.0, 20.0)  # fmt: skip


class _ClusterCollector(Collector):
    """Yields the latest `ClusterMetrics` as gauges and counters."""

    def __init__(self) -> None:
        self.latest: ClusterMetrics | None = None

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        metrics = self.latest
        if metrics is None:
            return
        labels = ["instance", "role"]
        gauges = {
            name: GaugeMetricFamily(f"starserve_instance_{name}", help_text, labels=labels)
            for name, help_text in (
                ("running_requests", "requests decoding on the instance"),
                ("waiting_requests", "requests queued on the instance"),
                ("kv_blocks_used", "KV cache blocks in use"),
                ("kv_blocks_total", "KV cache blocks in all"),
                ("kv_usage_ratio", "used / total KV cache blocks"),
                ("predicted_load_tokens", "sum of predicted remaining tokens of running requests"),
            )
        }
        preemptions = CounterMetricFamily(
            "starserve_instance_preemptions", "requests preempted (recomputed)", labels=labels
        )
        decode_ids = set(metrics.decode_instance_ids)
        for poll in metrics.polls:
            snap = poll.snapshot
            values = [
                str(snap.instance_id),
                "decode" if snap.instance_id in decode_ids else "prefill",
            ]
            used = snap.num_total_blocks - snap.num_free_blocks
            predicted = sum(r.predicted_remaining_tokens or 0.0 for r in snap.requests)
            for name, value in (
                ("running_requests", poll.num_running),
                ("waiting_requests", snap.num_waiting),
                ("kv_blocks_used", used),
                ("kv_blocks_total", snap.num_total_blocks),
                ("kv_usage_ratio", used / max(1, snap.num_total_blocks)),
                ("predicted_load_tokens", predicted),
            ):
                gauges[name].add_metric(values, float(value))
            preemptions.add_metric(values, float(poll.num_preemptions_total))
        live_mae = GaugeMetricFamily(
            "starserve_instance_predictor_live_mae_tokens",
            "MAE of served remaining-length predictions on recently finished requests "
            "(with --predictor-refresh)",
            labels=labels,
        )
        for poll in metrics.polls:
            if poll.predictor_live_mae_tokens is not None:
                role = "decode" if poll.snapshot.instance_id in decode_ids else "prefill"
                live_mae.add_metric(
                    [str(poll.snapshot.instance_id), role], poll.predictor_live_mae_tokens
                )
        yield from gauges.values()
        yield live_mae
        yield preemptions
        yield from _health(metrics)
        started = CounterMetricFamily("starserve_migrations_started", "migrations started")
        started.add_metric([], float(metrics.num_migrations_started))
        yield started
        ended = CounterMetricFamily(
            "starserve_migrations_ended", "migrations ended, by status", labels=["status"]
        )
        for status, count in metrics.num_migrations_by_status.items():
            if status != "running":
                ended.add_metric([status], float(count))
        yield ended


def _health(metrics: ClusterMetrics) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    """Up/down per instance, failures and restarts (`starserve_instance_failures_total`)."""
    labels = ["instance", "role"]
    up = GaugeMetricFamily("starserve_instance_up", "1 while the instance serves", labels=labels)
    failures = CounterMetricFamily(
        "starserve_instance_failures", "times the instance was found dead", labels=labels
    )
    restarts = CounterMetricFamily(
        "starserve_instance_restarts", "times the instance came back", labels=labels
    )
    roles = [(i, "prefill") for i in metrics.prefill_instance_ids]
    roles += [(i, "decode") for i in metrics.decode_instance_ids]
    for instance_id, role in roles:
        values = [str(instance_id), role]
        up.add_metric(values, 0.0 if instance_id in metrics.down_instance_ids else 1.0)
        failures.add_metric(values, float(metrics.num_failures_by_instance.get(instance_id, 0)))
        restarts.add_metric(values, float(metrics.num_restarts_by_instance.get(instance_id, 0)))
    yield from (up, failures, restarts)


class ServerMetrics:
    """One registry per server (several servers may share a test process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.cluster = _ClusterCollector()
        self.registry.register(self.cluster)
        self.ttft = Histogram(
            "starserve_time_to_first_token_seconds", "time to first token", buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )  # fmt: skip
        self.tpot = Histogram(
            "starserve_time_per_output_token_seconds", "mean time per output token after the first",
            buckets=LATENCY_BUCKETS_S, registry=self.registry,
        )  # fmt: skip
        self.migration_pause = Histogram(
            "starserve_migration_pause_seconds",
            "largest inter-token gap a migrated request saw during its migration",
            buckets=LATENCY_BUCKETS_S, registry=self.registry,
        )  # fmt: skip
        self.requests = Counter(
            "starserve_requests", "finished HTTP requests by status code", ["code"],
            registry=self.registry,
        )  # fmt: skip

    def observe_request(self, token_times_s: list[float], arrival_s: float) -> None:
        if not token_times_s:
            return
        self.ttft.observe(token_times_s[0] - arrival_s)
        if len(token_times_s) > 1:
            self.tpot.observe((token_times_s[-1] - token_times_s[0]) / (len(token_times_s) - 1))

    def render(self, latest: ClusterMetrics) -> bytes:
        self.cluster.latest = latest
        return generate_latest(self.registry)
