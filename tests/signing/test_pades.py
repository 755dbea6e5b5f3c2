"""PAdES seals on PDFs, sealed with real keys and certificates and checked by pyHanko's
validator."""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp import web
from asn1crypto import tsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pyhanko.keys import load_certs_from_pemder_data, load_private_key_from_pemder_data
from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.writer import PageObject, PdfFileWriter
from pyhanko.sign.timestamps import TimeStamper
from pyhanko.sign.timestamps.dummy_client import DummyTimeStamper

from tongban.signing import (
    KeyAlgorithm,
    LocalSigner,
    PrivateKey,
    create_root_ca,
    generate_private_key,
    issue_department_tls_certificate,
    issue_seal_certificate,
)
from tongban.signing.pades import (
    DocumentInvalid,
    SealBroken,
    SealingFailed,
    SealMissing,
    SealUntrusted,
    TimestampUnavailable,
    seal_pdf,
    seal_pdf_async,
    verify_sealed_pdf,
    verify_sealed_pdf_async,
)
from tongban.signing.pkcs11 import Token
from tongban.signing.softhsm import SoftHsm

NOW = datetime(2025, 6, 1, 8, 0, tzinfo=UTC)
LATER = NOW + timedelta(days=30)
CA_KEY = generate_private_key()
CA = create_root_ca(common_name="Test Exchange Root", key=CA_KEY, now=NOW)
DEPT_CODE = "market-supervision"
DEPT_NAME = "市市场监督管理局"


def _seal_identity(
    ca: x509.Certificate = CA, ca_key: PrivateKey = CA_KEY, key: PrivateKey | None = None
) -> tuple[PrivateKey, x509.Certificate]:
    key = key or generate_private_key()
    cert = issue_seal_certificate(
        ca_cert=ca,
        ca_key=ca_key,
        code=DEPT_CODE,
        name=DEPT_NAME,
        public_key=key.public_key(),
        now=NOW,
    )
    return key, cert


SEAL_KEY, SEAL_CERT = _seal_identity()


# pyHanko's pdf_utils writer API is unannotated; these helpers hold the ignores.


def _pdf_dict(entries: dict[str, generic.PdfObject]) -> generic.DictionaryObject:
    return generic.DictionaryObject(  # type: ignore[no-untyped-call]
        {generic.NameObject(k): v for k, v in entries.items()}
    )


def _page(content: generic.IndirectObject, **extra: generic.PdfObject) -> PageObject:
    page = PageObject(contents=content, media_box=(0, 0, 595, 842))  # type: ignore[no-untyped-call]
    for key, value in extra.items():
        page[generic.NameObject("/" + key)] = value
    return page


def _written(w: PdfFileWriter | IncrementalPdfFileWriter) -> bytes:
    out = io.BytesIO()
    w.write(out)  # type: ignore[no-untyped-call]
    return out.getvalue()


def _plain_pdf(text: bytes = b"Hello") -> bytes:
    """A one-page PDF drawn with a standard font; its content stream is uncompressed so
    that a test can find and flip one of its bytes."""
    w = PdfFileWriter()  # type: ignore[no-untyped-call]
    font = w.add_object(
        _pdf_dict(
            {
                "/Type": generic.NameObject("/Font"),
                "/Subtype": generic.NameObject("/Type1"),
                "/BaseFont": generic.NameObject("/Helvetica"),
            }
        )
    )
    content = w.add_object(
        generic.StreamObject(stream_data=b"BT /F1 24 Tf 72 720 Td (" + text + b") Tj ET")
    )
    resources = _pdf_dict({"/Font": _pdf_dict({"/F1": font})})
    w.insert_page(_page(content, Resources=resources))  # type: ignore[no-untyped-call]
    return _written(w)


def _sealed(timestamper: str | TimeStamper | None = None) -> bytes:
    return seal_pdf(
        _plain_pdf(),
        key=SEAL_KEY,
        chain=[SEAL_CERT, CA],
        reason="电子证照签章",
        location="市政务服务中心",
        timestamper=timestamper,
        now=NOW,
    )


def _byte_range(pdf: bytes) -> list[int]:
    match = re.search(rb"/ByteRange\s*\[\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s*\]", pdf)
    assert match is not None
    return [int(g) for g in match.groups()]


