"""Documents: a licence rendered as a sealed PDF, and the seal service for any PDF a
department produces (sealed with its custodial seal, verified with pyHanko's validator
against the exchange root CA)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cryptography import x509

from tongban import signing
from tongban.exchange.licensing.custody import Seal
from tongban.exchange.licensing.register import LicenceView
from tongban.licence import LicenceType

if TYPE_CHECKING:
    from tongban.signing import SealInfo

__all__ = [
    "MAX_PDF_BYTES",
    "PdfVerification",
    "licence_document",
    "render_licence_pdf",
    "seal_document",
    "verify_document",
]

#: The largest PDF the seal service takes (gRPC messages are capped at 16 MiB).
MAX_PDF_BYTES = 15 * 1024 * 1024


def licence_document(view: LicenceView, licence_type: LicenceType, issuer_name: str) -> Any:
    """The ``LicenceDocument`` of ``view`` (every claim as a labelled row)."""
    from tongban.licence import LicenceDocument

    rows = []
    for claim in licence_type.claims:
        value = view.claims.get(claim.name)
        if value is None or claim.holder_id:
            continue
        rows.append((claim.label_zh, str(value)))
    local = view.not_before.date()
    return LicenceDocument(
        title=licence_type.name_zh,
        number=view.number,
        holder_name=view.holder_name,
        holder_id=view.holder_id,
        rows=rows,
        issuer_name=issuer_name,
        issued=view.created_at.date(),
        valid_from=local,
        valid_until=view.expires.date() if view.expires else None,
        qr_text=view.qr,
    )


async def render_licence_pdf(
    view: LicenceView, licence_type: LicenceType, seal: Seal, now: datetime
) -> bytes:
    """Return ``view`` rendered as an A4 PDF sealed (PAdES) with the issuer's ``seal``.

    Raises LicenceTextUnsupported / LicenceTooLong (render), SealError (sealing)."""
    from tongban.licence import render_and_seal_async

    document = licence_document(view, licence_type, seal.name)
    data: bytes = await render_and_seal_async(document, seal.signer, seal.chain, now=now)
    return data


async def seal_document(
    pdf: bytes, seal: Seal, now: datetime, *, reason: str | None, location: str | None
) -> bytes:
    """Return ``pdf`` with ``seal`` added (PAdES B-B, incremental update). Raises
    DocumentInvalid (not a PDF), SealingFailed."""
    if not pdf:
        raise signing.DocumentInvalid("No PDF was given.")
    if len(pdf) > MAX_PDF_BYTES:
        raise signing.DocumentInvalid(f"The PDF is over {MAX_PDF_BYTES // (1024 * 1024)} MiB.")
    return await signing.seal_pdf_async(
        pdf,
        key=seal.signer,
        chain=seal.chain,
        field_name=f"Seal-{seal.holder}-{int(now.timestamp() * 1000)}",
        reason=reason or None,
        location=location or None,
        now=now,
    )


@dataclass(frozen=True)
class PdfVerification:
    """The result of verifying a sealed PDF: every seal, or the failed check."""

    verified: bool
    check: str
    reason: str
    message: str
    seals: tuple[SealInfo, ...]


async def verify_document(
    pdf: bytes, roots: Sequence[x509.Certificate], now: datetime
) -> PdfVerification:
    """Verify every seal of ``pdf`` against ``roots`` at ``now`` (pyHanko, no network).
    A broken, untrusted or missing seal is a result, not an error."""
    try:
        if len(pdf) > MAX_PDF_BYTES:
            raise signing.DocumentInvalid(f"The PDF is over {MAX_PDF_BYTES // (1024 * 1024)} MiB.")
        report = await signing.verify_sealed_pdf_async(pdf, roots=roots, now=now)
    except signing.SealError as e:
        check = e.metadata.get("check") or (
            "trust"
            if isinstance(e, signing.SealUntrusted)
            else "format"
            if isinstance(e, signing.DocumentInvalid | signing.SealMissing)
            else "integrity"
            if isinstance(e, signing.SealBroken)
            else "seal"
        )
        return PdfVerification(False, check, e.reason, e.message, ())
    seals = report.seals
    names = ", ".join(f"{s.signer_name} ({s.department_code})" for s in seals)
    tail = (
        "the document is intact since the last seal"
        if report.covers_whole_document
        else "bytes appended after the last seal change nothing pyHanko renders, but are "
        "not covered by it"
    )
    return PdfVerification(True, "", "", f"{len(seals)} seal(s) verified: {names}; {tail}.", seals)
