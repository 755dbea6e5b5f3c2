"""Keys in a PKCS#11 token (an HSM; SoftHSM2 in tests), and the ``Signer`` over them.

A key made or imported here is a token object marked sensitive and not extractable: the
token signs with it and never hands it out, so nothing in Tongban can sign outside it.
Keys are named by their label (``CKA_LABEL``), unique per token.

Why ``python-pkcs11`` rather than ``PyKCS11``: it is typed, its objects map PKCS#11's onto
Python's (sessions as context managers, errors as exception classes, which the messages
below depend on), and pyHanko's own PKCS#11 signer is built on it, so PDF seals can use
the same session later.

Mechanisms are the ones every token offers: ``CKM_ECDSA`` over a SHA-256 digest taken
here (ES256; the token sees 32 bytes, whatever the payload) and ``CKM_EDDSA`` for Ed25519.
SM2 has no standard PKCS#11 mechanism (vendors define their own, SoftHSM2 none), so SM2
keys stay in files; see ``docs/keys.md``.

Configuration (``TokenConfig.from_environment``): ``TONGBAN_PKCS11_MODULE`` (the module's
path), ``TONGBAN_PKCS11_TOKEN`` (the token label), and the user PIN in
``TONGBAN_PKCS11_PIN_FILE`` (preferred: the PIN stays out of process listings and
environment dumps) or ``TONGBAN_PKCS11_PIN``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pkcs11
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11
from pkcs11.util.ec import encode_named_curve_parameters

from tongban.signing.errors import (
    SigningError,
    TokenKeyExists,
    TokenKeyMissing,
    TokenPinWrong,
    TokenUnavailable,
)
from tongban.signing.keys import KeyAlgorithm, PrivateKey, PublicKey, public_key_fingerprint

if TYPE_CHECKING:
    from pkcs11._pkcs11 import lib as Library

__all__ = ["Token", "TokenConfig", "TokenKey", "TokenSigner"]

_P256_OID = "1.2.840.10045.3.1.7"
_ED25519_OID = "1.3.101.112"


@dataclass(frozen=True)
class TokenConfig:
    """Where the token is and how to log in to it."""

    module: Path
    token_label: str
    pin: str = field(repr=False)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> TokenConfig | None:
        """The token named by ``TONGBAN_PKCS11_*``, or None when no module is configured.

        Raises TokenUnavailable if the module is set but the token label or the PIN is not,
        or the PIN file cannot be read.
        """
        env = os.environ if environ is None else environ
        module = env.get("TONGBAN_PKCS11_MODULE", "").strip()
        if not module:
            return None
        label = env.get("TONGBAN_PKCS11_TOKEN", "").strip()
        if not label:
            raise TokenUnavailable(
                "TONGBAN_PKCS11_MODULE is set but TONGBAN_PKCS11_TOKEN is not; set it to the "
                "token's label (softhsm2-util --show-slots lists them)."
            )
        pin_file = env.get("TONGBAN_PKCS11_PIN_FILE", "").strip()
        if pin_file:
            try:
                pin = Path(pin_file).read_text(encoding="utf-8").strip()
            except OSError as e:
                raise TokenUnavailable(
                    f"The PIN file {pin_file} could not be read ({e.strerror}); check "
                    "TONGBAN_PKCS11_PIN_FILE."
                ) from e
        else:
            pin = env.get("TONGBAN_PKCS11_PIN", "")
        if not pin:
            raise TokenUnavailable(
                "No PIN for the PKCS#11 token: set TONGBAN_PKCS11_PIN_FILE to a file holding "
                "the user PIN (or TONGBAN_PKCS11_PIN)."
            )
        return cls(Path(module), label, pin)


@dataclass(frozen=True)
class TokenKey:
    """A key pair on the token, as listed: its label, algorithm and public half."""

    label: str
    algorithm: KeyAlgorithm
    public_key: PublicKey

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the DER SubjectPublicKeyInfo, hex (as for keys in files)."""
        return public_key_fingerprint(self.public_key).hex()