def test_seal_then_verify() -> None:
    sealed = _sealed()
    report = verify_sealed_pdf(sealed, roots=[CA], now=LATER)
    (seal,) = report.seals
    assert seal.department_code == DEPT_CODE
    assert seal.signer_name == DEPT_NAME
    assert seal.certificate == SEAL_CERT
    assert seal.intact
    assert seal.signing_time == NOW
    assert seal.timestamp is None
    assert seal.coverage == "entire-file"
    assert seal.modification_level == "none"
    assert seal.covers_whole_document
    assert report.covers_whole_document
    assert seal.pades_level == "B-B"
    assert seal.field_name == "Seal"
    assert b"/ETSI.CAdES.detached" in sealed
    assert sealed.startswith(_plain_pdf()[:8])


def test_seal_is_an_incremental_update_of_the_original() -> None:
    original = _plain_pdf()
    sealed = seal_pdf(original, key=SEAL_KEY, chain=[SEAL_CERT], now=NOW)
    assert sealed[: len(original)] == original


def test_ed25519_seal_key_verifies() -> None:
    key, cert = _seal_identity(key=generate_private_key("Ed25519"))
    sealed = seal_pdf(_plain_pdf(), key=key, chain=[cert, CA], now=NOW)
    assert verify_sealed_pdf(sealed, roots=[CA], now=LATER).latest.department_code == DEPT_CODE


@pytest.mark.parametrize("algorithm", ["P-256", "Ed25519"])
def test_seal_key_in_a_pkcs11_token(softhsm: SoftHsm, algorithm: KeyAlgorithm) -> None:
    with Token(softhsm.new_token()) as token:
        made = token.generate("seal", algorithm)
        cert = issue_seal_certificate(
            ca_cert=CA, ca_key=CA_KEY, code=DEPT_CODE, name=DEPT_NAME,
            public_key=made.public_key, now=NOW,
        )  # fmt: skip
        sealed = seal_pdf(_plain_pdf(), key=token.signer("seal"), chain=[cert, CA], now=NOW)
    (seal,) = verify_sealed_pdf(sealed, roots=[CA], now=LATER).seals
    assert seal.intact
    assert seal.certificate == cert
    assert seal.department_code == DEPT_CODE
    with pytest.raises(ValueError, match="does not belong"):
        seal_pdf(_plain_pdf(), key=LocalSigner(generate_private_key()), chain=[cert], now=NOW)


def test_byte_changed_inside_signed_range_is_broken() -> None:
    sealed = _sealed()
    at = sealed.index(b"(Hello)")
    _, first_len, _, _ = _byte_range(sealed)
    assert at < first_len  # inside the first signed segment
    tampered = sealed[:at] + b"(Jello)" + sealed[at + 7 :]
    with pytest.raises(SealBroken) as info:
        verify_sealed_pdf(tampered, roots=[CA], now=LATER)
    assert info.value.reason == "SEAL_BROKEN"
    assert info.value.metadata == {"field": "Seal", "check": "integrity"}


def test_signature_value_changed_is_broken() -> None:
    sealed = _sealed()
    _, first_len, second_start, _ = _byte_range(sealed)
    contents = sealed[first_len + 1 : second_start - 1]  # the hex string between < >
    cms_end = first_len + 1 + len(contents.rstrip(b"0"))
    # The CMS ends with the signer's signature value (no unsigned attributes in B-B).
    at = cms_end - 8
    flipped = b"0" if sealed[at : at + 1] != b"0" else b"1"
    with pytest.raises(SealBroken):
        verify_sealed_pdf(sealed[:at] + flipped + sealed[at + 1 :], roots=[CA], now=LATER)


def _with_annotation(sealed: bytes) -> bytes:
    w = IncrementalPdfFileWriter(io.BytesIO(sealed))
    page_ref, _ = w.find_page_for_modification(0)  # type: ignore[no-untyped-call]
    corners = (100, 100, 120, 120)
    rect = generic.ArrayObject([generic.NumberObject(n) for n in corners])  # type: ignore[no-untyped-call]
    annot = w.add_object(
        _pdf_dict(
            {
                "/Type": generic.NameObject("/Annot"),
                "/Subtype": generic.NameObject("/Text"),
                "/Rect": rect,
                "/Contents": generic.TextStringObject("已核验"),
                "/P": page_ref,
            }
        )
    )
    w.register_annotation(page_ref, annot)  # type: ignore[no-untyped-call]
    return _written(w)


