from __future__ import annotations

import dataclasses
import io
import random
import time
import zlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import cbor2
import pytest
import zxingcpp
from cryptography import x509
from PIL import Image

from tongban.licence import StatusReference, claimed_status
from tongban.licence.base45 import b45decode, b45encode
from tongban.licence.errors import (
    LicenceExpired,
    LicenceFormatInvalid,
    LicenceNotYetValid,
    LicenceRevoked,
    LicenceSuspended,
    PayloadTooLarge,
    SignatureInvalid,
    SignerUntrusted,
    StatusUnavailable,
    VerificationFailed,
)
from tongban.licence.qr import (
    MAX_INFLATED_BYTES,
    QR_PREFIX,
    QrClaims,
    VerifiedQr,
    certificate_kid,
    encode_qr,
    qr_png,
    verify_qr,
)
from tongban.licence.status_list import LicenceStatus, StatusList
from tongban.signing import (
    LocalSigner,
    PrivateKey,
    create_root_ca,
    generate_private_key,
    issue_department_tls_certificate,
    issue_seal_certificate,
)
from tongban.signing.cose import sign_cose

NOW = datetime(2025, 6, 1, 8, 0, tzinfo=UTC)
LATER = NOW + timedelta(days=30)
CA_KEY = generate_private_key()
CA = create_root_ca(common_name="Test Exchange Root", key=CA_KEY, now=NOW)
DEPT = "market-supervision"
DEPT_NAME = "市市场监督管理局"


def _seal(
    code: str = DEPT, *, ca: x509.Certificate = CA, ca_key: PrivateKey = CA_KEY
) -> tuple[LocalSigner, x509.Certificate]:
    key = generate_private_key("P-256")
    cert = issue_seal_certificate(
        ca_cert=ca, ca_key=ca_key, code=code, name=DEPT_NAME, public_key=key.public_key(), now=NOW
    )
    return LocalSigner(key), cert


SIGNER, SEAL = _seal()
OTHER_SIGNER, OTHER_SEAL = _seal()
TRUSTED = [OTHER_SEAL, SEAL]

CLAIMS = QrClaims(
    licence_number="JY13301060012345",
    licence_type="food-business-licence",
    holder_id="91330106MA2H0ABC1X",
    holder_name="杭州市西湖区某某餐饮管理有限公司",
    issuer=DEPT,
    not_before=int(NOW.timestamp()),
    expires=int((NOW + timedelta(days=5 * 365)).timestamp()),
    status_uri="https://exchange.gov.example/status/market-supervision/1",
    status_index=98_765,
)
TEXT = encode_qr(CLAIMS, SIGNER, SEAL)


def _verify(text: str = TEXT, **kwargs: object) -> VerifiedQr:
    options: dict[str, object] = {"certificates": TRUSTED, "roots": [CA], "now": LATER}
    options.update(kwargs)
    return verify_qr(text, **options)  # type: ignore[arg-type]


def _pack(message: bytes) -> str:
    return QR_PREFIX + b45encode(zlib.compress(message))


def _unpack(text: str) -> bytes:
    return zlib.decompress(b45decode(text.removeprefix(QR_PREFIX)))


def _signed(
    payload: bytes, signer: LocalSigner = SIGNER, certificate: x509.Certificate = SEAL
) -> str:
    """A QR text over any payload, for claims that encode_qr refuses to sign."""
    return _pack(sign_cose(payload, signer, kid=certificate_kid(certificate)))


def test_round_trip() -> None:
    verified = _verify()
    assert verified.claims == CLAIMS
    assert verified.certificate == SEAL
    assert verified.status is None


def test_text_is_short_and_alphanumeric() -> None:
    assert TEXT.startswith("TB1:")
    assert len(TEXT) <= 600, len(TEXT)
    assert set(TEXT) <= set("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:")


def test_kid_is_truncated_certificate_hash() -> None:
    assert len(certificate_kid(SEAL)) == 8
    assert certificate_kid(SEAL) != certificate_kid(OTHER_SEAL)
    message = cbor2.loads(_unpack(TEXT))
    assert cbor2.loads(message.value[0]) == {1: -7, 4: certificate_kid(SEAL)}


def test_claims_use_cwt_keys_and_the_draft_status_claim() -> None:
    claims = cbor2.loads(cbor2.loads(_unpack(TEXT)).value[2])
    assert claims[1] == DEPT
    assert claims[2] == CLAIMS.holder_id
    assert claims[4] == CLAIMS.expires
    assert claims[5] == CLAIMS.not_before
    assert claims[65535] == {"status_list": {"idx": 98_765, "uri": CLAIMS.status_uri}}
    assert QrClaims.from_cbor(CLAIMS.to_cbor()) == CLAIMS


