"""Signed answers across exchanges (docs/federation.md, "Signed answers across exchanges"):
the owner exchange signs what it answers the remote department, the caller's exchange
checks that signature before passing it on, and the department verifies it later under
the owner's root its exchange gives it. A missing, foreign or contradicting signature is
refused with PEER_ANSWER_UNSIGNED."""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest

from tests.conftest import client_for
from tests.exchange.federation.conftest import parts
from tests.exchange.federation.test_forwarding import OFFICER, _request, _share
from tests.stories.restaurant import CASE_ID, COMPANY, COMPANY_USCC, PURPOSE
from tongban.client import verify_answer
from tongban.exchange.datadir import ca_certificate_pem, load_node_credentials, load_node_signing
from tongban.exchange.federation.errors import PeerAnswerUnsigned
from tongban.exchange.federation.forwarding import check_signed_answer, sign_request
from tongban.exchange.node import Node
from tongban.exchange.sharing.service import AnsweredRecord
from tongban.signing import CertificateInvalid, load_pem_certificates
from tongban.v1 import federation_pb2, federation_pb2_grpc
from tongban.wire.values import from_field_value

FIELDS = ["name", "legal_representative"]


async def test_the_owner_signs_for_the_remote_department_and_it_verifies_under_its_root(
    province: Node, county: Node
) -> None:
    await _share(province, county)
    async with client_for(county, "approval", OFFICER) as approval:
        answer = await approval.query(
            "province:samr.enterprise", [COMPANY_USCC], fields=FIELDS, purpose=PURPOSE,
            case_id=CASE_ID, sign=True,
        )  # fmt: skip
        unsigned = await approval.query(
            "province:samr.enterprise", [COMPANY_USCC], fields=FIELDS, purpose=PURPOSE,
            case_id=CASE_ID,
        )  # fmt: skip
    assert (unsigned.signature, unsigned.signer_root) == ("", b"")
    # The root the county gives is the province's, as the county holds it for that peer.
    assert answer.signer_root == ca_certificate_pem(province.settings)
    signed = verify_answer(
        answer.signed_payload, answer.signature, ca_pem=answer.signer_root,
        now=county.clock.now(),
    )  # fmt: skip
    assert signed["caller"] == "county-a/approval"  # the owner's name for the caller
    assert (signed["dataset"], signed["purpose"], signed["case_id"]) == (
        "samr.enterprise", PURPOSE, CASE_ID,
    )  # fmt: skip
    assert [r["fields"] for r in signed["records"]] == [{k: COMPANY[k] for k in FIELDS}]
    # Not under the county's own root: the county did not sign it.
    with pytest.raises(CertificateInvalid):
        verify_answer(
            answer.signed_payload, answer.signature,
            ca_pem=ca_certificate_pem(county.settings), now=county.clock.now(),
        )  # fmt: skip


async def _signed_response(county: Node, province: Node) -> federation_pb2.ForwardQueryResponse:
    """A signed answer straight from the province, asked over the county node's identity."""
    token = sign_request(
        _request(county, province, fields=tuple(FIELDS), sign=True),
        load_node_signing(county.settings),
    )
    own = load_node_credentials(county.settings)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca_certificate_pem(province.settings),
        private_key=own.key_pem, certificate_chain=own.cert_chain_pem,
    )  # fmt: skip
    async with grpc.aio.secure_channel(f"127.0.0.1:{province.grpc_port}", credentials) as channel:
        stub = federation_pb2_grpc.PeerServiceStub(channel)
        response: federation_pb2.ForwardQueryResponse = await stub.ForwardQuery(
            federation_pb2.ForwardQueryRequest(request=token), timeout=10
        )
    return response


async def test_the_county_refuses_a_signed_answer_that_does_not_hold(
    province: Node, county: Node
) -> None:
    await _share(province, county)
    response = await _signed_response(county, province)
    peer = await parts(county).trust.peer("province")
    assert peer is not None
    entry = await parts(county).remote.get(peer, "samr.enterprise", now=county.clock.now())
    assert entry is not None
    root = load_pem_certificates(ca_certificate_pem(province.settings))[0]

    def records(r: federation_pb2.ForwardQueryResponse) -> list[AnsweredRecord]:
        return [
            AnsweredRecord(
                x.key,
                x.version,
                x.valid_from.ToDatetime().replace(tzinfo=county.clock.now().tzinfo),
                {n: from_field_value(v) for n, v in x.fields.items()},
            )
            for x in r.records
        ]

    def check(r: federation_pb2.ForwardQueryResponse, **changes: object) -> None:
        args: dict[str, object] = {
            "root": root,
            "now": county.clock.now(),
            "dataset": entry,
            "fields": FIELDS,
            "purpose": PURPOSE,
            "case_id": CASE_ID,
            "records": records(r),
            "missing_keys": [],
        }
        args.update(changes)
        check_signed_answer(r, **args)  # type: ignore[arg-type]

    check(response)  # as it came: it holds
    # A record changed on the way, a signature stripped, another root, another purpose.
    altered = federation_pb2.ForwardQueryResponse()
    altered.CopyFrom(response)
    altered.records[0].fields["name"].string_value = "某某公司"
    unsigned = federation_pb2.ForwardQueryResponse()
    unsigned.CopyFrom(response)
    unsigned.signature = ""
    county_root = load_pem_certificates(ca_certificate_pem(county.settings))[0]
    for bad, changes in (
        (altered, {}),
        (unsigned, {}),
        (response, {"root": county_root}),
        (response, {"purpose": "另一目的"}),
        (response, {"fields": ["name"]}),
        (response, {"now": county.clock.now() + timedelta(days=4000)}),
    ):
        with pytest.raises(PeerAnswerUnsigned):
            check(bad, **changes)
