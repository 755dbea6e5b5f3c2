from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from joserfc import jws
from joserfc.jwk import ECKey

from tongban.exchange.catalogue.subject_ids import (
    SubjectKind,
    uscc_check_character,
    validate_subject_id,
)
from tongban.licence import claimed_status
from tongban.licence.errors import (
    ClaimInvalid,
    DisclosureInvalid,
    LicenceExpired,
    LicenceFormatInvalid,
    LicenceNotYetValid,
    SignatureInvalid,
    SignerUntrusted,
    VerificationFailed,
)
from tongban.licence.sdjwt import (
    MAX_DISCLOSURES,
    MAX_SD_JWT_LENGTH,
    TYP,
    IssuedSdJwt,
    StatusReference,
    VerifiedSdJwt,
    issue_sd_jwt,
    present,
    verify_sd_jwt,
)
from tongban.licence.types import BUSINESS_LICENCE, split_claims, validate_claims
from tongban.signing import (
    LocalSigner,
    PrivateKey,
    create_root_ca,
    generate_private_key,
    issue_department_tls_certificate,
    issue_seal_certificate,
    sign_jws,
)

NOW = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
SETUP = NOW - timedelta(days=30)
CA_KEY = generate_private_key()
CA = create_root_ca(common_name="Test Exchange Root", key=CA_KEY, now=SETUP)
OTHER_CA_KEY = generate_private_key()
OTHER_CA = create_root_ca(common_name="Some Other Root", key=OTHER_CA_KEY, now=SETUP)


def _seal(
    code: str = "samr", *, ca: x509.Certificate = CA, ca_key: PrivateKey = CA_KEY
) -> tuple[LocalSigner, x509.Certificate]:
    key = generate_private_key()
    cert = issue_seal_certificate(
        ca_cert=ca,
        ca_key=ca_key,
        code=code,
        name="县市场监督管理局",
        public_key=key.public_key(),
        now=SETUP,
        validity=timedelta(days=365),
    )
    return LocalSigner(key), cert


SAMR, SAMR_SEAL = _seal()
ISS = "urn:tongban:dept:samr"
USCC = "91330102MA2K8Q7R1" + uscc_check_character("91330102MA2K8Q7R1")
STATUS_URI = "https://exchange.gov.example/status/samr/1"


def _uscc(value: str) -> str:
    return validate_subject_id(SubjectKind.ENTERPRISE, value)


COMPANY = validate_claims(
    BUSINESS_LICENCE,
    {
        "name": "杭州味道餐饮管理有限公司",
        "uscc": USCC,
        "legal_representative": "王晓明",
        "address": "浙江省杭州市上城区解放路88号",
        "registered_capital": Decimal("50.00"),
        "entity_type": "有限责任公司（自然人独资）",
        "business_scope": "餐饮服务；食品销售",
        "established": "2026-11-02",
    },
    validate_holder=_uscc,
)
CLEAR, _ = split_claims(BUSINESS_LICENCE, COMPANY)
# More disclosable claims than the business licence has, to test choosing a subset.
DISCLOSABLE: dict[str, object] = {
    "legal_representative": "王晓明",
    "address": "浙江省杭州市上城区解放路88号",
    "registered_capital": "50.00",
}
CLEAR_ONLY = {k: v for k, v in CLEAR.items() if k not in DISCLOSABLE}


def _issue(**overrides: object) -> IssuedSdJwt:
    args: dict[str, object] = {
        "signer": SAMR,
        "chain": [SAMR_SEAL],
        "vct": BUSINESS_LICENCE.vct,
        "iss": ISS,
        "sub": USCC,
        "nbf": NOW,
        "exp": NOW + timedelta(days=365),
        "now": NOW,
        "status_idx": 7,
        "status_uri": STATUS_URI,
    }
    args.update(overrides)
    clear = args.pop("claims_clear", CLEAR_ONLY)
    disclosable = args.pop("claims_disclosable", DISCLOSABLE)
    return issue_sd_jwt(clear, disclosable, **args)  # type: ignore[arg-type]