def test_tampered_claim_fails_signature() -> None:
    message = _unpack(TEXT)
    number = CLAIMS.licence_number.encode()
    assert message.count(number) == 1
    tampered = _pack(message.replace(number, number[:-1] + b"6"))
    with pytest.raises(SignatureInvalid) as info:
        _verify(tampered)
    assert info.value.check == "signature"


def test_tampered_signature_fails() -> None:
    message = _unpack(TEXT)
    tampered = _pack(message[:-1] + bytes([message[-1] ^ 1]))
    with pytest.raises(SignatureInvalid):
        _verify(tampered)


def test_certificate_not_in_trust_list() -> None:
    with pytest.raises(SignerUntrusted, match="kid") as info:
        _verify(certificates=[OTHER_SEAL])
    assert info.value.check == "issuer"
    assert info.value.metadata["kid"] == certificate_kid(SEAL).hex()


def test_empty_trust_list_refuses() -> None:
    with pytest.raises(SignerUntrusted):
        _verify(certificates=[])


def test_every_certificate_sharing_the_kid_is_tried() -> None:
    # A trust list that publishes kids may list two certificates under one kid; the
    # first does not verify the signature, the second does.
    kid = certificate_kid(SEAL)
    verified = _verify(certificates=[(kid, OTHER_SEAL), (kid, SEAL)])
    assert verified.certificate == SEAL
    verified = _verify(certificates=[(kid, SEAL), (kid, OTHER_SEAL)])
    assert verified.certificate == SEAL


def test_shared_kid_none_verifying_is_a_bad_signature() -> None:
    kid = certificate_kid(SEAL)
    _, third = _seal()
    with pytest.raises(SignatureInvalid, match="2 trusted certificates"):
        _verify(certificates=[(kid, OTHER_SEAL), (kid, third)])


def test_certificate_from_another_ca_is_untrusted() -> None:
    rogue_key = generate_private_key()
    rogue_ca = create_root_ca(common_name="Rogue Root", key=rogue_key, now=NOW)
    signer, seal = _seal(ca=rogue_ca, ca_key=rogue_key)
    text = encode_qr(CLAIMS, signer, seal)
    # Even in the trust list, it must chain to the exchange root.
    with pytest.raises(SignerUntrusted, match="not a trusted seal"):
        _verify(text, certificates=[seal])


def test_tls_certificate_is_not_a_seal() -> None:
    key = generate_private_key()
    tls = issue_department_tls_certificate(
        ca_cert=CA, ca_key=CA_KEY, code=DEPT, name=DEPT_NAME, public_key=key.public_key(), now=NOW
    )
    text = _signed(CLAIMS.to_cbor(), LocalSigner(key), tls)
    with pytest.raises(SignerUntrusted):
        _verify(text, certificates=[tls])


def test_seal_of_another_department_is_untrusted() -> None:
    signer, seal = _seal("tax-bureau")
    text = _signed(CLAIMS.to_cbor(), signer, seal)
    with pytest.raises(SignerUntrusted, match="tax-bureau"):
        _verify(text, certificates=[seal])


def test_expired_seal_certificate_is_untrusted() -> None:
    with pytest.raises(SignerUntrusted, match="expired"):
        _verify(now=NOW + timedelta(days=6 * 365))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "TB2:" + TEXT[4:],
        "tb1:" + TEXT[4:],
        "HC1:" + TEXT[4:],
        TEXT[4:],
    ],
)
def test_wrong_prefix(text: str) -> None:
    with pytest.raises(LicenceFormatInvalid, match="'TB1:'"):
        _verify(text)


