"""Witness cosignatures on checkpoints: C2SP tlog-cosignature, Ed25519 (c2sp.org/
tlog-cosignature, signed-note signature type 0x04).

A cosignature is a note signature line ``\u2014 <witness name> base64(key ID || timestamp ||
Ed25519 signature)``. The key ID is ``SHA-256(name || 0x0A || 0x04 || public key)[:4]``,
the timestamp a big-endian uint64 of POSIX seconds (at most 2**63 - 1), and the signature
covers ``cosignature/v1\\n``, ``time <timestamp>\\n`` and the whole checkpoint text. It
says: as of that time, this is the largest consistent tree head the witness has seen for
the log. A witness is known to verifiers by its verifier key
``<name>+<hex key ID>+base64(0x04 || public key)``.

Pure functions over plain data; the witness (``tongban.exchange.witness``) signs with
:func:`cosign`, and the node and ``tongban audit verify`` check with
:func:`open_cosignatures` and :func:`require_quorum`.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tongban.errors import TongbanError
from tongban.exchange.audit.note import (
    NoteInvalid,
    NoteSignature,
    canonical_b64decode,
    check_ed25519_public_key,
    check_key_name,
    read_note,
)
from tongban.signing.keys import Signer

__all__ = [
    "COSIGNATURE_TYPE",
    "MAX_TIMESTAMP",
    "Cosignature",
    "CosignatureInvalid",
    "Cosignatures",
    "WitnessKey",
    "WitnessKeyInvalid",
    "WitnessQuorumNotMet",
    "WitnessUnknown",
    "check_witness_name",
    "cosign",
    "cosigned_message",
    "open_cosignatures",
    "require_quorum",
]

COSIGNATURE_TYPE = 0x04
"""Signed-note signature type of timestamped Ed25519 witness cosignatures."""

MAX_TIMESTAMP = 2**63 - 1
"""Largest timestamp a cosignature may carry (tlog-cosignature, "Format")."""

_HEADER = b"cosignature/v1\n"
_BLOB = 8 + 64  # timestamp and Ed25519 signature, after the 4-byte key ID


class WitnessKeyInvalid(TongbanError):
    """A witness verifier key (``name+keyid+base64``) is malformed or unsafe."""

    reason = "WITNESS_KEY_INVALID"
    status = "INVALID_ARGUMENT"


class CosignatureInvalid(TongbanError):
    """A cosignature by a known witness is malformed or does not verify."""

    reason = "COSIGNATURE_INVALID"
    status = "FAILED_PRECONDITION"


class WitnessUnknown(TongbanError):
    """Too few valid cosignatures, and at least one of those present is by a witness the
    verifier does not trust: it is not counted."""

    reason = "WITNESS_UNKNOWN"
    status = "FAILED_PRECONDITION"


class WitnessQuorumNotMet(TongbanError):
    """Fewer valid cosignatures by trusted witnesses than required."""

    reason = "WITNESS_QUORUM_NOT_MET"
    status = "FAILED_PRECONDITION"


def _raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _key_id(name: str, raw: bytes) -> bytes:
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([COSIGNATURE_TYPE]) + raw).digest()[
        :4
    ]


def check_witness_name(name: str) -> None:
    """Raise :class:`WitnessKeyInvalid` unless ``name`` can name a witness in a note
    (non-empty, no spaces, no '+'); a schema-less URL such as ``witness.example/w1``."""
    try:
        check_key_name(name, "witness name")
    except NoteInvalid as e:
        raise WitnessKeyInvalid(f"{name!r} cannot name a witness: {e.message}.") from None


@dataclass(frozen=True, eq=False)
class WitnessKey:
    """A witness's name and Ed25519 cosigning key, checked on construction; equal to
    another with the same name and key."""

    name: str
    public_key: Ed25519PublicKey

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WitnessKey):
            return NotImplemented
        return (self.name, _raw(self.public_key)) == (other.name, _raw(other.public_key))

    def __hash__(self) -> int:
        return hash((self.name, _raw(self.public_key)))

    def __post_init__(self) -> None:
        check_witness_name(self.name)
        try:
            check_ed25519_public_key(_raw(self.public_key))
        except NoteInvalid as e:
            raise WitnessKeyInvalid(f"The witness key is unusable: {e.message}.") from None

    @property
    def key_id(self) -> bytes:
        """``SHA-256(name || 0x0A || 0x04 || public key)[:4]``."""
        return _key_id(self.name, _raw(self.public_key))

    @property
    def label(self) -> str:
        """``<name>+<hex key ID>``: how messages name the witness."""
        return f"{self.name}+{self.key_id.hex()}"

    @property
    def vkey(self) -> str:
        """The verifier key text ``<name>+<hex key ID>+base64(0x04 || public key)``."""
        encoded = base64.b64encode(bytes([COSIGNATURE_TYPE]) + _raw(self.public_key)).decode()
        return f"{self.label}+{encoded}"

    @classmethod
    def parse(cls, text: str) -> WitnessKey:
        """Read a verifier key ``<name>+<hex key ID>+base64(0x04 || 32-byte key)``.

        Raises :class:`WitnessKeyInvalid` if it is not three ``+``-separated parts, the
        name is invalid, the key ID is not 8 lowercase hex digits or does not match, the
        base64 is not canonical, the type byte is not 0x04 (an 0x01 key is a log's, not a
        witness's), or the key is not a safe Ed25519 point.
        """
        parts = text.strip().split("+", 2)
        if len(parts) != 3:
            raise WitnessKeyInvalid(
                f"A witness key must read <name>+<key ID>+<base64 key>, not {text[:80]!r}."
            )
        name, hash_hex, key_b64 = parts
        decoded = canonical_b64decode(key_b64)
        if decoded is None or len(decoded) != 33 or decoded[0] != COSIGNATURE_TYPE:
            raise WitnessKeyInvalid(
                f"The key of witness {name!r} is not a cosignature key: base64 of the type "
                "byte 0x04 and 32 Ed25519 key bytes (`tongban witness key` prints one)."
            )
        try:
            witness = cls(name, Ed25519PublicKey.from_public_bytes(decoded[1:]))
        except ValueError as e:
            raise WitnessKeyInvalid(f"The key of witness {name!r} is not an Ed25519 key.") from e
        if witness.key_id.hex() != hash_hex:
            raise WitnessKeyInvalid(
                f"The key ID {hash_hex!r} of witness {name!r} does not match its name and key."
            )
        return witness


@dataclass(frozen=True)
class Cosignature:
    """A cosignature verified under a known witness's key."""

    witness: WitnessKey
    timestamp: int
    """When the witness signed, in POSIX seconds."""
    line: str
    """The signature line exactly as received, with its final newline."""


@dataclass(frozen=True)
class Cosignatures:
    """The cosignatures of one checkpoint, as a verifier with a set of trusted witnesses
    sees them."""

    valid: tuple[Cosignature, ...]
    """One valid cosignature per trusted witness that signed (the latest if several)."""
    unknown: tuple[str, ...]
    """``name+keyid`` of signature lines by neither the log nor a trusted witness."""


def cosigned_message(text: str, timestamp: int) -> bytes:
    """Return what a cosignature signs: ``cosignature/v1``, ``time <timestamp>`` and the
    checkpoint ``text`` (final newline included, no signature lines).

    Raises ValueError for a timestamp outside ``0 .. 2**63 - 1``.
    """
    if isinstance(timestamp, bool) or not 0 <= timestamp <= MAX_TIMESTAMP:
        raise ValueError(f"a cosignature timestamp must be within 0 .. 2**63 - 1, not {timestamp}")
    return _HEADER + f"time {timestamp}\n".encode("ascii") + text.encode("utf-8")


def cosign(text: str, witness: WitnessKey, key: Ed25519PrivateKey | Signer, timestamp: int) -> str:
    """Return the cosignature line (with its newline) of ``witness`` on the checkpoint
    ``text``, signed with ``key`` at ``timestamp`` (POSIX seconds).

    Raises ValueError if ``key`` is not ``witness``'s key or the timestamp is out of range,
    TypeError if it is not an Ed25519 key.
    """
    if _raw(witness.public_key) != _raw(_ed25519(key.public_key())):
        raise ValueError(f"the signing key is not the key of witness {witness.label}")
    signature = key.sign(cosigned_message(text, timestamp))
    if len(signature) != 64:
        raise ValueError(f"the signer returned a {len(signature)}-byte Ed25519 signature")
    blob = witness.key_id + timestamp.to_bytes(8, "big") + signature
    return f"\u2014 {witness.name} {base64.b64encode(blob).decode('ascii')}\n"


def _ed25519(key: object) -> Ed25519PublicKey:
    if not isinstance(key, Ed25519PublicKey):
        raise TypeError("witness cosignatures are made with Ed25519 keys")
    return key


def _verify(text: str, sig: NoteSignature, witness: WitnessKey) -> Cosignature:
    if len(sig.signature) != _BLOB:
        raise CosignatureInvalid(
            f"The cosignature by witness {witness.label} is {4 + len(sig.signature)} bytes, "
            f"not {4 + _BLOB} (key ID, timestamp, Ed25519 signature).",
            metadata={"witness": witness.label},
        )
    timestamp = int.from_bytes(sig.signature[:8], "big")
    if timestamp > MAX_TIMESTAMP:
        raise CosignatureInvalid(
            f"The cosignature by witness {witness.label} has a timestamp over 2**63 - 1.",
            metadata={"witness": witness.label},
        )
    try:
        witness.public_key.verify(sig.signature[8:], cosigned_message(text, timestamp))
    except InvalidSignature:
        raise CosignatureInvalid(
            f"The cosignature by witness {witness.label} does not verify: it was not made "
            "by that witness on this checkpoint.",
            metadata={"witness": witness.label},
        ) from None
    return Cosignature(witness, timestamp, sig.line)


def open_cosignatures(
    note_text: str,
    witnesses: Sequence[WitnessKey],
    *,
    log_keys: Collection[tuple[str, bytes]] = (),
) -> Cosignatures:
    """Return the valid cosignatures of trusted ``witnesses`` on a signed checkpoint, and
    the lines by keys neither the log's (``log_keys``: name and key ID pairs) nor a
    trusted witness's.

    The log's signature is not checked here (``open_checkpoint`` does that). A line whose
    name and key ID match a trusted witness must verify; other lines are set aside as
    unknown, as signed-note requires. Raises :class:`NoteInvalid` if the note is
    malformed, and :class:`CosignatureInvalid` if a trusted witness's cosignature is
    malformed or does not verify.
    """
    text, signatures = read_note(note_text)
    trusted = {(w.name, w.key_id): w for w in witnesses}
    skip = set(log_keys)
    found: dict[tuple[str, bytes], Cosignature] = {}
    unknown: list[str] = []
    for sig in signatures:
        key = (sig.name, sig.key_id)
        if key in skip:
            continue
        witness = trusted.get(key)
        if witness is None:
            label = f"{sig.name}+{sig.key_id.hex()}"
            if label not in unknown:
                unknown.append(label)
            continue
        cosignature = _verify(text, sig, witness)
        earlier = found.get(key)
        if earlier is None or earlier.timestamp < cosignature.timestamp:
            found[key] = cosignature
    return Cosignatures(tuple(found.values()), tuple(unknown))


def require_quorum(cosignatures: Cosignatures, quorum: int, *, what: str) -> None:
    """Return if ``cosignatures`` holds at least ``quorum`` valid ones by distinct trusted
    witnesses; ``what`` names the checkpoint in the message.

    Raises ValueError for a quorum below 1 (requiring none is not a check), and, when
    there are too few: :class:`WitnessUnknown` if some of the lines present are by
    witnesses the verifier does not trust (naming them), else
    :class:`WitnessQuorumNotMet`.
    """
    if quorum < 1:
        raise ValueError("a witness quorum is at least 1")
    have = len(cosignatures.valid)
    if have >= quorum:
        return
    counted = f"{what} has {have} valid cosignature{'s' if have != 1 else ''} by trusted "
    counted += f"witnesses, fewer than the {quorum} required"
    if cosignatures.unknown:
        names = ", ".join(cosignatures.unknown)
        raise WitnessUnknown(
            f"{counted}; the cosignature of {names} is by a witness not in the trusted set, "
            "so it does not count (add its key with --witness if you trust it).",
            metadata={"unknown": names, "valid": str(have), "required": str(quorum)},
        )
    raise WitnessQuorumNotMet(f"{counted}.", metadata={"valid": str(have), "required": str(quorum)})
