"""A licence version's credentials, sealed by its issuer: the SD-JWT VC (personal and
disclosable claims as selective disclosures) and the QR code's signed text. No storage here:
the caller has allocated the status list entry and fetched the seal."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from tongban.exchange.licensing.custody import Seal
from tongban.exchange.licensing.register import LicenceView
from tongban.exchange.licensing.sm2_seals import Sm2Seal
from tongban.licence import LicenceType, QrClaims, encode_qr, issue_sd_jwt, split_claims
from tongban.signing import DEPT_URI_PREFIX

__all__ = ["sign_version"]


def sign_version(
    seal: Seal,
    licence_type: LicenceType,
    number: str,
    version: int,
    claims: dict[str, object],
    holder: str,
    not_before: datetime,
    expires: datetime | None,
    status: tuple[str, int],
    now: datetime,
    case_id: str,
    conditions: Sequence[str] = (),
    sm2: Sm2Seal | None = None,
) -> LicenceView:
    """Licence ``number`` version ``version`` of ``holder``, sealed with ``seal``: its
    SD-JWT VC and its QR text, with status list entry ``status`` (the list's URI, the
    index); with ``sm2``, the issuer's SM2 seal, also the SM2 signature of the SD-JWT."""
    clear, disclosable = split_claims(licence_type, claims)
    uri, index = status
    issued = issue_sd_jwt(
        {
            "licence_number": number,
            "licence_version": version,
            **clear,
            **({"conditions": list(conditions)} if conditions else {}),
        },
        disclosable,
        signer=seal.signer,
        chain=seal.chain,
        vct=licence_type.vct,
        iss=DEPT_URI_PREFIX + seal.holder,
        sub=holder,
        nbf=not_before,
        exp=expires,
        now=now,
        status_idx=index,
        status_uri=uri,
    )
    name = _holder_name(licence_type, claims)
    # An open-ended licence's QR still needs an expiry: its seal certificate's, past
    # which no verifier could check the signature anyway (re-issue before rotating).
    qr_expires = expires or seal.certificate.not_valid_after_utc
    qr = encode_qr(
        QrClaims(
            licence_number=number,
            licence_type=licence_type.code,
            holder_id=holder,
            holder_name=name,
            issuer=seal.holder,
            not_before=int(not_before.timestamp()),
            expires=int(qr_expires.timestamp()),
            status_uri=uri,
            status_index=index,
        ),
        seal.signer,
        seal.certificate,
    )
    return LicenceView(
        number=number,
        version=version,
        licence_type=licence_type.code,
        holder_id=holder,
        holder_kind=licence_type.holder_kind,
        holder_name=name,
        issuer=seal.holder,
        status="valid",
        status_uri=uri,
        status_index=index,
        not_before=not_before,
        expires=expires,
        claims=claims,
        sd_jwt=issued.serialization,
        qr=qr,
        case_id=case_id,
        created_at=now,
        updated_at=now,
        sd_jwt_sm2=sm2.sign_sd_jwt(issued.serialization) if sm2 is not None else "",
    )


def _holder_name(licence_type: LicenceType, claims: Mapping[str, object]) -> str:
    for claim in licence_type.claims:
        value = claims.get(claim.name)
        if claim.type == "string" and not claim.holder_id and isinstance(value, str) and value:
            return value
    return str(claims.get(licence_type.holder_claim or "", ""))
