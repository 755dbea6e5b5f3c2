"""Bounds on what a request may hold, past the checks every field gets: page tokens are
the node's (issued under a MAC, refused when forged, altered or another listing's), and
numbers and instants the columns or the arithmetic cannot take are refused naming their
field (INVALID_ARGUMENT, never INTERNAL)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial

import grpc
import pytest

from tests.conftest import client_for
from tests.stories.restaurant import BUSINESS_LICENCE_CLAIMS, CASE_ID, ENTERPRISE
from tongban.client import ExchangeClient, ExchangeError
from tongban.exchange.audit.log import SubjectHasher
from tongban.exchange.audit.store import decode_token
from tongban.exchange.errors import InvalidArgument
from tongban.exchange.node import Node
from tongban.exchange.pagetokens import PageTokenInvalid, PageTokens, peek_unverified
from tongban.exchange.server.sharing_services import _spec_from_message
from tongban.v1 import audit_pb2, catalogue_pb2

FIRST = datetime(1, 1, 1, tzinfo=UTC)  # the first and last instants a Timestamp holds
LAST = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)

KEY = bytes(range(32))


def test_a_token_opens_only_where_it_was_issued() -> None:
    tokens = PageTokens(KEY)
    token = tokens.issue("catalogue.datasets", "samr.enterprise")
    assert tokens.open("catalogue.datasets", token) == "samr.enterprise"
    assert tokens.open("catalogue.datasets", "") is None  # the first page
    # Every node of the exchange derives the same key from the log key.
    same = SubjectHasher(KEY).page_tokens()
    assert same.open("audit.search", same.issue("audit.search", "41")) == "41"
    assert PageTokens.from_log_key(KEY).open("audit.search", same.issue("audit.search", "7"))
    altered = token[:-1] + ("A" if token[-1] != "A" else "B")
    refused = [
        (tokens, "audit.search", token),  # another listing's token
        (PageTokens(bytes(32)), "catalogue.datasets", token),  # another key's
        (tokens, "catalogue.datasets", altered),
        (tokens, "catalogue.datasets", "c2Ftci5lbnRlcnByaXNl"),  # plain base64, as before
        (tokens, "catalogue.datasets", "!!!"),
        (tokens, "catalogue.datasets", "令牌"),
        (tokens, "catalogue.datasets", "A" * 10_000),
    ]
    for opener, scope, bad in refused:
        with pytest.raises(PageTokenInvalid) as caught:
            opener.open(scope, bad, field="page")
        assert caught.value.reason == "PAGE_TOKEN_INVALID"
        assert caught.value.metadata == {"field": "page"}
    with pytest.raises(ValueError, match="32 bytes"):
        PageTokens(b"short")


def test_peeking_checks_the_form_only() -> None:
    token = PageTokens(KEY).issue("audit.search", "12")
    assert peek_unverified(token) == "12"
    assert decode_token(token) == 12
    assert decode_token("") == -1
    for bad in ("!!!", "MA", PageTokens(KEY).issue("catalogue.datasets", "samr.x")):
        with pytest.raises(PageTokenInvalid):
            decode_token(bad)


def test_the_service_refuses_enum_numbers_the_proto_does_not_define() -> None:
    spec = catalogue_pb2.DatasetSpec()
    spec.CopyFrom(ENTERPRISE)
    spec.share_class = 99  # type: ignore[assignment]
    with pytest.raises(InvalidArgument) as caught:
        _spec_from_message(spec)
    assert caught.value.metadata == {"field": "share_class"}
    spec.CopyFrom(ENTERPRISE)
    spec.fields[1].type = -1  # type: ignore[assignment]
    with pytest.raises(InvalidArgument) as caught:
        _spec_from_message(spec)
    assert caught.value.metadata == {"field": "fields[1].type"}


async def _refused(call: Awaitable[object]) -> ExchangeError:
    with pytest.raises(ExchangeError) as caught:
        await call
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT, caught.value.message
    return caught.value


async def test_listings_page_with_their_own_tokens_only(node: Node) -> None:
    async with client_for(node, "samr") as samr, client_for(node, "audit") as audit:
        for name in ("a", "b", "c"):
            spec = catalogue_pb2.DatasetSpec()
            spec.CopyFrom(ENTERPRISE)
            spec.code = f"samr.{name}"
            await samr.register_dataset(spec, publish=True)
        codes, token = [], ""
        while True:
            page = await samr._call(
                samr._catalogue.ListDatasets,
                catalogue_pb2.ListDatasetsRequest(page_size=1, page_token=token),
            )
            codes += [d.spec.code for d in page.datasets]
            token = page.next_page_token
            if not token:
                break
        assert codes == ["samr.a", "samr.b", "samr.c"]
        first = await samr._call(
            samr._catalogue.ListDatasets, catalogue_pb2.ListDatasetsRequest(page_size=1)
        )
        for forged in ("c2Ftci5h", first.next_page_token[:-2], "AAAA"):
            error = await _refused(
                samr._call(
                    samr._catalogue.ListDatasets,
                    catalogue_pb2.ListDatasetsRequest(page_token=forged),
                )
            )
            assert error.reason == "PAGE_TOKEN_INVALID"
            assert error.metadata["field"] == "page_token"
        for _ in range(2):  # each look at a subject is logged: two entries at least
            await audit.subject_accesses("91330102MA2K8Q7R1X")
        search = await audit.audit_search(audit_pb2.SearchRequest(page_size=1))
        assert search.next_page_token
        # A token of the catalogue, or of the log search, is no token of the subject view.
        for other in (first.next_page_token, search.next_page_token):
            error = await _refused(audit.subject_accesses("91330102MA2K8Q7R1X", other))
            assert error.reason == "PAGE_TOKEN_INVALID"
        error = await _refused(
            audit.audit_search(audit_pb2.SearchRequest(page_token=first.next_page_token))
        )
        assert error.reason == "PAGE_TOKEN_INVALID"


async def test_numbers_past_their_columns_name_the_field(node: Node) -> None:
    async with client_for(node, "samr") as samr, client_for(node, "audit") as audit:
        await samr.register_dataset(ENTERPRISE, publish=True)
        cases: list[tuple[Callable[[], Awaitable[object]], str]] = [
            (lambda: samr.get_dataset("samr.enterprise", 2**32 - 1), "version"),
            (lambda: samr.get_dataset("samr.enterprise", 2**31), "version"),
            (lambda: audit.audit_entry(2**64 - 1), "index"),
            (lambda: audit.audit_entry(0, tree_size=2**63), "tree_size"),
            (lambda: audit.audit_checkpoint(2**64 - 1), "size"),
            (lambda: audit.audit_consistency(2**63, 2**64 - 1), "old_size"),
            (lambda: samr.acknowledge("00000000-0000-0000-0000-000000000001", -2), "position"),
            (lambda: samr.acknowledge("not-a-uuid", 2**40), "subscription_id"),
        ]
        for call, field in cases:
            error = await _refused(call())
            assert error.metadata.get("field") == field, (field, error.message)
        # In range but on no subscription: refused by the database's answer, not its error.
        error = await _refused(samr.acknowledge("00000000-0000-0000-0000-000000000001", 2**40))
        assert error.metadata.get("field") == "subscription_id"


def _issue(samr: ExchangeClient, start: datetime, end: datetime | None) -> Awaitable[object]:
    return samr.issue_licence(
        "business-licence", BUSINESS_LICENCE_CLAIMS, case_id=CASE_ID, not_before=start, expires=end
    )


async def test_instants_at_the_ends_of_time_name_the_field(node: Node) -> None:
    async with client_for(node, "samr") as samr, client_for(node, "audit") as audit:
        cases: list[tuple[Callable[[], Awaitable[object]], str]] = [
            (lambda: audit.audit_anomalies(FIRST, datetime(2026, 1, 1, tzinfo=UTC)), "from"),
            (lambda: audit.audit_anomalies(datetime(9999, 12, 30, tzinfo=UTC), LAST), "to"),
            (lambda: audit.audit_anomalies(datetime(2026, 1, 1, tzinfo=UTC), LAST), "to"),
        ]
        for start, end, field in (
            (FIRST, None, "not_before"),
            (LAST, None, "not_before"),
            (datetime(8000, 1, 1, tzinfo=UTC), None, "not_before"),  # after the seal expires
            (FIRST, LAST, "not_before"),
        ):
            cases.append((partial(_issue, samr, start, end), field))
        for call, field in cases:
            error = await _refused(call())
            assert error.metadata.get("field") == field, (field, error.message)
        # Far off but well formed, a licence may still end on the last day a Timestamp holds.
        licence = await samr.issue_licence(
            "business-licence", BUSINESS_LICENCE_CLAIMS, case_id=CASE_ID, expires=LAST
        )
        assert licence.expires == LAST
