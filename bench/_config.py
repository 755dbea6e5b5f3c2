"""The benchmark's settings, shared by every phase (``bench.foundation``, ``bench.sharing``,
``bench.audit``, ``bench.events``, ``bench.fairness``, ``bench.burst``)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

__all__ = ["Config", "quick"]


@dataclass(frozen=True)
class Config:
    # -- the foundation phases -----------------------------------------------------------
    concurrency: int = 64
    """Concurrent callers on the long-lived channel (echo, WhoAmI, the audited query)."""
    warmup_seconds: float = 2.0
    """Load before each measured window of the long-lived-channel phases, discarded."""
    duration_seconds: float = 8.0
    """Length of the measured window of the long-lived-channel phases."""
    connect_workers: int = 8
    """Concurrent workers in the new-connection phases."""
    connect_warmup_seconds: float = 1.0
    connect_duration_seconds: float = 4.0
    payload_bytes: int = 200
    """Size of the echo request (and so of its response)."""
    department: str = "samr"
    """Whose bundle the node is called with (WhoAmI; the owner of the bench dataset)."""
    officer_id: str = "bench-01"
    call_timeout_seconds: float = 30.0
    """Deadline of each call: a hung server fails the run instead of stalling it."""
    node_rss_budget_mb: float = 300.0

    # -- the sharing phases (bench.sharing) ----------------------------------------------
    dataset: str = "samr.bench"
    records: int = 100_000
    """Records published (and COPYed for the baseline); the keys the queries draw from."""
    publish_batch: int = 5_000
    """Records per StreamRecords message (each committed as one transaction)."""
    consumer: str = "tax"
    """Who queries the dataset."""
    query_fields: tuple[str, ...] = ("name", "status", "address")
    query_via: Literal["stub", "client"] = "stub"
    """The 64-caller query phase calls the raw QueryServiceStub (as WhoAmI is called) or
    ``ExchangeClient.query`` (which also builds an ``Answer`` per reply)."""
    query_connections: int = 16
    """Connections the callers of the workers comparison are spread over: ``serve
    --workers`` shares the port (SO_REUSEPORT), so the kernel gives each connection, not
    each call, to a worker, and one connection would keep every call on one worker."""
    compare_workers: int = 2
    """``serve --workers`` of the node the spread query is run on beside one worker."""
    batch_queries: int = 30
    """Sequential queries of ``batch_keys`` keys each (after one unmeasured warm-up)."""
    batch_keys: int = 1_000
    seed: int = 20_261_123
    """Seed of the generated records and of the keys asked for."""

    # -- targets from the issue (reported as met or missed, never asserted) --------------
    publish_target_per_s: float = 20_000.0
    query_target_per_s: float = 1_500.0
    query_target_of_echo: float = 0.40
    query_target_p99_ms: float = 50.0
    batch_target_ms: float = 100.0

    # -- the access-log phases (bench.audit), in process on their own PostgreSQL ---------
    audit_entries: int = 1_000_000
    """Entries appended in the throughput phase (and COPYed for its baseline)."""
    audit_fallback_entries: int = 200_000
    """If the appends are projected, at this many, to take over ``audit_budget_seconds``
    for all ``audit_entries``, the phase stops here (and says so)."""
    audit_budget_seconds: float = 180.0
    audit_append_tasks: int = 256
    """Concurrent tasks appending in the throughput phase."""
    audit_entries_per_call: int = 1
    """Entries per ``AccessLog.append`` call in the throughput phase (1: a query's entry,
    as on the node; the sequencer group-commits what the tasks have queued)."""
    audit_copy_batch: int | None = None
    """Rows per COPY of the baseline; None: the sequencer's mean batch in the same run."""
    audit_latency_tasks: int = 64
    audit_latency_warmup_seconds: float = 1.0
    audit_latency_seconds: float = 5.0
    audit_alone_calls: int = 100
    """Sequential single-entry appends (and single-row INSERTs) on an idle log."""
    audit_proofs: int = 500
    audit_checkpoint_rounds: int = 20
    audit_checkpoint_interval: float = 0.5
    audit_checkpoint_trickle_per_s: float = 100.0
    """Background appends while checkpoint latency is measured (0: none), so the entry
    lands at a random point of the checkpointer's cycle, as on a node with traffic."""
    audit_read_chunk: int = 20_000
    """Rows per read of the verify baselines (what ``verify_log`` reads at a time)."""

    audit_append_target_per_s: float = 50_000.0
    audit_latency_target_p99_ms: float = 20.0
    audit_proof_target_ms: float = 5.0
    audit_checkpoint_target_s: float = 1.0
    audit_verify_target_s: float = 30.0
    """For 1,000,000 entries (judged at the log's actual size, pro rata)."""

    # -- the change-events phases (bench.events), on a node of their own per mode ------
    # BENCH_EVENTS_* environment variables override some of these (bench.events.configured).
    events_modes: tuple[str, ...] = ("embedded", "kafka")
    """``embedded``: the node alone (events fed from PostgreSQL); ``kafka``: the node with
    ``TONGBAN_KAFKA_BOOTSTRAP`` on a Tansu broker started for it (relay + Kafka feed)."""
    events_fields: tuple[str, ...] = ("name", "address")
    """What the subscriber (``consumer``) subscribes to of ``samr.enterprise``."""
    events_rate_per_s: float = 5_000.0
    """Offered rate of the fixed-rate phase (and of the baselines' paced runs)."""
    events_warmup_seconds: float = 2.0
    """At the offered rate before the fixed-rate phase, discarded (then drained)."""
    events_light_rate_per_s: float = 1_000.0
    events_light_seconds: float = 5.0
    """A light load before the fixed-rate phase: the latency of the path itself, without
    the queueing of a rate the node may not sustain."""
    events_seconds: float = 20.0
    """Length of the fixed-rate phase; its event count is the baselines' count too."""
    events_max_seconds: float = 5.0
    """Length of the max-rate phase (closed-loop publishers)."""
    events_batch: int = 100
    """Records per PublishRecords call (one transaction, so one NOTIFY, on the node)."""
    events_in_flight: int = 16
    """At most this many publish calls in flight in the fixed-rate phase."""
    events_publishers: int = 8
    """Closed-loop publishers of the max-rate and backlog phases."""
    events_ack_every: int = 500
    events_ack_seconds: float = 0.05
    """The subscriber acknowledges the last position received once ``events_ack_every``
    events are unacknowledged or the oldest has waited ``events_ack_seconds``, whichever
    comes first; one acknowledgement in flight at a time."""
    events_backlog: int = 50_000
    """Events published while the subscriber is away, then drained."""
    events_profile_dir: str | None = None
    """Run each mode's node under cProfile, writing ``node-<mode>.prof`` here."""
    events_drain_timeout_seconds: float = 60.0
    """How long to wait for the subscriber to acknowledge a phase's last event."""

    events_target_per_s: float = 5_000.0
    events_target_share: float = 0.99
    """The fixed-rate phase "sustains" the target when every event is acknowledged and the
    acknowledged rate is at least this share of it (a steady flow measured over a finite
    window lands a hair either side of the offered rate)."""
    events_embedded_target_p95_ms: float = 200.0
    events_kafka_target_p95_ms: float = 1_000.0

    # -- the fairness phases (bench.fairness), on a node with its default limits -------
    # The tax load is phase 6's (concurrency, windows, dataset, records, fields, query_via);
    # BENCH_FAIRNESS_* environment variables override some fields (bench.fairness.configured).
    fairness_dataset: str = "samr.bench_load"
    """Where ``department`` bulk-loads in phase B: its own dataset, not the one queried."""
    fairness_issuers: int = 16
    """Callers of ``department`` issuing business licences in a loop in phase B."""
    fairness_target_p99_ratio: float = 2.0
    """The issue's target: the consumer's p99 in B at most this multiple of its p99 in A."""
    fairness_verifiers: int = 64
    """Verifiers posting QR texts to the node's public /verify in a loop in phase C."""
    fairness_licences: int = 20
    """Licences the verifiers of phase C take turns with (issued first, unmeasured)."""

    # -- the burst phases (bench.burst), on a node with its default limits ---------------
    # BENCH_BURST_* environment variables override some of these (bench.burst.configured).
    burst_levels: tuple[int, ...] = (16, 64, 256)
    """Concurrent Issue callers of ``department``, one burst each."""
    burst_calls_per_caller: int = 4
    burst_min_calls: int = 256
    """Each burst makes max(``burst_calls_per_caller`` x C, ``burst_min_calls``) calls, so
    that even the smallest has enough latencies for a p99."""
    burst_baseline_calls: int = 128
    """Issue calls of the one-caller baseline."""
    burst_idle_seconds: float = 3.0
    """The consumer's catalogue loop alone (its waits' baseline)."""

    # -- the soak (bench.soak), on a node with its default limits; not in the full run --
    # BENCH_SOAK_* environment variables override these (bench.soak.configured).
    soak_rounds: int = 10
    """Rounds measured one after another, without a break in the load."""
    soak_round_seconds: float = 30.0


def quick(config: Config) -> Config:
    """``config`` cut down for ``python -m bench --quick``: every phase of the full run, in
    short windows and on small data, so that a developer can see what a change does in
    about three minutes. Ratios to the same-run baselines still compare; the absolute
    figures are noisier, and figures that grow with size (verify time, proofs) are
    taken at a smaller log."""
    return replace(
        config,
        warmup_seconds=0.5,
        duration_seconds=2.0,
        connect_warmup_seconds=0.25,
        connect_duration_seconds=1.0,
        records=20_000,
        batch_queries=5,
        audit_entries=100_000,
        audit_fallback_entries=50_000,
        audit_budget_seconds=30.0,
        audit_latency_warmup_seconds=0.5,
        audit_latency_seconds=1.5,
        audit_alone_calls=30,
        audit_proofs=100,
        audit_checkpoint_rounds=5,
        events_warmup_seconds=0.5,
        events_light_seconds=1.5,
        events_seconds=4.0,
        events_max_seconds=2.0,
        events_backlog=10_000,
        burst_levels=(16, 64),
        burst_min_calls=64,
        burst_baseline_calls=32,
        burst_idle_seconds=1.0,
    )
