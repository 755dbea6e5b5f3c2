from __future__ import annotations

import base64
import json
import stat
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tongban.licence.errors import (
    LicenceFormatInvalid,
    SignatureInvalid,
    SignerUntrusted,
    StatusUrlUntrusted,
    TrustListExpired,
    TrustListUnavailable,
)
from tongban.licence.sdjwt import issue_sd_jwt, verify_sd_jwt
from tongban.licence.trust_list import (
    TYP,
    RevokedSeal,
    TrustList,
    TrustListCache,
    TrustListEntry,
    sign_trust_list,
    verify_trust_list,
)
from tongban.signing import (
    LocalSigner,
    PrivateKey,
    certificate_fingerprint,
    create_root_ca,
    generate_private_key,
    issue_node_signing_certificate,
    issue_seal_certificate,
    sign_jws,
)
from tongban.signing.sm2 import Sm2PrivateKey
from tongban.signing.sm2_certs import create_sm2_root_ca, issue_sm2_seal_certificate

NOW = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
SETUP = NOW - timedelta(days=30)
CA_KEY = generate_private_key()
CA = create_root_ca(common_name="Test Exchange Root", key=CA_KEY, now=SETUP)
OTHER_CA_KEY = generate_private_key()
OTHER_CA = create_root_ca(common_name="Some Other Root", key=OTHER_CA_KEY, now=SETUP)


def _node(
    *, ca: x509.Certificate = CA, ca_key: PrivateKey = CA_KEY, validity: timedelta | None = None
) -> tuple[LocalSigner, x509.Certificate]:
    key = generate_private_key()
    cert = issue_node_signing_certificate(
        ca_cert=ca,
        ca_key=ca_key,
        node_name="node-1",
        public_key=key.public_key(),
        now=SETUP,
        **({"validity": validity} if validity else {}),
    )
    return LocalSigner(key), cert


def _seal(code: str) -> tuple[LocalSigner, x509.Certificate]:
    key = generate_private_key()
    cert = issue_seal_certificate(
        ca_cert=CA, ca_key=CA_KEY, code=code, name=code, public_key=key.public_key(), now=SETUP
    )
    return LocalSigner(key), cert


NODE, NODE_CERT = _node()
SAMR, SAMR_SEAL = _seal("samr")
_, SAMR_OLD_SEAL = _seal("samr")
REGULATOR, REGULATOR_SEAL = _seal("regulator")
ENTRIES = [
    TrustListEntry("samr", (SAMR_SEAL, SAMR_OLD_SEAL), (NODE_CERT,)),
    TrustListEntry("regulator", (REGULATOR_SEAL,)),
]


def _sign(
    entries: Sequence[TrustListEntry] = ENTRIES, *, now: datetime = NOW, **kwargs: object
) -> str:
    args: dict[str, object] = {"signer": NODE, "chain": [NODE_CERT], "now": now}
    args.update(kwargs)
    return sign_trust_list(entries, **args)  # type: ignore[arg-type]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _x5c(cert: x509.Certificate) -> list[str]:
    return [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]


def _payload(token: str) -> dict[str, object]:
    part = token.split(".")[1]
    result = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    assert isinstance(result, dict)
    return result


def _craft(
    payload: dict[str, object],
    *,
    signer: LocalSigner = NODE,
    cert: x509.Certificate = NODE_CERT,
    typ: str = TYP,
) -> str:
    return sign_jws(json.dumps(payload).encode(), signer, headers={"typ": typ, "x5c": _x5c(cert)})


def test_sign_and_verify() -> None:
    token = _sign()
    trust_list = verify_trust_list(token, roots=[CA], now=NOW + timedelta(hours=1))

    assert trust_list.issuer == "node-1"
    assert trust_list.issued_at == NOW
    assert trust_list.next_update == NOW + timedelta(days=1)
    assert trust_list.expires_at == NOW + timedelta(days=30)
    assert trust_list.signer == NODE_CERT
    assert trust_list.token == token
    assert trust_list.certificates_for("samr") == (SAMR_SEAL, SAMR_OLD_SEAL)
    assert trust_list.certificates_for("regulator") == (REGULATOR_SEAL,)
    assert trust_list.certificates_for("police") == ()
    assert trust_list.status_list_certificates_for("samr") == (NODE_CERT,)
    assert trust_list.status_list_certificates_for("police") == ()
    assert trust_list.all_seal_certificates() == {SAMR_SEAL, SAMR_OLD_SEAL, REGULATOR_SEAL}
    assert trust_list.all_status_list_certificates() == {NODE_CERT}


