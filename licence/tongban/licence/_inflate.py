"""Inflating untrusted zlib data with a hard cap (QR payloads, status lists)."""

from __future__ import annotations

import zlib

from tongban.licence.errors import LicenceFormatInvalid, PayloadTooLarge

__all__ = ["inflate_capped"]


def inflate_capped(data: bytes, cap: int, what: str) -> bytes:
    """Return ``data`` inflated, at most ``cap`` bytes; ``what`` names it in errors.

    Raises PayloadTooLarge if it would inflate beyond ``cap`` (a decompression bomb stops
    there, never allocated whole), LicenceFormatInvalid if it is not one complete zlib
    stream with nothing after it.
    """
    inflater = zlib.decompressobj()
    try:
        # max_length bounds memory: a bomb stops at the cap instead of being inflated.
        out = inflater.decompress(data, cap)
    except zlib.error as e:
        raise LicenceFormatInvalid(f"{what} is not zlib data ({e}).") from e
    if inflater.unconsumed_tail or (not inflater.eof and len(out) >= cap):
        raise PayloadTooLarge(f"{what} inflates beyond {cap} bytes; refusing it.")
    if not inflater.eof:
        raise LicenceFormatInvalid(f"{what} is a truncated zlib stream.")
    if inflater.unused_data:
        raise LicenceFormatInvalid(f"{what} has data after its zlib stream.")
    return out
