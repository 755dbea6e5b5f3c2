from __future__ import annotations

import base64
import json
import random
import zlib
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st

from tongban.licence.errors import (
    LicenceFormatInvalid,
    PayloadTooLarge,
    SignatureInvalid,
    SignerUntrusted,
    StatusListFull,
    StatusUnavailable,
)
from tongban.licence.status_list import (
    MAX_LIST_BYTES,
    MIN_SIZE,
    STATUS_LIST_TYP,
    IndexAllocator,
    LicenceStatus,
    StatusList,
    sign_status_list,
    verify_status_list,
    verify_status_list_token,
)
from tongban.signing import (
    LocalSigner,
    PrivateKey,
    create_root_ca,
    generate_private_key,
    issue_seal_certificate,
    sign_jwt,
)

NOW = datetime(2025, 6, 1, 8, 0, tzinfo=UTC)
CA_KEY = generate_private_key()
CA = create_root_ca(common_name="Test Exchange Root", key=CA_KEY, now=NOW)
DEPT = "market-supervision"
URI = "https://exchange.gov.example/status/market-supervision/1"
TTL = timedelta(hours=1)
LIFETIME = timedelta(days=1)


def _seal(
    code: str = DEPT, *, ca: x509.Certificate = CA, ca_key: PrivateKey = CA_KEY
) -> tuple[LocalSigner, x509.Certificate]:
    key = generate_private_key("P-256")
    cert = issue_seal_certificate(
        ca_cert=ca,
        ca_key=ca_key,
        code=code,
        name="市市场监督管理局",
        public_key=key.public_key(),
        now=NOW,
    )
    return LocalSigner(key), cert


SIGNER, SEAL = _seal()


def _list(revoked: int = 0, suspended: int = 0, seed: int = 7) -> StatusList:
    status_list = StatusList()
    allocator = IndexAllocator(len(status_list))
    rng = random.Random(seed)
    for _ in range(revoked):
        status_list.set(allocator.allocate(rng), LicenceStatus.INVALID)
    for _ in range(suspended):
        status_list.set(allocator.allocate(rng), LicenceStatus.SUSPENDED)
    return status_list


LIST = _list(revoked=131, suspended=20)
TOKEN = sign_status_list(
    LIST, uri=URI, signer=SIGNER, chain=[SEAL], now=NOW, ttl=TTL, lifetime=LIFETIME
)


def _parts(token: str) -> tuple[dict[str, object], dict[str, object]]:
    header, payload, _ = token.split(".")
    return (
        json.loads(base64.urlsafe_b64decode(header + "==")),
        json.loads(base64.urlsafe_b64decode(payload + "==")),
    )


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _x5c(*certs: x509.Certificate) -> list[str]:
    return [base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode() for c in certs]


def _token(
    claims: dict[str, object],
    *,
    typ: str = STATUS_LIST_TYP,
    signer: LocalSigner = SIGNER,
    seal: x509.Certificate = SEAL,
) -> str:
    """A token with arbitrary claims, for ones sign_status_list refuses to make."""
    return sign_jwt(claims, signer, headers={"typ": typ, "x5c": _x5c(seal)})


def _claims(**change: object) -> dict[str, object]:
    claims: dict[str, object] = {
        "sub": URI,
        "iat": int(NOW.timestamp()),
        "exp": int((NOW + LIFETIME).timestamp()),
        "ttl": 3600,
        "status_list": {"bits": 2, "lst": LIST.encode()},
    }
    claims.update(change)
    return claims


# --- packing -------------------------------------------------------------------------


def test_draft_one_bit_example() -> None:
    statuses = [1, 0, 0, 1, 1, 1, 0, 1, 1, 1, 0, 0, 0, 1, 0, 1]
    status_list = StatusList(len(statuses), bits=1)
    for index, status in enumerate(statuses):
        status_list.set(index, status)
    assert status_list.to_bytes() == bytes([0xB9, 0xA3])
    assert status_list.encode() == "eNrbuRgAAhcBXQ"
    decoded = StatusList.decode("eNrbuRgAAhcBXQ", bits=1)
    assert [decoded[i] for i in range(16)] == statuses


def test_draft_two_bit_example() -> None:
    statuses = [1, 2, 0, 3, 0, 1, 0, 1, 1, 2, 3, 3]
    status_list = StatusList(len(statuses), bits=2)
    for index, status in enumerate(statuses):
        status_list.set(index, status)
    assert status_list.to_bytes() == bytes([0xC9, 0x44, 0xF9])
    assert status_list.encode() == "eNo76fITAAPfAgc"
    decoded = StatusList.decode("eNo76fITAAPfAgc", bits=2)
    assert [decoded[i] for i in range(12)] == statuses
    assert decoded == status_list


