"""Errors raised by ``tongban.signing``; each has a stable ``reason`` code."""

from __future__ import annotations

from tongban.errors import TongbanError

__all__ = [
    "CertificateExpired",
    "CertificateInvalid",
    "KeyFileInvalid",
    "KeyFileMissing",
    "KeyPassphraseWrong",
    "SignatureInvalid",
    "SigningError",
    "TokenKeyExists",
    "TokenKeyMissing",
    "TokenPinWrong",
    "TokenUnavailable",
]


class SigningError(TongbanError):
    """A signer failed or misbehaved (e.g. returned a signature of the wrong shape)."""

    reason = "SIGNING_ERROR"
    status = "INTERNAL"


class KeyFileMissing(TongbanError):
    """The private key file does not exist."""

    reason = "KEY_FILE_MISSING"
    status = "FAILED_PRECONDITION"


class KeyFileInvalid(TongbanError):
    """The private key file is unreadable, not an encrypted PKCS#8 PEM key, or of a type
    Tongban does not use (only P-256 and Ed25519 are accepted)."""

    reason = "KEY_FILE_INVALID"
    status = "FAILED_PRECONDITION"


class KeyPassphraseWrong(TongbanError):
    """The private key file could not be decrypted with the given passphrase."""

    reason = "KEY_PASSPHRASE_WRONG"
    status = "FAILED_PRECONDITION"


class CertificateInvalid(TongbanError):
    """A certificate is malformed, does not chain to a trusted root, or is used for a
    purpose it was not issued for."""

    reason = "CERTIFICATE_INVALID"
    status = "UNAUTHENTICATED"


class CertificateExpired(CertificateInvalid):
    """A certificate is outside its validity period (expired or not yet valid)."""

    reason = "CERTIFICATE_EXPIRED"


class SignatureInvalid(TongbanError):
    """A JWS or JWT failed verification: malformed, disallowed algorithm, wrong key, bad
    signature, or outside its ``nbf``/``exp`` window. The message says which check."""

    reason = "SIGNATURE_INVALID"
    status = "INVALID_ARGUMENT"


class TokenUnavailable(TongbanError):
    """The PKCS#11 token cannot be used: its module is missing or fails to load, no token
    has the configured label, or the configuration is incomplete."""

    reason = "TOKEN_UNAVAILABLE"
    status = "FAILED_PRECONDITION"


class TokenPinWrong(TongbanError):
    """The token refused the user PIN (wrong, or locked after too many wrong tries)."""

    reason = "TOKEN_PIN_WRONG"
    status = "FAILED_PRECONDITION"


class TokenKeyMissing(TongbanError):
    """The token holds no (usable) key with the given label."""

    reason = "TOKEN_KEY_MISSING"
    status = "NOT_FOUND"


class TokenKeyExists(TongbanError):
    """The token already holds a key with the label asked for."""

    reason = "TOKEN_KEY_EXISTS"
    status = "ALREADY_EXISTS"
