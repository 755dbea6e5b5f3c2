"""Base45 (RFC 9285): binary data as text in the QR code alphanumeric character set.

Base45 packs two bytes into three characters, all from the 45 characters a QR code can
hold in alphanumeric mode (5.5 bits each), so binary payloads fill fewer modules than in
byte mode or as base64.
"""

from __future__ import annotations

import functools
import struct

from tongban.licence.errors import LicenceFormatInvalid

__all__ = ["ALPHABET", "b45decode", "b45encode"]

#: The 45 characters of RFC 9285 section 4.2, in value order.
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"
_VALUES = {c: i for i, c in enumerate(ALPHABET)}
# Every ASCII character to its value's byte, or 0xff for characters outside the alphabet.
_TABLE = {i: _VALUES.get(chr(i), 0xFF) for i in range(128)}
_BYTE = 256
_PAIR = 65536


@functools.cache
def _triples() -> tuple[str, ...]:
    # The three characters of every 16-bit value, built once (65,536 short strings).
    return tuple(
        ALPHABET[n % 45] + ALPHABET[n // 45 % 45] + ALPHABET[n // 2025] for n in range(_PAIR)
    )


def b45encode(data: bytes) -> str:
    """Return the base45 text of ``data`` (3 characters per 2 bytes, 2 for a final odd
    byte). Never raises."""
    whole = len(data) - len(data) % 2
    text = "".join(map(_triples().__getitem__, struct.unpack(f">{whole // 2}H", data[:whole])))
    if len(data) % 2:
        e, d = divmod(data[-1], 45)
        text += ALPHABET[d] + ALPHABET[e]
    return text


def b45decode(text: str) -> bytes:
    """Return the bytes encoded by base45 ``text``.

    Raises LicenceFormatInvalid if ``text`` holds a character outside the base45
    alphabet (lower-case letters included), its length leaves a single character over
    (length mod 3 == 1), or a group encodes a value too large for its bytes (over 65535
    for three characters, over 255 for a final two), as RFC 9285 section 4.2 requires.
    """
    raw = text.translate(_TABLE).encode("latin-1", "replace") if text.isascii() else b"\xff"
    if b"\xff" in raw or b"?" in raw:
        bad = next((c for c in text if c not in _VALUES), text[:1])
        raise LicenceFormatInvalid(
            f"The text is not base45: {bad!r} is not in the base45 alphabet "
            "(digits, upper-case A-Z, space and $%*+-./:)."
        )
    if len(raw) % 3 == 1:
        raise LicenceFormatInvalid(
            f"The base45 text is {len(raw)} characters long, which no data encodes "
            "(it may be truncated)."
        )
    whole = len(raw) - len(raw) % 3
    out = _whole_groups(raw, whole)
    if out is None:
        pairs = [
            a + b * 45 + c * 2025
            for a, b, c in zip(raw[0:whole:3], raw[1:whole:3], raw[2:whole:3], strict=True)
        ]
        i = 3 * next(k for k, n in enumerate(pairs) if n >= _PAIR)
        raise LicenceFormatInvalid(
            f"The base45 group {text[i : i + 3]!r} at position {i} encodes {pairs[i // 3]}, "
            f"more than {_PAIR - 1}; the text is not valid base45."
        )
    if whole < len(raw):
        n = raw[whole] + raw[whole + 1] * 45
        if n >= _BYTE:
            raise LicenceFormatInvalid(
                f"The base45 group {text[whole:]!r} at position {whole} encodes {n}, more "
                f"than {_BYTE - 1}; the text is not valid base45."
            )
        out += bytes((n,))
    return out


def _spread(digits: bytes, size: int) -> int:
    # Each digit as the low byte of a 3-byte slot, the slots read as one big integer.
    slots = bytearray(size)
    slots[2::3] = digits
    return int.from_bytes(slots, "big")


def _whole_groups(raw: bytes, whole: int) -> bytes | None:
    """The bytes of the first ``whole`` digit values of ``raw`` (three per group), or
    None if a group encodes more than 65535.

    Every step runs at C speed: the groups' values a + 45b + 2025c are summed in 3-byte
    slots of one big integer (at most 91,124, so no slot carries into the next), then the
    slots' low two bytes are the output and a non-zero high byte marks a value too large.
    A loop over the groups in Python cost as much as a third of a QR verification.
    """
    total = (
        _spread(raw[0:whole:3], whole)
        + 45 * _spread(raw[1:whole:3], whole)
        + 2025 * _spread(raw[2:whole:3], whole)
    )
    slots = total.to_bytes(whole, "big")
    if slots[0::3].count(0) != whole // 3:
        return None
    out = bytearray(whole // 3 * 2)
    out[0::2] = slots[1::3]
    out[1::2] = slots[2::3]
    return bytes(out)
