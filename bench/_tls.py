"""Throwaway keys for the echo server over mutual TLS (``bench._echo_server --tls``).

A P-256 root, a server certificate for ``SERVER_NAME`` and a client certificate, all valid
from an hour ago for a day, as the node's own bundles are P-256 and ECDSA: the handshake
and record layer then cost what the node's do, so the echo over mutual TLS isolates TLS.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["SERVER_NAME", "EchoPki", "throwaway_pki"]

SERVER_NAME = "echo.bench.invalid"


@dataclass(frozen=True)
class EchoPki:
    directory: Path
    """Holds ``server.key``, ``server.pem`` and ``ca.pem`` for the echo server."""
    client: grpc.ChannelCredentials


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def throwaway_pki(directory: Path) -> EchoPki:
    """Write the echo server's keys into ``directory``; return them with the client's."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("bench echo root"))
        .issuer_name(_name("bench echo root"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(common_name: str, dns_name: str | None) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=1))
        )
        if dns_name is not None:
            san = x509.SubjectAlternativeName([x509.DNSName(dns_name)])
            builder = builder.add_extension(san, critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        return _pem_key(key), cert.public_bytes(serialization.Encoding.PEM)

    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    server_key, server_pem = leaf("bench echo server", SERVER_NAME)
    client_key, client_pem = leaf("bench echo client", None)
    (directory / "ca.pem").write_bytes(ca_pem)
    (directory / "server.pem").write_bytes(server_pem)
    (directory / "server.key").write_bytes(server_key)
    (directory / "server.key").chmod(0o600)
    client = grpc.ssl_channel_credentials(ca_pem, client_key, client_pem)
    return EchoPki(directory, client)
