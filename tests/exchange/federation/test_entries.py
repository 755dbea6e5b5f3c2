"""Signed catalogue entries, checked on receipt: only a peer's own entries, signed under
its root, are accepted (docs/federation.md, "Signed entries")."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tongban.errors import TongbanError
from tongban.exchange.catalogue.schema import FieldSpec, FieldType, build_schema
from tongban.exchange.catalogue.subject_ids import SubjectKind
from tongban.exchange.datadir import (
    NodeSigning,
    ca_certificate_pem,
    init_data_dir,
    load_node_signing,
)
from tongban.exchange.departments import Level
from tongban.exchange.federation.entries import sign_entry, signed_window, verify_entry
from tongban.exchange.federation.peers import Peer, PeerStatus
from tongban.exchange.federation.remote import VerifiedEntries
from tongban.exchange.settings import load_settings
from tongban.exchange.sharing.model import DatasetEntry, LegalBasis, PersonalBasis, ShareClass
from tongban.signing.certs import certificate_fingerprint, certificate_pem, load_pem_certificates

NOW = datetime.now(UTC)  # the data dirs' certificates are issued now

ENTRY = DatasetEntry(
    code="hrss.social_insurance",
    owner="hrss",
    version=3,
    title="社会保险参保信息",
    description="参保人、险种、参保状态",
    schema=build_schema(
        [
            FieldSpec("citizen_id", FieldType.STRING, "公民身份号码", personal=True, required=True),
            FieldSpec("name", FieldType.STRING, "姓名", personal=True),
            FieldSpec("insured", FieldType.BOOLEAN, "是否参保"),
        ],
        "citizen_id",
    ),
    subject_kind=SubjectKind.PERSON,
    update_frequency="每日",
    share_class=ShareClass.CONDITIONAL,
    conditions="就业补贴审批",
    legal_basis=None,
    published=True,
    created_at=NOW,
    version_created_at=NOW,
    personal_bases=(PersonalBasis("社会保险法", "第七十四条", ("name",)),),
)


class _Exchange:
    def __init__(self, root: Path) -> None:
        # A data dir only (root CA, node signing key): no database is opened.
        self.settings = load_settings(data_dir=root, key_passphrase="test passphrase")
        init_data_dir(self.settings, datetime.now(UTC))
        self.root = load_pem_certificates(ca_certificate_pem(self.settings))[0]
        self.fingerprint = certificate_fingerprint(self.root)
        self.signing: NodeSigning = load_node_signing(self.settings)

    def sign(self, entry: DatasetEntry, *, exchange: bytes | None = None) -> str:
        return sign_entry(
            entry,
            exchange=exchange or self.fingerprint,
            signer=self.signing.signer,
            chain=self.signing.chain,
        )


@pytest.fixture
def exchanges(tmp_path: Path) -> tuple[_Exchange, _Exchange]:
    return _Exchange(tmp_path / "province"), _Exchange(tmp_path / "city")


def test_a_peers_own_entry_round_trips(exchanges: tuple[_Exchange, _Exchange]) -> None:
    province, _ = exchanges
    remote = verify_entry(province.sign(ENTRY), peer="province", peer_root=province.root, now=NOW)
    assert remote.entry == ENTRY
    assert remote.remote_code == "province:hrss.social_insurance"
    assert remote.remote_owner == "province/hrss"


def test_an_entry_of_another_exchange_is_refused(exchanges: tuple[_Exchange, _Exchange]) -> None:
    province, city = exchanges
    # The city relays the province's genuine entry as if it were its own offer.
    relayed = province.sign(ENTRY)
    with pytest.raises(TongbanError) as caught:
        verify_entry(relayed, peer="city", peer_root=city.root, now=NOW)
    assert caught.value.reason == "PEER_NOT_OWNER"


def test_an_entry_of_a_department_not_owning_the_code_is_refused(
    exchanges: tuple[_Exchange, _Exchange],
) -> None:
    province, _ = exchanges
    claimed = province.sign(replace(ENTRY, owner="samr"))
    with pytest.raises(TongbanError) as caught:
        verify_entry(claimed, peer="province", peer_root=province.root, now=NOW)
    assert caught.value.reason == "PEER_NOT_OWNER"


def test_an_entry_signed_under_another_root_is_refused(
    exchanges: tuple[_Exchange, _Exchange],
) -> None:
    province, city = exchanges
    # The city's node signs an entry naming the province's exchange.
    forged = city.sign(ENTRY, exchange=province.fingerprint)
    with pytest.raises(TongbanError) as caught:
        verify_entry(forged, peer="province", peer_root=province.root, now=NOW)
    assert caught.value.reason == "PEER_SIGNATURE_INVALID"


def test_an_altered_entry_is_refused(exchanges: tuple[_Exchange, _Exchange]) -> None:
    province, _ = exchanges
    header, payload, signature = province.sign(ENTRY).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["spec"]["share_class"] = "unconditional"
    altered = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(TongbanError) as caught:
        verify_entry(
            f"{header}.{altered}.{signature}", peer="province", peer_root=province.root, now=NOW
        )
    assert caught.value.reason == "PEER_SIGNATURE_INVALID"


def test_a_malformed_entry_is_refused(exchanges: tuple[_Exchange, _Exchange]) -> None:
    province, _ = exchanges
    not_shared_without_basis = province.sign(
        replace(ENTRY, share_class=ShareClass.NOT_SHARED, legal_basis=None)
    )
    for token in ("garbage", "a.b.c", not_shared_without_basis):
        with pytest.raises(TongbanError) as caught:
            verify_entry(token, peer="province", peer_root=province.root, now=NOW)
        assert caught.value.reason == "PEER_ENTRY_INVALID", token[:20]
    ok = province.sign(
        replace(ENTRY, share_class=ShareClass.NOT_SHARED, legal_basis=LegalBasis("法", "第一条"))
    )
    assert verify_entry(ok, peer="province", peer_root=province.root, now=NOW).entry.legal_basis


def _peer(name: str, exchange: _Exchange) -> Peer:
    return Peer(
        name=name,
        level=Level.PROVINCE,
        is_parent=True,
        endpoint="127.0.0.1:1",
        ca_pem=certificate_pem(exchange.root),
        ca_fingerprint=exchange.fingerprint,
        status=PeerStatus.ACTIVE,
        created_at=NOW,
        updated_at=NOW,
    )


def test_a_verified_entry_is_reused_only_while_its_certificates_are_valid(
    exchanges: tuple[_Exchange, _Exchange],
) -> None:
    province, city = exchanges
    token = province.sign(ENTRY)
    start, end = signed_window(token, "province")
    chain = province.signing.chain
    assert start == max(c.not_valid_before_utc for c in chain)
    assert end == min(c.not_valid_after_utc for c in chain)

    verified = VerifiedEntries()
    peer = _peer("province", province)
    first = verified.verify(token, peer, NOW)
    assert first.entry == ENTRY
    assert verified.verify(token, peer, NOW) is first  # not verified again
    # Past the signing certificate's end the cached answer is not used: refused as new.
    with pytest.raises(TongbanError) as refused:
        verified.verify(token, peer, end + timedelta(seconds=1))
    assert refused.value.reason == "PEER_SIGNATURE_INVALID"
    # The same token from a peer pinned to another root is checked afresh: it names
    # another exchange than that root's.
    with pytest.raises(TongbanError) as other:
        verified.verify(token, _peer("province", city), NOW)
    assert other.value.reason == "PEER_NOT_OWNER"