def _verify(text: str, **overrides: object) -> VerifiedSdJwt:
    args: dict[str, object] = {"roots": [CA], "now": NOW + timedelta(hours=1)}
    args.update(overrides)
    return verify_sd_jwt(text, **args)  # type: ignore[arg-type]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _payload(jwt: str) -> dict[str, object]:
    result = json.loads(_unb64(jwt.split(".")[1]))
    assert isinstance(result, dict)
    return result


def _x5c(*certs: x509.Certificate) -> list[str]:
    return [base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode() for c in certs]


def _craft(
    payload: Mapping[str, object],
    disclosures: Sequence[str] = (),
    *,
    signer: LocalSigner = SAMR,
    chain: tuple[x509.Certificate, ...] = (SAMR_SEAL,),
    typ: str = TYP,
) -> str:
    """An SD-JWT signed with a real seal key but with content issue_sd_jwt would refuse,
    to test the verifier's own rules."""
    jwt = sign_jws(
        json.dumps(payload, ensure_ascii=False).encode(),
        signer,
        headers={"typ": typ, "x5c": _x5c(*chain)},
    )
    return "".join([jwt, "~", *(d + "~" for d in disclosures)])


def _disclosure(name: str, value: object, salt: str = "c2FsdHNhbHRzYWx0c2FsdA") -> str:
    return _b64(json.dumps([salt, name, value], ensure_ascii=False).encode())


def _digest(disclosure: str) -> str:
    return _b64(hashlib.sha256(disclosure.encode("ascii")).digest())


def _base_payload(**extra: object) -> dict[str, object]:
    payload: dict[str, object] = {
        "iss": ISS,
        "iat": int(NOW.timestamp()),
        "nbf": int(NOW.timestamp()),
        "exp": int((NOW + timedelta(days=1)).timestamp()),
        "vct": BUSINESS_LICENCE.vct,
        "sub": USCC,
        "status": {"status_list": {"idx": 1, "uri": STATUS_URI}},
        "name": "杭州味道餐饮管理有限公司",
        "_sd_alg": "sha-256",
    }
    payload.update(extra)
    return payload


# --- issue, present, verify --------------------------------------------------------------


def test_present_subset_verifies_to_exactly_those_claims() -> None:
    issued = _issue()
    presentation = present(issued.serialization, ["address"])
    verified = verify_sd_jwt(presentation, roots=[CA], now=NOW + timedelta(hours=1))

    assert dict(verified.disclosed_claims) == {"address": DISCLOSABLE["address"]}
    assert dict(verified.clear_claims) == CLEAR_ONLY
    assert dict(verified.claims) == {**CLEAR_ONLY, "address": DISCLOSABLE["address"]}
    assert "legal_representative" not in verified.claims
    assert verified.issuer == ISS
    assert verified.department == "samr"
    assert verified.vct == BUSINESS_LICENCE.vct
    assert verified.subject == USCC
    assert verified.issued_at == NOW
    assert verified.not_before == NOW
    assert verified.expires_at == NOW + timedelta(days=365)
    assert (verified.status.idx, verified.status.uri) == (7, STATUS_URI)
    assert verified.certificate == SAMR_SEAL
    assert verified.payload == _unb64(issued.jwt.split(".")[1])


def test_full_and_empty_presentations() -> None:
    issued = _issue()
    everything = verify_sd_jwt(issued.serialization, roots=[CA], now=NOW)
    assert dict(everything.disclosed_claims) == DISCLOSABLE

    nothing = present(issued.serialization, [])
    assert nothing == issued.jwt + "~"
    assert dict(verify_sd_jwt(nothing, roots=[CA], now=NOW).disclosed_claims) == {}


def test_present_keeps_order_and_accepts_clear_claim_names() -> None:
    issued = _issue()
    presentation = present(issued.serialization, ["registered_capital", "name", "address"])
    kept = presentation.split("~")[1:-1]
    assert kept == [issued.disclosures["address"], issued.disclosures["registered_capital"]]


