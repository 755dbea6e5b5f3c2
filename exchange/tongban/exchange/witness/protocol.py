"""The C2SP tlog-witness HTTP protocol (c2sp.org/tlog-witness): request and response
bodies of ``add-checkpoint``, and the refusals with the status code the spec gives each.

Pure functions over bytes and text; the witness (``service``, ``server``) and the node's
collector (``collector``) both use them.

A request body is an old size line ``old <size>``, up to 63 consistency proof lines (one
base64 hash each), an empty line, and the checkpoint (a signed note). A cosigned answer
is "200" with one or more note signature lines; a refusal is 400 (malformed, or an old
size larger than the checkpoint's), 403 (no valid signature by a key the witness trusts
for the origin), 404 (unknown origin), 409 (the old size is not the witness's latest
cosigned size, or the same size with another root; the body is that size and a newline,
``Content-Type: text/x.tlog.size``) or 422 (the consistency proof does not verify).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass

from tongban.errors import TongbanError
from tongban.exchange.audit.merkle import HASH_SIZE
from tongban.exchange.audit.note import canonical_b64decode

__all__ = [
    "MAX_PROOF_LINES",
    "MAX_REQUEST_BYTES",
    "SIZE_CONTENT_TYPE",
    "AddCheckpoint",
    "WitnessCheckpointUnsigned",
    "WitnessConflict",
    "WitnessLogUnknown",
    "WitnessOldSizeInvalid",
    "WitnessProofInvalid",
    "WitnessRefusal",
    "WitnessRequestMalformed",
    "add_checkpoint_body",
    "parse_add_checkpoint",
    "parse_cosignature_lines",
    "parse_size_body",
    "size_body",
]

MAX_PROOF_LINES = 63
"""Most consistency proof lines a request may carry."""

MAX_REQUEST_BYTES = (1 << 20) + 8 * 1024
"""Largest request body the witness reads: a 1 MiB note (``MAX_NOTE_BYTES``) and a proof."""

SIZE_CONTENT_TYPE = "text/x.tlog.size"
"""Content type of a 409 answer's body, the witness's latest cosigned size."""

_OLD_LINE = re.compile(r"old (0|[1-9][0-9]{0,19})")
_SIZE_LINE = re.compile(r"(0|[1-9][0-9]{0,19})\n")
_MAX_SIZE = (1 << 64) - 1


class WitnessRefusal(TongbanError):
    """The witness refused an add-checkpoint request; ``http_status`` is the spec's code."""

    http_status = 400
    reason = "WITNESS_REQUEST_MALFORMED"
    status = "INVALID_ARGUMENT"


class WitnessRequestMalformed(WitnessRefusal):
    """The body is not an old size line, proof lines, a blank line and a checkpoint, or the
    checkpoint is not a well-formed signed checkpoint (400)."""


class WitnessOldSizeInvalid(WitnessRefusal):
    """The old size is larger than the checkpoint's size (400)."""

    reason = "WITNESS_OLD_SIZE_INVALID"


class WitnessCheckpointUnsigned(WitnessRefusal):
    """No signature on the checkpoint verifies under a key the witness trusts for its
    origin (403)."""

    http_status = 403
    reason = "WITNESS_SIGNATURE_INVALID"
    status = "PERMISSION_DENIED"


class WitnessLogUnknown(WitnessRefusal):
    """The witness does not witness the checkpoint's origin (404)."""

    http_status = 404
    reason = "WITNESS_LOG_UNKNOWN"
    status = "NOT_FOUND"


class WitnessConflict(WitnessRefusal):
    """The old size is not the size of the witness's latest cosigned checkpoint, or it is
    and the root differs (a split view) (409). ``latest_size`` is the witness's size."""

    http_status = 409
    reason = "WITNESS_CONFLICT"
    status = "ABORTED"

    def __init__(self, message: str, *, latest_size: int, split_view: bool = False) -> None:
        super().__init__(message, metadata={"latest_size": str(latest_size)})
        self.latest_size = latest_size
        self.split_view = split_view


class WitnessProofInvalid(WitnessRefusal):
    """The consistency proof from the old size to the checkpoint does not verify (422)."""

    http_status = 422
    reason = "WITNESS_PROOF_INVALID"
    status = "FAILED_PRECONDITION"