def test_revoked_seals_are_listed_and_found_by_kid() -> None:
    revoked = RevokedSeal("samr", certificate_fingerprint(SAMR_OLD_SEAL), NOW, "私钥疑似泄露")
    entries = [TrustListEntry("samr", (SAMR_SEAL,), (NODE_CERT,)), ENTRIES[1]]
    trust_list = verify_trust_list(_sign(entries, revoked=[revoked]), roots=[CA], now=NOW)
    assert trust_list.certificates_for("samr") == (SAMR_SEAL,)
    assert trust_list.revoked_seal(revoked.fingerprint) == revoked
    assert trust_list.revoked_seal(revoked.fingerprint[:8]) == revoked  # a QR kid
    assert trust_list.revoked_seal(revoked.fingerprint[:4]) is None  # too short to tell
    assert trust_list.revoked_seal(certificate_fingerprint(SAMR_SEAL)) is None
    # A list without the claim (an older node's) revokes nothing.
    assert verify_trust_list(_sign(), roots=[CA], now=NOW).revoked == {}
    with pytest.raises(ValueError, match="reason"):
        _sign(entries, revoked=[RevokedSeal("samr", revoked.fingerprint, NOW, "")])


def test_format() -> None:
    token = _sign()
    header_part = token.split(".")[0]
    header = json.loads(base64.urlsafe_b64decode(header_part + "=" * (-len(header_part) % 4)))
    assert header == {"alg": "ES256", "typ": "tongban-trust-list+jwt", "x5c": _x5c(NODE_CERT)}
    payload = _payload(token)
    assert payload["iss"] == "urn:tongban:node:node-1"
    assert payload["iat"] == int(NOW.timestamp())
    assert payload["next_update"] == int((NOW + timedelta(days=1)).timestamp())
    assert payload["exp"] == int((NOW + timedelta(days=30)).timestamp())
    assert payload["departments"] == {
        "samr": {
            "seal_certificates": _x5c(SAMR_SEAL) + _x5c(SAMR_OLD_SEAL),
            "status_list_certificates": _x5c(NODE_CERT),
        },
        "regulator": {"seal_certificates": _x5c(REGULATOR_SEAL), "status_list_certificates": []},
    }


def test_needs_refresh() -> None:
    trust_list = verify_trust_list(_sign(), roots=[CA], now=NOW)
    assert not trust_list.needs_refresh(NOW + timedelta(hours=23))
    assert trust_list.needs_refresh(NOW + timedelta(days=1))
    custom = verify_trust_list(
        _sign(lifetime=timedelta(days=7), refresh=timedelta(hours=6)), roots=[CA], now=NOW
    )
    assert custom.next_update == NOW + timedelta(hours=6)
    assert custom.expires_at == NOW + timedelta(days=7)


def test_expired() -> None:
    token = _sign()
    assert verify_trust_list(token, roots=[CA], now=NOW + timedelta(days=30, seconds=-1))
    with pytest.raises(TrustListExpired) as caught:
        verify_trust_list(token, roots=[CA], now=NOW + timedelta(days=30))
    assert caught.value.metadata["check"] == "trust-list"


def test_expiry_is_clipped_to_the_signing_certificate() -> None:
    signer, short_cert = _node(validity=timedelta(days=40))
    token = _sign(signer=signer, chain=[short_cert])
    trust_list = verify_trust_list(token, roots=[CA], now=NOW)
    assert trust_list.expires_at == short_cert.not_valid_after_utc.replace(microsecond=0)


def test_signer_from_another_ca_is_untrusted() -> None:
    signer, foreign = _node(ca=OTHER_CA, ca_key=OTHER_CA_KEY)
    with pytest.raises(SignerUntrusted):
        verify_trust_list(_sign(signer=signer, chain=[foreign]), roots=[CA], now=NOW)
    with pytest.raises(SignerUntrusted):
        verify_trust_list(_sign(), roots=[], now=NOW)


