from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc import jws
from joserfc.jwk import ECKey

from tongban.signing import (
    LocalSigner,
    PublicKey,
    SignatureInvalid,
    SigningError,
    create_root_ca,
    generate_private_key,
    sign_jws,
    sign_jwt,
    verify_jws,
    verify_jwt,
)

NOW = datetime(2025, 6, 1, 8, 0, tzinfo=UTC)
ES256 = LocalSigner(generate_private_key("P-256"))
EDDSA = LocalSigner(generate_private_key("Ed25519"))
SIGNERS = {"ES256": ES256, "EdDSA": EDDSA}
PAYLOAD = "营业执照 licence #42".encode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _forge(header: dict[str, object], payload: bytes, signature: bytes) -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(payload)}.{_b64(signature)}"


@pytest.mark.parametrize("alg", ["ES256", "EdDSA"])
def test_round_trip(alg: str) -> None:
    signer = SIGNERS[alg]
    ca = create_root_ca(common_name="r", key=generate_private_key(), now=NOW)
    x5c = [base64.b64encode(ca.public_bytes(serialization.Encoding.DER)).decode()] * 2
    token = sign_jws(PAYLOAD, signer, headers={"kid": "dept-1", "typ": "licence+jws", "x5c": x5c})

    verified = verify_jws(token, signer.public_key())
    assert verified.payload == PAYLOAD
    assert verified.header == {"alg": alg, "kid": "dept-1", "typ": "licence+jws", "x5c": x5c}
    with pytest.raises(TypeError):
        verified.header["alg"] = "none"  # type: ignore[index]


def test_es256_is_standard_jose() -> None:
    """Check the signature with cryptography directly, not with our own verifier."""
    token = sign_jws(PAYLOAD, ES256)
    header, payload, signature = token.split(".")
    assert json.loads(_unb64(header)) == {"alg": "ES256"}
    assert _unb64(payload) == PAYLOAD
    raw = _unb64(signature)
    assert len(raw) == 64
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    public_key = ES256.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    public_key.verify(der, f"{header}.{payload}".encode(), ec.ECDSA(hashes.SHA256()))


