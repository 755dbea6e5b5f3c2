from __future__ import annotations

import base64
import contextlib

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from tongban.signing import LocalSigner, SignatureInvalid, SigningError, generate_private_key
from tongban.signing.cose import (
    COSE_SIGN1_TAG,
    CoseFormatInvalid,
    CoseSign1,
    decode_cbor,
    decode_cose,
    sign_cose,
    verify_cose,
)

KEY = generate_private_key("P-256")
SIGNER = LocalSigner(KEY)
KID = b"\x01\x02\x03\x04\x05\x06\x07\x08"
PAYLOAD = cbor2.dumps({1: "market-supervision", "lno": "JY1330106"})


def _message(
    protected: object = None,
    unprotected: object = None,
    payload: object = PAYLOAD,
    signature: object = b"\0" * 64,
    *,
    tag: int | None = COSE_SIGN1_TAG,
) -> bytes:
    """Encode a COSE_Sign1 array by hand, to build messages sign_cose refuses to make."""
    if protected is None:
        protected = cbor2.dumps({1: -7, 4: KID})
    body = [protected, {} if unprotected is None else unprotected, payload, signature]
    return cbor2.dumps(body if tag is None else cbor2.CBORTag(tag, body))


def _b64url_int(text: str) -> int:
    return int.from_bytes(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)), "big")


def test_round_trip_has_the_profile_headers() -> None:
    data = sign_cose(PAYLOAD, SIGNER, kid=KID)

    raw = cbor2.loads(data)
    assert isinstance(raw, cbor2.CBORTag)
    assert raw.tag == COSE_SIGN1_TAG
    message = decode_cose(data)
    assert dict(message.protected) == {1: -7, 4: KID}
    assert message.protected_bytes == raw.value[0]
    assert dict(message.unprotected) == {}
    assert message.kid == KID
    assert message.payload == PAYLOAD
    assert len(message.signature) == 64
    verify_cose(message, KEY.public_key())


def test_content_type_is_protected() -> None:
    message = decode_cose(sign_cose(PAYLOAD, SIGNER, kid=KID, content_type=60))
    assert message.protected[3] == 60
    verify_cose(message, KEY.public_key())


def test_untagged_message_is_accepted() -> None:
    raw = cbor2.loads(sign_cose(PAYLOAD, SIGNER, kid=KID))
    message = decode_cose(cbor2.dumps(list(raw.value)))
    verify_cose(message, KEY.public_key())


def test_rfc9052_c21_vector_verifies() -> None:
    # RFC 9052 Appendix C.2.1 with the C.7.1 key "11": proves Sig_structure is
    # byte-exact against someone else's signer. (Its kid is unprotected, which our
    # profile refuses, so the message is assembled directly.)
    public_key = ec.EllipticCurvePublicNumbers(
        _b64url_int("usWxHK2PmfnHKwXPS54m0kTcGJ90UiglWiGahtagnv8"),
        _b64url_int("IBOL-C3BttVivg-lSreASjpkttcsz-1rb7btKLv8EX4"),
        ec.SECP256R1(),
    ).public_key()
    signature = bytes.fromhex(
        "8eb33e4ca31d1c465ab05aac34cc6b23d58fef5c083106c4d25a91aef0b0117e"
        "2af9a291aa32e14ab834dc56ed2a223444547e01f11d3b0916e5a4c345cacb36"
    )
    message = CoseSign1(
        protected={1: -7},
        protected_bytes=bytes.fromhex("a10126"),
        unprotected={4: b"11"},
        kid=b"11",
        payload=b"This is the content.",
        signature=signature,
    )
    verify_cose(message, public_key)

    wire = bytes.fromhex("d28443a10126a10442313154546869732069732074686520636f6e74656e742e5840")
    with pytest.raises(CoseFormatInvalid, match="protected header"):
        decode_cose(wire + signature)


def test_tampered_payload_fails() -> None:
    data = sign_cose(PAYLOAD, SIGNER, kid=KID)
    tampered = data.replace(b"JY1330106", b"JY1330107")
    message = decode_cose(tampered)
    with pytest.raises(SignatureInvalid):
        verify_cose(message, KEY.public_key())


def test_other_key_fails() -> None:
    message = decode_cose(sign_cose(PAYLOAD, SIGNER, kid=KID))
    with pytest.raises(SignatureInvalid):
        verify_cose(message, generate_private_key("P-256").public_key())
    with pytest.raises(SignatureInvalid, match="P-256"):
        verify_cose(message, generate_private_key("Ed25519").public_key())