@given(
    bits=st.sampled_from([1, 2, 4, 8]),
    writes=st.lists(st.tuples(st.integers(0, 63), st.integers(0, 255)), max_size=40),
)
def test_set_get_matches_a_plain_list(bits: int, writes: list[tuple[int, int]]) -> None:
    status_list = StatusList(64, bits=bits)
    expected = [0] * 64
    for index, value in writes:
        value &= (1 << bits) - 1
        status_list.set(index, value)
        expected[index] = value
    assert [status_list[i] for i in range(64)] == expected
    assert StatusList.decode(status_list.encode(), bits=bits) == status_list


def test_defaults_and_bounds() -> None:
    status_list = StatusList()
    assert len(status_list) == MIN_SIZE == 131_072
    assert status_list.bits == 2
    assert len(status_list.to_bytes()) == 32 * 1024
    assert StatusList(5, bits=2).to_bytes() == b"\0\0"  # rounded up to whole bytes
    assert status_list.get(MIN_SIZE) is None
    assert status_list.get(-1) is None
    with pytest.raises(IndexError):
        status_list[MIN_SIZE]
    with pytest.raises(IndexError):
        status_list.set(-1, 1)
    with pytest.raises(ValueError, match="does not fit"):
        status_list.set(0, 4)
    with pytest.raises(ValueError, match="bits"):
        StatusList(8, bits=3)
    with pytest.raises(ValueError, match="entry"):
        StatusList(0)


def test_compressed_size_at_one_in_a_thousand_revoked() -> None:
    # 131 of 131,072 revoked (0.1%): the draft reports a few hundred bytes for this.
    status_list = _list(revoked=131)
    compressed = zlib.compress(status_list.to_bytes(), 9)
    assert len(compressed) < 400
    assert len(status_list.encode()) < 540


@pytest.mark.parametrize(
    ("lst", "error", "match"),
    [
        ("eNo76fITAAPfAgc=", LicenceFormatInvalid, "canonical"),
        ("eNo76fITAAPfAgd", LicenceFormatInvalid, "canonical"),
        ("eNo7+fITAAPfAgc", LicenceFormatInvalid, "base64url"),
        ("eNo76fITAAPf", LicenceFormatInvalid, "truncated"),
        (_b64url(zlib.compress(b"\xc9") + b"\0"), LicenceFormatInvalid, "after"),
        (_b64url(b"not zlib at all"), LicenceFormatInvalid, "zlib"),
        (_b64url(zlib.compress(b"")), LicenceFormatInvalid, "empty"),
        (_b64url(zlib.compress(b"\0" * (MAX_LIST_BYTES + 1))), PayloadTooLarge, "inflates"),
        ("A" * (2 * 1024 * 1024), PayloadTooLarge, "cap"),
    ],
)
def test_decode_refuses(lst: str, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        StatusList.decode(lst, bits=2)


def test_decode_at_the_size_cap() -> None:
    big = StatusList.decode(_b64url(zlib.compress(b"\0" * MAX_LIST_BYTES)), bits=2)
    assert len(big) == MAX_LIST_BYTES * 4


# --- index allocation ----------------------------------------------------------------


def test_allocations_are_distinct_and_random() -> None:
    allocator = IndexAllocator(MIN_SIZE)
    rng = random.Random(1)
    picks = [allocator.allocate(rng) for _ in range(1000)]
    assert len(set(picks)) == 1000
    assert allocator.free == MIN_SIZE - 1000
    assert picks != sorted(picks)  # not sequential
    assert max(picks) > MIN_SIZE // 2  # spread over the list


def test_allocation_skips_used_indices_and_fills_the_list() -> None:
    used = set(range(0, 1000, 2))
    allocator = IndexAllocator(1000, used=used)
    rng = random.Random(2)
    picks = {allocator.allocate(rng) for _ in range(500)}
    assert picks == set(range(1, 1000, 2))
    with pytest.raises(StatusListFull, match="new status list"):
        allocator.allocate(rng)


def test_nearly_full_list_uses_the_exact_pick() -> None:
    # 3 free of 131,072: random probes almost always miss, so the exact pick runs.
    free = {5, 70_000, 131_071}
    allocator = IndexAllocator(MIN_SIZE, used=set(range(MIN_SIZE)) - free)
    rng = random.Random(3)
    assert {allocator.allocate(rng) for _ in range(3)} == free
    with pytest.raises(StatusListFull):
        allocator.allocate(rng)


def test_exact_pick_is_uniform() -> None:
    counts: Counter[int] = Counter()
    rng = random.Random(4)
    for _ in range(3000):
        allocator = IndexAllocator(10_000, used=set(range(10_000)) - {1, 5_000, 9_999})
        counts[allocator.allocate(rng)] += 1
    assert set(counts) == {1, 5_000, 9_999}
    assert all(800 < n < 1200 for n in counts.values())


def test_allocator_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="outside"):
        IndexAllocator(10, used=[10])
    with pytest.raises(ValueError, match="entry"):
        IndexAllocator(0)