def test_accepts_tokens_made_by_joserfc() -> None:
    key = ECKey.import_key(
        ES256.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    token = jws.serialize_compact({"alg": "ES256", "kid": "k"}, PAYLOAD, key, algorithms=["ES256"])
    assert verify_jws(token, ES256.public_key()).payload == PAYLOAD


@pytest.mark.parametrize("alg", ["ES256", "EdDSA"])
def test_detached(alg: str) -> None:
    signer = SIGNERS[alg]
    token = sign_jws(PAYLOAD, signer, detached=True)
    _header, middle, _ = token.split(".")
    assert middle == ""
    assert verify_jws(token, signer.public_key(), detached_payload=PAYLOAD).payload == PAYLOAD
    with pytest.raises(SignatureInvalid):
        verify_jws(token, signer.public_key(), detached_payload=PAYLOAD + b"!")
    with pytest.raises(SignatureInvalid):
        verify_jws(token, signer.public_key())  # verifies as an empty payload: mismatch
    attached = sign_jws(PAYLOAD, signer)
    with pytest.raises(SignatureInvalid, match="carries a payload"):
        verify_jws(attached, signer.public_key(), detached_payload=PAYLOAD)


def test_empty_payload() -> None:
    token = sign_jws(b"", ES256, detached=True)
    assert verify_jws(token, ES256.public_key(), detached_payload=b"").payload == b""
    assert verify_jws(token, ES256.public_key()).payload == b""


TOKENS = {alg: sign_jws(PAYLOAD, signer, headers={"kid": "k1"}) for alg, signer in SIGNERS.items()}


@settings(max_examples=150, deadline=None)
@given(
    alg=st.sampled_from(["ES256", "EdDSA"]),
    part=st.integers(0, 2),
    position=st.integers(0, 10_000),
    bit=st.integers(0, 7),
)
def test_flipped_bit_in_any_part_fails(alg: str, part: int, position: int, bit: int) -> None:
    parts = TOKENS[alg].split(".")
    raw = bytearray(_unb64(parts[part]))
    raw[position % len(raw)] ^= 1 << bit
    parts[part] = _b64(bytes(raw))
    with pytest.raises(SignatureInvalid):
        verify_jws(".".join(parts), SIGNERS[alg].public_key())


@settings(max_examples=150, deadline=None)
@given(
    alg=st.sampled_from(["ES256", "EdDSA"]), position=st.integers(0, 10_000), bit=st.integers(0, 7)
)
def test_flipped_bit_in_token_text_fails(alg: str, position: int, bit: int) -> None:
    """Also catches non-canonical base64 (trailing bits) that decodes to the same bytes."""
    text = bytearray(TOKENS[alg].encode())
    text[position % len(text)] ^= 1 << bit
    with pytest.raises(SignatureInvalid):
        verify_jws(text.decode("latin-1"), SIGNERS[alg].public_key())


def test_detached_payload_flip_fails() -> None:
    token = sign_jws(PAYLOAD, EDDSA, detached=True)
    for i in range(len(PAYLOAD)):
        tampered = bytearray(PAYLOAD)
        tampered[i] ^= 0x01
        with pytest.raises(SignatureInvalid):
            verify_jws(token, EDDSA.public_key(), detached_payload=bytes(tampered))


def test_alg_none_is_refused() -> None:
    token = _forge({"alg": "none"}, PAYLOAD, b"")
    with pytest.raises(SignatureInvalid, match="'none'"):
        verify_jws(token, ES256.public_key())


def test_hmac_with_public_key_as_secret_is_refused() -> None:
    """The classic algorithm-confusion attack."""
    secret = ES256.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header, payload = _b64(b'{"alg":"HS256"}'), _b64(PAYLOAD)
    mac = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    with pytest.raises(SignatureInvalid, match="'HS256'"):
        verify_jws(f"{header}.{payload}.{_b64(mac)}", ES256.public_key())


def _raw(header: bytes, payload: str = _b64(b"x")) -> str:
    return f"{_b64(header)}.{payload}.{_b64(bytes(64))}"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "a.b",
        "a.b.c.d",
        "!!!.e30.AAAA",
        _raw(b"not json"),
        _raw(b"[1]"),
        _raw(b"{}"),
        _raw(b'{"alg":7}'),
        _raw(b'{"alg":"ES256","b64":false,"crit":["b64"]}', payload="x"),
        _raw(b'{"alg":"ES256"}'),
        _raw(b'{"alg":"ES256","kid":5}'),
        _raw(b'{"alg":"ES256","crit":["exp"],"exp":1}'),
    ],
)
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(SignatureInvalid) as info:
        verify_jws(token, ES256.public_key())
    assert info.value.reason == "SIGNATURE_INVALID"
    assert info.value.status == "INVALID_ARGUMENT"


def test_other_key_is_refused() -> None:
    token = sign_jws(PAYLOAD, ES256)
    with pytest.raises(SignatureInvalid, match="failed verification"):
        verify_jws(token, generate_private_key("P-256").public_key())


@pytest.mark.parametrize(("alg", "other"), [("ES256", "EdDSA"), ("EdDSA", "ES256")])
def test_key_type_mismatch_is_refused(alg: str, other: str) -> None:
    token = sign_jws(PAYLOAD, SIGNERS[alg])
    with pytest.raises(SignatureInvalid):
        verify_jws(token, SIGNERS[other].public_key())


def test_algorithms_restrict_what_is_accepted() -> None:
    token = sign_jws(PAYLOAD, EDDSA)
    with pytest.raises(SignatureInvalid, match="not allowed"):
        verify_jws(token, EDDSA.public_key(), algorithms=["ES256"])
    assert verify_jws(token, EDDSA.public_key(), algorithms=["EdDSA"]).payload == PAYLOAD
    with pytest.raises(ValueError, match="non-empty subset"):
        verify_jws(token, EDDSA.public_key(), algorithms=[])
    with pytest.raises(ValueError, match="non-empty subset"):
        verify_jws(token, EDDSA.public_key(), algorithms="EdDSA")


@pytest.mark.parametrize("header", ["alg", "b64"])
def test_reserved_headers_cannot_be_passed(header: str) -> None:
    with pytest.raises(ValueError, match="set by sign_jws"):
        sign_jws(PAYLOAD, ES256, headers={header: "none"})