@dataclass(frozen=True)
class AddCheckpoint:
    """A parsed add-checkpoint request (nothing in it verified yet)."""

    old_size: int
    proof: tuple[bytes, ...]
    note: str
    """The checkpoint: a signed note, as sent."""


def add_checkpoint_body(old_size: int, proof: Sequence[bytes], note: str) -> bytes:
    """Return the request body: ``old <old_size>``, one base64 line per proof hash, an
    empty line, and the signed checkpoint ``note``.

    Raises ValueError for a negative old size, more than 63 proof hashes, a hash that is
    not 32 bytes, or a note that does not end in a newline.
    """
    if not 0 <= old_size <= _MAX_SIZE:
        raise ValueError(f"an old size must be within 0 .. 2**64 - 1, not {old_size}")
    if len(proof) > MAX_PROOF_LINES:
        raise ValueError(f"a consistency proof has at most {MAX_PROOF_LINES} hashes")
    if any(len(h) != HASH_SIZE for h in proof):
        raise ValueError(f"every proof hash is {HASH_SIZE} bytes")
    if not note.endswith("\n"):
        raise ValueError("a signed note ends with a newline")
    lines = [f"old {old_size}", *(base64.b64encode(h).decode("ascii") for h in proof), ""]
    return ("\n".join(lines) + "\n" + note).encode("utf-8")


def parse_add_checkpoint(body: bytes) -> AddCheckpoint:
    """Return the request ``body`` parsed.

    Raises :class:`WitnessRequestMalformed` if it is not UTF-8, has no empty line before
    the checkpoint, does not start with ``old <size>`` (decimal, no leading zeros), holds
    more than 63 proof lines or a line that is not a 32-byte hash in canonical base64, or
    has no checkpoint after the empty line.
    """
    if len(body) > MAX_REQUEST_BYTES:
        raise WitnessRequestMalformed(f"The request is larger than {MAX_REQUEST_BYTES} bytes.")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise WitnessRequestMalformed("The request body is not UTF-8 text.") from None
    head, blank, note = text.partition("\n\n")
    if not blank:
        raise WitnessRequestMalformed(
            "The request has no empty line between the old size and proof lines and the checkpoint."
        )
    lines = head.split("\n")
    match = _OLD_LINE.fullmatch(lines[0])
    if match is None or int(match.group(1)) > _MAX_SIZE:
        raise WitnessRequestMalformed(
            "The request must start with 'old <size>', the size in decimal without leading zeros."
        )
    if len(lines) - 1 > MAX_PROOF_LINES:
        raise WitnessRequestMalformed(
            f"The request has {len(lines) - 1} consistency proof lines; at most "
            f"{MAX_PROOF_LINES} are allowed."
        )
    proof = []
    for number, line in enumerate(lines[1:], start=1):
        decoded = canonical_b64decode(line)
        if decoded is None or len(decoded) != HASH_SIZE:
            raise WitnessRequestMalformed(
                f"Consistency proof line {number} is not a {HASH_SIZE}-byte hash in base64."
            )
        proof.append(decoded)
    if not note:
        raise WitnessRequestMalformed("The request has no checkpoint after the empty line.")
    return AddCheckpoint(int(match.group(1)), tuple(proof), note)


def size_body(size: int) -> bytes:
    """The body of a 409 answer: ``size`` in decimal and a newline."""
    return f"{size}\n".encode("ascii")


def parse_size_body(body: bytes) -> int:
    """Return the witness's latest size from a 409 answer's body; ValueError if the body is
    not a decimal and a newline."""
    match = _SIZE_LINE.fullmatch(body.decode("ascii", errors="replace"))
    if match is None or int(match.group(1)) > _MAX_SIZE:
        raise ValueError("a 409 answer's body is the witness's tree size and a newline")
    return int(match.group(1))


def parse_cosignature_lines(body: bytes) -> list[str]:
    """Return the note signature lines (each with its newline) of a 200 answer; ValueError
    unless the body is one or more lines starting with an em dash and a space."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("the answer is not UTF-8 text") from None
    if not text.endswith("\n"):
        raise ValueError("the answer does not end with a newline")
    lines = [line + "\n" for line in text[:-1].split("\n")]
    if not lines or not all(line.startswith("\u2014 ") for line in lines):
        raise ValueError("the answer is not note signature lines")
    return lines