# --- signed token --------------------------------------------------------------------


def test_round_trip() -> None:
    verified = verify_status_list(TOKEN, uri=URI, roots=[CA], now=NOW + TTL, issuer=DEPT)
    assert verified == LIST
    assert sum(verified[i] == LicenceStatus.INVALID for i in range(len(verified))) == 131
    assert sum(verified[i] == LicenceStatus.SUSPENDED for i in range(len(verified))) == 20


def test_the_verified_token_gives_its_ttl_and_times() -> None:
    verified = verify_status_list_token(TOKEN, uri=URI, roots=[CA], now=NOW, issuer=DEPT)
    assert verified.status_list == LIST
    assert verified.ttl == TTL
    assert (verified.issued_at, verified.expires_at) == (NOW, NOW + LIFETIME)

    short = sign_status_list(
        LIST, uri=URI, signer=SIGNER, chain=[SEAL], now=NOW, ttl=timedelta(seconds=1),
        lifetime=LIFETIME,
    )  # fmt: skip
    assert verify_status_list_token(short, uri=URI, roots=[CA], now=NOW).ttl == timedelta(seconds=1)


def test_a_token_without_ttl_leaves_it_to_the_verifier() -> None:
    claims = _claims()
    del claims["ttl"]
    verified = verify_status_list_token(_token(claims), uri=URI, roots=[CA], now=NOW)
    assert verified.ttl is None
    assert verified.status_list == LIST
    # verify_status_list, for its callers, gives the list alone either way.
    assert verify_status_list(_token(claims), uri=URI, roots=[CA], now=NOW) == LIST


def test_times_beyond_the_calendar_are_malformed() -> None:
    for name in ("iat", "exp"):
        token = _token(_claims(**{name: 10**20}))
        with pytest.raises(LicenceFormatInvalid, match=name):
            verify_status_list_token(token, uri=URI, roots=[CA], now=NOW)


def test_token_layout() -> None:
    header, claims = _parts(TOKEN)
    assert header["typ"] == "statuslist+jwt"
    assert header["alg"] == "ES256"
    assert header["x5c"] == _x5c(SEAL)
    assert claims == {
        "sub": URI,
        "iat": int(NOW.timestamp()),
        "exp": int((NOW + LIFETIME).timestamp()),
        "ttl": 3600,
        "status_list": {"bits": 2, "lst": LIST.encode()},
    }


def test_expired_token() -> None:
    verify_status_list(TOKEN, uri=URI, roots=[CA], now=NOW + LIFETIME - timedelta(seconds=1))
    with pytest.raises(StatusUnavailable, match="expired") as info:
        verify_status_list(TOKEN, uri=URI, roots=[CA], now=NOW + LIFETIME)
    assert info.value.check == "status"


def test_wrong_sub() -> None:
    with pytest.raises(StatusUnavailable, match="not the requested"):
        verify_status_list(TOKEN, uri=URI.replace("/1", "/2"), roots=[CA], now=NOW)


def test_tampered_lst() -> None:
    header, payload, signature = TOKEN.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    assert isinstance(claims["status_list"], dict)
    claims["status_list"]["lst"] = StatusList().encode()  # everything VALID
    forged = ".".join((header, _b64url(json.dumps(claims).encode()), signature))
    with pytest.raises(SignatureInvalid) as info:
        verify_status_list(forged, uri=URI, roots=[CA], now=NOW)
    assert info.value.check == "signature"


def test_signed_by_a_key_other_than_the_x5c_leaf() -> None:
    other_signer, _ = _seal()
    with pytest.raises(SignatureInvalid):
        verify_status_list(_token(_claims(), signer=other_signer), uri=URI, roots=[CA], now=NOW)


