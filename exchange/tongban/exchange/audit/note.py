"""C2SP signed notes (c2sp.org/signed-note) and transparency-log checkpoints
(c2sp.org/tlog-checkpoint), signed with Ed25519.

A signed note is a text ending in a newline, a blank line, and one or more signature lines
``\u2014 <key name> <base64(key ID || signature)>``. The signature covers the text exactly,
final newline included. A checkpoint is a note whose text is ``<origin>``, ``<tree size>``,
``<base64 root hash>`` and optional extension lines, one per line.

The output is byte-for-byte what golang.org/x/mod/sumdb/note produces for the same key and
text (Ed25519 is deterministic), so Go witnesses and verifiers accept our checkpoints.
Opening a note is stricter than the Go package in three ways, all failing closed: base64
must be canonical (no altered padding bits), a bad signature by *any* known key rejects
the note (Go verifies only the first line per key), and verifier keys that are small-order
or non-canonically encoded Ed25519 points are refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tongban.errors import TongbanError
from tongban.signing.keys import Signer

__all__ = [
    "MAX_NOTE_BYTES",
    "MAX_SIGNATURES",
    "Checkpoint",
    "NoteInvalid",
    "NoteSignature",
    "NoteSignatureInvalid",
    "canonical_b64decode",
    "check_ed25519_public_key",
    "check_key_name",
    "checkpoint_body",
    "key_hash",
    "open_checkpoint",
    "open_note",
    "parse_verifier_key",
    "read_note",
    "sign_note",
    "verifier_key",
]

MAX_NOTE_BYTES = 1 << 20
"""Largest signed note :func:`open_checkpoint` reads, in UTF-8 bytes (1 MiB)."""

MAX_SIGNATURES = 100
"""Most signature lines :func:`open_checkpoint` reads (the spec requires at least 16)."""

_ALG_ED25519 = 0x01  # signature type byte for Ed25519 (signed-note, "Signature types")
_SIG_PREFIX = "\u2014 "  # em dash, space
_MAX_TREE_SIZE = (1 << 64) - 1  # tree sizes are uint64 in every checkpoint implementation
_SIZE_LINE = re.compile(r"0|[1-9][0-9]{0,19}")
_KEY_HASH_HEX = re.compile(r"[0-9a-f]{8}")
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")  # ASCII controls other than newline
_P = 2**255 - 19  # the field prime of Curve25519 / Ed25519


class NoteInvalid(TongbanError):
    """A signed note, checkpoint or verifier key is malformed, or is not signed by a known
    key with a valid signature. The message says which check failed."""

    reason = "NOTE_INVALID"
    status = "INVALID_ARGUMENT"


class NoteSignatureInvalid(NoteInvalid):
    """A well-formed note that carries no valid signature by a known key: none by a known
    key at all, or one by a known key that does not verify. A witness answers these with
    "403 Forbidden", other malformed notes with "400 Bad Request"."""


@dataclass(frozen=True)
class NoteSignature:
    """One signature line of a note, parsed but not verified."""

    name: str
    """The key name on the line."""
    key_id: bytes
    """The first four bytes of the decoded signature: the key ID."""
    signature: bytes
    """The rest of the decoded signature (its form depends on the key type)."""
    line: str
    """The line exactly as in the note, with its final newline."""


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint whose signature by a known key has been verified."""

    origin: str
    """The log's identity: the first line, equal to the origin the caller expected."""
    size: int
    """Number of leaves in the tree."""
    root: bytes
    """RFC 6962 root hash of the tree at ``size`` (32 bytes)."""
    extensions: tuple[str, ...]
    """Extension lines after the root, without their newlines (usually none)."""
    note: str
    """The whole signed note exactly as received, so it can be stored and passed on."""


def key_hash(name: str, public_key: Ed25519PublicKey) -> bytes:
    """Return the 4-byte key ID of an Ed25519 key:
    ``SHA-256(name || 0x0A || 0x01 || 32-byte public key)[:4]``.

    Raises :class:`NoteInvalid` if ``name`` is not a valid key name.
    """
    _check_name(name, "key name")
    return _key_hash(name, _raw(public_key))


def verifier_key(name: str, public_key: Ed25519PublicKey) -> str:
    """Return the verifier key text ``<name>+<hex key ID>+<base64(0x01 || public key)>``.

    Raises :class:`NoteInvalid` if ``name`` is not a valid key name or the key is unsafe
    (a small-order or non-canonically encoded point).
    """
    _check_name(name, "key name")
    raw = _raw(public_key)
    _check_public_key(raw)
    encoded = base64.b64encode(bytes([_ALG_ED25519]) + raw).decode("ascii")
    return f"{name}+{_key_hash(name, raw).hex()}+{encoded}"


