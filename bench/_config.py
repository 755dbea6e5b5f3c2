"""The benchmark's settings, shared by every phase (``bench.foundation``, ``bench.sharing``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Config"]


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
