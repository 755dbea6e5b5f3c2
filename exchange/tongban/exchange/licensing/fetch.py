"""Fetching a licence for an approval (免提交): the sharing policy decides, as for a query
of the licence type's dataset, with its own intent checks, so a fetch is refused for the
same reasons, with the same reason codes, as a query; the holder's one-time authorisation
may stand in for a missing grant. Every fetch and every refusal is written to the access
log with the claims disclosed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime

import asyncpg

from tongban.exchange.audit.log import AccessLog
from tongban.exchange.errors import InvalidArgument
from tongban.exchange.identity import Caller
from tongban.exchange.licensing.authorisations import (
    AuthorisationInvalid,
    HolderAuthorisations,
    valid_holder,
)
from tongban.exchange.licensing.errors import LicenceNotFound
from tongban.exchange.licensing.feed import LicenceFeed, personal_claims
from tongban.exchange.licensing.register import LicenceRegister, LicenceView, normal_number
from tongban.exchange.sharing.errors import QueryDenied
from tongban.exchange.sharing.model import DatasetEntry
from tongban.exchange.sharing.policy import Allowed, Decision, Denied, QueryIntent
from tongban.licence import LicenceTypeRegistry, present
from tongban.signing import Clock

__all__ = ["ApprovalFetch", "Decide"]

Decide = Callable[[QueryIntent, DatasetEntry | None, datetime], Awaitable[Decision]]
"""The sharing policy's decision with the caller's grants (``Sharing.decide``)."""

#: Denials that the holder's own authorisation may overcome (a missing grant for a
#: personal claim); purpose, case and field checks stand whatever the holder says.
_HOLDER_MAY_ALLOW = frozenset(
    {"PERSONAL_GRANT_REQUIRED", "FIELD_NOT_GRANTED", "GRANT_EXPIRED", "GRANT_REQUIRED"}
)


class ApprovalFetch:
    """Licences fetched by approval services, decided by the sharing policy."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        register: LicenceRegister,
        registry: LicenceTypeRegistry,
        feed: LicenceFeed,
        authorisations: HolderAuthorisations,
        access_log: AccessLog,
        clock: Clock,
        decide: Decide,
    ) -> None:
        self._pool = pool
        self._register = register
        self._registry = registry
        self._feed = feed
        self._authorisations = authorisations
        self._log = access_log
        self._clock = clock
        self._decide = decide

    async def fetch(
        self,
        caller: Caller,
        *,
        purpose: str,
        case_id: str,
        disclose: Sequence[str],
        number: str = "",
        holder_id: str = "",
        licence_type: str = "",
        authorisation: str = "",
    ) -> tuple[LicenceView, str]:
        """``fetch_as`` for a department of ours."""
        return await self.fetch_as(
            caller.department.code, caller.officer_id, purpose=purpose, case_id=case_id,
            disclose=disclose, number=number, holder_id=holder_id, licence_type=licence_type,
            authorisation=authorisation,
        )  # fmt: skip

    async def fetch_as(
        self,
        who: str,
        officer: str | None,
        *,
        purpose: str,
        case_id: str,
        disclose: Sequence[str],
        number: str = "",
        holder_id: str = "",
        licence_type: str = "",
        authorisation: str = "",
        on_logged: Callable[[range], object] | None = None,
    ) -> tuple[LicenceView, str]:
        """Fetch a licence for an approval (免提交), by number or by holder and type;
        return the licence and a presentation of its SD-JWT holding only the disclosures
        asked for. The fetch (or its denial) is logged with the claims disclosed.

        The sharing policy decides, as for a query of the licence type's dataset
        (``<issuer>.licence_<type>``): purpose and case are required, and disclosing a
        personal claim needs the caller's grant on that dataset for this purpose, or the
        holder's one-time ``authorisation`` for this department, purpose and case
        (docs/personal-data.md). ``who`` is the caller as the policy and the log name it:
        a department of ours, or a peer's (``county-a/approval``, docs/federation.md);
        ``on_logged`` is told the log indices of the fetch's entries, allowed or not.

        Raises QueryDenied (PURPOSE_REQUIRED, CASE_REQUIRED, INVALID_ARGUMENT,
        PERSONAL_GRANT_REQUIRED, FIELD_NOT_GRANTED, GRANT_EXPIRED), AuthorisationInvalid,
        InvalidArgument, LicenceNumberInvalid, LicenceTypeUnknown, LicenceNotFound,
        ClaimInvalid (a claim the licence does not hold)."""
        now = self._clock.now()
        me = who
        view: LicenceView | None
        if number:
            view = await self._register.load(normal_number(number))
        elif holder_id and licence_type:
            self._registry.get(licence_type)
            found = [
                v
                for v in await self._register.holder_licences(valid_holder(holder_id), licence_type)
                if v.status == "valid"
            ]
            view = found[0] if found else None
        else:
            raise InvalidArgument(
                "Name the licence: its number, or the holder id and the licence type.",
                metadata={"field": "number"},
            )
        kind = self._registry.get(view.licence_type) if view is not None else None
        entry = (
            await self._feed.entry(view.issuer, kind, now)
            if view is not None and kind is not None
            else None
        )
        subject = view.holder_id if view is not None else (holder_id or None)
        dataset = entry.code if entry is not None else None
        personal = set(personal_claims(kind)) if kind is not None else set()
        # The licence number stands for the public part; each personal claim is a field.
        asked = ("licence_number", *(c for c in dict.fromkeys(disclose) if c in personal))
        intent = QueryIntent(me, dataset or "", asked, purpose, case_id)
        decision = await self._decide(intent, entry, now)

        async def log(denied: str | None, grounds: str | None = None) -> None:
            indices = await self._register.audit_as(
                who, officer, "licence-fetch", dataset=dataset, holders=[subject], now=now,
                purpose=purpose, case_id=case_id, fields=disclose, denied=denied, grounds=grounds,
            )  # fmt: skip
            if on_logged is not None:
                on_logged(indices)

        if isinstance(decision, Denied) and decision.reason == "DATASET_NOT_FOUND":
            await log("LICENCE_NOT_FOUND")
            raise LicenceNotFound(
                "No valid licence matches: "
                + (f"number {number}." if number else f"{licence_type} of {holder_id}."),
            )
        if isinstance(decision, Denied) and (
            not authorisation or decision.reason not in _HOLDER_MAY_ALLOW
        ):
            await log(decision.reason)
            raise QueryDenied.from_decision(decision)
        assert view is not None
        assert kind is not None
        presentation = present(view.sd_jwt, list(disclose))  # ClaimInvalid before anything
        if isinstance(decision, Allowed):
            await log(None, decision.grounds())
        else:
            # The holder's code, spent and logged in one transaction: used once, for a
            # fetch that is in the log, or not at all.
            async with self._pool.acquire() as conn, self._log.transaction(conn) as tx:
                spent = await self._authorisations.spend(
                    conn, authorisation, department=me, holder_id=view.holder_id,
                    purpose=purpose, case_id=case_id, licence_type=view.licence_type,
                    number=view.number, now=now,
                )  # fmt: skip
                if spent is not None:
                    tx.record(
                        self._register.entries_as(who, officer, "licence-fetch",
                                                  dataset=dataset, holders=[subject], now=now,
                                                  purpose=purpose, case_id=case_id,
                                                  fields=disclose,
                                                  grounds=f"authorisation:{spent.id}")
                    )  # fmt: skip
            if spent is None:
                await log(AuthorisationInvalid.reason)
                raise AuthorisationInvalid(
                    "The holder's authorisation code is unknown, used, expired, or made for "
                    "another department, purpose, case or licence type; ask the holder for "
                    "a new one.",
                    metadata={"field": "authorisation"},
                )
        shown = {
            k: v for k, v in view.claims.items() if not kind.claim(k).disclosable or k in disclose
        }
        return LicenceView(**{**view.__dict__, "claims": shown, "sd_jwt": presentation}), (
            presentation
        )