def test_present_needs_a_collection_of_names() -> None:
    with pytest.raises(TypeError):
        present(_issue().serialization, "address")


def test_present_unknown_claim_is_a_clear_error() -> None:
    with pytest.raises(ClaimInvalid) as caught:
        present(_issue().serialization, ["address", "spouse"])
    assert caught.value.metadata["claim"] == "spouse"
    assert caught.value.metadata["problem"] == "not_in_licence"


def test_builtin_business_licence_round_trip() -> None:
    clear, disclosable = split_claims(BUSINESS_LICENCE, COMPANY)
    issued = issue_sd_jwt(
        clear,
        disclosable,
        signer=SAMR,
        chain=[SAMR_SEAL],
        vct=BUSINESS_LICENCE.vct,
        iss=ISS,
        sub=USCC,
        nbf=NOW,
        exp=None,  # 营业期限：长期
        now=NOW,
        status_idx=0,
        status_uri=STATUS_URI,
        decoys=3,
    )
    assert list(issued.disclosures) == ["legal_representative"]
    assert "exp" not in _payload(issued.jwt)
    verified = verify_sd_jwt(
        present(issued.serialization, []),
        roots=[CA],
        now=NOW + timedelta(days=300),
        expected_vct=BUSINESS_LICENCE.vct,
    )
    assert verified.expires_at is None
    assert dict(verified.claims) == {k: v for k, v in COMPANY.items() if k in clear}


def test_issued_format_details() -> None:
    salts = {name: _b64(bytes([i]) * 16) for i, name in enumerate(DISCLOSABLE)}
    issued = _issue(salts=salts, decoys=4)
    header = json.loads(_unb64(issued.jwt.split(".")[0]))
    assert header == {"alg": "ES256", "typ": "dc+sd-jwt", "x5c": _x5c(SAMR_SEAL)}
    payload = _payload(issued.jwt)
    assert payload["_sd_alg"] == "sha-256"
    assert payload["status"] == {"status_list": {"idx": 7, "uri": STATUS_URI}}
    sd = payload["_sd"]
    assert isinstance(sd, list)
    assert sd == sorted(sd)
    assert len(sd) == len(DISCLOSABLE) + 4
    assert set(issued.digests.values()) < set(sd)
    for name in DISCLOSABLE:
        assert name not in payload
    # Same salts, same disclosures: randomness is only in what is injected.
    assert _issue(salts=salts).disclosures == issued.disclosures
    assert issued.serialization == issued.jwt + "~" + "".join(
        d + "~" for d in issued.disclosures.values()
    )


def test_random_salts_are_128_bits_and_distinct() -> None:
    issued = _issue()
    salts = [json.loads(_unb64(d))[0] for d in issued.disclosures.values()]
    assert all(len(_unb64(s)) == 16 for s in salts)
    assert len(set(salts)) == len(salts)
    assert _issue().disclosures != issued.disclosures


def test_injected_randomness_drives_salts_and_decoys() -> None:
    counter = iter(range(1000))

    def fake_random(n: int) -> bytes:
        return bytes([next(counter)]) * n

    issued = _issue(random_bytes=fake_random, decoys=2)
    first_salt = json.loads(_unb64(issued.disclosures["legal_representative"]))[0]
    assert first_salt == _b64(b"\x00" * 16)
    decoy = _b64(hashlib.sha256(b"\x03" * 32).digest())
    sd = _payload(issued.jwt)["_sd"]
    assert isinstance(sd, list)
    assert decoy in sd


# --- independent verification: the format is open ----------------------------------------


class _BigHeaderRegistry(jws.JWSRegistry):
    max_header_length = 16 * 1024  # room for the x5c chain


