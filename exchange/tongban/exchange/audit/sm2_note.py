"""SM2 signature lines on signed notes: a checkpoint signed with SM2/SM3 beside Ed25519.

C2SP signed notes assign no signature type to SM2, and reserve ``0xff`` for types without
one, "followed by a longer identifier that is unlikely to collide". Tongban's SM2 lines use
the type ``0xff || "urn:tongban:sm2-sm3:v1"``:

- key ID = SHA-256(key name || 0x0A || 0xff || "urn:tongban:sm2-sm3:v1" || 0x04 || x || y)[:4]
- the signature is SM2 with SM3 over the note text (final newline included), with the
  default distinguishing ID 1234567812345678, DER-encoded
- the verifier key reads ``<name>+<hex key ID>+<base64(0xff || identifier || 0x04 || x || y)>``

The Ed25519 line stays, so every C2SP verifier and witness keeps working: the signed-note
rules make them ignore a line by a key they do not know. A verifier that does know the SM2
key checks the line with any SM2 implementation; ``openssl pkeyutl -verify -rawin -digest
sm3 -pkeyopt distid:1234567812345678`` does (``tests/exchange/audit/test_sm2_checkpoints.py``).
"""

from __future__ import annotations

import base64
import hashlib

from tongban.exchange.audit.note import (
    NoteInvalid,
    canonical_b64decode,
    check_key_name,
    read_note,
)
from tongban.signing import SignatureInvalid
from tongban.signing.sm2 import Sm2PrivateKey, Sm2PublicKey

__all__ = [
    "SM2_SIGNATURE_TYPE",
    "add_sm2_signature",
    "parse_sm2_verifier_key",
    "sm2_key_id",
    "sm2_signature_status",
    "sm2_verifier_key",
]

#: The signature type of an SM2 line: 0xff, then Tongban's identifier for SM2 with SM3.
SM2_SIGNATURE_TYPE = b"\xff" + b"urn:tongban:sm2-sm3:v1"
_SIG_PREFIX = "\u2014 "


def _encoded(public: Sm2PublicKey) -> bytes:
    return SM2_SIGNATURE_TYPE + b"\x04" + public.point


def sm2_key_id(name: str, public: Sm2PublicKey) -> bytes:
    """The 4-byte key ID of an SM2 key under ``name`` (see the module's docstring)."""
    check_key_name(name)
    return hashlib.sha256(name.encode() + b"\n" + _encoded(public)).digest()[:4]


def sm2_verifier_key(name: str, public: Sm2PublicKey) -> str:
    """The verifier key text of an SM2 key: ``<name>+<hex key ID>+<base64 key>``."""
    key_id = sm2_key_id(name, public)
    return f"{name}+{key_id.hex()}+{base64.b64encode(_encoded(public)).decode('ascii')}"


def parse_sm2_verifier_key(text: str) -> tuple[str, Sm2PublicKey]:
    """The key name and SM2 public key of an SM2 verifier key text; raises NoteInvalid if
    it is malformed, of another type, off the curve, or its key ID does not match."""
    parts = text.split("+", 2)
    if len(parts) != 3:
        raise NoteInvalid("a verifier key must read <name>+<key ID>+<base64 key>")
    name, key_id, encoded = parts
    check_key_name(name, "key name in the verifier key")
    raw = canonical_b64decode(encoded)
    if raw is None or not raw.startswith(SM2_SIGNATURE_TYPE + b"\x04"):
        raise NoteInvalid("the verifier key is not a Tongban SM2 key (type 0xff sm2-sm3)")
    try:
        public = Sm2PublicKey(raw[len(SM2_SIGNATURE_TYPE) + 1 :])
    except ValueError as e:
        raise NoteInvalid(f"the SM2 verifier key is unusable: {e}") from e
    if sm2_key_id(name, public).hex() != key_id:
        raise NoteInvalid("the key ID in the verifier key does not match its name and key")
    return name, public


def add_sm2_signature(note: str, name: str, key: Sm2PrivateKey) -> str:
    """``note`` with an SM2 signature line by ``key`` under ``name`` appended (the note's
    text is what is signed, as for every other line). Raises NoteInvalid for a malformed
    note or name."""
    text, _ = read_note(note)
    signature = key.sign(text.encode("utf-8"))
    blob = base64.b64encode(sm2_key_id(name, key.public) + signature).decode("ascii")
    return f"{note}{_SIG_PREFIX}{name} {blob}\n"


def sm2_signature_status(note: str, name: str, public: Sm2PublicKey) -> bool | None:
    """Whether ``note`` carries a valid SM2 signature by ``public`` under ``name``: None
    when it has no line by that key, True when every such line verifies, False when one
    does not. Raises NoteInvalid for a malformed note."""
    text, signatures = read_note(note)
    key_id = sm2_key_id(name, public)
    found = [s for s in signatures if s.name == name and s.key_id == key_id]
    if not found:
        return None
    for line in found:
        try:
            public.verify(line.signature, text.encode("utf-8"))
        except SignatureInvalid:
            return False
    return True
