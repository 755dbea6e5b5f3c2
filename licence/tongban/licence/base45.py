"""Base45 (RFC 9285): binary data as text in the QR code alphanumeric character set.

Base45 packs two bytes into three characters, all from the 45 characters a QR code can
hold in alphanumeric mode (5.5 bits each), so binary payloads fill fewer modules than in
byte mode or as base64.
"""

from __future__ import annotations

from tongban.licence.errors import LicenceFormatInvalid

__all__ = ["ALPHABET", "b45decode", "b45encode"]

#: The 45 characters of RFC 9285 section 4.2, in value order.
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"
_VALUES = {c: i for i, c in enumerate(ALPHABET)}
_BYTE = 256
_PAIR = 65536


def b45encode(data: bytes) -> str:
    """Return the base45 text of ``data`` (3 characters per 2 bytes, 2 for a final odd
    byte). Never raises."""
    out: list[str] = []
    for i in range(0, len(data) - 1, 2):
        n = data[i] * _BYTE + data[i + 1]
        c, n = divmod(n, 45 * 45)
        e, d = divmod(n, 45)
        out += (ALPHABET[d], ALPHABET[e], ALPHABET[c])
    if len(data) % 2:
        e, d = divmod(data[-1], 45)
        out += (ALPHABET[d], ALPHABET[e])
    return "".join(out)


def b45decode(text: str) -> bytes:
    """Return the bytes encoded by base45 ``text``.

    Raises LicenceFormatInvalid if ``text`` holds a character outside the base45
    alphabet (lower-case letters included), its length leaves a single character over
    (length mod 3 == 1), or a group encodes a value too large for its bytes (over 65535
    for three characters, over 255 for a final two), as RFC 9285 section 4.2 requires.
    """
    try:
        values = [_VALUES[c] for c in text]
    except KeyError as e:
        raise LicenceFormatInvalid(
            f"The text is not base45: {e.args[0]!r} is not in the base45 alphabet "
            "(digits, upper-case A-Z, space and $%*+-./:)."
        ) from e
    if len(values) % 3 == 1:
        raise LicenceFormatInvalid(
            f"The base45 text is {len(values)} characters long, which no data encodes "
            "(it may be truncated)."
        )
    out = bytearray()
    for i in range(0, len(values), 3):
        group = values[i : i + 3]
        n = group[0] + group[1] * 45 + (group[2] * 45 * 45 if len(group) == 3 else 0)
        limit = _PAIR if len(group) == 3 else _BYTE
        if n >= limit:
            raise LicenceFormatInvalid(
                f"The base45 group {text[i : i + 3]!r} at position {i} encodes {n}, more "
                f"than {limit - 1}; the text is not valid base45."
            )
        out += n.to_bytes(len(group) - 1, "big")
    return bytes(out)