def _with_page(sealed: bytes) -> bytes:
    w = IncrementalPdfFileWriter(io.BytesIO(sealed))
    content = w.add_object(generic.StreamObject(stream_data=b"0 0 m 100 100 l S"))
    w.insert_page(_page(content))  # type: ignore[no-untyped-call]
    return _written(w)


@pytest.mark.parametrize("modify", [_with_annotation, _with_page], ids=["annotation", "page"])
def test_update_appended_after_sealing_is_refused_by_default(
    modify: Callable[[bytes], bytes],
) -> None:
    modified = modify(_sealed())
    with pytest.raises(SealBroken, match="changed after seal") as info:
        verify_sealed_pdf(modified, roots=[CA], now=LATER)
    assert info.value.metadata["check"] == "modifications"
    assert info.value.metadata["modification_level"] == "other"


@pytest.mark.parametrize("modify", [_with_annotation, _with_page], ids=["annotation", "page"])
def test_update_appended_after_sealing_is_reported_as_modified(
    modify: Callable[[bytes], bytes],
) -> None:
    modified = modify(_sealed())
    report = verify_sealed_pdf(modified, roots=[CA], now=LATER, allow_modifications=True)
    (seal,) = report.seals
    assert seal.intact
    assert seal.coverage == "entire-revision"
    assert not seal.covers_whole_document
    assert not report.covers_whole_document
    # pyHanko's default diff policy explains only signature and form-field changes.
    assert seal.modification_level == "other"
    assert seal.department_code == DEPT_CODE


def test_second_seal_leaves_the_first_covering_its_revision() -> None:
    sealed = _sealed()
    other_key, other_cert = _seal_identity()
    twice = seal_pdf(sealed, key=other_key, chain=[other_cert], field_name="Seal2", now=LATER)
    report = verify_sealed_pdf(twice, roots=[CA], now=LATER)
    first, second = report.seals
    assert (first.field_name, second.field_name) == ("Seal", "Seal2")
    assert first.coverage == "entire-revision"
    assert first.modification_level == "form-filling"
    assert second.covers_whole_document
    assert report.latest is second


def test_sealing_an_already_sealed_field_fails() -> None:
    with pytest.raises(SealingFailed):
        seal_pdf(_sealed(), key=SEAL_KEY, chain=[SEAL_CERT], now=NOW)


def test_signer_from_another_ca_is_untrusted() -> None:
    other_ca_key = generate_private_key()
    other_ca = create_root_ca(common_name="Rogue Root", key=other_ca_key, now=NOW)
    key, cert = _seal_identity(other_ca, other_ca_key)
    sealed = seal_pdf(_plain_pdf(), key=key, chain=[cert, other_ca], now=NOW)
    with pytest.raises(SealUntrusted) as info:
        verify_sealed_pdf(sealed, roots=[CA], now=LATER)
    assert info.value.reason == "SEAL_UNTRUSTED"
    # The same document verifies under the root that issued it.
    assert verify_sealed_pdf(sealed, roots=[other_ca], now=LATER).latest.intact


def test_expired_seal_certificate_is_untrusted() -> None:
    with pytest.raises(SealUntrusted):
        verify_sealed_pdf(_sealed(), roots=[CA], now=NOW + timedelta(days=1826))


def test_tls_certificate_is_not_a_seal_certificate() -> None:
    key = generate_private_key()
    tls = issue_department_tls_certificate(
        ca_cert=CA,
        ca_key=CA_KEY,
        code=DEPT_CODE,
        name=DEPT_NAME,
        public_key=key.public_key(),
        now=NOW,
    )
    sealed = seal_pdf(_plain_pdf(), key=key, chain=[tls, CA], now=NOW)
    with pytest.raises(SealUntrusted):
        verify_sealed_pdf(sealed, roots=[CA], now=LATER)


def test_not_a_pdf_is_document_invalid() -> None:
    with pytest.raises(DocumentInvalid) as info:
        verify_sealed_pdf(b"GIF89a not a pdf at all", roots=[CA], now=LATER)
    assert info.value.reason == "DOCUMENT_INVALID"
    with pytest.raises(DocumentInvalid):
        seal_pdf(b"", key=SEAL_KEY, chain=[SEAL_CERT], now=NOW)


def test_unsigned_pdf_is_seal_missing() -> None:
    with pytest.raises(SealMissing) as info:
        verify_sealed_pdf(_plain_pdf(), roots=[CA], now=LATER)
    assert info.value.reason == "SEAL_MISSING"