def test_verifies_without_tongban_code() -> None:
    issued = _issue()
    jwt, *disclosures, last = issued.serialization.split("~")
    assert last == ""

    # The JWS, with joserfc directly and the key from the x5c leaf certificate.
    header = json.loads(_unb64(jwt.split(".")[0]))
    leaf = x509.load_der_x509_certificate(base64.b64decode(header["x5c"][0]))
    assert leaf == SAMR_SEAL
    pem = leaf.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    registry = _BigHeaderRegistry(algorithms=["ES256"])
    signed = jws.deserialize_compact(jwt, ECKey.import_key(pem), registry=registry)
    payload = json.loads(signed.payload)
    assert signed.protected == {"alg": "ES256", "typ": "dc+sd-jwt", "x5c": header["x5c"]}

    # Each disclosure, by hand per RFC 9901 section 4.2: base64url(SHA-256(ASCII
    # disclosure)), no padding, must be in _sd; the disclosure is [salt, name, value].
    for disclosure in disclosures:
        digest = base64.urlsafe_b64encode(hashlib.sha256(disclosure.encode("ascii")).digest())
        assert digest.rstrip(b"=").decode() in payload["_sd"]
        salt, name, value = json.loads(base64.urlsafe_b64decode(disclosure + "=="))
        assert DISCLOSABLE[name] == value
        assert len(base64.urlsafe_b64decode(salt + "==")) == 16
    assert payload["iss"] == "urn:tongban:dept:samr"
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert payload["iss"] in san.get_values_for_type(x509.UniformResourceIdentifier)


# --- tampering --------------------------------------------------------------------------


def test_tampered_issuer_signed_claim_is_signature_invalid() -> None:
    issued = _issue()
    header, payload_part, signature = issued.jwt.split(".")
    payload = json.loads(_unb64(payload_part))
    payload["name"] = "另一家公司"
    forged = ".".join([header, _b64(json.dumps(payload).encode()), signature])
    with pytest.raises(SignatureInvalid) as caught:
        _verify(forged + "~")
    assert caught.value.metadata["check"] == "signature"


def test_tampered_disclosure_value_is_disclosure_invalid() -> None:
    issued = _issue()
    salt, name, _ = json.loads(_unb64(issued.disclosures["legal_representative"]))
    forged = _b64(json.dumps([salt, name, "李四"], ensure_ascii=False).encode())
    with pytest.raises(DisclosureInvalid) as caught:
        _verify(f"{issued.jwt}~{forged}~")
    assert caught.value.metadata == {"check": "disclosure", "claim": "legal_representative"}


def test_garbled_disclosure_is_disclosure_invalid() -> None:
    issued = _issue()
    for garbled in ["@@@", _b64(b"not json"), _b64(b'{"a": 1}'), _b64(b'["salt", "x"]')]:
        with pytest.raises(DisclosureInvalid):
            _verify(f"{issued.jwt}~{garbled}~")


def test_disclosure_added_twice_is_disclosure_invalid() -> None:
    issued = _issue()
    d = issued.disclosures["address"]
    with pytest.raises(DisclosureInvalid):
        _verify(f"{issued.jwt}~{d}~{d}~")


def test_disclosure_from_another_licence_is_disclosure_invalid() -> None:
    other = _issue()
    issued = _issue()
    with pytest.raises(DisclosureInvalid):
        _verify(f"{issued.jwt}~{other.disclosures['address']}~")


def test_digest_repeated_in_sd_is_disclosure_invalid() -> None:
    d = _disclosure("legal_representative", "王晓明")
    text = _craft(_base_payload(_sd=[_digest(d), _digest(d)]), [d])
    with pytest.raises(DisclosureInvalid):
        _verify(text)


@pytest.mark.parametrize("name", ["name", "exp", "iss", "status", "_sd", "..."])
def test_disclosure_of_clear_or_reserved_name_is_disclosure_invalid(name: str) -> None:
    d = _disclosure(name, "x")
    with pytest.raises(DisclosureInvalid):
        _verify(_craft(_base_payload(_sd=[_digest(d)]), [d]))


def test_two_disclosures_of_one_name_are_disclosure_invalid() -> None:
    d1 = _disclosure("address", "a", salt=_b64(b"1" * 16))
    d2 = _disclosure("address", "b", salt=_b64(b"2" * 16))
    with pytest.raises(DisclosureInvalid):
        _verify(_craft(_base_payload(_sd=sorted([_digest(d1), _digest(d2)])), [d1, d2]))


