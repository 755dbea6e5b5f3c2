"""Private keys on disk and in memory, and the ``Signer`` seam for JOSE signatures.

Only two key types exist in Tongban: ECDSA P-256 (JOSE ``ES256``) and Ed25519 (JOSE
``EdDSA``). Keys rest on disk as passphrase-encrypted PKCS#8 PEM.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Literal, Protocol

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from tongban.signing.errors import KeyFileInvalid, KeyFileMissing, KeyPassphraseWrong
from tongban.signing.files import write_atomic

__all__ = [
    "KeyAlgorithm",
    "LocalSigner",
    "PrivateKey",
    "PublicKey",
    "Signer",
    "generate_private_key",
    "load_private_key",
    "private_key_pem",
    "public_key_fingerprint",
    "save_private_key",
]

KeyAlgorithm = Literal["P-256", "Ed25519"]
PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey

_PEM_LABEL = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")
_P256_BYTES = 32


def generate_private_key(algorithm: KeyAlgorithm = "P-256") -> PrivateKey:
    """Return a fresh private key; raises ValueError for an unknown algorithm."""
    if algorithm == "P-256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "Ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"Unknown key algorithm {algorithm!r}; use 'P-256' or 'Ed25519'.")


def _key_kind(key: object) -> str | None:
    """Return "P-256" or "Ed25519" for a supported key (private or public), else None."""
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) and isinstance(
        key.curve, ec.SECP256R1
    ):
        return "P-256"
    return None


def _describe(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return f"an EC key on curve {key.curve.name}"
    if isinstance(key, rsa.RSAPrivateKey):
        return f"an RSA-{key.key_size} key"
    return f"a key of type {type(key).__name__}"


def save_private_key(path: Path, key: PrivateKey, passphrase: bytes) -> None:
    """Write ``key`` to ``path`` as passphrase-encrypted PKCS#8 PEM, atomically, mode 0600
    (missing parent directories are created 0700).

    Raises ValueError if the passphrase is empty or the key type is unsupported.
    """
    if not passphrase:
        raise ValueError("Refusing to save a private key with an empty passphrase.")
    if _key_kind(key) is None:
        raise ValueError(f"Unsupported key type: {_describe(key)}; use P-256 or Ed25519.")
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    )
    write_atomic(path, pem, mode=0o600, dir_mode=0o700)


def load_private_key(path: Path, passphrase: bytes) -> PrivateKey:
    """Return the private key stored at ``path`` by ``save_private_key``.

    Raises KeyFileMissing if there is no such file, KeyPassphraseWrong if the passphrase
    does not decrypt it, and KeyFileInvalid if it is unreadable, not an encrypted PKCS#8
    PEM key, or not a P-256 or Ed25519 key.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise KeyFileMissing(
            f"The key file {path} does not exist (create it with `tongban init`, or fix the "
            "configured key path)."
        ) from e
    except OSError as e:
        raise KeyFileInvalid(
            f"The key file {path} could not be read ({e.strerror}); check its path, owner and mode."
        ) from e

    label = _PEM_LABEL.search(data)
    if label is None or label.group(1) != b"ENCRYPTED PRIVATE KEY":
        found = "no PEM data" if label is None else f"a {label.group(1).decode()} block"
        raise KeyFileInvalid(
            f"The key file {path} is not a passphrase-encrypted PKCS#8 PEM private key "
            f"(found {found}); replace it with a key written by `tongban init`."
        )
    if not passphrase:
        raise KeyPassphraseWrong(
            f"The key file {path} could not be decrypted: the passphrase is empty (set "
            "TONGBAN_KEY_PASSPHRASE to the passphrase used at `tongban init`)."
        )
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except ValueError as e:
        # A wrong passphrase and a damaged ciphertext are indistinguishable here
        # (both fail the decryption padding check), and the passphrase is far likelier.
        raise KeyPassphraseWrong(
            f"The key file {path} could not be decrypted: the passphrase is wrong (set "
            "TONGBAN_KEY_PASSPHRASE to the passphrase used at `tongban init`)."
        ) from e
    except UnsupportedAlgorithm as e:
        raise KeyFileInvalid(
            f"The key file {path} is encrypted with an algorithm this build cannot "
            "decrypt; re-create it with `tongban init`."
        ) from e

    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey) and _key_kind(key) == "P-256":
        return key
    raise KeyFileInvalid(
        f"The key file {path} holds {_describe(key)}, but Tongban only uses P-256 and "
        "Ed25519 keys; re-create it with `tongban init`."
    )


def private_key_pem(key: PrivateKey) -> bytes:
    """Return ``key`` as unencrypted PKCS#8 PEM, for in-memory use only (grpc needs it).
    Never write the result to disk."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_key_fingerprint(key: PublicKey) -> bytes:
    """Return the SHA-256 digest (32 bytes) of the DER SubjectPublicKeyInfo of ``key``."""
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).digest()


class Signer(Protocol):
    """Something that signs with a private key it may not reveal (an in-memory key
    today, a PKCS#11 HSM later)."""

    @property
    def algorithm(self) -> str:
        """The JOSE ``alg`` this signer produces: "ES256" or "EdDSA"."""
        ...

    def public_key(self) -> PublicKey:
        """Return the public half of the signing key."""
        ...

    def sign(self, data: bytes) -> bytes:
        """Return the JOSE-format signature of ``data`` (ES256: raw r||s, 64 bytes;
        EdDSA: 64 bytes). Raises SigningError if the signer fails."""
        ...


class LocalSigner:
    """A ``Signer`` over a private key held in this process's memory."""

    def __init__(self, key: PrivateKey) -> None:
        """Wrap ``key``; raises ValueError unless it is a P-256 or Ed25519 key."""
        kind = _key_kind(key)
        if kind is None:
            raise ValueError(f"Unsupported key type: {_describe(key)}; use P-256 or Ed25519.")
        self._key = key
        self._algorithm = "ES256" if kind == "P-256" else "EdDSA"

    @property
    def algorithm(self) -> str:
        """The JOSE ``alg``: "ES256" for P-256, "EdDSA" for Ed25519."""
        return self._algorithm

    @property
    def private_key(self) -> PrivateKey:
        """The wrapped key, for code (such as X.509 issuance) that needs the object."""
        return self._key

    def public_key(self) -> PublicKey:
        """Return the public half of the key."""
        return self._key.public_key()

    def sign(self, data: bytes) -> bytes:
        """Return the JOSE-format signature of ``data`` (64 bytes for both algorithms)."""
        if isinstance(self._key, ed25519.Ed25519PrivateKey):
            return self._key.sign(data)
        # cryptography returns DER; JOSE (RFC 7518 section 3.4) wants fixed-width r||s.
        r, s = decode_dss_signature(self._key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(_P256_BYTES, "big") + s.to_bytes(_P256_BYTES, "big")