def test_untrusted_chain() -> None:
    rogue_key = generate_private_key()
    rogue_ca = create_root_ca(common_name="Rogue Root", key=rogue_key, now=NOW)
    signer, seal = _seal(ca=rogue_ca, ca_key=rogue_key)
    token = sign_status_list(
        LIST, uri=URI, signer=signer, chain=[seal, rogue_ca], now=NOW, ttl=TTL, lifetime=LIFETIME
    )
    with pytest.raises(SignerUntrusted) as info:
        verify_status_list(token, uri=URI, roots=[CA], now=NOW)
    assert info.value.check == "issuer"


def test_other_department() -> None:
    signer, seal = _seal("tax-bureau")
    token = sign_status_list(
        LIST, uri=URI, signer=signer, chain=[seal], now=NOW, ttl=TTL, lifetime=LIFETIME
    )
    verify_status_list(token, uri=URI, roots=[CA], now=NOW)
    with pytest.raises(SignerUntrusted, match="tax-bureau"):
        verify_status_list(token, uri=URI, roots=[CA], now=NOW, issuer=DEPT)


def test_wrong_typ() -> None:
    with pytest.raises(LicenceFormatInvalid, match="typ"):
        verify_status_list(_token(_claims(), typ="JWT"), uri=URI, roots=[CA], now=NOW)


@pytest.mark.parametrize(
    ("claims", "match"),
    [
        (_claims(exp=None), "exp"),
        (_claims(exp="tomorrow"), "exp"),
        (_claims(iat=True), "iat"),
        (_claims(ttl=-1), "ttl"),
        (_claims(status_list=None), "status_list"),
        (_claims(status_list={"bits": 3, "lst": LIST.encode()}), "bits"),
        (_claims(status_list={"bits": True, "lst": LIST.encode()}), "bits"),
        (_claims(status_list={"bits": 2}), "lst"),
    ],
)
def test_malformed_claims(claims: dict[str, object], match: str) -> None:
    with pytest.raises(LicenceFormatInvalid, match=match):
        verify_status_list(_token(claims), uri=URI, roots=[CA], now=NOW)


def test_bomb_in_a_signed_token() -> None:
    bomb = _b64url(zlib.compress(b"\0" * (MAX_LIST_BYTES + 1), 9))
    token = _token(_claims(status_list={"bits": 2, "lst": bomb}))
    with pytest.raises(PayloadTooLarge):
        verify_status_list(token, uri=URI, roots=[CA], now=NOW)


@pytest.mark.parametrize(
    ("token", "error"),
    [
        ("not a token", LicenceFormatInvalid),
        ("a.b", LicenceFormatInvalid),
        ("!!!.e30.", LicenceFormatInvalid),
        (_b64url(b"[1]") + ".e30.", LicenceFormatInvalid),
        ("x" * (3 * 1024 * 1024), PayloadTooLarge),
    ],
)
def test_malformed_token(token: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        verify_status_list(token, uri=URI, roots=[CA], now=NOW)


@pytest.mark.parametrize(
    "x5c",
    [None, [], "cert", [1], ["not base64!"], [base64.b64encode(b"not DER").decode()]],
)
def test_bad_x5c(x5c: object) -> None:
    # Built by hand: sign_jws itself refuses an ill-typed x5c. The chain is read before
    # the signature is checked, so a placeholder signature is enough.
    header: dict[str, object] = {"alg": "ES256", "typ": STATUS_LIST_TYP}
    if x5c is not None:
        header["x5c"] = x5c
    _, payload, signature = TOKEN.split(".")
    token = ".".join((_b64url(json.dumps(header).encode()), payload, signature))
    with pytest.raises(LicenceFormatInvalid, match="x5c"):
        verify_status_list(token, uri=URI, roots=[CA], now=NOW)


def test_sign_refuses_bad_arguments() -> None:
    options: dict[str, object] = {
        "uri": URI,
        "signer": SIGNER,
        "chain": [SEAL],
        "now": NOW,
        "ttl": TTL,
        "lifetime": LIFETIME,
    }
    bad: list[tuple[StatusList, dict[str, object], str]] = [
        (StatusList(MIN_SIZE - 4), {}, "at least"),
        (LIST, {"uri": ""}, "URI"),
        (LIST, {"chain": []}, "chain"),
        (LIST, {"chain": [CA]}, "signer's key"),
        (LIST, {"signer": LocalSigner(generate_private_key("Ed25519"))}, "ES256"),
        (LIST, {"now": datetime(2025, 6, 1)}, "timezone"),  # noqa: DTZ001
        (LIST, {"ttl": timedelta(0)}, "ttl"),
        (LIST, {"ttl": timedelta(days=2)}, "ttl"),
    ]
    for status_list, change, match in bad:
        with pytest.raises(ValueError, match=match):
            sign_status_list(status_list, **{**options, **change})  # type: ignore[arg-type]