def test_nested_selective_disclosure_is_refused() -> None:
    nested = _disclosure("address", {"_sd": ["abc"]})
    with pytest.raises(DisclosureInvalid):
        _verify(_craft(_base_payload(_sd=[_digest(nested)]), [nested]))
    with pytest.raises(DisclosureInvalid):
        _verify(_craft(_base_payload(address={"...": "abc"})))


def test_crafted_but_valid_sd_jwt_verifies() -> None:
    # The helper itself is sound: the same construction without a flaw verifies.
    d = _disclosure("address", "解放路88号")
    verified = _verify(_craft(_base_payload(_sd=[_digest(d)]), [d]))
    assert verified.disclosed_claims == {"address": "解放路88号"}


# --- signer and issuer -------------------------------------------------------------------


def test_signer_not_on_trust_list_is_untrusted() -> None:
    issued = _issue()
    _, other_seal = _seal()
    assert _verify(issued.serialization, trusted=frozenset({SAMR_SEAL, other_seal}))
    for trusted in (frozenset({other_seal}), frozenset()):
        with pytest.raises(SignerUntrusted) as caught:
            _verify(issued.serialization, trusted=trusted)
        assert caught.value.metadata["check"] == "issuer"


def test_certificate_from_another_ca_is_untrusted() -> None:
    signer, foreign_seal = _seal(ca=OTHER_CA, ca_key=OTHER_CA_KEY)
    issued = _issue(signer=signer, chain=[foreign_seal])
    with pytest.raises(SignerUntrusted):
        _verify(issued.serialization)
    # And no roots at all trusts nobody.
    with pytest.raises(SignerUntrusted):
        _verify(issued.serialization, roots=[])


def test_root_in_x5c_does_not_make_a_foreign_chain_trusted() -> None:
    signer, foreign_seal = _seal(ca=OTHER_CA, ca_key=OTHER_CA_KEY)
    issued = _issue(signer=signer, chain=[foreign_seal, OTHER_CA])
    with pytest.raises(SignerUntrusted):
        _verify(issued.serialization)
    # Our own chain with the root included still verifies (the root is redundant).
    assert _verify(_issue(chain=[SAMR_SEAL, CA]).serialization)


def test_iss_not_matching_certificate_department_is_untrusted() -> None:
    text = _craft(_base_payload(iss="urn:tongban:dept:regulator"))
    with pytest.raises(SignerUntrusted) as caught:
        _verify(text)
    assert caught.value.metadata["department"] == "samr"
    with pytest.raises(ValueError, match="iss"):
        _issue(iss="urn:tongban:dept:regulator")


def test_tls_certificate_is_not_a_seal() -> None:
    key = generate_private_key()
    tls = issue_department_tls_certificate(
        ca_cert=CA, ca_key=CA_KEY, code="samr", name="x", public_key=key.public_key(), now=SETUP
    )
    with pytest.raises(SignerUntrusted):
        _verify(_craft(_base_payload(), signer=LocalSigner(key), chain=(tls,)))


def test_seal_certificate_expired_is_untrusted_even_after_a_good_verify() -> None:
    issued = _issue(exp=None)
    assert _verify(issued.serialization, now=NOW)  # caches the chain's validity window
    after = SAMR_SEAL.not_valid_after_utc + timedelta(seconds=1)
    with pytest.raises(SignerUntrusted):
        _verify(issued.serialization, now=after)


def test_signature_by_another_key_is_signature_invalid() -> None:
    impostor = LocalSigner(generate_private_key())
    with pytest.raises(SignatureInvalid):
        _verify(_craft(_base_payload(), signer=impostor))