def _library(module: Path) -> Library:
    """The loaded module (python-pkcs11 keeps one per path: C_Initialize is per process)."""
    if not module.is_file():
        raise TokenUnavailable(
            f"The PKCS#11 module {module} does not exist; set TONGBAN_PKCS11_MODULE to the "
            "token's library (for SoftHSM2: /usr/lib/softhsm/libsofthsm2.so)."
        )
    try:
        return pkcs11.lib(str(module))
    except (p11.PKCS11Error, OSError, RuntimeError) as e:
        raise TokenUnavailable(
            f"The PKCS#11 module {module} could not be loaded ({type(e).__name__}: {e}); "
            "check that it is a PKCS#11 library for this machine."
        ) from e


@dataclass
class _Login:
    """One process's logged-in session with one token, shared by every ``Token`` handle:
    PKCS#11 keeps the login per application, so a second C_Login fails and a C_Logout by
    one handle would log every other out."""

    session: Any
    pin_digest: bytes
    lock: threading.Lock
    handles: int


_LOGINS: dict[tuple[str, str], _Login] = {}
_LOGINS_LOCK = threading.Lock()


def _pin_digest(pin: str) -> bytes:
    return hashlib.sha256(pin.encode()).digest()


def _log_in(config: TokenConfig) -> Any:
    lib = _library(config.module)
    try:
        token = lib.get_token(token_label=config.token_label)
    except p11.NoSuchToken as e:
        raise TokenUnavailable(
            f"No token labelled {config.token_label!r} in {config.module}; check "
            "TONGBAN_PKCS11_TOKEN (softhsm2-util --show-slots lists the labels)."
        ) from e
    except p11.MultipleTokensReturned as e:
        raise TokenUnavailable(
            f"More than one token is labelled {config.token_label!r} in {config.module}; "
            "give each token a distinct label."
        ) from e
    except p11.PKCS11Error as e:
        raise TokenUnavailable(f"The PKCS#11 module {config.module} failed: {e!r}.") from e
    try:
        return token.open(user_pin=config.pin, rw=True)
    except p11.PinIncorrect as e:
        raise _wrong_pin(config) from e
    except p11.PinLocked as e:
        raise TokenPinWrong(
            f"The user PIN of token {config.token_label!r} is locked after too many "
            "wrong tries; the token's security officer must reset it."
        ) from e
    except p11.PKCS11Error as e:
        raise TokenUnavailable(f"Could not log in to token {config.token_label!r}: {e!r}.") from e


def _wrong_pin(config: TokenConfig) -> TokenPinWrong:
    return TokenPinWrong(
        f"The PIN for token {config.token_label!r} is wrong; check TONGBAN_PKCS11_PIN_FILE "
        "(repeated failures lock the token)."
    )


