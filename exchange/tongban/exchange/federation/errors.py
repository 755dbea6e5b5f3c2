"""Errors of federation with peer exchanges, each with a stable reason code
(docs/federation.md lists when each is raised)."""

from __future__ import annotations

from tongban.errors import TongbanError
from tongban.licence.errors import VerificationFailed

__all__ = [
    "PeerAnswerUnsigned",
    "PeerCaInvalid",
    "PeerEntryInvalid",
    "PeerExists",
    "PeerIsSelf",
    "PeerLogKeyUnset",
    "PeerNotADepartment",
    "PeerNotOwner",
    "PeerOnly",
    "PeerRequestAltered",
    "PeerRequestExpired",
    "PeerRequestInvalid",
    "PeerRequestReplayed",
    "PeerRouteLoop",
    "PeerSignatureInvalid",
    "PeerSignatureMismatch",
    "PeerSuspended",
    "PeerTooManyHops",
    "PeerTrustListInvalid",
    "PeerUnavailable",
    "PeerUnknown",
]


class PeerExists(TongbanError):
    """A peer of that name, or with that root CA, is already configured."""

    reason = "PEER_EXISTS"
    status = "ALREADY_EXISTS"


class PeerUnknown(TongbanError):
    """No peer of that name (or of the calling certificate's root) is configured."""

    reason = "PEER_UNKNOWN"
    status = "NOT_FOUND"


class PeerIsSelf(TongbanError):
    """The root CA given for a peer is this exchange's own."""

    reason = "PEER_IS_SELF"
    status = "INVALID_ARGUMENT"


class PeerCaInvalid(TongbanError):
    """The file given as a peer's root CA is not one self-signed CA certificate in force."""

    reason = "PEER_CA_INVALID"
    status = "INVALID_ARGUMENT"


class PeerSuspended(TongbanError):
    """The operator suspended this peer."""

    reason = "PEER_SUSPENDED"
    status = "PERMISSION_DENIED"


class PeerNotADepartment(TongbanError):
    """A peer exchange's node called a method meant for our departments."""

    reason = "PEER_NOT_A_DEPARTMENT"
    status = "PERMISSION_DENIED"


class PeerOnly(TongbanError):
    """A department (or a certificate of no peer) called the peer service."""

    reason = "PEER_ONLY"
    status = "PERMISSION_DENIED"


class PeerUnavailable(TongbanError):
    """A peer did not answer in time, or its node could not be reached or trusted."""

    reason = "PEER_UNAVAILABLE"
    status = "UNAVAILABLE"


class PeerSignatureInvalid(TongbanError):
    """Something a peer signed does not verify under a node certificate of its root."""

    reason = "PEER_SIGNATURE_INVALID"
    status = "PERMISSION_DENIED"


class PeerNotOwner(TongbanError):
    """A peer offered a dataset that is not its own departments'."""

    reason = "PEER_NOT_OWNER"
    status = "PERMISSION_DENIED"


class PeerAnswerUnsigned(TongbanError):
    """A signed answer was asked of a peer exchange and what came back is not one: no
    signature, a signature that does not verify under the owner's root, or a signed
    payload that says something else than the answer."""

    reason = "PEER_ANSWER_UNSIGNED"
    status = "FAILED_PRECONDITION"


class PeerEntryInvalid(TongbanError):
    """A catalogue entry a peer offered is malformed."""

    reason = "PEER_ENTRY_INVALID"
    status = "INVALID_ARGUMENT"


class PeerSignatureMismatch(TongbanError):
    """A forwarded request is not signed by a node of the exchange whose node called."""

    reason = "PEER_SIGNATURE_MISMATCH"
    status = "PERMISSION_DENIED"


class PeerRequestReplayed(TongbanError):
    """A forwarded request's nonce was seen before from the same peer."""

    reason = "PEER_REQUEST_REPLAYED"
    status = "PERMISSION_DENIED"


class PeerRequestExpired(TongbanError):
    """A forwarded request arrived outside its time window."""

    reason = "PEER_REQUEST_EXPIRED"
    status = "PERMISSION_DENIED"


class PeerRequestInvalid(TongbanError):
    """A forwarded request is malformed."""

    reason = "PEER_REQUEST_INVALID"
    status = "INVALID_ARGUMENT"


class PeerRouteLoop(TongbanError):
    """A routed request (or entry) passed through this exchange already."""

    reason = "PEER_ROUTE_LOOP"
    status = "FAILED_PRECONDITION"


class PeerTooManyHops(TongbanError):
    """A routed request crossed more links between exchanges than this one carries."""

    reason = "PEER_TOO_MANY_HOPS"
    status = "FAILED_PRECONDITION"


class PeerRequestAltered(TongbanError):
    """A middle exchange's request does not say what the request it embeds says."""

    reason = "PEER_REQUEST_ALTERED"
    status = "PERMISSION_DENIED"


class PeerLogKeyUnset(TongbanError):
    """No log verifier key is pinned for the peer (``tongban peer log-key``)."""

    reason = "PEER_LOG_KEY_UNSET"
    status = "FAILED_PRECONDITION"


class PeerTrustListInvalid(VerificationFailed):
    """A peer's licence trust list does not verify under the peer's root CA as our peer
    registry holds it (bad signature, a chain to another root, malformed, expired)."""

    reason = "PEER_TRUST_LIST_INVALID"
    status = "PERMISSION_DENIED"
    check = "trust-list"