def test_only_es256_is_accepted() -> None:
    ed_key = generate_private_key("Ed25519")
    ed_seal = issue_seal_certificate(
        ca_cert=CA, ca_key=CA_KEY, code="samr", name="x", public_key=ed_key.public_key(), now=SETUP
    )
    with pytest.raises(SignatureInvalid):
        _verify(_craft(_base_payload(), signer=LocalSigner(ed_key), chain=(ed_seal,)))
    header = _b64(json.dumps({"alg": "none", "typ": TYP, "x5c": _x5c(SAMR_SEAL)}).encode())
    body = _b64(json.dumps(_base_payload()).encode())
    with pytest.raises(SignatureInvalid):
        _verify(f"{header}.{body}.~")


# --- validity period ----------------------------------------------------------------------


def test_expired_and_not_yet_valid() -> None:
    issued = _issue(nbf=NOW + timedelta(days=1), exp=NOW + timedelta(days=10))
    with pytest.raises(LicenceNotYetValid) as early:
        _verify(issued.serialization, now=NOW)
    assert early.value.metadata["check"] == "validity"
    with pytest.raises(LicenceExpired) as late:
        _verify(issued.serialization, now=NOW + timedelta(days=11))
    assert late.value.metadata["expires_at"] == (NOW + timedelta(days=10)).isoformat()
    assert _verify(issued.serialization, now=NOW + timedelta(days=5))


def test_leeway_is_sixty_seconds_either_way() -> None:
    start, end = NOW + timedelta(days=1), NOW + timedelta(days=10)
    issued = _issue(nbf=start, exp=end)
    assert _verify(issued.serialization, now=start - timedelta(seconds=60))
    with pytest.raises(LicenceNotYetValid):
        _verify(issued.serialization, now=start - timedelta(seconds=61))
    assert _verify(issued.serialization, now=end + timedelta(seconds=59))
    with pytest.raises(LicenceExpired):
        _verify(issued.serialization, now=end + timedelta(seconds=60))
    assert _verify(
        issued.serialization, now=start - timedelta(minutes=9), leeway=timedelta(minutes=10)
    )
    with pytest.raises(LicenceNotYetValid):
        _verify(issued.serialization, now=start - timedelta(seconds=1), leeway=timedelta(0))


# --- format ------------------------------------------------------------------------------


@pytest.mark.parametrize("typ", ["vc+sd-jwt", "JWT", "tongban-trust-list+jwt"])
def test_wrong_typ_is_format_invalid(typ: str) -> None:
    with pytest.raises(LicenceFormatInvalid):
        _verify(_craft(_base_payload(), typ=typ))


def test_wrong_vct_is_refused_when_a_type_is_expected() -> None:
    issued = _issue()
    assert _verify(issued.serialization, expected_vct=BUSINESS_LICENCE.vct)
    with pytest.raises(LicenceFormatInvalid):
        _verify(issued.serialization, expected_vct="urn:tongban:licence:food-business-permit:1")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "garbage",
        "~",
        "~~",
        "a.b.c~",
        "a.b~",
        "eyJhbGciOiJFUzI1NiJ9.e30.AAAA~",
        "eyJ.eyJ.eyJ~",
        "营业执照~",
        "x" * (MAX_SD_JWT_LENGTH + 1),
    ],
)
def test_garbage_is_format_invalid(text: str) -> None:
    with pytest.raises(LicenceFormatInvalid):
        _verify(text)
    with pytest.raises(LicenceFormatInvalid):
        present(text, [])


def test_key_binding_jwt_and_missing_tilde_are_format_invalid() -> None:
    issued = _issue()
    with pytest.raises(LicenceFormatInvalid):
        _verify(issued.serialization + issued.jwt)  # a KB-JWT slot in use
    with pytest.raises(LicenceFormatInvalid):
        _verify(issued.jwt)  # a bare JWT is not an SD-JWT
    with pytest.raises(LicenceFormatInvalid):
        _verify(issued.jwt + "~~" + issued.disclosures["address"] + "~")


def test_too_many_disclosures_is_format_invalid() -> None:
    issued = _issue()
    d = issued.disclosures["address"]
    with pytest.raises(LicenceFormatInvalid):
        _verify(issued.jwt + "~" + (d + "~") * (MAX_DISCLOSURES + 1))


