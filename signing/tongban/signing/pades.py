"""Electronic seals (电子印章) on PDF documents: PAdES signatures made with a department's
seal key, and their verification by pyHanko's own validator.

``seal_pdf`` adds a PAdES baseline signature (subfilter ``ETSI.CAdES.detached``) in an
incremental update: level B-B, or B-T when a timestamper (an RFC 3161 TSA URL or any
pyHanko ``TimeStamper``) is given. ``verify_sealed_pdf`` validates every seal with pyHanko
against the exchange root CA (no network fetching, at an injected moment), and returns
what each seal attests or raises a ``SealError`` saying which check failed.

pyHanko's API is asynchronous; ``seal_pdf`` and ``verify_sealed_pdf`` run it in a fresh
event loop for command-line use, and ``seal_pdf_async`` / ``verify_sealed_pdf_async`` are
for code already inside an event loop (servers).
"""

from __future__ import annotations

import asyncio
import io
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID
from pyhanko.keys import load_certs_from_pemder_data
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.misc import PdfError
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign.diff_analysis import ModificationLevel
from pyhanko.sign.fields import SigSeedSubFilter
from pyhanko.sign.general import SigningError as PyHankoSigningError
from pyhanko.sign.signers import PdfSignatureMetadata, PdfSigner, Signer
from pyhanko.sign.signers.pdf_cms import PdfCMSSignedAttributes
from pyhanko.sign.timestamps import TimeStamper
from pyhanko.sign.timestamps.aiohttp_client import HTTPTimeStamper
from pyhanko.sign.timestamps.common_utils import TimestampRequestError
from pyhanko.sign.validation import async_validate_pdf_signature
from pyhanko.sign.validation.pdf_embedded import EmbeddedPdfSignature
from pyhanko.sign.validation.settings import KeyUsageConstraints
from pyhanko.sign.validation.status import PdfSignatureStatus, SignatureCoverageLevel
from pyhanko_certvalidator import ValidationContext
from pyhanko_certvalidator.registry import CertificateRegistry

from tongban.errors import TongbanError
from tongban.signing.certs import DOCUMENT_SIGNING, department_code
from tongban.signing.errors import CertificateInvalid
from tongban.signing.keys import LocalSigner, PrivateKey
from tongban.signing.keys import Signer as KeySigner

__all__ = [
    "Coverage",
    "DocumentInvalid",
    "ModificationKind",
    "PadesLevel",
    "SealBroken",
    "SealError",
    "SealInfo",
    "SealMissing",
    "SealReport",
    "SealUntrusted",
    "SealingFailed",
    "TimestampUnavailable",
    "seal_pdf",
    "seal_pdf_async",
    "verify_sealed_pdf",
    "verify_sealed_pdf_async",
]

PadesLevel = Literal["B-B", "B-T"]
Coverage = Literal["entire-file", "entire-revision"]
ModificationKind = Literal["none", "lta-updates", "form-filling", "annotations", "other"]

# Room for the CMS structure around the certificates: signed attributes, signature,
# algorithm identifiers. Measured at ~1 KiB for P-256; the rest is slack.
_CMS_OVERHEAD = 4096
# What pyHanko's parser raises on a damaged or non-PDF file: its own PdfError, and
# ValueError, LookupError or zlib.error from deeper in (xref streams, filters).
_PDF_READ_ERRORS = (PdfError, ValueError, LookupError, zlib.error)
_MODIFICATION_KINDS: dict[ModificationLevel, ModificationKind] = {
    ModificationLevel.NONE: "none",
    ModificationLevel.LTA_UPDATES: "lta-updates",
    ModificationLevel.FORM_FILLING: "form-filling",
    ModificationLevel.ANNOTATIONS: "annotations",
    ModificationLevel.OTHER: "other",
}
# A seal certificate asserts both (see certs.issue_seal_certificate) and EKU
# documentSigning, which asn1crypto knows only by its dotted OID.
_SEAL_KEY_USAGE = KeyUsageConstraints(
    key_usage={"digital_signature", "non_repudiation"},
    match_all_key_usages=True,
    extd_key_usage={DOCUMENT_SIGNING.dotted_string},
)


class SealError(TongbanError):
    """Base of the errors raised when sealing a PDF or verifying its seals."""

    reason = "SEAL_ERROR"
    status = "FAILED_PRECONDITION"


class DocumentInvalid(SealError):
    """The bytes are not a readable PDF document."""

    reason = "DOCUMENT_INVALID"
    status = "INVALID_ARGUMENT"