def test_verification_without_roots_refuses() -> None:
    with pytest.raises(ValueError, match="roots"):
        verify_sealed_pdf(_sealed(), roots=[], now=LATER)


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        verify_sealed_pdf(_sealed(), roots=[CA], now=datetime(2025, 6, 2))  # noqa: DTZ001
    with pytest.raises(ValueError, match="timezone-aware"):
        seal_pdf(
            _plain_pdf(),
            key=SEAL_KEY,
            chain=[SEAL_CERT],
            now=datetime(2025, 6, 2),  # noqa: DTZ001
        )


def test_key_must_match_the_certificate() -> None:
    with pytest.raises(ValueError, match="does not belong"):
        seal_pdf(_plain_pdf(), key=generate_private_key(), chain=[SEAL_CERT], now=NOW)
    with pytest.raises(ValueError, match="chain"):
        seal_pdf(_plain_pdf(), key=SEAL_KEY, chain=[], now=NOW)


# --- PAdES B-T -------------------------------------------------------------------------


def _tsa(ca: x509.Certificate = CA, ca_key: PrivateKey = CA_KEY) -> DummyTimeStamper:
    """pyHanko's test TSA (RSA only) with a timeStamping certificate from ``ca``."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test TSA")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key_der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (tsa_cert,) = load_certs_from_pemder_data(cert.public_bytes(serialization.Encoding.DER))
    return DummyTimeStamper(
        tsa_cert=tsa_cert,
        tsa_key=load_private_key_from_pemder_data(key_der, passphrase=None),
        fixed_dt=NOW + timedelta(seconds=3),
    )


def test_timestamped_seal_reaches_b_t() -> None:
    sealed = _sealed(timestamper=_tsa())
    seal = verify_sealed_pdf(sealed, roots=[CA], now=LATER).latest
    assert seal.pades_level == "B-T"
    assert seal.timestamp == NOW + timedelta(seconds=3)
    assert seal.signing_time == NOW


def test_timestamp_from_untrusted_tsa_is_untrusted() -> None:
    tsa_ca_key = generate_private_key()
    tsa_ca = create_root_ca(common_name="Other TSA Root", key=tsa_ca_key, now=NOW)
    sealed = _sealed(timestamper=_tsa(tsa_ca, tsa_ca_key))
    with pytest.raises(SealUntrusted, match="timestamp"):
        verify_sealed_pdf(sealed, roots=[CA], now=LATER)
    seal = verify_sealed_pdf(sealed, roots=[CA], tsa_roots=[tsa_ca], now=LATER).latest
    assert seal.pades_level == "B-T"


@pytest.fixture
async def tsa_url() -> AsyncIterator[str]:
    """An RFC 3161 timestamp authority over HTTP on loopback, answering with pyHanko's
    test TSA."""
    stamper = _tsa()

    async def handle(request: web.Request) -> web.Response:
        req = tsp.TimeStampReq.load(await request.read())
        resp = await stamper.async_request_tsa_response(req)
        return web.Response(body=resp.dump(), content_type="application/timestamp-reply")

    app = web.Application()
    app.router.add_post("/tsa", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}/tsa"
    finally:
        await runner.cleanup()


async def test_timestamp_from_tsa_url_over_http(tsa_url: str) -> None:
    sealed = await seal_pdf_async(
        _plain_pdf(), key=SEAL_KEY, chain=[SEAL_CERT, CA], timestamper=tsa_url, now=NOW
    )
    report = await verify_sealed_pdf_async(sealed, roots=[CA], now=LATER)
    assert report.latest.pades_level == "B-T"
    assert report.latest.timestamp == NOW + timedelta(seconds=3)


async def test_blocking_forms_refuse_a_running_loop() -> None:
    assert asyncio.get_running_loop() is not None
    with pytest.raises(RuntimeError, match="seal_pdf_async"):
        seal_pdf(_plain_pdf(), key=SEAL_KEY, chain=[SEAL_CERT], now=NOW)
    with pytest.raises(RuntimeError, match="verify_sealed_pdf_async"):
        verify_sealed_pdf(_plain_pdf(), roots=[CA], now=NOW)


def test_unreachable_tsa_url_is_timestamp_unavailable() -> None:
    with pytest.raises(TimestampUnavailable):
        _sealed(timestamper="http://127.0.0.1:9/tsa")
    with pytest.raises(ValueError, match="HTTP"):
        _sealed(timestamper="ftp://tsa.example/")
