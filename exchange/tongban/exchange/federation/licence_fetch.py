"""Licences held in a peer exchange, fetched for an approval (docs/federation.md, "The
materials resolver and peers' licences").

When the materials resolver finds no licence of the applicant here, it asks the active
peers, in name order, for the applicant's valid licence of that type: our node signs the
request (JWS ``tongban-forwarded-licence-fetch+jws``: the department, officer, purpose,
case, holder, licence type and the claims to disclose, with a nonce and a time window)
and sends it with ``PeerService/ForwardLicenceFetch``. The holder's exchange decides with
its own policy for ``<peer>/<department>`` (the fetch an approval service of its own
would make, without a holder's code), logs it, and answers a presentation with only the
claims allowed. We log each request going out and its receipt with the peer's log index,
and believe the presentation only once it verifies with that peer's trust list under its
root (``PeerLicences``).
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from tongban.errors import TongbanError
from tongban.exchange.audit.log import AccessLog, SubjectHasher
from tongban.exchange.audit.recorder import AccessRecorder, Outcome
from tongban.exchange.datadir import NodeSigning
from tongban.exchange.federation.errors import (
    PeerRequestInvalid,
    PeerSignatureMismatch,
)
from tongban.exchange.federation.forwarding import (
    DEPARTMENT,
    NONCE,
    OFFICER,
    admit,
    instant,
    remote_department,
    sign_claims,
    verify_peer_signed,
)
from tongban.exchange.federation.licences import PeerLicences
from tongban.exchange.federation.links import PeerLinks, PeerRefusal
from tongban.exchange.federation.offer import CatalogueOffer
from tongban.exchange.federation.peers import Peer
from tongban.exchange.federation.trust import PeerTrust
from tongban.exchange.identity import Caller
from tongban.exchange.licensing.errors import LicenceNotFound
from tongban.exchange.licensing.feed import dataset_code
from tongban.exchange.licensing.fetch import ApprovalFetch
from tongban.licence import LicenceTypeRegistry
from tongban.signing.clock import Clock
from tongban.v1 import federation_pb2

__all__ = ["FETCH_TYPE", "FetchedElsewhere", "ForwardedFetch", "LicenceFetchForwarding"]

FETCH_TYPE = "tongban-forwarded-licence-fetch+jws"
_MAX_TEXT = 200
_MAX_CLAIMS = 64


@dataclass(frozen=True)
class ForwardedFetch:
    """A licence fetch of a department of the calling exchange, as its node signed it."""

    exchange: str
    audience: str
    department: str
    officer: str | None
    purpose: str
    case_id: str
    holder_id: str
    licence_type: str
    disclose: tuple[str, ...]
    nonce: str
    issued_at: datetime
    expires_at: datetime

    def payload(self) -> dict[str, object]:
        return {
            "v": 1,
            "exchange": self.exchange,
            "audience": self.audience,
            "department": self.department,
            "officer": self.officer,
            "purpose": self.purpose,
            "case_id": self.case_id,
            "holder_id": self.holder_id,
            "licence_type": self.licence_type,
            "disclose": list(self.disclose),
            "nonce": self.nonce,
            "issued_at": instant(self.issued_at),
            "expires_at": instant(self.expires_at),
        }


@dataclass(frozen=True)
class FetchedElsewhere:
    """A peer's licence fetched for an approval, its presentation verified here."""

    peer: str
    number: str
    licence_type: str
    issuer: str
    claims: Mapping[str, object]
    presentation: str
    log_index: int


def _parse(claimed: Mapping[str, Any]) -> ForwardedFetch:
    bad = PeerRequestInvalid("The forwarded licence fetch lacks a member or holds a malformed one.")
    try:
        texts = ("exchange", "audience", "department", "purpose", "case_id", "holder_id")
        officer, disclose = claimed["officer"], claimed["disclose"]
        issued_at = datetime.fromisoformat(claimed["issued_at"])
        expires_at = datetime.fromisoformat(claimed["expires_at"])
        well_formed = (
            all(isinstance(claimed[k], str) and len(claimed[k]) <= _MAX_TEXT for k in texts)
            and isinstance(claimed["licence_type"], str)
            and isinstance(claimed["nonce"], str)
            and (officer is None or (isinstance(officer, str) and OFFICER.fullmatch(officer)))
            and DEPARTMENT.fullmatch(claimed["department"])
            and NONCE.fullmatch(claimed["nonce"])
            and isinstance(disclose, list)
            and len(disclose) <= _MAX_CLAIMS
            and all(isinstance(c, str) for c in disclose)
            and None not in (issued_at.tzinfo, expires_at.tzinfo)
        )
    except (KeyError, TypeError, ValueError) as e:
        raise bad from e
    if not well_formed:
        raise bad
    return ForwardedFetch(
        exchange=claimed["exchange"], audience=claimed["audience"],
        department=claimed["department"], officer=officer, purpose=claimed["purpose"],
        case_id=claimed["case_id"], holder_id=claimed["holder_id"],
        licence_type=claimed["licence_type"], disclose=tuple(disclose),
        nonce=claimed["nonce"], issued_at=issued_at, expires_at=expires_at,
    )  # fmt: skip


