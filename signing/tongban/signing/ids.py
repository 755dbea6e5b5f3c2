"""Name-based ids (RFC 9562 UUIDv5) made where one is needed per record: the same SHA-1
and version and variant bits as ``uuid.uuid5``, without building a ``uuid.UUID``, which
costs three times as much (a bulk load or a snapshot makes one per row)."""

from __future__ import annotations

import hashlib
import uuid

__all__ = ["uuid5_hex", "uuid5_text"]


def uuid5_hex(namespace: uuid.UUID, name: bytes) -> str:
    """``uuid.uuid5(namespace, name).hex`` (``name`` as the UTF-8 bytes uuid5 hashes)."""
    # SHA-1 is what UUIDv5 is defined with; such an id names a thing, it guards nothing.
    digest = bytearray(hashlib.sha1(namespace.bytes + name, usedforsecurity=False).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    return digest.hex()


def uuid5_text(namespace: uuid.UUID, name: bytes) -> str:
    """``str(uuid.uuid5(namespace, name))``: the hex in 8-4-4-4-12 groups."""
    h = uuid5_hex(namespace, name)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