class Token:
    """A logged-in handle on one token. Use as a context manager or ``close()``.

    Handles on the same token in one process share one session (see ``_Login``); the
    session is closed with the last handle. A handle opened while another is logged in
    must still give the same PIN. PKCS#11 forbids concurrent calls on a session, so calls
    are serialised by a lock (signing is fast next to everything else a licence costs;
    ``bench keys`` measures it).
    """

    def __init__(self, config: TokenConfig) -> None:
        """Open the token and log in. Raises TokenUnavailable (module or token missing,
        token not initialised) or TokenPinWrong (wrong or locked PIN)."""
        key = (str(config.module), config.token_label)
        digest = _pin_digest(config.pin)
        with _LOGINS_LOCK:
            login = _LOGINS.get(key)
            if login is None:
                login = _Login(_log_in(config), digest, threading.Lock(), 0)
                _LOGINS[key] = login
            elif not hmac.compare_digest(login.pin_digest, digest):
                raise _wrong_pin(config)
            login.handles += 1
        self._key = key
        self._login: _Login | None = login
        self._session = login.session
        self._lock = login.lock
        self.label = config.token_label

    def __enter__(self) -> Token:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Let go of the session; the last handle logs out and closes it (signers made
        from it then stop working). Idempotent."""
        with _LOGINS_LOCK:
            login, self._login = self._login, None
            if login is None:
                return
            login.handles -= 1
            if login.handles == 0:
                _LOGINS.pop(self._key, None)
                with login.lock:
                    login.session.close()

    def _private(self, label: str) -> Any:
        try:
            return self._session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=label)
        except p11.NoSuchKey as e:
            raise TokenKeyMissing(
                f"Token {self.label!r} holds no private key labelled {label!r}; "
                "`tongban key list` shows the labels."
            ) from e
        except p11.MultipleObjectsReturned as e:
            raise TokenKeyMissing(
                f"Token {self.label!r} holds more than one key labelled {label!r}; "
                "labels must be unique."
            ) from e

    def _exists(self, label: str) -> bool:
        found = self._session.get_objects(
            {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: label}
        )
        return len(list(found)) > 0

    def generate(self, label: str, algorithm: KeyAlgorithm = "P-256") -> TokenKey:
        """Make a key pair on the token: private half sensitive and non-extractable.
        Raises TokenKeyExists if ``label`` is taken, ValueError for an empty label."""
        if not label or len(label) > 64:
            raise ValueError("A key label is 1-64 characters.")
        with self._lock:
            if self._exists(label):
                raise TokenKeyExists(f"Token {self.label!r} already holds a key {label!r}.")
            oid = _P256_OID if algorithm == "P-256" else _ED25519_OID
            key_type = KeyType.EC if algorithm == "P-256" else KeyType.EC_EDWARDS
            mechanism = (
                Mechanism.EC_KEY_PAIR_GEN
                if algorithm == "P-256"
                else Mechanism.EC_EDWARDS_KEY_PAIR_GEN
            )
            params = self._session.create_domain_parameters(
                key_type, {Attribute.EC_PARAMS: encode_named_curve_parameters(oid)}, local=True
            )
            try:
                public, _ = params.generate_keypair(
                    store=True,
                    label=label,
                    mechanism=mechanism,
                    public_template={Attribute.VERIFY: True},
                    private_template={
                        Attribute.SENSITIVE: True,
                        Attribute.EXTRACTABLE: False,
                        Attribute.SIGN: True,
                    },
                )
            except p11.PKCS11Error as e:
                raise SigningError(
                    f"Token {self.label!r} could not make a {algorithm} key: {e!r}."
                ) from e
            return TokenKey(label, algorithm, _public_key(public, algorithm))

    def import_key(self, label: str, key: PrivateKey) -> TokenKey:
        """Copy a P-256 or Ed25519 key into the token as a sensitive, non-extractable
        object (the caller then deletes its file). Raises TokenKeyExists if ``label`` is
        taken."""
        if not label or len(label) > 64:
            raise ValueError("A key label is 1-64 characters.")
        public_key = key.public_key()
        if isinstance(key, ed25519.Ed25519PrivateKey):
            algorithm: KeyAlgorithm = "Ed25519"
            key_type, oid = KeyType.EC_EDWARDS, _ED25519_OID
            value = key.private_bytes(
                serialization.Encoding.Raw,
                serialization.PrivateFormat.Raw,
                serialization.NoEncryption(),
            )
            point = public_key.public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
        else:
            algorithm, key_type, oid = "P-256", KeyType.EC, _P256_OID
            value = key.private_numbers().private_value.to_bytes(32, "big")
            point = public_key.public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
        params = encode_named_curve_parameters(oid)
        # CKA_EC_POINT is a DER OCTET STRING around the point (PKCS#11 v2.40 section 2.3.3).
        der_point = bytes([0x04, len(point)]) + point
        with self._lock:
            if self._exists(label):
                raise TokenKeyExists(f"Token {self.label!r} already holds a key {label!r}.")
            common = {Attribute.TOKEN: True, Attribute.LABEL: label, Attribute.KEY_TYPE: key_type}
            try:
                self._session.create_object(
                    {
                        **common,
                        Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                        Attribute.PRIVATE: True,
                        Attribute.SENSITIVE: True,
                        Attribute.EXTRACTABLE: False,
                        Attribute.SIGN: True,
                        Attribute.EC_PARAMS: params,
                        Attribute.VALUE: value,
                    }
                )
                self._session.create_object(
                    {
                        **common,
                        Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                        Attribute.VERIFY: True,
                        Attribute.EC_PARAMS: params,
                        Attribute.EC_POINT: der_point,
                    }
                )
            except p11.PKCS11Error as e:
                raise SigningError(
                    f"Token {self.label!r} refused to import the {algorithm} key: {e!r}."
                ) from e
        return TokenKey(label, algorithm, public_key)

    def relabel(self, label: str, new_label: str) -> None:
        """Give the key pair ``label`` the label ``new_label`` (both halves). Raises
        TokenKeyMissing if there is no such key, TokenKeyExists if ``new_label`` is taken."""
        if not new_label or len(new_label) > 64:
            raise ValueError("A key label is 1-64 characters.")
        with self._lock:
            if self._exists(new_label):
                raise TokenKeyExists(f"Token {self.label!r} already holds a key {new_label!r}.")
            private = self._private(label)
            public = self._session.get_key(object_class=ObjectClass.PUBLIC_KEY, label=label)
            try:
                # The public half first: a pair half-renamed is found by its private half.
                public[Attribute.LABEL] = new_label
                private[Attribute.LABEL] = new_label
            except p11.PKCS11Error as e:
                raise SigningError(
                    f"Token {self.label!r} refused to relabel {label!r}: {e!r}."
                ) from e

    def key_pairs(self) -> list[TokenKey]:
        """Every key pair on the token (private half present), by label."""
        with self._lock:
            found: list[TokenKey] = []
            # A search must end before the next one starts (PKCS#11: one find per session).
            privates = list(self._session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY}))
            for private in privates:
                algorithm = _algorithm(private)
                label = str(private[Attribute.LABEL])
                if algorithm is None:
                    continue
                public = self._session.get_key(object_class=ObjectClass.PUBLIC_KEY, label=label)
                found.append(TokenKey(label, algorithm, _public_key(public, algorithm)))
        return sorted(found, key=lambda k: k.label)

    def signer(self, label: str) -> TokenSigner:
        """The ``Signer`` for key ``label``. Raises TokenKeyMissing if there is none."""
        with self._lock:
            private = self._private(label)
            algorithm = _algorithm(private)
            if algorithm is None:
                raise TokenKeyMissing(
                    f"The key {label!r} on token {self.label!r} is neither P-256 nor Ed25519."
                )
            public = self._session.get_key(object_class=ObjectClass.PUBLIC_KEY, label=label)
            return TokenSigner(self, private, _public_key(public, algorithm), algorithm)

    def _sign(self, private: Any, data: bytes, algorithm: KeyAlgorithm) -> bytes:
        with self._lock:
            try:
                if algorithm == "P-256":
                    return bytes(
                        private.sign(hashlib.sha256(data).digest(), mechanism=Mechanism.ECDSA)
                    )
                return bytes(private.sign(data, mechanism=Mechanism.EDDSA))
            except p11.PKCS11Error as e:
                raise SigningError(f"Token {self.label!r} failed to sign: {e!r}.") from e


class TokenSigner:
    """A ``Signer`` whose key lives on a token: ES256 (r || s) or EdDSA, as JOSE wants."""

    def __init__(
        self, token: Token, private: Any, public_key: PublicKey, algorithm: KeyAlgorithm
    ) -> None:
        self._token = token
        self._private = private
        self._public_key = public_key
        self._key_algorithm = algorithm
        self.label = str(private[Attribute.LABEL])

    @property
    def algorithm(self) -> str:
        """The JOSE ``alg``: "ES256" for P-256, "EdDSA" for Ed25519."""
        return "ES256" if self._key_algorithm == "P-256" else "EdDSA"

    def public_key(self) -> PublicKey:
        """The public half, read from the token when the signer was made."""
        return self._public_key

    def sign(self, data: bytes) -> bytes:
        """The JOSE-format signature of ``data`` (64 bytes); SigningError if the token fails."""
        signature = self._token._sign(self._private, data, self._key_algorithm)
        if len(signature) != 64:
            raise SigningError(
                f"The token returned a {len(signature)}-byte signature; 64 were expected."
            )
        return signature


def _algorithm(private: Any) -> KeyAlgorithm | None:
    key_type = private.key_type
    if key_type == KeyType.EC:
        params = bytes(private[Attribute.EC_PARAMS])
        return "P-256" if params == encode_named_curve_parameters(_P256_OID) else None
    if key_type == KeyType.EC_EDWARDS:
        return "Ed25519"
    return None


def _public_key(public: Any, algorithm: KeyAlgorithm) -> PublicKey:
    der = bytes(public[Attribute.EC_POINT])
    # An OCTET STRING around the point; some tokens give the bare point.
    point = der[2:] if der[:1] == b"\x04" and der[1] == len(der) - 2 else der
    if algorithm == "P-256":
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    return ed25519.Ed25519PublicKey.from_public_bytes(point)