def test_only_a_node_may_sign() -> None:
    with pytest.raises(ValueError, match="node signing certificate"):
        _sign(signer=SAMR, chain=[SAMR_SEAL])
    payload = _payload(_sign())
    payload["iss"] = "urn:tongban:dept:samr"
    with pytest.raises(SignerUntrusted):
        verify_trust_list(_craft(payload, signer=SAMR, cert=SAMR_SEAL), roots=[CA], now=NOW)


def test_iss_must_name_the_signing_node() -> None:
    payload = _payload(_sign())
    payload["iss"] = "urn:tongban:node:node-2"
    with pytest.raises(SignerUntrusted):
        verify_trust_list(_craft(payload), roots=[CA], now=NOW)


def test_tampered_payload_is_signature_invalid() -> None:
    token = _sign()
    header, _, signature = token.split(".")
    payload = _payload(token)
    departments = payload["departments"]
    assert isinstance(departments, dict)
    departments["regulator"]["seal_certificates"] = _x5c(SAMR_SEAL)
    forged = ".".join([header, _b64(json.dumps(payload).encode()), signature])
    with pytest.raises(SignatureInvalid):
        verify_trust_list(forged, roots=[CA], now=NOW)


def test_seal_listed_under_another_department_is_refused() -> None:
    with pytest.raises(ValueError, match="listed under"):
        _sign([TrustListEntry("regulator", (SAMR_SEAL,))])
    payload = _payload(_sign())
    departments = payload["departments"]
    assert isinstance(departments, dict)
    departments["regulator"]["seal_certificates"] = _x5c(SAMR_SEAL)
    with pytest.raises(LicenceFormatInvalid):
        verify_trust_list(_craft(payload), roots=[CA], now=NOW)


@pytest.mark.parametrize(
    "change",
    [
        {"iat": "yesterday"},
        {"exp": None},
        {"next_update": 0},
        {"departments": []},
        {"departments": {"Not A Code": {"seal_certificates": [], "status_list_certificates": []}}},
        {"departments": {"samr": {"seal_certificates": ["not base64!"]}}},
        {"departments": {"samr": {"seal_certificates": [], "status_list_certificates": [1]}}},
        {
            "departments": {
                "samr": {"seal_certificates": [], "status_list_certificates": [], "x": 1}
            }
        },
        {"revoked_seal_certificates": []},
        {"revoked_seal_certificates": {"samr": {}}},
        {"revoked_seal_certificates": {"Not A Code": []}},
        {"revoked_seal_certificates": {"samr": [{"sha256": "00", "revoked_at": 1, "reason": "x"}]}},
        {"revoked_seal_certificates": {"samr": [{"sha256": "0" * 64, "revoked_at": 1}]}},
        {
            "revoked_seal_certificates": {
                "samr": [{"sha256": "0" * 64, "revoked_at": "x", "reason": "x"}]
            }
        },
        {
            "revoked_seal_certificates": {
                "samr": [{"sha256": "0" * 64, "revoked_at": 1, "reason": ""}]
            }
        },
    ],
)
def test_malformed_payload_is_format_invalid(change: dict[str, object]) -> None:
    payload = _payload(_sign())
    payload.update(change)
    with pytest.raises(LicenceFormatInvalid):
        verify_trust_list(_craft(payload), roots=[CA], now=NOW)


@pytest.mark.parametrize("text", ["", "garbage", "a.b.c", "x" * (1024 * 1024 + 1), "信任.列表.x"])
def test_garbage_is_format_invalid(text: str) -> None:
    with pytest.raises(LicenceFormatInvalid):
        verify_trust_list(text, roots=[CA], now=NOW)


def test_wrong_typ_is_format_invalid() -> None:
    with pytest.raises(LicenceFormatInvalid):
        verify_trust_list(_craft(_payload(_sign()), typ="dc+sd-jwt"), roots=[CA], now=NOW)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"now": datetime(2026, 11, 2)}, "timezone-aware"),  # noqa: DTZ001
        ({"refresh": timedelta(days=30)}, "refresh"),
        ({"refresh": timedelta(0)}, "refresh"),
        ({"chain": []}, "chain"),
        ({"signer": SAMR}, "not the key"),
        ({"entries": [ENTRIES[0], ENTRIES[0]]}, "twice"),
        ({"entries": [TrustListEntry("Police", ())]}, "not a department code"),
        ({"entries": [TrustListEntry("samr", (SAMR_SEAL,) * 17)]}, "at most 16"),
    ],
)
def test_sign_refuses(kwargs: dict[str, object], match: str) -> None:
    entries = kwargs.pop("entries", ENTRIES)
    with pytest.raises(ValueError, match=match):
        _sign(entries, **kwargs)  # type: ignore[arg-type]