class SealMissing(SealError):
    """The PDF carries no seal (no ``/Sig`` signature)."""

    reason = "SEAL_MISSING"


class SealBroken(SealError):
    """A seal does not match the document: the signed bytes were changed (digest
    mismatch), the signature value is wrong or malformed, it does not cover a whole
    revision, or the document was changed after sealing by more than further seals or
    form filling. ``metadata["check"]`` says which: "integrity", "coverage" or
    "modifications"."""

    reason = "SEAL_BROKEN"


class SealUntrusted(SealError):
    """A seal is intact but its certificate does not chain to the configured roots at
    the validation time, is not a department seal certificate, or its timestamp comes
    from an untrusted TSA."""

    reason = "SEAL_UNTRUSTED"


class SealingFailed(SealError):
    """pyHanko refused to seal the document (for example, the signature field already
    holds a seal, or the document forbids further changes)."""

    reason = "SEAL_FAILED"


class TimestampUnavailable(SealError):
    """The timestamp authority could not be reached or gave no usable answer."""

    reason = "TIMESTAMP_UNAVAILABLE"
    status = "UNAVAILABLE"


@dataclass(frozen=True)
class SealInfo:
    """What one verified seal attests."""

    field_name: str
    """The PDF signature field holding the seal."""
    department_code: str
    """The department that sealed, from the certificate's ``urn:tongban:dept:`` SAN."""
    signer_name: str
    """The seal holder's name (the certificate's CN, e.g. 市市场监督管理局)."""
    certificate: x509.Certificate
    """The seal certificate."""
    signing_time: datetime | None
    """The signing time the sealer claimed (the signature's ``/M``); not attested."""
    timestamp: datetime | None
    """The time a trusted TSA attested (PAdES B-T), or None for B-B."""
    intact: bool
    """Whether the signed bytes match the signature. Always True in a returned report:
    a seal that is not intact raises ``SealBroken``; kept so a serialised report says
    so explicitly."""
    coverage: Coverage
    """"entire-file" if nothing was appended after the seal; "entire-revision" if later
    incremental updates exist (further seals, annotations, form filling)."""
    modification_level: ModificationKind
    """pyHanko's judgement of the changes appended after the seal: "none" when the seal
    covers the entire file; "form-filling" for further seals and form filling;
    "other" for anything else (new content, pages, comments), which is only returned
    when verifying with ``allow_modifications=True``."""
    pades_level: PadesLevel | None
    """The PAdES baseline level reached, or None for a non-PAdES (adbe.pkcs7.detached)
    signature. Levels above B-T (DSS, archive timestamps) are not assessed."""

    @property
    def covers_whole_document(self) -> bool:
        """True if the seal covers every byte of the file (nothing appended since)."""
        return self.coverage == "entire-file"


@dataclass(frozen=True)
class SealReport:
    """The verified seals of a document, in signing order (never empty)."""

    seals: tuple[SealInfo, ...]

    @property
    def latest(self) -> SealInfo:
        """The last seal applied."""
        return self.seals[-1]

    @property
    def covers_whole_document(self) -> bool:
        """True if the latest seal covers the entire file, i.e. nothing at all was
        added after the last seal."""
        return self.latest.covers_whole_document


# ---------------------------------------------------------------------------------------
# Sealing


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _asn1_cert(cert: x509.Certificate) -> Any:
    (loaded,) = load_certs_from_pemder_data(_der(cert))
    return loaded


class _KeySigner(Signer):
    """A pyHanko signer over one of our ``Signer``s: a key in memory (used in place, never
    exported; pyHanko's SimpleSigner wants it as PKCS#8 bytes) or a key in a PKCS#11 token."""

    def __init__(self, signer: KeySigner, chain: Sequence[x509.Certificate]) -> None:
        self._signer = signer
        super().__init__(signing_cert=_asn1_cert(chain[0]), cert_registry=_cert_store(chain[1:]))

    async def async_sign_raw(
        self, data: bytes, digest_algorithm: str, dry_run: bool = False
    ) -> bytes:
        # pyHanko picks the mechanism from the certificate's key: ECDSA with SHA-256 for
        # P-256 (its default digest, and the only one ES256 signers make), pure Ed25519
        # (which hashes internally) otherwise. CMS wants ECDSA signatures in DER.
        if self._signer.algorithm == "EdDSA":
            return self._signer.sign(data)
        if digest_algorithm.lower() != "sha256":
            raise PyHankoSigningError(f"Unsupported digest {digest_algorithm!r} for ECDSA.")
        raw = self._signer.sign(data)
        return encode_dss_signature(
            int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
        )


