"""gRPC servicers of licences and seals: messages in and out of ``Licensing``.

Errors are ``TongbanError``s, mapped to statuses by the interceptor. A licence or PDF that
fails verification is a result message (verified=false, the failed check and reason), not
an error; an empty verification request is INVALID_ARGUMENT.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg
import grpc

from tongban.exchange.errors import InvalidArgument
from tongban.exchange.licensing.documents import (
    render_licence_pdf,
    seal_document,
    verify_document,
)
from tongban.exchange.licensing.issuance import IssueInput, StatusAction
from tongban.exchange.licensing.item_store import ServiceItemStore
from tongban.exchange.licensing.materials import resolve_materials
from tongban.exchange.licensing.register import LicenceView
from tongban.exchange.licensing.service import Licensing
from tongban.exchange.licensing.supervision import ResolvedMaterial, record_resolution
from tongban.exchange.server.caller import current_caller
from tongban.exchange.server.timestamps import instant, timestamp
from tongban.exchange.sharing.service import Sharing
from tongban.licence import PayloadTooLarge, VerificationResult
from tongban.licence.verify import failure
from tongban.signing import Clock
from tongban.v1 import licence_pb2, licence_pb2_grpc

__all__ = ["LicenceService", "SealService", "licence_message", "result_message"]

Context = grpc.aio.ServicerContext[Any, Any]

_ACTIONS = {
    licence_pb2.STATUS_ACTION_SUSPEND: StatusAction.SUSPEND,
    licence_pb2.STATUS_ACTION_REINSTATE: StatusAction.REINSTATE,
    licence_pb2.STATUS_ACTION_REVOKE: StatusAction.REVOKE,
    licence_pb2.STATUS_ACTION_CANCEL: StatusAction.CANCEL,
}
_MAX_CLAIMS_JSON = 64 * 1024
_MAX_VERIFY_TEXT = 64 * 1024


def _json_default(value: object) -> object:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, default=_json_default, sort_keys=True)


def _claims(text: str, *, required: bool) -> dict[str, object]:
    if not text.strip():
        if required:
            raise InvalidArgument(
                "Give the licence's claims as a JSON object.", metadata={"field": "claims_json"}
            )
        return {}
    if len(text) > _MAX_CLAIMS_JSON:
        raise InvalidArgument("The claims are over 64 KiB.", metadata={"field": "claims_json"})
    try:
        value = json.loads(text)
    except ValueError:
        raise InvalidArgument(
            "The claims are not valid JSON.", metadata={"field": "claims_json"}
        ) from None
    if not isinstance(value, dict):
        raise InvalidArgument(
            "The claims must be a JSON object of claim names to values.",
            metadata={"field": "claims_json"},
        )
    return value


def licence_message(view: LicenceView) -> licence_pb2.Licence:
    message = licence_pb2.Licence(
        number=view.number,
        version=view.version,
        licence_type=view.licence_type,
        holder_id=view.holder_id,
        holder_kind=view.holder_kind,
        holder_name=view.holder_name,
        issuer=view.issuer,
        status=view.status,
        status_uri=view.status_uri,
        status_index=view.status_index,
        not_before=timestamp(view.not_before),
        claims_json=_dumps(view.claims),
        sd_jwt=view.sd_jwt,
        qr=view.qr,
        case_id=view.case_id,
        issued_at=timestamp(view.created_at),
        sd_jwt_sm2=view.sd_jwt_sm2,
        history=[
            licence_pb2.LicenceHistoryEntry(
                version=h.version,
                action=h.action,
                from_status=h.from_status or "",
                to_status=h.to_status,
                reason=h.reason,
                department=h.department,
                officer=h.officer or "",
                at=timestamp(h.at),
            )
            for h in view.history
        ],
    )
    if view.expires is not None:
        message.expires.CopyFrom(timestamp(view.expires))
    return message


def result_message(result: VerificationResult) -> licence_pb2.VerificationResult:
    message = licence_pb2.VerificationResult(
        verified=result.verified,
        format=result.format,
        check=result.check,
        reason=result.reason,
        message=result.message,
        licence_number=result.licence_number,
        licence_type=result.licence_type,
        issuer=result.issuer,
        holder_id=result.holder_id,
        holder_name=result.holder_name,
        claims_json=_dumps(dict(result.claims)),
        status=result.status,
        exchange=result.exchange,
        sm2_verified=result.sm2_verified,
    )
    if result.not_before is not None:
        message.not_before.CopyFrom(timestamp(result.not_before))
    if result.expires is not None:
        message.expires.CopyFrom(timestamp(result.expires))
    return message


class LicenceService(licence_pb2_grpc.LicenceServiceServicer):
    def __init__(
        self,
        licensing: Licensing,
        sharing: Sharing,
        items: ServiceItemStore,
        clock: Clock,
        *,
        cases_pool: asyncpg.Pool | None = None,
    ) -> None:
        """``cases_pool``: where a resolution naming a case of the caller's department is
        recorded for electronic supervision (``licensing.supervision``); None records
        nothing."""
        self._licensing = licensing
        self._sharing = sharing
        self._items = items
        self._clock = clock
        self._cases_pool = cases_pool

    async def ListTypes(
        self, request: licence_pb2.ListLicenceTypesRequest, context: Context
    ) -> licence_pb2.ListLicenceTypesResponse:
        return licence_pb2.ListLicenceTypesResponse(
            types=[
                licence_pb2.LicenceType(
                    code=t.code,
                    name_zh=t.name_zh,
                    name_en=t.name_en,
                    vct=t.vct,
                    issuers=list(t.issuers),
                    revokers=list(t.revokers),
                    holder_kind=t.holder_kind,
                    validity_days=t.validity_days or 0,
                    claims=[
                        licence_pb2.ClaimSpec(
                            name=c.name,
                            type=c.type,
                            label_zh=c.label_zh,
                            label_en=c.label_en,
                            required=c.required,
                            disclosable=c.disclosable,
                            personal=c.personal,
                            holder_id=c.holder_id,
                            choices=list(c.choices),
                        )
                        for c in t.claims
                    ],
                )
                for t in self._licensing.registry
            ]
        )

    async def Issue(
        self, request: licence_pb2.IssueLicenceRequest, context: Context
    ) -> licence_pb2.Licence:
        if not request.licence_type:
            raise InvalidArgument(
                "Name the licence type (e.g. business-licence).",
                metadata={"field": "licence_type"},
            )
        view = await self._licensing.issuance.issue(
            current_caller(),
            IssueInput(
                licence_type=request.licence_type,
                claims=_claims(request.claims_json, required=True),
                case_id=request.case_id,
                not_before=instant(request.not_before, "not_before"),
                expires=instant(request.expires, "expires"),
                reason=request.reason,
            ),
        )
        return licence_message(view)

    async def Get(
        self, request: licence_pb2.GetLicenceRequest, context: Context
    ) -> licence_pb2.Licence:
        return licence_message(await self._licensing.register.get(current_caller(), request.number))

    async def List(
        self, request: licence_pb2.ListLicencesRequest, context: Context
    ) -> licence_pb2.ListLicencesResponse:
        views = await self._licensing.register.list_by_holder(
            current_caller(), request.holder_id, request.licence_type or None
        )
        messages = []
        for view in views:
            licence_type = self._licensing.registry.get(view.licence_type)
            public = {
                k: v
                for k, v in view.claims.items()
                if not licence_type.claim(k).personal and not licence_type.claim(k).disclosable
            }
            messages.append(
                licence_message(
                    LicenceView(
                        **{**view.__dict__, "claims": public, "sd_jwt": "", "sd_jwt_sm2": ""}
                    )
                )
            )
        return licence_pb2.ListLicencesResponse(licences=messages)

    async def Fetch(
        self, request: licence_pb2.FetchLicenceRequest, context: Context
    ) -> licence_pb2.Licence:
        view, _ = await self._licensing.approval_fetch.fetch(
            current_caller(),
            purpose=request.purpose,
            case_id=request.case_id,
            disclose=list(request.disclose),
            number=request.number,
            holder_id=request.holder_id,
            licence_type=request.licence_type,
            authorisation=request.authorisation,
        )
        return licence_message(view)

    async def ChangeStatus(
        self, request: licence_pb2.ChangeLicenceStatusRequest, context: Context
    ) -> licence_pb2.Licence:
        action = _ACTIONS.get(request.action)
        if action is None:
            raise InvalidArgument(
                "Say what to do: suspend, reinstate, revoke or cancel.",
                metadata={"field": "action"},
            )
        view = await self._licensing.issuance.change_status(
            current_caller(), request.number, action, request.reason
        )
        return licence_message(view)

    async def Amend(
        self, request: licence_pb2.AmendLicenceRequest, context: Context
    ) -> licence_pb2.Licence:
        claims = _claims(request.claims_json, required=False)
        if not claims and not request.renew:
            raise InvalidArgument(
                "Give the claims to amend, or renew.", metadata={"field": "claims_json"}
            )
        view = await self._licensing.issuance.amend(
            current_caller(),
            request.number,
            claims=claims or None,
            expires=instant(request.expires, "expires"),
            reason=request.reason,
            renew=request.renew,
        )
        return licence_message(view)

    async def Verify(
        self, request: licence_pb2.VerifyLicenceRequest, context: Context
    ) -> licence_pb2.VerificationResult:
        text = request.text.strip()
        if not text:
            raise InvalidArgument(
                "Give the licence to verify: an SD-JWT or a QR text (TB1:...).",
                metadata={"field": "text"},
            )
        if len(text) > _MAX_VERIFY_TEXT:
            return result_message(
                failure(
                    PayloadTooLarge(
                        f"The text is {len(text):,} characters, over 64 KiB: no licence is "
                        "that long (a QR code holds at most 4,296)."
                    ),
                    "unknown",
                )
            )
        sm2 = request.sd_jwt_sm2.strip()
        if len(sm2) > _MAX_VERIFY_TEXT:
            raise InvalidArgument(
                "The SM2 signature is over 64 KiB; give the one the licence came with.",
                metadata={"field": "sd_jwt_sm2"},
            )
        return result_message(await self._licensing.trust.verify(text, sm2))

    async def Render(
        self, request: licence_pb2.RenderLicenceRequest, context: Context
    ) -> licence_pb2.RenderLicenceResponse:
        view = await self._licensing.register.get(current_caller(), request.number)
        seal = await self._licensing.vault.get(view.issuer)
        pdf = await render_licence_pdf(
            view, self._licensing.registry.get(view.licence_type), seal, self._clock.now()
        )
        return licence_pb2.RenderLicenceResponse(pdf=pdf)

    async def ResolveMaterials(
        self, request: licence_pb2.ResolveMaterialsRequest, context: Context
    ) -> licence_pb2.ResolveMaterialsResponse:
        item = await self._items.get(request.service_item)
        resolved = await resolve_materials(
            current_caller(),
            item,
            request.applicant,
            request.case_id,
            licences=self._licensing.approval_fetch,
            sharing=self._sharing,
            peers=self._licensing.peer_licences,
        )
        if self._cases_pool is not None:
            # The last resolution before the decision counts (docs/supervision.md); a case
            # id that is not an open case of the caller's for this item records nothing.
            await record_resolution(
                self._cases_pool,
                department=current_caller().department.code,
                case_id=request.case_id,
                item=item.code,
                item_version=item.version,
                applicant=request.applicant,
                materials=[ResolvedMaterial(m.code, m.required, m.source) for m in resolved],
                now=self._clock.now(),
            )
        return licence_pb2.ResolveMaterialsResponse(
            service_item=item.code,
            materials=[
                licence_pb2.MaterialResolution(
                    code=m.code,
                    name_zh=m.name_zh,
                    required=m.required,
                    satisfied=m.satisfied,
                    source=m.source,
                    reference=m.reference,
                    reason=m.reason,
                    message=m.message,
                    values_json=_dumps(dict(m.values)),
                )
                for m in resolved
            ],
            to_submit=sum(m.required and not m.satisfied for m in resolved),
            item_version=item.version,
        )


class SealService(licence_pb2_grpc.SealServiceServicer):
    def __init__(self, licensing: Licensing, clock: Clock) -> None:
        self._licensing = licensing
        self._clock = clock

    async def SealPdf(
        self, request: licence_pb2.SealPdfRequest, context: Context
    ) -> licence_pb2.SealPdfResponse:
        seal = await self._licensing.vault.get(current_caller().department.code)
        pdf = await seal_document(
            request.pdf,
            seal,
            self._clock.now(),
            reason=request.reason,
            location=request.location,
        )
        return licence_pb2.SealPdfResponse(pdf=pdf)

    async def VerifyPdf(
        self, request: licence_pb2.VerifyPdfRequest, context: Context
    ) -> licence_pb2.VerifyPdfResponse:
        if not request.pdf:
            raise InvalidArgument("Give the PDF to verify.", metadata={"field": "pdf"})
        now = self._clock.now()
        result = await verify_document(request.pdf, self._licensing.roots, now)
        exchange = ""
        if not result.verified and result.reason == "SEAL_UNTRUSTED":
            # Not sealed under our roots: perhaps a peer exchange's document. Each peer's
            # root alone, so that what verifies is that exchange's (department codes are
            # unique only within one exchange).
            peer_roots = self._licensing.peer_roots() if self._licensing.peer_roots else ()
            for name, root in peer_roots:
                theirs = await verify_document(request.pdf, [root], now)
                if theirs.verified:
                    exchange = name
                    result = replace(
                        theirs, message=f"{theirs.message} Sealed in peer exchange {name}."
                    )
                    break
        return licence_pb2.VerifyPdfResponse(
            exchange=exchange,
            verified=result.verified,
            check=result.check,
            reason=result.reason,
            message=result.message,
            seals=[
                licence_pb2.SealInfo(
                    field_name=s.field_name,
                    department=s.department_code,
                    signer_name=s.signer_name,
                    signing_time=timestamp(s.signing_time) if s.signing_time else None,
                    intact=s.intact,
                    coverage=s.coverage,
                    modification_level=s.modification_level,
                    pades_level=s.pades_level or "",
                )
                for s in result.seals
            ],
        )