def test_empty_trust_list_trusts_nobody() -> None:
    trust_list = verify_trust_list(_sign([]), roots=[CA], now=NOW)
    assert trust_list.all_seal_certificates() == frozenset()


def test_sd_jwt_verification_with_the_trust_list() -> None:
    issued = issue_sd_jwt(
        {"name": "杭州味道餐饮管理有限公司"},
        {"legal_representative": "王晓明"},
        signer=SAMR,
        chain=[SAMR_SEAL],
        vct="urn:tongban:licence:business-licence:1",
        iss="urn:tongban:dept:samr",
        sub="91330102MA2K8Q7R1X",
        nbf=NOW,
        exp=None,
        now=NOW,
        status_idx=0,
        status_uri="https://exchange.gov.example/status/samr/1",
    )
    current = verify_trust_list(_sign(), roots=[CA], now=NOW)
    verified = verify_sd_jwt(
        issued.serialization, roots=[CA], trusted=current.all_seal_certificates(), now=NOW
    )
    assert verified.department == "samr"

    # The seal is withdrawn: the next list no longer carries it.
    withdrawn = verify_trust_list(
        _sign([TrustListEntry("samr", (SAMR_OLD_SEAL,))], now=NOW + timedelta(hours=1)),
        roots=[CA],
        now=NOW + timedelta(hours=1),
    )
    with pytest.raises(SignerUntrusted):
        verify_sd_jwt(
            issued.serialization,
            roots=[CA],
            trusted=withdrawn.all_seal_certificates(),
            now=NOW + timedelta(hours=1),
        )


# --- where status lists may be fetched from (issue 14, finding 6) -----------------------

BASE = "https://tongban.example.gov.cn/status-lists/"


def test_status_base_urls_are_signed_and_checked() -> None:
    entries = [
        TrustListEntry("samr", (SAMR_SEAL,), (NODE_CERT,), (BASE, "http://10.0.0.5:8080/")),
        TrustListEntry("regulator", (REGULATOR_SEAL,)),
    ]
    token = _sign(entries)
    # A top-level claim, so that verifiers that predate it still accept the list.
    assert _payload(token)["status_base_urls"] == {"samr": [BASE, "http://10.0.0.5:8080/"]}
    assert set(_payload(token)["departments"]["samr"]) == {  # type: ignore[index]
        "seal_certificates",
        "status_list_certificates",
    }
    trust_list = verify_trust_list(token, roots=[CA], now=NOW)
    assert trust_list.entries["samr"].status_base_urls == (BASE, "http://10.0.0.5:8080/")
    assert trust_list.check_status_url("samr", BASE + "1") == BASE + "1"
    assert trust_list.check_status_url("samr", "http://10.0.0.5:8080/a/2") == (
        "http://10.0.0.5:8080/a/2"
    )


@pytest.mark.parametrize(
    ("dept", "uri"),
    [
        ("samr", "http://127.0.0.1:8765/internal-admin/delete?id=1"),
        ("samr", BASE),  # the base itself is not a list
        ("samr", BASE + "1?id=1"),
        ("samr", BASE + "1#x"),
        ("samr", BASE + "../internal-admin/delete"),
        ("samr", BASE + "./1"),
        ("samr", BASE + "%2e%2e/admin"),
        ("samr", BASE + "a//b"),
        ("samr", "https://tongban.example.gov.cn/status-listsX/1"),
        ("samr", "https://tongban.example.gov.cn.evil.example/status-lists/1"),
        ("samr", "http://tongban.example.gov.cn/status-lists/1"),  # not https
        ("samr", BASE + "1" * 2048),
        ("regulator", BASE + "1"),  # lists no base at all
        ("police", BASE + "1"),  # not on the list
    ],
)
def test_status_urls_outside_the_bases_are_untrusted(dept: str, uri: str) -> None:
    entries = [
        TrustListEntry("samr", (SAMR_SEAL,), (NODE_CERT,), (BASE,)),
        TrustListEntry("regulator", (REGULATOR_SEAL,)),
    ]
    trust_list = verify_trust_list(_sign(entries), roots=[CA], now=NOW)
    with pytest.raises(StatusUrlUntrusted) as caught:
        trust_list.check_status_url(dept, uri)
    assert caught.value.reason == "STATUS_URL_UNTRUSTED"
    assert caught.value.metadata["check"] == "status"