def parse_verifier_key(text: str) -> tuple[str, Ed25519PublicKey]:
    """Return the key name and Ed25519 public key of a verifier key text.

    Raises :class:`NoteInvalid` if the text is malformed: not three ``+``-separated parts,
    an invalid name, a key ID that is not 8 lowercase hex digits or does not match the key,
    non-canonical base64, a signature type other than Ed25519 (0x01), a key that is not 32
    bytes, or an unsafe key (a small-order or non-canonically encoded point).
    """
    parts = text.split("+", 2)  # names have no '+'; base64 may
    if len(parts) != 3:
        raise NoteInvalid("a verifier key must read <name>+<key ID>+<base64 key>")
    name, hash_hex, key_b64 = parts
    _check_name(name, "key name in the verifier key")
    if not _KEY_HASH_HEX.fullmatch(hash_hex):
        raise NoteInvalid("the key ID in a verifier key must be 8 lowercase hex digits")
    key = _b64decode(key_b64)
    if key is None:
        raise NoteInvalid("the key in a verifier key is not canonical standard base64")
    if len(key) != 33 or key[0] != _ALG_ED25519:
        raise NoteInvalid(
            "the verifier key is not an Ed25519 key (type byte 0x01 and 32 key bytes)"
        )
    raw = key[1:]
    if _key_hash(name, raw).hex() != hash_hex:
        raise NoteInvalid("the key ID in the verifier key does not match its name and key")
    _check_public_key(raw)
    return name, Ed25519PublicKey.from_public_bytes(raw)


def checkpoint_body(origin: str, size: int, root: bytes, extensions: Sequence[str] = ()) -> str:
    """Return the checkpoint note text ``<origin>\\n<size>\\n<base64 root>\\n`` followed by
    each extension line and a newline.

    Raises :class:`NoteInvalid` if the origin is empty, not printable, or starts or ends
    with whitespace; if the size is not in ``0 .. 2**64 - 1``; if the root is not 32 bytes;
    or if an extension line is empty or holds a newline or control character.
    """
    if not origin or not origin.isprintable() or origin != origin.strip():
        raise NoteInvalid(
            "a checkpoint origin must be non-empty printable text without leading or "
            "trailing spaces"
        )
    if isinstance(size, bool) or not 0 <= size <= _MAX_TREE_SIZE:
        raise NoteInvalid(f"a checkpoint tree size must be between 0 and 2**64 - 1, not {size}")
    if len(root) != 32:
        raise NoteInvalid(f"a checkpoint root hash must be 32 bytes, not {len(root)}")
    for line in extensions:
        if not line or "\n" in line or _CONTROL.search(line):
            raise NoteInvalid(
                "checkpoint extension lines must be non-empty, without newlines or control "
                "characters"
            )
    lines = [origin, str(size), base64.b64encode(root).decode("ascii"), *extensions]
    return "".join(line + "\n" for line in lines)


def sign_note(body: str, name: str, key: Ed25519PrivateKey | Signer) -> str:
    """Return the signed note: ``body``, a blank line, and the signature line
    ``\u2014 <name> <base64(key ID || Ed25519 signature of body)>``.

    The signature covers the UTF-8 bytes of ``body``, its final newline included. Raises
    :class:`NoteInvalid` if ``name`` is not a valid key name, or if ``body`` is empty, does
    not end in a newline, or holds control characters other than newline or text that is
    not valid Unicode.
    """
    _check_name(name, "key name")
    data = _check_text(body)
    if not body.endswith("\n"):
        raise NoteInvalid("a note text must end with a newline")
    public_key = key.public_key()
    if not isinstance(public_key, Ed25519PublicKey):
        raise NoteInvalid("a note is signed with an Ed25519 key (C2SP signed-note type 0x01)")
    signature = key.sign(data)
    if len(signature) != 64:
        raise NoteInvalid(f"the signer returned a {len(signature)}-byte Ed25519 signature")
    kid = _key_hash(name, _raw(public_key))
    return f"{body}\n{_SIG_PREFIX}{name} {base64.b64encode(kid + signature).decode('ascii')}\n"


