"""Peer node signing certificates are checked once per chain and reused only where the check
would give the same answer: the same chain, the same roots, an instant inside every
certificate's validity."""

from __future__ import annotations

import base64
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tongban.exchange.federation.entries import node_signing_certificate
from tongban.signing import CertificateExpired, CertificateInvalid, SystemClock
from tongban.signing.certs import (
    create_issuing_ca,
    create_root_ca,
    issue_node_signing_certificate,
    issue_seal_certificate,
)
from tongban.signing.keys import generate_private_key

NOW = SystemClock().now()


def _b64(cert: x509.Certificate) -> str:
    return base64.b64encode(cert.public_bytes(Encoding.DER)).decode()


def _exchange() -> tuple[x509.Certificate, x509.Certificate, x509.Certificate]:
    """A root, its issuing CA and a node signing certificate valid for 10 days."""
    root_key, issuing_key = generate_private_key(), generate_private_key()
    root = create_root_ca(common_name="Root", key=root_key, now=NOW, path_length=1)
    issuing = create_issuing_ca(
        root_cert=root, root_key=root_key, common_name="Issuing",
        public_key=issuing_key.public_key(), now=NOW,
    )  # fmt: skip
    node = issue_node_signing_certificate(
        ca_cert=issuing, ca_key=issuing_key, node_name="province-1",
        public_key=generate_private_key().public_key(), now=NOW, validity=timedelta(days=10),
    )  # fmt: skip
    return root, issuing, node


def test_a_chain_is_reused_only_within_its_validity_and_under_its_roots() -> None:
    root, issuing, node = _exchange()
    header = {"x5c": [_b64(node), _b64(issuing)]}
    assert node_signing_certificate(header, roots=[root], now=NOW) == node
    assert node_signing_certificate(header, roots=[root], now=NOW + timedelta(days=1)) == node
    # Checked before, but past the leaf's notAfter: checked again, and refused.
    with pytest.raises(CertificateExpired):
        node_signing_certificate(header, roots=[root], now=NOW + timedelta(days=11))
    # Checked before under its own root; under another root it is checked, and refused.
    other_root, _, _ = _exchange()
    with pytest.raises(CertificateInvalid):
        node_signing_certificate(header, roots=[other_root], now=NOW)


def test_a_chain_that_fails_is_not_remembered_as_good() -> None:
    root, issuing, node = _exchange()
    # Without its issuing CA there is no path; with it there is, and that is no cache hit.
    with pytest.raises(CertificateInvalid):
        node_signing_certificate({"x5c": [_b64(node)]}, roots=[root], now=NOW)
    assert (
        node_signing_certificate({"x5c": [_b64(node), _b64(issuing)]}, roots=[root], now=NOW)
        == node
    )
    with pytest.raises(CertificateInvalid):
        node_signing_certificate({"x5c": [_b64(node)]}, roots=[root], now=NOW)


def test_a_seal_certificate_is_not_a_node_certificate() -> None:
    root_key = generate_private_key()
    root = create_root_ca(common_name="Root", key=root_key, now=NOW)
    seal = issue_seal_certificate(
        ca_cert=root, ca_key=root_key, code="samr", name="市场监督管理局",
        public_key=generate_private_key().public_key(), now=NOW,
    )  # fmt: skip
    for _ in range(2):  # the second time from a warm cache of nothing
        with pytest.raises(ValueError, match="names no exchange node"):
            node_signing_certificate({"x5c": [_b64(seal)]}, roots=[root], now=NOW)
    with pytest.raises(ValueError, match="base64 text"):
        node_signing_certificate({"x5c": [1]}, roots=[root], now=NOW)