def _cert_store(certs: Sequence[x509.Certificate]) -> CertificateRegistry:
    store = CertificateRegistry()  # no fetcher: never goes to the network
    for cert in certs:
        store.register(_asn1_cert(cert))
    return store


def _timestamper(timestamper: str | TimeStamper | None) -> TimeStamper | None:
    if timestamper is None or isinstance(timestamper, TimeStamper):
        return timestamper
    if not timestamper.startswith(("http://", "https://")):
        raise ValueError(f"The timestamp authority URL {timestamper!r} is not an HTTP(S) URL.")
    return HTTPTimeStamper(timestamper)


def _require_aware(at: datetime, what: str) -> None:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime, not {at!r}.")


async def seal_pdf_async(
    pdf: bytes,
    *,
    key: PrivateKey | KeySigner,
    chain: Sequence[x509.Certificate],
    field_name: str = "Seal",
    reason: str | None = None,
    location: str | None = None,
    timestamper: str | TimeStamper | None = None,
    now: datetime | None = None,
) -> bytes:
    """Return ``pdf`` with a PAdES seal added in an incremental update.

    ``key`` is the department's seal key (P-256, or Ed25519), in memory or a ``Signer``
    over a key in a PKCS#11 token, and ``chain`` its seal certificate first, then any
    intermediates (the root may be included; it is embedded too). The seal is PAdES B-B,
    or B-T when ``timestamper`` is an RFC 3161 TSA URL or a pyHanko ``TimeStamper``.
    ``now`` is the claimed signing time (default: the current time). The signature field
    ``field_name`` is created invisible on the first page.

    Raises ValueError if ``chain`` is empty, ``key`` does not belong to ``chain[0]``,
    ``now`` is naive or ``timestamper`` is not an HTTP(S) URL; DocumentInvalid if
    ``pdf`` is not a readable PDF; SealingFailed if pyHanko refuses to sign it (e.g. the
    field already holds a seal); TimestampUnavailable if the TSA fails.
    """
    if not chain:
        raise ValueError("A seal needs its certificate chain (seal certificate first).")
    if key.public_key() != chain[0].public_key():
        raise ValueError("The seal key does not belong to the first certificate of the chain.")
    if now is None:
        now = datetime.now(UTC)
    _require_aware(now, "The signing time")
    tsa = _timestamper(timestamper)

    signer = _KeySigner(
        LocalSigner(key)
        if isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey)
        else key,
        chain,
    )
    meta = PdfSignatureMetadata(
        field_name=field_name,
        # None lets pyHanko pick the digest the key needs: SHA-256 for P-256,
        # SHA-512 for Ed25519 (RFC 8419).
        md_algorithm=None,
        subfilter=SigSeedSubFilter.PADES,
        reason=reason,
        location=location,
    )
    pdf_signer = PdfSigner(meta, signer, timestamper=tsa)
    try:
        writer = IncrementalPdfFileWriter(io.BytesIO(pdf))
    except _PDF_READ_ERRORS as e:
        raise DocumentInvalid(f"The document is not a readable PDF ({e}).") from e

    try:
        # PdfSigner.async_sign_pdf, step by step, so that the signing time is the
        # injected `now` rather than pyHanko's own clock.
        session = pdf_signer.init_signing_session(writer)
        session.system_time = now
        validation_info = await session.perform_presign_validation(writer)
        if tsa is None:
            # The CMS size is known without a dry-run signature, which would cost as
            # much as the real one.
            reserved = 2 * ((sum(len(_der(c)) for c in chain) + _CMS_OVERHEAD + 1) // 2)
        else:
            reserved = await session.estimate_signature_container_size(validation_info, tight=False)
        tbs = session.prepare_tbs_document(validation_info=validation_info, bytes_reserved=reserved)
        prepared, output = tbs.digest_tbs_document()
        post_sign = await tbs.perform_signature(
            document_digest=prepared.document_digest,
            pdf_cms_signed_attrs=PdfCMSSignedAttributes(signing_time=now),
        )
        await post_sign.post_signature_processing(output)
    except TimestampRequestError as e:
        raise TimestampUnavailable(
            f"The timestamp authority did not answer usably ({e}); check its URL and "
            "that it is reachable, or seal without a timestamp (PAdES B-B)."
        ) from e
    except PyHankoSigningError as e:
        raise SealingFailed(
            f"pyHanko could not seal the document in field {field_name!r}: {e}",
            metadata={"field": field_name},
        ) from e
    except _PDF_READ_ERRORS as e:
        raise DocumentInvalid(f"The document could not be sealed as a PDF ({e}).") from e
    output.seek(0)
    data: bytes = output.read()
    return data


def _no_running_loop(name: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(
        f"{name}() runs its own event loop and cannot be called from a running one; "
        f"await {name}_async() instead."
    )


def seal_pdf(
    pdf: bytes,
    *,
    key: PrivateKey | KeySigner,
    chain: Sequence[x509.Certificate],
    field_name: str = "Seal",
    reason: str | None = None,
    location: str | None = None,
    timestamper: str | TimeStamper | None = None,
    now: datetime | None = None,
) -> bytes:
    """Return ``pdf`` with a PAdES seal added; the blocking form of ``seal_pdf_async``
    (same arguments, same errors), for command-line tools and worker threads.

    Raises RuntimeError if called from a running event loop (use ``seal_pdf_async``).
    """
    _no_running_loop("seal_pdf")
    return asyncio.run(
        seal_pdf_async(
            pdf,
            key=key,
            chain=chain,
            field_name=field_name,
            reason=reason,
            location=location,
            timestamper=timestamper,
            now=now,
        )
    )


# ---------------------------------------------------------------------------------------
# Verification


def _signer_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if names else cert.subject.rfc4514_string()
    return value if isinstance(value, str) else value.decode()


def _pades_level(status: PdfSignatureStatus, embedded: EmbeddedPdfSignature) -> PadesLevel | None:
    if embedded.sig_object.get("/SubFilter") != SigSeedSubFilter.PADES.value:
        return None
    return "B-T" if status.timestamp_validity is not None else "B-B"


def _check_timestamp(status: PdfSignatureStatus, field: str) -> datetime | None:
    tst = status.timestamp_validity
    if tst is None:
        return None
    if not (tst.intact and tst.valid):
        raise SealBroken(
            f"The signature timestamp of seal {field!r} does not match the signature; "
            "the document may have been tampered with.",
            metadata={"field": field, "check": "integrity"},
        )
    if not tst.trusted:
        raise SealUntrusted(
            f"The signature timestamp of seal {field!r} comes from a TSA that is not "
            "trusted; add the TSA's root to tsa_roots if it is an accepted authority.",
            metadata={"field": field},
        )
    when: datetime = tst.timestamp
    return when


def _modification_kind(status: PdfSignatureStatus) -> ModificationKind:
    if status.coverage == SignatureCoverageLevel.ENTIRE_FILE:
        return "none"
    mod = status.modification_level
    return "other" if mod is None else _MODIFICATION_KINDS[mod]


def _seal_info(
    status: PdfSignatureStatus, embedded: EmbeddedPdfSignature, *, allow_modifications: bool
) -> SealInfo:
    field = str(embedded.field_name)
    meta = {"field": field}
    if not (status.intact and status.valid):
        raise SealBroken(
            f"Seal {field!r} does not match the document: the sealed content was changed "
            "or the signature is corrupt.",
            metadata={**meta, "check": "integrity"},
        )
    if status.coverage is None or status.coverage < SignatureCoverageLevel.ENTIRE_REVISION:
        raise SealBroken(
            f"Seal {field!r} does not cover a whole revision of the document, so what it "
            "vouches for is unclear.",
            metadata={**meta, "check": "coverage"},
        )
    level = _modification_kind(status)
    if not status.docmdp_ok and not allow_modifications:
        raise SealBroken(
            f"The document was changed after seal {field!r} was applied (pyHanko judges "
            f"the changes as {level!r}: more than further seals or form filling), so the "
            "content shown may not be what was sealed.",
            metadata={**meta, "check": "modifications", "modification_level": level},
        )
    if status.revoked:
        raise SealUntrusted(f"The certificate of seal {field!r} was revoked.", metadata=meta)
    if not status.trusted:
        problem = status.trust_problem_indic
        why = f" ({problem.standard_name})" if problem is not None else ""
        raise SealUntrusted(
            f"The certificate of seal {field!r} does not chain to a trusted root at the "
            f"validation time{why}; it must be a seal certificate issued by this "
            "exchange's CA.",
            metadata=meta,
        )
    timestamp = _check_timestamp(status, field)
    cert = x509.load_der_x509_certificate(status.signing_cert.dump())
    try:
        code = department_code(cert)
    except CertificateInvalid as e:
        raise SealUntrusted(
            f"The certificate of seal {field!r} names no single department: {e.message}",
            metadata=meta,
        ) from e
    coverage: Coverage = (
        "entire-file"
        if status.coverage == SignatureCoverageLevel.ENTIRE_FILE
        else "entire-revision"
    )
    return SealInfo(
        field_name=field,
        department_code=code,
        signer_name=_signer_name(cert),
        certificate=cert,
        signing_time=embedded.self_reported_timestamp,
        timestamp=timestamp,
        intact=True,
        coverage=coverage,
        modification_level=level,
        pades_level=_pades_level(status, embedded),
    )


def _validation_context(roots: Sequence[x509.Certificate], now: datetime) -> ValidationContext:
    return ValidationContext(
        trust_roots=[_asn1_cert(c) for c in roots],
        allow_fetching=False,
        moment=now,
    )


async def verify_sealed_pdf_async(
    pdf: bytes,
    *,
    roots: Sequence[x509.Certificate],
    now: datetime,
    tsa_roots: Sequence[x509.Certificate] = (),
    allow_modifications: bool = False,
) -> SealReport:
    """Return the report of every seal in ``pdf``, each validated by pyHanko against
    ``roots`` (the exchange root CA) at ``now``, without fetching anything.

    A seal must be intact, cover a whole revision, chain to ``roots`` with a department
    seal certificate (KeyUsage digitalSignature + contentCommitment, EKU
    documentSigning). Changes appended after a seal must be ones pyHanko's default
    diff policy accepts (further seals, form filling, validation data) unless
    ``allow_modifications`` is True: then any change is reported instead (coverage
    "entire-revision", modification_level "other") for the caller to show. A signature
    timestamp must come from a TSA chaining to ``roots`` or ``tsa_roots``. Document
    timestamps are not seals and are skipped.

    Raises ValueError if ``roots`` is empty or ``now`` is naive; DocumentInvalid if
    ``pdf`` is not a readable PDF; SealMissing if it carries no seal; SealBroken
    (metadata ``check``: "integrity", "coverage" or "modifications") if a seal does not
    match the document, or the document was changed after sealing and
    ``allow_modifications`` is False; SealUntrusted if a seal's certificate or
    timestamp is not trusted.
    """
    if not roots:
        raise ValueError("No trusted roots given: no seal could be trusted.")
    _require_aware(now, "The validation time")
    try:
        reader = PdfFileReader(io.BytesIO(pdf))
        embedded = reader.embedded_regular_signatures
    except _PDF_READ_ERRORS as e:
        raise DocumentInvalid(f"The document is not a readable PDF ({e}).") from e
    if not embedded:
        raise SealMissing("The document carries no seal (no PDF signature).")

    signer_vc = _validation_context(roots, now)
    tsa_vc = _validation_context([*roots, *tsa_roots], now)
    seals = []
    for sig in embedded:
        try:
            status = await async_validate_pdf_signature(
                sig,
                signer_validation_context=signer_vc,
                ts_validation_context=tsa_vc,
                key_usage_settings=_SEAL_KEY_USAGE,
            )
        except _PDF_READ_ERRORS as e:
            # pyHanko's CMS and signature errors are ValueErrors (malformed CMS, a byte
            # range outside the file, a disallowed algorithm); damaged objects of the
            # sealed revision surface here too.
            raise SealBroken(
                f"Seal {sig.field_name!r} could not be validated: {e}",
                metadata={"field": str(sig.field_name), "check": "integrity"},
            ) from e
        seals.append(_seal_info(status, sig, allow_modifications=allow_modifications))
    return SealReport(seals=tuple(seals))


def verify_sealed_pdf(
    pdf: bytes,
    *,
    roots: Sequence[x509.Certificate],
    now: datetime,
    tsa_roots: Sequence[x509.Certificate] = (),
    allow_modifications: bool = False,
) -> SealReport:
    """Return the report of every seal in ``pdf``; the blocking form of
    ``verify_sealed_pdf_async`` (same arguments, same errors).

    Raises RuntimeError if called from a running event loop (use
    ``verify_sealed_pdf_async``).
    """
    _no_running_loop("verify_sealed_pdf")
    return asyncio.run(
        verify_sealed_pdf_async(
            pdf,
            roots=roots,
            now=now,
            tsa_roots=tsa_roots,
            allow_modifications=allow_modifications,
        )
    )