def open_checkpoint(
    note_text: str,
    verifiers: Mapping[str, Ed25519PublicKey] | Sequence[tuple[str, Ed25519PublicKey]],
    *,
    origin: str,
) -> Checkpoint:
    """Verify a signed checkpoint and return it parsed.

    ``verifiers`` are the trusted keys by name (a sequence of pairs allows several keys per
    name, e.g. during key rotation). A signature line counts only if both its key name and
    its key ID match a verifier; other lines are ignored, as the spec requires, so
    witnesses may cosign. At least one known key's signature must verify, and a known key's
    signature that fails rejects the whole note.

    Raises :class:`NoteInvalid` if no verifiers are given; if the note is over
    :data:`MAX_NOTE_BYTES`, holds more than :data:`MAX_SIGNATURES` signature lines, or is
    otherwise malformed; if no known key signed it validly; or if the text is not a
    checkpoint for ``origin`` (wrong origin, a size that is not a decimal without leading
    zeros, a root that is not 32 bytes of canonical base64, an empty line).
    """
    text = open_note(note_text, verifiers)

    lines = text[:-1].split("\n")
    if len(lines) < 3 or not all(lines):
        raise NoteInvalid(
            "a checkpoint needs an origin, a tree size and a root hash, one per non-empty line"
        )
    if lines[0] != origin:
        raise NoteInvalid(
            f"the checkpoint is for origin {lines[0]!r}, not the expected {origin!r}",
            metadata={"origin": origin},
        )
    if not _SIZE_LINE.fullmatch(lines[1]) or int(lines[1]) > _MAX_TREE_SIZE:
        raise NoteInvalid("the checkpoint tree size is not a decimal number without leading zeros")
    root = _b64decode(lines[2])
    if root is None or len(root) != 32:
        raise NoteInvalid("the checkpoint root hash is not 32 bytes in canonical base64")
    return Checkpoint(
        origin=lines[0],
        size=int(lines[1]),
        root=root,
        extensions=tuple(lines[3:]),
        note=note_text,
    )


def open_note(
    note_text: str,
    verifiers: Mapping[str, Ed25519PublicKey] | Sequence[tuple[str, Ed25519PublicKey]],
) -> str:
    """Verify a signed note and return its text (final newline included).

    The signature rules are those of :func:`open_checkpoint`: lines by unknown keys are
    ignored, at least one known key's signature must verify, and any known key's signature
    that fails rejects the note. Raises :class:`NoteInvalid` if no verifiers are given, if
    the note is malformed (not valid text, control characters, no blank line before the
    signatures, a line there that is not a signature line, an invalid key name,
    non-canonical base64), over :data:`MAX_NOTE_BYTES` or :data:`MAX_SIGNATURES`, and
    :class:`NoteSignatureInvalid` if it is not validly signed by a known key.
    """
    table = _verifier_table(verifiers)
    text, signatures = read_note(note_text)
    signed = text.encode("utf-8")
    verified = 0
    for sig in signatures:
        key = table.get((sig.name, sig.key_id))
        if key is None:
            continue  # unknown signer (e.g. a witness we do not track): ignored, per spec
        try:
            key.verify(sig.signature, signed)
        except InvalidSignature as e:
            raise NoteSignatureInvalid(
                f"the signature by known key {sig.name}+{sig.key_id.hex()} does not verify",
                metadata={"key": f"{sig.name}+{sig.key_id.hex()}"},
            ) from e
        verified += 1
    if not verified:
        raise NoteSignatureInvalid("the note carries no signature by a known key")
    return text


def read_note(note_text: str) -> tuple[str, list[NoteSignature]]:
    """Split a signed note into its text (final newline included) and its signature lines,
    checking the note's form but verifying no signature: the text must not be trusted
    until a signature over it has been verified (:func:`open_note`).

    Raises :class:`NoteInvalid` if the note is over :data:`MAX_NOTE_BYTES` or holds more
    than :data:`MAX_SIGNATURES` signature lines, or is malformed: not valid text, control
    characters, no blank line before the signatures, a line there that is not a signature
    line, an invalid key name, a signature that is not a key ID and signature in
    canonical base64.
    """
    if len(note_text) > MAX_NOTE_BYTES:
        raise NoteInvalid(f"the note is larger than {MAX_NOTE_BYTES} bytes")
    data = _check_text(note_text)
    if len(data) > MAX_NOTE_BYTES:
        raise NoteInvalid(f"the note is larger than {MAX_NOTE_BYTES} bytes")

    split = note_text.rfind("\n\n")  # the text ends at the last blank line
    if split < 0:
        raise NoteInvalid("the note has no blank line before its signatures")
    text, block = note_text[: split + 1], note_text[split + 2 :]
    if not block.endswith("\n"):
        raise NoteInvalid("the note's signature block must end with a newline")
    sig_lines = block[:-1].split("\n")
    if len(sig_lines) > MAX_SIGNATURES:
        raise NoteInvalid(f"the note has more than {MAX_SIGNATURES} signatures")

    signatures = []
    for line in sig_lines:
        if not line.startswith(_SIG_PREFIX):
            raise NoteInvalid("a line after the blank line is not a signature line")
        name, _, sig_b64 = line[len(_SIG_PREFIX) :].partition(" ")
        _check_name(name, "key name on a signature line")
        blob = _b64decode(sig_b64)
        if blob is None or len(blob) < 5:
            raise NoteInvalid(
                f"the signature by {name!r} is not a key ID and signature in canonical base64"
            )
        signatures.append(NoteSignature(name, blob[:4], blob[4:], line + "\n"))
    return text, signatures