# Named, not numbered by TEXT's length (it varies with the random serial, and parallel
# test workers must collect the same test ids).
@pytest.mark.parametrize("cut", ["1", "2", "3", "30", "half", "all-but-4"])
def test_truncated_text(cut: str) -> None:
    chars = {"half": len(TEXT) // 2, "all-but-4": len(TEXT) - 4}.get(cut) or int(cut)
    with pytest.raises(LicenceFormatInvalid):
        _verify(TEXT[:-chars])


@pytest.mark.parametrize("text", ["TB1:abc", QR_PREFIX + TEXT[4:].lower(), TEXT + "!", "TB1:GGW"])
def test_invalid_base45(text: str) -> None:
    with pytest.raises(LicenceFormatInvalid, match="base45"):
        _verify(text)


def test_not_zlib() -> None:
    with pytest.raises(LicenceFormatInvalid, match="zlib"):
        _verify(QR_PREFIX + b45encode(b"\x00\x01 not zlib"))


def test_data_after_zlib_stream() -> None:
    with pytest.raises(LicenceFormatInvalid, match="after"):
        _verify(QR_PREFIX + b45encode(zlib.compress(_unpack(TEXT)) + b"\0"))


def test_not_cose() -> None:
    with pytest.raises(LicenceFormatInvalid, match="COSE"):
        _verify(_pack(cbor2.dumps({"hello": "world"})))


def test_hundred_megabyte_bomb_is_refused_quickly() -> None:
    bomb = QR_PREFIX + b45encode(zlib.compress(b"\0" * 100_000_000))
    start = time.perf_counter()
    with pytest.raises(PayloadTooLarge):
        _verify(bomb)
    assert time.perf_counter() - start < 0.5


def test_bomb_that_fits_in_a_qr_code_stops_at_the_cap() -> None:
    bomb = QR_PREFIX + b45encode(zlib.compress(b"\0" * 1_000_000, 9))
    assert len(bomb) < 4296  # so the inflate cap, not the text length, refuses it
    start = time.perf_counter()
    with pytest.raises(PayloadTooLarge, match="inflates"):
        _verify(bomb)
    assert time.perf_counter() - start < 0.5


def test_inflate_cap_boundary() -> None:
    # Exactly at the cap inflates (and then fails as COSE); one byte over does not.
    with pytest.raises(LicenceFormatInvalid, match="COSE"):
        _verify(_pack(b"\0" * MAX_INFLATED_BYTES))
    with pytest.raises(PayloadTooLarge):
        _verify(_pack(b"\0" * (MAX_INFLATED_BYTES + 1)))


def test_other_algorithm_is_refused() -> None:
    protected = cbor2.dumps({1: -8, 4: certificate_kid(SEAL)})
    message = cbor2.dumps(cbor2.CBORTag(18, [protected, {}, CLAIMS.to_cbor(), b"\0" * 64]))
    with pytest.raises(LicenceFormatInvalid, match="ES256"):
        _verify(_pack(message))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: c.pop("hnm"),
        lambda c: c.update({"extra": 1}),
        lambda c: c.update({4: "2030-01-01"}),
        lambda c: c.update({5: True}),
        lambda c: c.update({5: -1}),
        lambda c: c.update({1: ""}),
        lambda c: c.update({65535: {"status_list": {"idx": 1}}}),
        lambda c: c.update({65535: {"status_list": {"idx": "1", "uri": "u"}}}),
        lambda c: c.update({65535: {"status_list": {"idx": 1, "uri": "u"}, "other": {}}}),
        lambda c: c.update({5: c[4]}),
        lambda c: (c.pop(1), c.update({True: DEPT})),  # CBOR true is not the key 1
    ],
)
def test_malformed_signed_claims(mutate: Callable[[dict[object, object]], object]) -> None:
    claims = cbor2.loads(CLAIMS.to_cbor())
    mutate(claims)
    with pytest.raises(LicenceFormatInvalid, match="claim"):
        _verify(_signed(cbor2.dumps(claims)))


def test_signed_payload_that_is_not_a_map() -> None:
    with pytest.raises(LicenceFormatInvalid, match="not a CBOR map"):
        _verify(_signed(cbor2.dumps(["a", "list"])))


SHORT = dataclasses.replace(CLAIMS, expires=int((NOW + timedelta(days=60)).timestamp()))
SHORT_TEXT = encode_qr(SHORT, SIGNER, SEAL)
SHORT_END = datetime.fromtimestamp(SHORT.expires, UTC)


def test_expired() -> None:
    # Seal and CA certificates outlive this licence, so only the licence expires.
    _verify(SHORT_TEXT, now=SHORT_END - timedelta(seconds=1))
    with pytest.raises(LicenceExpired) as info:
        _verify(SHORT_TEXT, now=SHORT_END)
    assert info.value.check == "validity"


def test_not_yet_valid() -> None:
    start = NOW + timedelta(days=10)
    claims = dataclasses.replace(CLAIMS, not_before=int(start.timestamp()))
    text = encode_qr(claims, SIGNER, SEAL)
    with pytest.raises(LicenceNotYetValid):
        _verify(text, now=start - timedelta(seconds=1))
    assert _verify(text, now=start).claims == claims