def test_zero_signature_fails() -> None:
    message = decode_cose(_message())
    with pytest.raises(SignatureInvalid):
        verify_cose(message, KEY.public_key())


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (_message(protected=cbor2.dumps({1: -35, 4: KID})), "only ES256"),
        (_message(protected=cbor2.dumps({1: -8, 4: KID})), "only ES256"),
        (_message(protected=cbor2.dumps({4: KID})), "no algorithm"),
        (_message(protected=b""), "no algorithm"),
        (_message(protected=cbor2.dumps({1: -7})), "no kid"),
        (_message(protected=cbor2.dumps({1: -7, 4: "text"})), "no kid"),
        (_message(protected=cbor2.dumps({1: -7, 2: [99], 4: KID, 99: 1})), "crit"),
        (_message(unprotected={2: [99]}), "crit"),
        (_message(protected=cbor2.dumps({1: -7}), unprotected={4: KID}), "protected header"),
        (_message(protected=cbor2.dumps({1: -7}), unprotected={1: -7, 4: KID}), "twice"),
        (_message(payload=None), "detached"),
        (_message(signature=b"\0" * 70), "70 bytes"),
        (_message(protected=cbor2.dumps([1, -7])), "not a CBOR map"),
        (_message(protected={1: -7}), "byte string"),
        (_message(tag=98), "CBOR"),
        (_message() + b"\0", "trailing"),
        (_message()[:-5], "CBOR"),
        (cbor2.dumps(cbor2.CBORTag(18, [b"", {}, b""])), "4-element"),
        (cbor2.dumps({"not": "cose"}), "4-element"),
        (b"", "CBOR"),
        (_message(payload=cbor2.CBORTag(1, 5)), "CBOR"),
    ],
)
def test_malformed_messages_are_refused(data: bytes, match: str) -> None:
    with pytest.raises(CoseFormatInvalid, match=match):
        decode_cose(data)


def test_duplicate_protected_label_is_refused() -> None:
    # {1: -7, 4: kid, 1: -7}: a map with a repeated key, written by hand.
    protected = b"\xa3\x01\x26\x04\x48" + KID + b"\x01\x26"
    with pytest.raises(CoseFormatInvalid, match="CBOR"):
        decode_cose(_message(protected=protected))


@given(st.binary(max_size=200))
def test_arbitrary_bytes_only_raise_format_errors(data: bytes) -> None:
    with contextlib.suppress(CoseFormatInvalid):
        decode_cose(data)


def _nested(depth: int) -> object:
    value: object = 0
    for _ in range(depth):
        value = [value]
    return value


def test_decode_cbor_is_strict() -> None:
    assert decode_cbor(cbor2.dumps({1: "a", "b": [1, 2]})) == {1: "a", "b": [1, 2]}
    for bad in (
        cbor2.dumps(1) + b"\0",  # trailing bytes
        b"\x9f\x01\xff",  # indefinite length
        b"\xa2\x01\x01\x01\x02",  # duplicate key
        cbor2.dumps(cbor2.CBORTag(18, [])),  # tagged
        cbor2.dumps({1: cbor2.CBORTag(1, 0)}),  # a datetime tag inside
        cbor2.dumps(_nested(20)),  # too deep
    ):
        with pytest.raises(CoseFormatInvalid):
            decode_cbor(bad)


def test_sign_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="ES256"):
        sign_cose(PAYLOAD, LocalSigner(generate_private_key("Ed25519")), kid=KID)
    with pytest.raises(ValueError, match="kid"):
        sign_cose(PAYLOAD, SIGNER, kid=b"")
    for content_type in (-1, "", True):
        with pytest.raises(ValueError, match="content type"):
            sign_cose(PAYLOAD, SIGNER, kid=KID, content_type=content_type)


class _DerSigner:
    """A broken signer that returns DER instead of r||s."""

    algorithm = "ES256"

    def __init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._key.public_key()

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data, ec.ECDSA(hashes.SHA256()))


def test_signer_returning_der_is_caught() -> None:
    with pytest.raises(SigningError, match="r\\|\\|s"):
        sign_cose(PAYLOAD, _DerSigner(), kid=KID)


@pytest.mark.parametrize("size", [0, 1, 23, 24, 255, 256, 65_535, 65_536])
def test_signature_structure_is_the_cbor_array_rfc9052_defines(size: int) -> None:
    # The Sig_structure is joined by hand on the verify path; it must be exactly the
    # CBOR array ["Signature1", protected, h'', payload] (RFC 9052 section 4.4).
    from tongban.signing.cose import _sig_structure

    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    protected = cbor2.dumps({1: -7, 4: KID})
    assert _sig_structure(protected, payload) == cbor2.dumps(
        ["Signature1", protected, b"", payload]
    )


def test_a_protected_header_decoded_before_is_refused_all_the_same_when_altered() -> None:
    message = sign_cose(PAYLOAD, SIGNER, kid=KID)
    assert decode_cose(message).kid == KID  # its header is now remembered
    with pytest.raises(CoseFormatInvalid, match="only ES256"):
        decode_cose(_message(protected=cbor2.dumps({1: -35, 4: KID})))
