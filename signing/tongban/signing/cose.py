"""COSE_Sign1 (RFC 9052) with ES256 only: the signed envelope inside offline QR codes.

The profile is deliberately narrow, as in the EU Digital COVID Certificate: the protected
header holds ``alg`` (-7, ES256) and ``kid``; the unprotected header is written empty;
the payload is attached; the signature is the raw ``r || s`` form (RFC 9053 section 2.1),
which is exactly what ``Signer.sign`` returns for ES256. Decoding keeps the exact
protected-header bytes, because the signature covers those bytes, not a re-encoding.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from tongban.errors import TongbanError
from tongban.signing.errors import SignatureInvalid, SigningError
from tongban.signing.keys import PublicKey, Signer

__all__ = [
    "COSE_SIGN1_TAG",
    "CoseFormatInvalid",
    "CoseSign1",
    "decode_cbor",
    "decode_cose",
    "sign_cose",
    "verify_cose",
]

#: CBOR tag of a COSE_Sign1 message (RFC 9052 section 2).
COSE_SIGN1_TAG = 18

# Header labels (RFC 9052 section 3.1) and the one algorithm we accept (RFC 9053).
_ALG = 1
_CRIT = 2
_CONTENT_TYPE = 3
_KID = 4
_ES256 = -7
_SIGNATURE_BYTES = 64
_P256_BYTES = 32
# Nesting deeper than this has no business in a signed licence; it bounds recursion.
_MAX_DEPTH = 16


class CoseFormatInvalid(TongbanError):
    """A COSE_Sign1 message is malformed or outside Tongban's profile (ES256, ``kid`` in
    the protected header, attached payload, no critical extensions)."""

    reason = "COSE_FORMAT_INVALID"
    status = "INVALID_ARGUMENT"


@dataclass(frozen=True)
class CoseSign1:
    """A decoded COSE_Sign1 message; its signature has not been checked yet."""

    protected: Mapping[int | str, object]
    """The protected header map, read-only."""
    protected_bytes: bytes
    """The exact serialized protected header the signature covers."""
    unprotected: Mapping[int | str, object]
    """The unprotected header map, read-only (empty in messages we write)."""
    kid: bytes
    """The key identifier from the protected header."""
    payload: bytes
    """The signed content."""
    signature: bytes
    """The raw ES256 signature, ``r || s`` (64 bytes)."""


# The Sig_structure's fixed head: an array of four, the text "Signature1".
_SIG1_HEAD = b"\x84\x6aSignature1"
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())


def _bstr(data: bytes) -> bytes:
    """``data`` as a CBOR byte string (major type 2, shortest length form)."""
    n = len(data)
    if n < 24:
        head = bytes((0x40 | n,))
    elif n < 0x100:
        head = bytes((0x58, n))
    elif n < 0x10000:
        head = b"\x59" + n.to_bytes(2, "big")
    elif n < 0x100000000:
        head = b"\x5a" + n.to_bytes(4, "big")
    else:
        head = b"\x5b" + n.to_bytes(8, "big")
    return head + data


def _sig_structure(protected_bytes: bytes, payload: bytes) -> bytes:
    # RFC 9052 section 4.4, with empty external_aad (0x40): the bytes cbor2.dumps writes
    # for ["Signature1", protected_bytes, b"", payload], joined directly (it is on every
    # verification's path).
    return _SIG1_HEAD + _bstr(protected_bytes) + b"\x40" + _bstr(payload)


def sign_cose(
    payload: bytes,
    signer: Signer,
    *,
    kid: bytes,
    content_type: int | str | None = None,
) -> bytes:
    """Return a tagged (18) COSE_Sign1 message carrying ``payload``, signed by ``signer``
    with ES256; the protected header holds ``alg``, ``kid`` and, if given,
    ``content_type`` (a CoAP content-format number or a media type string).

    Raises ValueError if the signer is not ES256, ``kid`` is empty, or ``content_type``
    is a negative number or an empty string; SigningError if the signer returns a
    signature that is not 64 bytes.
    """
    if signer.algorithm != "ES256":
        raise ValueError(
            f"COSE signing here supports ES256 only, but the signer uses {signer.algorithm!r}; "
            "use a P-256 key."
        )
    if not kid:
        raise ValueError("The COSE kid must not be empty.")
    header: dict[int, object] = {_ALG: _ES256, _KID: bytes(kid)}
    if content_type is not None:
        if (
            isinstance(content_type, bool)
            or (isinstance(content_type, int) and content_type < 0)
            or content_type == ""
        ):
            raise ValueError(
                f"Invalid COSE content type {content_type!r}: use a content-format number "
                "(0 or more) or a non-empty media type."
            )
        header[_CONTENT_TYPE] = content_type
    # Canonical encoding makes the protected bytes a function of the header alone.
    protected_bytes = cbor2.dumps(header, canonical=True)
    signature = signer.sign(_sig_structure(protected_bytes, payload))
    if len(signature) != _SIGNATURE_BYTES:
        raise SigningError(
            f"The ES256 signer returned a {len(signature)}-byte signature, not the "
            f"{_SIGNATURE_BYTES}-byte r||s form; fix the signer (COSE needs raw r||s, not DER)."
        )
    message = [protected_bytes, {}, payload, signature]
    return cbor2.dumps(cbor2.CBORTag(COSE_SIGN1_TAG, message))


# Tags cbor2 would otherwise turn into Python objects (datetimes, regular expressions,
# shared references, ...). None belongs in a COSE_Sign1 or a licence claim map, and some
# (regex compilation, value sharing) are attack surface, so all are refused.
_BUILTIN_TAGS = (0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256, 258, 260, 261,
                 1004, 43000, 55799)  # fmt: skip


def _refuse_builtin(_value: object, _immutable: bool) -> object:
    raise ValueError("CBOR tags are not allowed here")


_REFUSE_BUILTIN = dict.fromkeys(_BUILTIN_TAGS, _refuse_builtin)


def _refuse_tags(tag: cbor2.CBORTag, _immutable: bool) -> cbor2.CBORTag:
    # Only the COSE_Sign1 tag itself is expected; any other tag is foreign to the profile.
    if tag.tag != COSE_SIGN1_TAG:
        raise ValueError(f"unexpected CBOR tag {tag.tag}")
    return tag


def _loads_exact(data: bytes, what: str) -> Any:
    stream = io.BytesIO(data)
    try:
        item = cbor2.CBORDecoder(
            stream,
            tag_hook=_refuse_tags,
            semantic_decoders=_REFUSE_BUILTIN,
            max_depth=_MAX_DEPTH,
            allow_indefinite=False,
            allow_duplicate_keys=False,
        ).decode()
    except (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError) as e:
        raise CoseFormatInvalid(f"The COSE {what} is not valid CBOR ({e}).") from e
    if stream.tell() != len(data):
        raise CoseFormatInvalid(
            f"The COSE {what} has {len(data) - stream.tell()} trailing bytes after the CBOR item."
        )
    return item


def decode_cbor(data: bytes) -> object:
    """Return the single CBOR data item that fills ``data``, decoded strictly: no
    trailing bytes, duplicate map keys, indefinite lengths or tags, and at most 16 levels
    of nesting. Meant for COSE payloads (such as licence claims) before reading them.

    Raises CoseFormatInvalid if ``data`` is not such an item.
    """
    item = _loads_exact(bytes(data), "payload")
    if isinstance(item, cbor2.CBORTag):
        raise CoseFormatInvalid("The COSE payload is a tagged CBOR item; tags are not allowed.")
    return item


def _header_map(value: object, what: str) -> Mapping[int | str, object]:
    if not isinstance(value, Mapping):
        raise CoseFormatInvalid(f"The COSE {what} header is not a CBOR map.")
    for label in value:
        if isinstance(label, bool) or not isinstance(label, int | str):
            raise CoseFormatInvalid(f"The COSE {what} header has a label {label!r}, not int/text.")
    return MappingProxyType(dict(value))


# A verifier sees the same few protected headers (alg and one kid per seal) again and
# again; decoding is a function of the bytes alone, so a decoded header is kept.
_PROTECTED_MEMO_SIZE = 64
_EMPTY_HEADER: Mapping[int | str, object] = MappingProxyType({})
_protected_memo: dict[bytes, Mapping[int | str, object]] = {}


def _protected_header(protected_bytes: bytes) -> Mapping[int | str, object]:
    """The protected header map of ``protected_bytes``; raises CoseFormatInvalid."""
    found = _protected_memo.get(protected_bytes)
    if found is not None:
        return found
    # RFC 9052 section 3: a zero-length protected header stands for an empty map.
    header = _header_map(
        _loads_exact(protected_bytes, "protected header") if protected_bytes else {}, "protected"
    )
    if len(_protected_memo) >= _PROTECTED_MEMO_SIZE:
        _protected_memo.clear()
    _protected_memo[protected_bytes] = header
    return header


def decode_cose(data: bytes) -> CoseSign1:
    """Return the parts of the COSE_Sign1 message ``data`` (tagged 18 or untagged),
    without checking the signature.

    Raises CoseFormatInvalid if ``data`` is not exactly one well-formed COSE_Sign1, if
    ``alg`` is missing or not ES256 (-7), ``kid`` is missing from the protected header,
    a label appears in both headers, critical (``crit``) headers are present (no
    extension is understood here), the payload is detached, or the signature is not 64
    bytes.
    """
    item = _loads_exact(bytes(data), "message")
    if isinstance(item, cbor2.CBORTag):
        item = item.value
    if not isinstance(item, list | tuple) or len(item) != 4:
        raise CoseFormatInvalid("The data is not a COSE_Sign1 message (a 4-element CBOR array).")
    protected_bytes, unprotected_raw, payload, signature = item
    if not isinstance(protected_bytes, bytes):
        raise CoseFormatInvalid("The COSE protected header is not a byte string.")
    if payload is None:
        raise CoseFormatInvalid("The COSE payload is detached; only attached payloads are used.")
    if not isinstance(payload, bytes) or not isinstance(signature, bytes):
        raise CoseFormatInvalid("The COSE payload and signature must be byte strings.")

    protected = _protected_header(protected_bytes)
    unprotected = (
        _EMPTY_HEADER
        if type(unprotected_raw) is dict and not unprotected_raw  # as we write it
        else _header_map(unprotected_raw, "unprotected")
    )
    if unprotected and (both := set(protected) & set(unprotected)):
        raise CoseFormatInvalid(f"The COSE header labels {sorted(map(str, both))} appear twice.")
    if _CRIT in protected or _CRIT in unprotected:
        # Every label listed in crit must be understood, and we understand no extensions.
        raise CoseFormatInvalid(
            "The COSE message marks critical header parameters (crit), which are not supported."
        )
    if _ALG in unprotected or _KID in unprotected:
        raise CoseFormatInvalid("The COSE alg and kid must be in the protected header.")
    alg = protected.get(_ALG)
    if alg != _ES256 or isinstance(alg, bool):
        raise CoseFormatInvalid(
            f"The COSE algorithm is {alg!r}; only ES256 (-7) is accepted."
            if alg is not None
            else "The COSE protected header has no algorithm (label 1)."
        )
    kid = protected.get(_KID)
    if not isinstance(kid, bytes) or not kid:
        raise CoseFormatInvalid("The COSE protected header has no kid (label 4, a byte string).")
    if len(signature) != _SIGNATURE_BYTES:
        raise CoseFormatInvalid(
            f"The COSE signature is {len(signature)} bytes; ES256 signatures are "
            f"{_SIGNATURE_BYTES} bytes (r||s)."
        )
    return CoseSign1(
        protected=protected,
        protected_bytes=protected_bytes,
        unprotected=unprotected,
        kid=kid,
        payload=payload,
        signature=signature,
    )


def verify_cose(message: CoseSign1, public_key: PublicKey) -> None:
    """Return None if ``message``'s ES256 signature verifies under ``public_key``.

    Raises SignatureInvalid if the key is not a P-256 key or the signature does not
    match the protected header and payload.
    """
    if not (
        isinstance(public_key, ec.EllipticCurvePublicKey)
        and isinstance(public_key.curve, ec.SECP256R1)
    ):
        raise SignatureInvalid(
            "The COSE message is signed with ES256, but the key offered is not a P-256 key."
        )
    if len(message.signature) != _SIGNATURE_BYTES:
        raise SignatureInvalid(
            f"The COSE signature is {len(message.signature)} bytes, not the "
            f"{_SIGNATURE_BYTES}-byte ES256 r||s form."
        )
    r = int.from_bytes(message.signature[:_P256_BYTES], "big")
    s = int.from_bytes(message.signature[_P256_BYTES:], "big")
    try:
        public_key.verify(
            encode_dss_signature(r, s),
            _sig_structure(message.protected_bytes, message.payload),
            _ECDSA_SHA256,
        )
    except InvalidSignature as e:
        raise SignatureInvalid(
            "The COSE signature does not match the message under the given key."
        ) from e