def test_status_valid() -> None:
    seen: list[tuple[str, int]] = []

    def lookup(uri: str, index: int) -> int:
        seen.append((uri, index))
        return 0

    assert _verify(status=lookup).status is LicenceStatus.VALID
    assert seen == [(CLAIMS.status_uri, CLAIMS.status_index)]


def test_status_from_a_real_status_list() -> None:
    lists = {CLAIMS.status_uri: StatusList()}
    lists[CLAIMS.status_uri].set(CLAIMS.status_index, LicenceStatus.SUSPENDED)
    with pytest.raises(LicenceSuspended):
        _verify(status=lambda uri, index: lists[uri].get(index))
    lists[CLAIMS.status_uri].set(CLAIMS.status_index, LicenceStatus.INVALID)
    with pytest.raises(LicenceRevoked):
        _verify(status=lambda uri, index: lists[uri].get(index))


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (LicenceStatus.INVALID, LicenceRevoked),
        (LicenceStatus.SUSPENDED, LicenceSuspended),
        (None, StatusUnavailable),
        (3, StatusUnavailable),
    ],
)
def test_status_not_valid(value: int | None, error: type[VerificationFailed]) -> None:
    with pytest.raises(error) as info:
        _verify(status=lambda _uri, _index: value)
    assert info.value.check == "status"


def test_expiry_is_checked_before_status() -> None:
    # As the draft says: an expired token is expired whatever its status.
    with pytest.raises(LicenceExpired):
        _verify(SHORT_TEXT, now=SHORT_END, status=lambda _uri, _index: LicenceStatus.INVALID)


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone"):
        _verify(now=datetime(2025, 6, 2))  # noqa: DTZ001


def test_png_reads_back() -> None:
    png = qr_png(TEXT, scale=4)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    results = zxingcpp.read_barcodes(Image.open(io.BytesIO(png)))
    assert [r.text for r in results] == [TEXT]
    assert results[0].format == zxingcpp.BarcodeFormat.QRCode


def test_png_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="scale"):
        qr_png(TEXT, scale=0)
    with pytest.raises(ValueError, match="does not fit"):
        qr_png("A" * 5000)


def test_encode_refuses_mismatched_signer_or_issuer() -> None:
    with pytest.raises(ValueError, match="key"):
        encode_qr(CLAIMS, OTHER_SIGNER, SEAL)
    with pytest.raises(ValueError, match="tax-bureau"):
        encode_qr(dataclasses.replace(CLAIMS, issuer="tax-bureau"), SIGNER, SEAL)
    rng = random.Random(0)
    long_name = "".join(chr(rng.randrange(0x4E00, 0x9FA5)) for _ in range(2000))
    with pytest.raises(ValueError, match="QR code holds"):
        encode_qr(dataclasses.replace(CLAIMS, holder_name=long_name), SIGNER, SEAL)


@pytest.mark.parametrize(
    "change",
    [
        {"licence_number": ""},
        {"holder_name": 5},
        {"status_index": -1},
        {"not_before": True},
        {"expires": int(NOW.timestamp())},
    ],
)
def test_claims_validate(change: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="QrClaims"):
        dataclasses.replace(CLAIMS, **change)  # type: ignore[arg-type]


# --- reading the status reference without verifying ------------------------------------------


def test_claimed_status_reads_the_reference_without_verifying() -> None:
    expected = StatusReference(idx=CLAIMS.status_index, uri=CLAIMS.status_uri)
    assert claimed_status(TEXT) == expected
    # Unverified by design: a forged QR's claim is read too (verification refuses it).
    assert claimed_status(_signed(CLAIMS.to_cbor(), OTHER_SIGNER, SEAL)) == expected


@pytest.mark.parametrize(
    "text",
    [
        QR_PREFIX,
        QR_PREFIX + b45encode(b"base45, not zlib"),
        QR_PREFIX + b45encode(zlib.compress(b"\0" * 1_000_000, 9)),  # a bomb that fits a QR
        QR_PREFIX + b45encode(zlib.compress(b"\0" * 100_000_000)),  # one that does not
        QR_PREFIX + b45encode(zlib.compress(b"\x81" * 5000 + b"\0")),  # CBOR 5,000 deep
        _pack(cbor2.dumps({"hello": "world"})),
        _signed(b"\xa0"),  # no claims
        TEXT[:-9],
        TEXT + "\0",
    ],
)
def test_claimed_status_of_a_malformed_qr_is_none_and_quick(text: str) -> None:
    start = time.perf_counter()
    assert claimed_status(text) is None
    assert time.perf_counter() - start < 0.5