def check_key_name(name: str, what: str = "key name") -> None:
    """Raise :class:`NoteInvalid` unless ``name`` is a valid signed-note key name
    (non-empty, without spaces, '+' or control characters)."""
    _check_name(name, what)


def check_ed25519_public_key(raw: bytes) -> None:
    """Raise :class:`NoteInvalid` if the 32-byte Ed25519 public key ``raw`` is not
    canonically encoded or is a small-order point (usable by anyone)."""
    _check_public_key(raw)


def canonical_b64decode(text: str) -> bytes | None:
    """Decode standard padded base64, or return None unless ``text`` is its canonical
    form (the only form a note may hold)."""
    return _b64decode(text)


def _verifier_table(
    verifiers: Mapping[str, Ed25519PublicKey] | Sequence[tuple[str, Ed25519PublicKey]],
) -> dict[tuple[str, bytes], Ed25519PublicKey]:
    pairs = verifiers.items() if isinstance(verifiers, Mapping) else verifiers
    table: dict[tuple[str, bytes], Ed25519PublicKey] = {}
    for name, key in pairs:
        _check_name(name, "verifier name")
        raw = _raw(key)
        _check_public_key(raw)
        kid = _key_hash(name, raw)
        other = table.setdefault((name, kid), key)
        if _raw(other) != raw:
            raise NoteInvalid(f"two verifier keys share the name and key ID {name}+{kid.hex()}")
    if not table:
        raise NoteInvalid("no verifier keys were given, so no note can be trusted")
    return table


def _key_hash(name: str, raw: bytes) -> bytes:
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([_ALG_ED25519]) + raw).digest()[:4]


def _raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _check_name(name: str, what: str) -> None:
    # signed-note: non-empty, no Unicode spaces, no '+'. str.isspace covers Go's
    # unicode.IsSpace; control characters are rejected too, as everywhere in a note.
    if not name or "+" in name or any(c.isspace() for c in name) or _CONTROL.search(name):
        raise NoteInvalid(f"the {what} must be non-empty, without spaces or '+'")


def _check_text(text: str) -> bytes:
    """Return ``text`` as UTF-8 after checking the note rules every note text follows."""
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise NoteInvalid("the note is not valid Unicode text") from e
    if not data:
        raise NoteInvalid("a note text cannot be empty")
    if _CONTROL.search(text):
        raise NoteInvalid("the note holds control characters other than newline")
    return data


def _b64decode(text: str) -> bytes | None:
    """Decode standard padded base64, or return None unless ``text`` is its canonical form."""
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        return None
    return data if base64.b64encode(data).decode("ascii") == text else None


def _check_public_key(raw: bytes) -> None:
    """Refuse an Ed25519 public key that is a non-canonical encoding or a small-order point.

    A small-order key identifies no one: signatures that verify under it can be made
    without a private key, so a log configured with one could later deny its checkpoints.
    """
    y = int.from_bytes(raw, "little") & ((1 << 255) - 1)
    if y >= _P:
        raise NoteInvalid("the Ed25519 public key is not canonically encoded")
    # Map to Montgomery form, u = (1 + y) / (1 - y), and let X25519 multiply it by a
    # clamped scalar (a multiple of the cofactor 8): the result is zero, which X25519
    # refuses, exactly when the point has small order. y = 1 is the neutral point.
    small = y == 1
    if not small:
        u = (1 + y) * pow(1 - y, -1, _P) % _P
        probe = X25519PrivateKey.from_private_bytes(bytes([8]) + bytes(31))
        try:
            probe.exchange(X25519PublicKey.from_public_bytes(u.to_bytes(32, "little")))
        except ValueError:
            small = True
    if small:
        raise NoteInvalid("the Ed25519 public key is a small-order point, usable by anyone")