def test_a_list_without_status_base_urls_still_verifies_and_names_no_base() -> None:
    # What a node before this change signed: no claim, so status lists come from nowhere.
    token = _sign()
    assert "status_base_urls" not in _payload(token)
    trust_list = verify_trust_list(token, roots=[CA], now=NOW)
    assert trust_list.certificates_for("samr") == (SAMR_SEAL, SAMR_OLD_SEAL)
    with pytest.raises(StatusUrlUntrusted):
        trust_list.check_status_url("samr", BASE + "1")


@pytest.mark.parametrize(
    "base",
    [
        "https://tongban.example.gov.cn/status-lists",  # no trailing "/"
        "https://tongban.example.gov.cn",
        "ftp://tongban.example.gov.cn/",
        "https://user@tongban.example.gov.cn/",
        "https://tongban.example.gov.cn/a/../",
        "https://tongban.example.gov.cn/?x=/",
        "https://tongban.example.gov.cn/%2e/",
        "",
    ],
)
def test_malformed_status_base_urls_are_refused(base: str) -> None:
    with pytest.raises(ValueError, match="base URL"):
        _sign([TrustListEntry("samr", (SAMR_SEAL,), (), (base,))])
    payload = _payload(_sign())
    payload["status_base_urls"] = {"samr": [base]}
    with pytest.raises(LicenceFormatInvalid):
        verify_trust_list(_craft(payload), roots=[CA], now=NOW)


@pytest.mark.parametrize(
    "value",
    [[BASE], {"police": [BASE]}, {"samr": BASE}, {"samr": [1]}, {"samr": [BASE] * 17}],
)
def test_malformed_status_base_url_claims_are_format_invalid(value: object) -> None:
    payload = _payload(_sign())
    payload["status_base_urls"] = value
    with pytest.raises(LicenceFormatInvalid):
        verify_trust_list(_craft(payload), roots=[CA], now=NOW)


# --- issuing CAs and SM2 seals (top-level claims) ---------------------------------------


def _sm2_seal(code: str) -> x509.Certificate:
    root_key = Sm2PrivateKey.generate()
    root = create_sm2_root_ca(common_name="SM2 Root", key=root_key, now=SETUP)
    return issue_sm2_seal_certificate(
        ca_cert=root, ca_key=root_key, code=code, name=code,
        public_key=Sm2PrivateKey.generate().public, now=SETUP,
    )  # fmt: skip


def test_intermediates_and_sm2_seals_are_signed_and_read_back() -> None:
    sm2 = _sm2_seal("samr")
    token = _sign(intermediates=[CA], sm2_seals={"samr": [sm2]})
    listed = verify_trust_list(token, roots=[CA], now=NOW)
    assert listed.intermediates == (CA,)
    assert dict(listed.sm2_seals) == {"samr": (sm2,)}
    # A list without them (older nodes) names none.
    plain = verify_trust_list(_sign(), roots=[CA], now=NOW)
    assert plain.intermediates == ()
    assert dict(plain.sm2_seals) == {}


def test_sign_refuses_a_leaf_as_intermediate_and_a_misfiled_sm2_seal() -> None:
    with pytest.raises(ValueError, match="CA certificates"):
        _sign(intermediates=[SAMR_SEAL])
    with pytest.raises(ValueError, match="not a seal of it"):
        _sign(sm2_seals={"regulator": [_sm2_seal("samr")]})


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("intermediates", "x"),
        ("intermediates", ["not base64"]),
        ("intermediates", [_x5c(SAMR_SEAL)[0]]),  # a leaf, not a CA
        ("sm2_seal_certificates", ["x"]),
        ("sm2_seal_certificates", {"samr": "x"}),
        ("sm2_seal_certificates", {"samr": [_x5c(REGULATOR_SEAL)[0]]}),  # another department's
        ("sm2_seal_certificates", {"BAD CODE": []}),
    ],
)
def test_malformed_intermediate_and_sm2_claims_are_format_invalid(
    claim: str, value: object
) -> None:
    payload = _payload(_sign())
    payload[claim] = value
    with pytest.raises(LicenceFormatInvalid):
        verify_trust_list(_craft(payload), roots=[CA], now=NOW)


