"""Prometheus metrics of one node, in a registry of its own (never the global one)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["NodeMetrics"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class NodeMetrics:
    """The node's metrics; ``registry`` is what /metrics serves."""

    def __init__(self) -> None:
        self._rpc_children: dict[tuple[str, str], Any] = {}
        self._latency_children: dict[str, Any] = {}
        self._decision_children: dict[tuple[str, str], Any] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        self.rpc_total = Counter(
            "tongban_grpc_requests",
            "gRPC calls served, by method and status code.",
            ["method", "code"],
            registry=self.registry,
        )
        self.rpc_seconds = Histogram(
            "tongban_grpc_request_duration_seconds",
            "Time from receiving a gRPC call to its last response, by method.",
            ["method"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.auth_refused = Counter(
            "tongban_auth_refused",
            "Calls refused at authentication, by reason code.",
            ["reason"],
            registry=self.registry,
        )
        self.calls_refused = Counter(
            "tongban_calls_refused",
            "Calls refused by a department's limits, by department and reason code.",
            ["department", "reason"],
            registry=self.registry,
        )
        self.database_unavailable = Counter(
            "tongban_database_unavailable",
            "Calls and requests the database could not serve (answered UNAVAILABLE or 503), "
            "by condition: unreachable, disk_full, out_of_memory, too_many_connections, "
            "resource_limit, read_only, lock_timeout, statement_timeout, no_answer.",
            ["condition"],
            registry=self.registry,
        )
        self.db_pool_size = Gauge(
            "tongban_db_pool_connections",
            "Connections open in the node's PostgreSQL pool.",
            registry=self.registry,
        )
        self.db_pool_idle = Gauge(
            "tongban_db_pool_idle_connections",
            "Idle connections in the node's PostgreSQL pool.",
            registry=self.registry,
        )
        self.query_decisions = Counter(
            "tongban_query_decisions",
            "Query decisions, by decision (allowed/denied) and reason code.",
            ["decision", "reason"],
            registry=self.registry,
        )
        self.access_log_entries = Counter(
            "tongban_access_log_entries",
            "Access-log entries written (committed).",
            registry=self.registry,
        )
        self.grants_overdue = Gauge(
            "tongban_grants_overdue",
            "Grant requests not answered by their due date (working days).",
            registry=self.registry,
        )
        self.audit_anomalies = Gauge(
            "tongban_audit_anomalies",
            "Anomalies in the access log over the last 24 hours, by kind.",
            ["kind"],
            registry=self.registry,
        )
        self.subscription_lag_events = Gauge(
            "tongban_subscription_lag_events",
            "Most events of a dataset not yet acknowledged by one of the consumer's "
            "subscriptions to it.",
            ["consumer", "dataset"],
            registry=self.registry,
        )
        self.subscription_lag_seconds = Gauge(
            "tongban_subscription_lag_seconds",
            "Age of the oldest event of a dataset one of the consumer's subscriptions has "
            "not acknowledged (0 when none).",
            ["consumer", "dataset"],
            registry=self.registry,
        )
        self.outbox_unpublished = Gauge(
            "tongban_outbox_unpublished_events",
            "Change events committed but not yet published to Kafka (Kafka mode).",
            registry=self.registry,
        )
        self.relay_published = Counter(
            "tongban_relay_published_events",
            "Change events this node's relay published to Kafka (acknowledged).",
            registry=self.registry,
        )
        self.relay_errors = Counter(
            "tongban_relay_errors",
            "Failed attempts of this node's relay to publish to Kafka (each is retried).",
            registry=self.registry,
        )
        self.kafka_rejected = Counter(
            "tongban_kafka_messages_rejected",
            "Kafka messages this node's feeds did not deliver (the event was read from "
            "PostgreSQL instead), by kind: unknown_key, not_authentic, malformed.",
            ["kind"],
            registry=self.registry,
        )
        self.cases_overdue = Gauge(
            "tongban_cases_overdue",
            "Open cases in 受理 past a due date, by handling department and severity: "
            "promised (past the promised date only, 黄牌) or legal (past the legal date, 红牌).",
            ["department", "severity"],
            registry=self.registry,
        )
        self.stored_bytes = Gauge(
            "tongban_department_stored_bytes",
            "What a department's datasets hold: every record version's key and JSON, and "
            "400 bytes each for its rows and index entries (what its storage quota counts).",
            ["department"],
            registry=self.registry,
        )
        self.storage_quota = Gauge(
            "tongban_department_storage_quota_bytes",
            "A department's storage quota (its own, or the node's default): writes past it "
            "are refused STORAGE_QUOTA_EXCEEDED.",
            ["department"],
            registry=self.registry,
        )
        self.cases_within_promised = Gauge(
            "tongban_cases_decided_within_promised_ratio",
            "Of the cases a department decided in the last 30 days, the share decided by "
            "their promised date (no series for a department that decided none).",
            ["department"],
            registry=self.registry,
        )
        self.witness_requests = Counter(
            "tongban_witness_requests",
            "Requests to witnesses to cosign a checkpoint, by witness and outcome: cosigned, "
            "resync, split_view, proof_refused, refused, unknown_key, bad_cosignature, "
            "unavailable (all but cosigned and resync are retried after a back-off).",
            ["witness", "outcome"],
            registry=self.registry,
        )
        self.witness_cosigned_size = Gauge(
            "tongban_witness_cosigned_size",
            "Size of the latest checkpoint this node got a witness's cosignature for.",
            ["witness"],
            registry=self.registry,
        )
        self.up = Gauge(
            "tongban_node_up",
            "1 while the node serves, 0 while it drains.",
            registry=self.registry,
        )

    # Children are looked up once per label set: ``labels()`` costs microseconds, and it
    # would otherwise run several times on every call.

    def observe_rpc(self, method: str, code: str, seconds: float) -> None:
        key = (method, code)
        counter = self._rpc_children.get(key)
        if counter is None:
            counter = self._rpc_children[key] = self.rpc_total.labels(method, code)
        counter.inc()
        histogram = self._latency_children.get(method)
        if histogram is None:
            histogram = self._latency_children[method] = self.rpc_seconds.labels(method)
        histogram.observe(seconds)

    def count_decision(self, decision: str, reason: str | None) -> None:
        key = (decision, reason or "")
        child = self._decision_children.get(key)
        if child is None:
            child = self._decision_children[key] = self.query_decisions.labels(*key)
        child.inc()

    def count_witness(self, witness: str, outcome: str) -> None:
        """One request to ``witness`` to cosign a checkpoint, and how it ended."""
        self.witness_requests.labels(witness, outcome).inc()

    def witness_cosigned(self, witness: str, size: int) -> None:
        """``witness`` cosigned the checkpoint of ``size`` entries."""
        self.witness_cosigned_size.labels(witness).set(size)

    def set_storage(self, usage: Mapping[str, tuple[int, int]]) -> None:
        """Replace the storage gauges: per department, what it holds and its quota."""
        self.stored_bytes.clear()
        self.storage_quota.clear()
        for department, (stored, quota) in usage.items():
            self.stored_bytes.labels(department).set(stored)
            self.storage_quota.labels(department).set(quota)

    def set_supervision(
        self, overdue: Mapping[str, tuple[int, int]], within_promised: Mapping[str, float]
    ) -> None:
        """Replace the supervision gauges: per department, its open cases past the promised
        date only and past the legal date, and its recent within-limit share."""
        self.cases_overdue.clear()
        self.cases_within_promised.clear()
        for department, (promised, legal) in overdue.items():
            self.cases_overdue.labels(department, "promised").set(promised)
            self.cases_overdue.labels(department, "legal").set(legal)
        for department, share in within_promised.items():
            self.cases_within_promised.labels(department).set(share)