class LicenceFetchForwarding:
    """Both sides of a licence fetched from a peer; see the module docstring."""

    def __init__(
        self,
        *,
        trust: PeerTrust,
        links: PeerLinks,
        licences: PeerLicences,
        access_log: AccessLog,
        hasher: SubjectHasher,
        signing: NodeSigning,
        node_name: str,
        clock: Clock,
        request_seconds: float,
        first_use: Callable[[Peer, str, datetime], Awaitable[bool]],
        offer: CatalogueOffer,
        registry: LicenceTypeRegistry,
        nonce: Callable[[], str] = lambda: secrets.token_hex(16),
    ) -> None:
        """``offer``: a licence is fetched by a peer only from a licence dataset our
        issuer offers that peer (``federated``), as for a forwarded query."""
        self._offer = offer
        self._registry = registry
        self._trust = trust
        self._links = links
        self._licences = licences
        self._log = access_log
        self._recorder = AccessRecorder(node_name, hasher)
        self._signing = signing
        self._clock = clock
        self._lifetime = timedelta(seconds=request_seconds)
        self._first_use = first_use
        self._nonce = nonce
        self.approval_fetch: ApprovalFetch | None = None
        """The owner's side: our approval fetch (set once licensing is up)."""

    # -- the calling side ---------------------------------------------------------------

    async def fetch(
        self,
        caller: Caller,
        *,
        purpose: str,
        case_id: str,
        disclose: Sequence[str],
        holder_id: str,
        licence_type: str,
    ) -> FetchedElsewhere:
        """The applicant's valid licence of ``licence_type`` from the first active peer
        that holds one and lets us have it. Raises LicenceNotFound (no peer has one),
        or the last refusal a peer gave (its reason: GRANT_REQUIRED, ...)."""
        refusal: TongbanError | None = None
        for peer in sorted(self._trust.peers(), key=lambda p: p.name):
            if not peer.active:
                continue
            try:
                return await self._ask(
                    peer, caller, purpose=purpose, case_id=case_id, disclose=disclose,
                    holder_id=holder_id, licence_type=licence_type,
                )  # fmt: skip
            except LicenceNotFound:
                continue
            except TongbanError as e:
                refusal = e
        if refusal is not None:
            raise refusal
        raise LicenceNotFound(
            f"No valid {licence_type} of {holder_id} is held here or in a peer exchange."
        )

    async def _ask(
        self, peer: Peer, caller: Caller, *, purpose: str, case_id: str,
        disclose: Sequence[str], holder_id: str, licence_type: str,
    ) -> FetchedElsewhere:  # fmt: skip
        now = self._clock.now()

        async def log(action: str, decision: Outcome, reason: str | None) -> None:
            await self._log.append(
                self._recorder.entries(
                    [holder_id], at=self._clock.now(), department=caller.department.code,
                    officer=caller.officer_id, action=action, decision=decision,
                    reason=reason, dataset=f"{peer.name}:licence_{licence_type}"[:200],
                    fields=disclose, purpose=purpose, case_id=case_id,
                )
            )  # fmt: skip

        await log("licence-fetch.forward", "allowed", f"peer:{peer.name}")
        request = ForwardedFetch(
            exchange=self._trust.own_fingerprint.hex(), audience=peer.ca_fingerprint.hex(),
            department=caller.department.code, officer=caller.officer_id, purpose=purpose,
            case_id=case_id, holder_id=holder_id, licence_type=licence_type,
            disclose=tuple(disclose), nonce=self._nonce(), issued_at=now,
            expires_at=now + self._lifetime,
        )  # fmt: skip
        token = sign_claims(request.payload(), self._signing, FETCH_TYPE)
        try:
            answer: federation_pb2.ForwardLicenceFetchResponse = await self._links.call(
                peer,
                f"a licence fetch of {licence_type}",
                lambda timeout: self._links.stub(peer).ForwardLicenceFetch(
                    federation_pb2.ForwardLicenceFetchRequest(request=token), timeout=timeout
                ),
            )
        except PeerRefusal as e:
            index = e.metadata.get("log_index")
            where = f"; log:{index}" if index else ""
            await log("licence-fetch.receipt", "denied", f"{e.reason}; peer:{peer.name}{where}")
            if e.reason == LicenceNotFound.reason:
                raise LicenceNotFound(e.message) from e
            raise
        except TongbanError as e:
            await log("licence-fetch.receipt", "denied", f"{e.reason}; peer:{peer.name}")
            raise
        # Believed only once it verifies with the peer's trust list, under its root.
        try:
            trust_list = await self._licences.trust_list(peer)
        except TongbanError as e:
            await log("licence-fetch.receipt", "denied", f"{e.reason}; peer:{peer.name}")
            raise
        verified = await self._licences.verify_with(peer, trust_list, answer.presentation)
        if not verified.verified or verified.licence_number != answer.number:
            await log(
                "licence-fetch.receipt", "denied",
                f"{verified.reason or 'LICENCE_MISMATCH'}; peer:{peer.name}",
            )  # fmt: skip
            raise PeerSignatureMismatch(
                f"The licence peer {peer.name} sent does not verify with its trust list "
                f"({verified.reason or 'another licence than it named'}); it was not used.",
                metadata={"peer": peer.name},
            )
        await log("licence-fetch.receipt", "allowed", f"peer:{peer.name}; log:{answer.log_index}")
        return FetchedElsewhere(
            peer=peer.name, number=answer.number, licence_type=verified.licence_type,
            issuer=verified.issuer, claims=dict(verified.claims),
            presentation=answer.presentation, log_index=answer.log_index,
        )  # fmt: skip

    # -- the holder's exchange ----------------------------------------------------------

    async def answer(self, peer: Peer, token: str) -> federation_pb2.ForwardLicenceFetchResponse:
        """Decide and answer a licence fetch peer ``peer`` forwarded, as our approval fetch
        for ``<peer>/<department>`` (logged there), without a holder's code."""
        now = self._clock.now()
        claimed = verify_peer_signed(token, peer=peer, typ=FETCH_TYPE, now=now)
        request = _parse(claimed)
        await admit(
            request, peer=peer, own_exchange=self._trust.own_fingerprint, now=now,
            what="licence fetch", first_use=self._first_use,
        )  # fmt: skip
        assert self.approval_fetch is not None  # set by the node before it serves
        caller = remote_department(peer.name, request.department)
        kind = self._registry.get(request.licence_type)  # LicenceTypeUnknown
        offered = [
            code
            for code in (dataset_code(issuer, kind) for issuer in kind.issuers)
            if await self._offer.offers(peer.name, code) is not None
        ]
        if not offered:
            indices = await self._log.append(
                self._recorder.entries(
                    [request.holder_id], at=now, department=caller, officer=request.officer,
                    action="licence-fetch", decision="denied", reason=LicenceNotFound.reason,
                    dataset=None, fields=request.disclose, purpose=request.purpose,
                    case_id=request.case_id,
                )
            )  # fmt: skip
            raise LicenceNotFound(
                f"This exchange offers peer {peer.name} no licences of type "
                f"{request.licence_type}.",
                metadata={"log_index": str(indices.start)},
            )
        logged: list[range] = []
        try:
            view, presentation = await self.approval_fetch.fetch_as(
                caller, request.officer,
                purpose=request.purpose, case_id=request.case_id, disclose=request.disclose,
                holder_id=request.holder_id, licence_type=request.licence_type,
                on_logged=logged.append,
            )  # fmt: skip
        except TongbanError as e:
            if logged and logged[-1]:
                e.metadata["log_index"] = str(logged[-1].start)  # the refusal's entry
            raise
        return federation_pb2.ForwardLicenceFetchResponse(
            number=view.number,
            presentation=presentation,
            log_index=logged[-1].start if logged and logged[-1] else 0,
        )