# --- the on-disk cache -------------------------------------------------------------------


def test_cache_store_and_load_offline(tmp_path: Path) -> None:
    path = tmp_path / "trust" / "trust-list.jwt"
    cache = TrustListCache(path)
    token = _sign()
    stored = cache.store(token, roots=[CA], now=NOW)
    assert isinstance(stored, TrustList)
    assert path.read_text() == token
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert not [p for p in path.parent.iterdir() if p.name != path.name]  # no temp files

    # A new process (a new cache object) keeps verifying from the file alone until exp,
    # well after next_update.
    later = NOW + timedelta(days=29)
    fresh = TrustListCache(path)
    loaded = fresh.load(roots=[CA], now=later)
    assert loaded.token == token
    assert loaded.needs_refresh(later)
    assert fresh.load(roots=[CA], now=later) == loaded  # remembered
    with pytest.raises(TrustListExpired):
        fresh.load(roots=[CA], now=NOW + timedelta(days=30))
    with pytest.raises(TrustListExpired):
        TrustListCache(path).load(roots=[CA], now=NOW + timedelta(days=30))


def test_cache_without_a_list_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(TrustListUnavailable) as caught:
        TrustListCache(tmp_path / "none.jwt").load(roots=[CA], now=NOW)
    assert caught.value.metadata["check"] == "trust-list"


def test_cache_refuses_rollback(tmp_path: Path) -> None:
    cache = TrustListCache(tmp_path / "trust-list.jwt")
    older = _sign(now=NOW)
    newer = _sign([ENTRIES[0]], now=NOW + timedelta(hours=2))
    cache.store(newer, roots=[CA], now=NOW + timedelta(hours=3))
    kept = cache.store(older, roots=[CA], now=NOW + timedelta(hours=3))
    assert kept.token == newer
    assert cache.path.read_text() == newer
    # Once the newer list has expired, an older but still valid one may replace it.
    short = _sign(
        [ENTRIES[0]],
        now=NOW + timedelta(hours=2),
        lifetime=timedelta(hours=2),
        refresh=timedelta(hours=1),
    )
    cache.store(short, roots=[CA], now=NOW + timedelta(hours=3))
    assert cache.store(older, roots=[CA], now=NOW + timedelta(hours=5)).token == older


def test_cache_refuses_a_bad_token_and_keeps_the_old_one(tmp_path: Path) -> None:
    cache = TrustListCache(tmp_path / "trust-list.jwt")
    good = _sign()
    cache.store(good, roots=[CA], now=NOW)
    signer, foreign = _node(ca=OTHER_CA, ca_key=OTHER_CA_KEY)
    with pytest.raises(SignerUntrusted):
        cache.store(_sign(signer=signer, chain=[foreign]), roots=[CA], now=NOW)
    with pytest.raises(TrustListExpired):
        cache.store(good, roots=[CA], now=NOW + timedelta(days=31))
    assert cache.path.read_text() == good


def test_cache_file_altered_on_disk_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "trust-list.jwt"
    cache = TrustListCache(path)
    token = _sign()
    cache.store(token, roots=[CA], now=NOW)
    header, _, signature = token.split(".")
    payload = _payload(token)
    payload["departments"] = {}
    path.write_text(".".join([header, _b64(json.dumps(payload).encode()), signature]))
    with pytest.raises(SignatureInvalid):
        cache.load(roots=[CA], now=NOW)
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(LicenceFormatInvalid):
        cache.load(roots=[CA], now=NOW)
    # A damaged cache is simply replaced by the next good list.
    assert cache.store(token, roots=[CA], now=NOW).token == token


def test_cache_checks_the_roots_it_is_given(tmp_path: Path) -> None:
    cache = TrustListCache(tmp_path / "trust-list.jwt")
    cache.store(_sign(), roots=[CA], now=NOW)
    with pytest.raises(SignerUntrusted):
        cache.load(roots=[OTHER_CA], now=NOW)