def test_ill_typed_header_is_refused_at_signing() -> None:
    with pytest.raises(ValueError, match="Invalid JWS header"):
        sign_jws(PAYLOAD, ES256, headers={"kid": 5})


class _DerSigner:
    """A broken signer that returns DER instead of JOSE r||s (a likely HSM mistake)."""

    algorithm = "ES256"

    def public_key(self) -> PublicKey:
        return ES256.public_key()

    def sign(self, data: bytes) -> bytes:
        return ES256.private_key.sign(data, ec.ECDSA(hashes.SHA256()))  # type: ignore[call-arg]


def test_malformed_signer_output_is_caught() -> None:
    with pytest.raises(SigningError, match="not the 64-byte JOSE form"):
        sign_jws(PAYLOAD, _DerSigner())


@pytest.mark.parametrize("alg", ["ES256", "EdDSA"])
def test_jwt_round_trip(alg: str) -> None:
    claims = {"iss": "exchange", "sub": "dept-1", "exp": NOW + timedelta(hours=1), "n": [1, 2]}
    token = sign_jwt(claims, SIGNERS[alg], headers={"kid": "k"})
    header = json.loads(_unb64(token.split(".")[0]))
    assert header == {"alg": alg, "typ": "JWT", "kid": "k"}
    out = verify_jwt(token, SIGNERS[alg].public_key(), now=NOW)
    assert out == {**claims, "exp": int((NOW + timedelta(hours=1)).timestamp())}


def _jwt_at(**claims: object) -> str:
    return sign_jwt(claims, ES256)


def test_jwt_exp_with_leeway() -> None:
    token = _jwt_at(exp=NOW)
    key = ES256.public_key()
    assert verify_jwt(token, key, now=NOW + timedelta(seconds=59))
    with pytest.raises(SignatureInvalid, match="expired at 2025-06-01T08:00:00"):
        verify_jwt(token, key, now=NOW + timedelta(seconds=60))
    with pytest.raises(SignatureInvalid, match="expired at"):
        verify_jwt(token, key, now=NOW, leeway=timedelta(0))


def test_jwt_nbf_with_leeway() -> None:
    token = _jwt_at(nbf=NOW)
    key = ES256.public_key()
    assert verify_jwt(token, key, now=NOW - timedelta(seconds=60))
    assert verify_jwt(token, key, now=NOW, leeway=timedelta(0))
    with pytest.raises(SignatureInvalid, match="not valid before 2025-06-01T08:00:00"):
        verify_jwt(token, key, now=NOW - timedelta(seconds=61))


def test_jwt_uses_the_injected_clock_only() -> None:
    token = _jwt_at(exp=datetime(2001, 1, 1, tzinfo=UTC))
    assert verify_jwt(token, ES256.public_key(), now=datetime(2000, 1, 1, tzinfo=UTC))


@pytest.mark.parametrize("value", ["tomorrow", True, None, [1], 10**400])
def test_jwt_bad_numeric_date_is_refused(value: object) -> None:
    with pytest.raises(SignatureInvalid, match="not a NumericDate"):
        verify_jwt(_jwt_at(exp=value), ES256.public_key(), now=NOW)


@pytest.mark.parametrize("payload", [b"[1, 2]", b"not json", b'{"exp": NaN}'])
def test_jwt_payload_must_be_a_json_object(payload: bytes) -> None:
    with pytest.raises(SignatureInvalid, match="JWT payload"):
        verify_jwt(sign_jws(payload, ES256), ES256.public_key(), now=NOW)


def test_jwt_refuses_naive_now_and_datetimes() -> None:
    token = _jwt_at(sub="x")
    with pytest.raises(ValueError, match="timezone-aware"):
        verify_jwt(token, ES256.public_key(), now=datetime(2025, 1, 1))  # noqa: DTZ001
    with pytest.raises(ValueError, match="naive"):
        _jwt_at(exp=datetime(2025, 1, 1))  # noqa: DTZ001
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        _jwt_at(blob=b"bytes")


def test_large_payloads_must_be_detached() -> None:
    big = bytes(4 * 1024 * 1024)
    with pytest.raises(ValueError, match="use detached=True"):
        sign_jws(big, ES256)
    token = sign_jws(big, ES256, detached=True)
    assert verify_jws(token, ES256.public_key(), detached_payload=big).payload == big