@pytest.mark.parametrize(
    "change",
    [
        {"iat": None},
        {"iat": "2026-11-02"},
        {"nbf": True},
        {"exp": 1.5},
        {"vct": ""},
        {"sub": 42},
        {"status": {"status_list": {"idx": -1, "uri": STATUS_URI}}},
        {"status": {"status_list": {"idx": 1}}},
        {"status": None},
        {"_sd_alg": "sha-512"},
        {"_sd_alg": None},
        {"_sd": "abc"},
    ],
)
def test_malformed_registered_claims_are_format_invalid(change: dict[str, object]) -> None:
    payload = _base_payload()
    for key, value in change.items():
        if value is None:
            payload.pop(key, None)
        else:
            payload[key] = value
    with pytest.raises(LicenceFormatInvalid):
        _verify(_craft(payload))


def test_holder_bound_licence_is_refused() -> None:
    # Accepting it without a key-binding check would ignore the issuer's intent.
    with pytest.raises(LicenceFormatInvalid):
        _verify(_craft(_base_payload(cnf={"jwk": {"kty": "EC"}})))


def test_deeply_nested_json_is_format_invalid() -> None:
    deep: object = "x"
    for _ in range(20):
        deep = [deep]
    with pytest.raises(LicenceFormatInvalid):
        _verify(_craft(_base_payload(address=deep)))
    very_deep = "[" * 5_000 + "]" * 5_000  # deeper than the JSON parser can recurse
    body = json.dumps(_base_payload())[:-1] + f', "address": {very_deep}}}'
    jwt = sign_jws(body.encode(), SAMR, headers={"typ": TYP, "x5c": _x5c(SAMR_SEAL)})
    with pytest.raises(LicenceFormatInvalid):
        verify_sd_jwt(jwt + "~", roots=[CA], now=NOW)


def test_duplicate_json_member_is_format_invalid() -> None:
    body = json.dumps(_base_payload())[:-1] + ', "name": "冒名"}'
    jwt = sign_jws(body.encode(), SAMR, headers={"typ": TYP, "x5c": _x5c(SAMR_SEAL)})
    with pytest.raises(LicenceFormatInvalid):
        _verify(jwt + "~")


def test_crit_header_is_refused() -> None:
    # sign_jws refuses to make such a header, so sign the JWS by hand.
    header = {"alg": "ES256", "typ": TYP, "x5c": _x5c(SAMR_SEAL), "crit": ["urn:x"], "urn:x": 1}
    signing_input = (
        f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(_base_payload()).encode())}"
    )
    jwt = f"{signing_input}.{_b64(SAMR.sign(signing_input.encode()))}"
    with pytest.raises(LicenceFormatInvalid):
        _verify(jwt + "~")


def test_every_failure_is_a_verification_failure() -> None:
    assert issubclass(DisclosureInvalid, VerificationFailed)
    with pytest.raises(ValueError, match="timezone-aware"):
        _verify(_issue().serialization, now=datetime(2026, 11, 2))  # noqa: DTZ001


