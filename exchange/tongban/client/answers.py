"""Checking a signed answer: proof of what the exchange answered, verifiable later by
anyone holding the exchange root CA certificate."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any

from cryptography import x509

from tongban.signing.certs import NODE_URI_PREFIX, load_pem_certificates, verify_certificate
from tongban.signing.errors import CertificateInvalid, SignatureInvalid
from tongban.signing.jose import verify_jws
from tongban.signing.sm2_jws import verify_sm2_detached

__all__ = ["verify_answer", "verify_answer_sm2"]


def _header(signature: str) -> dict[str, Any]:
    try:
        protected = signature.split(".", 1)[0]
        header = json.loads(base64.urlsafe_b64decode(protected + "=" * (-len(protected) % 4)))
    except (ValueError, binascii.Error) as e:
        raise SignatureInvalid("The signature is not a compact JWS.") from e
    if not isinstance(header, dict):
        raise SignatureInvalid("The signature's header is not a JSON object.")
    return header


def verify_answer(
    payload: bytes, signature: str, *, ca_pem: bytes, now: datetime
) -> dict[str, Any]:
    """Return the signed answer (parsed canonical JSON) if ``signature`` is a node's valid
    detached JWS over ``payload``, by a node signing certificate issued by the CA in
    ``ca_pem`` and valid at ``now``. Raises SignatureInvalid or CertificateInvalid."""
    chain_b64 = _header(signature).get("x5c")
    if not isinstance(chain_b64, list) or not chain_b64:
        raise SignatureInvalid("The signature carries no x5c certificate chain.")
    try:
        chain = [x509.load_der_x509_certificate(base64.b64decode(c)) for c in chain_b64]
    except (ValueError, TypeError, binascii.Error) as e:
        raise CertificateInvalid("The x5c chain of the signature cannot be parsed.") from e
    roots = load_pem_certificates(ca_pem)
    verify_certificate(chain[0], roots=roots, intermediates=chain[1:], now=now, usage="seal")
    uris = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    if not any(
        u.startswith(NODE_URI_PREFIX)
        for u in uris.get_values_for_type(x509.UniformResourceIdentifier)
    ):
        raise CertificateInvalid("The answer was not signed by an exchange node's certificate.")
    verified = verify_jws(signature, chain[0].public_key(), detached_payload=payload)  # type: ignore[arg-type]
    answer: dict[str, Any] = json.loads(verified.payload)
    return answer


def verify_answer_sm2(
    payload: bytes, signature: str, *, sm2_ca_pem: bytes, now: datetime
) -> dict[str, Any]:
    """Return the signed answer (parsed canonical JSON) if ``signature`` is a node's valid
    SM2 signature over ``payload`` (``Answer.signature_sm2``), by a node certificate that
    the exchange's SM2 root in ``sm2_ca_pem`` issued, valid at ``now``. Raises
    SignatureInvalid or CertificateInvalid."""
    roots = load_pem_certificates(sm2_ca_pem)
    header = verify_sm2_detached(signature, payload, roots=roots, now=now)
    chain = header.get("x5c")
    assert isinstance(chain, list)  # verify_sm2_detached checked it
    leaf = x509.load_der_x509_certificate(base64.b64decode(chain[0]))
    uris = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    if not any(
        u.startswith(NODE_URI_PREFIX)
        for u in uris.get_values_for_type(x509.UniformResourceIdentifier)
    ):
        raise CertificateInvalid("The answer was not signed by an exchange node's certificate.")
    answer: dict[str, Any] = json.loads(payload)
    return answer
