"""Checking the witnesses' cosignatures the node kept (``witness_cosignature``) against
the witnesses an auditor trusts: ``tongban audit verify --witnesses N``.

Every kept cosignature is verified on the checkpoint it is kept for: one by a trusted
witness that does not verify fails the check (someone added or altered a row). The
result is the largest checkpoint with at least N valid cosignatures by distinct trusted
witnesses: outsiders have seen the log up to that size, and ``verify_log`` has shown
that every later checkpoint extends it. Entries after it are not witnessed yet (the
node asks after each checkpoint; a witness that refuses leaves them so).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tongban.errors import TongbanError
from tongban.exchange.audit.cosignature import (
    Cosignature,
    Cosignatures,
    WitnessKey,
    WitnessQuorumNotMet,
    open_cosignatures,
    require_quorum,
)
from tongban.exchange.audit.note import key_hash

__all__ = ["WitnessedReport", "WitnessesNotConfigured", "verify_witnessed"]

_CHUNK = 2000


class WitnessesNotConfigured(TongbanError):
    """Witnessing was required but no witness is trusted: nothing could pass."""

    reason = "WITNESSES_NOT_CONFIGURED"
    status = "FAILED_PRECONDITION"


@dataclass(frozen=True)
class WitnessedReport:
    size: int
    """The largest checkpoint size with the required cosignatures."""
    cosignatures: tuple[Cosignature, ...]
    """The valid cosignatures of trusted witnesses on that checkpoint."""
    checked: int
    """Kept cosignatures verified, on every checkpoint."""


async def verify_witnessed(
    pool: asyncpg.Pool,
    *,
    origin: str,
    verifier: Ed25519PublicKey,
    witnesses: Sequence[WitnessKey],
    quorum: int,
) -> WitnessedReport:
    """Verify every kept cosignature and return the largest checkpoint cosigned by at
    least ``quorum`` trusted ``witnesses``.

    Raises WitnessesNotConfigured if no witness is trusted, CosignatureInvalid if a kept
    cosignature by a trusted witness does not verify, and, when no checkpoint has the
    quorum, WitnessUnknown (some cosignatures are by witnesses not trusted) or
    WitnessQuorumNotMet. ValueError for a quorum below 1.
    """
    if quorum < 1:
        raise ValueError("a witness quorum is at least 1")
    if not witnesses:
        raise WitnessesNotConfigured(
            "No witness is trusted, so no cosignature can count: give each witness's key "
            "with --witness, or set TONGBAN_WITNESSES."
        )
    log_keys = [(origin, key_hash(origin, verifier))]
    best: tuple[int, Cosignatures] | None = None
    nearest: tuple[int, Cosignatures] | None = None  # the latest, for the refusal
    checked = 0
    after = -1
    while True:
        rows = await pool.fetch(
            "SELECT c.size, c.note, array_agg(w.line ORDER BY w.witness, w.key_id) AS lines"
            " FROM log_checkpoint c JOIN witness_cosignature w ON w.size = c.size"
            " WHERE c.size > $1 GROUP BY c.size, c.note ORDER BY c.size LIMIT $2",
            after,
            _CHUNK,
        )
        if not rows:
            break
        for row in rows:
            found = open_cosignatures(
                row["note"] + "".join(row["lines"]), witnesses, log_keys=log_keys
            )
            checked += len(row["lines"])
            if len(found.valid) >= quorum:
                best = (row["size"], found)
            nearest = (row["size"], found)
        after = rows[-1]["size"]
    if best is not None:
        return WitnessedReport(best[0], best[1].valid, checked)
    if nearest is None:
        raise WitnessQuorumNotMet(
            f"No checkpoint of the log has a witness's cosignature; {quorum} are required. "
            "Is TONGBAN_WITNESSES set on the nodes, and do the witnesses answer "
            "(tongban_witness_requests on /metrics)?",
            metadata={"valid": "0", "required": str(quorum)},
        )
    size, found = nearest
    require_quorum(found, quorum, what=f"The latest cosigned checkpoint (size {size:,})")
    raise AssertionError("require_quorum passed where the loop found no quorum")