# --- issuance refuses what would not verify ------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"now": datetime(2026, 11, 2)}, "timezone-aware"),  # noqa: DTZ001
        ({"exp": NOW}, "exp must be after nbf"),
        ({"claims_clear": {"iss": "x"}}, "set by issue_sd_jwt"),
        ({"claims_clear": {"_sd": []}}, "reserved"),
        ({"claims_clear": {"address": "x"}}, "both in clear"),
        ({"chain": []}, "chain"),
        ({"signer": LocalSigner(generate_private_key())}, "not the key"),
        ({"status_idx": -1}, "status_idx"),
        ({"status_idx": True}, "status_idx"),
        ({"sub": ""}, "sub"),
        ({"salts": {"address": _b64(b"x" * 16)}}, "salts must name"),
        ({"salts": dict.fromkeys(DISCLOSABLE, _b64(b"short"))}, "128 bits"),
        ({"decoys": -1}, "decoys"),
        ({"decoys": 254}, "decoys"),
        ({"claims_disclosable": {f"c{i}": i for i in range(65)}}, "At most 64"),
        ({"claims_clear": {"scope": "经" * 60_000}}, "characters"),
        ({"claims_clear": {"scope": {"_sd": ["x"]}}}, "'_sd'"),
        ({"claims_disclosable": {"scope": [{"...": "x"}]}}, "'_sd'"),
    ],
)
def test_issue_refuses(overrides: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _issue(**overrides)


def test_issue_refuses_values_json_cannot_hold() -> None:
    with pytest.raises(TypeError):
        _issue(claims_disclosable={"registered_capital": Decimal("50.00")})
    with pytest.raises(ValueError, match=r"JSON|Out of range"):
        _issue(claims_disclosable={"ratio": float("nan")})


def test_issue_refuses_ed25519_signer() -> None:
    ed_key = generate_private_key("Ed25519")
    ed_seal = issue_seal_certificate(
        ca_cert=CA, ca_key=CA_KEY, code="samr", name="x", public_key=ed_key.public_key(), now=SETUP
    )
    with pytest.raises(ValueError, match="ES256"):
        _issue(signer=LocalSigner(ed_key), chain=[ed_seal])


# --- reading the status reference without verifying ------------------------------------------


def test_claimed_status_reads_the_reference_without_verifying() -> None:
    issued = _issue()
    assert claimed_status(issued.serialization) == StatusReference(idx=7, uri=STATUS_URI)
    assert claimed_status(f"  {issued.jwt}~\n") == StatusReference(idx=7, uri=STATUS_URI)
    # Unverified by design: a forged licence's claim is read too (verification refuses it).
    payload = _base_payload(status={"status_list": {"idx": 9, "uri": "u"}})
    forged = _craft(payload, signer=LocalSigner(generate_private_key()))
    assert claimed_status(forged) == StatusReference(idx=9, uri="u")


@pytest.mark.parametrize(
    "payload",
    [
        b"[" * 5000 + b"]" * 5000,  # deeper than Python's recursion limit
        b'{"status": {"status_list": {"idx": -1, "uri": "u"}}}',
        b'{"status": {"status_list": {"idx": 1.0, "uri": "u"}}}',
        b'{"status": {"status_list": {"idx": true, "uri": "u"}}}',
        b'{"status": {"status_list": {"idx": 1, "uri": ""}}}',
        b'{"status": {"status_list": {"idx": 1e400, "uri": "u"}}}',
        b'{"status": {"status_list": {"idx": 1, "uri": "u"}}, "status": 2}',  # duplicate
        b"{}",
        b"\xff\xfe",
    ],
)
def test_claimed_status_of_a_malformed_payload_is_none(payload: bytes) -> None:
    text = f"{_b64(b'{}')}.{_b64(payload)}.{_b64(bytes(64))}~"
    assert claimed_status(text) is None


@pytest.mark.parametrize(
    "text",
    ["", "~", "a.b~", "a.b.c.d~", "e30.e30.e30", "é.e30.e30~", "e30.e30=.e30~", "x" * 70_000],
)
def test_claimed_status_of_malformed_text_is_none(text: str) -> None:
    assert claimed_status(text) is None


def test_a_damaged_certificate_in_x5c_is_refused_not_a_crash() -> None:
    # cryptography parses a certificate's names lazily: a damaged subject loads, then
    # raised ValueError where verification first read it (found by tests/web fuzzing).
    jwt = _issue().jwt
    header_b64, payload_b64, signature_b64 = jwt.split(".")
    header = json.loads(_unb64(header_b64))
    der = base64.b64decode(header["x5c"][0])
    for position in range(len(der)):
        damaged = bytearray(der)
        damaged[position] ^= 0x10
        header["x5c"] = [base64.b64encode(damaged).decode()]
        text = f"{_b64(json.dumps(header).encode())}.{payload_b64}.{signature_b64}~"
        with pytest.raises(VerificationFailed):
            _verify(text)
