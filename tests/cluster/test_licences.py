"""Licence status on several nodes: a licence issued through one node verifies through
another, and a suspension or revocation through one is seen at once by the other — in its
online verification and in the status list it serves (each node re-signs its cached list
when the list's revision in PostgreSQL has moved)."""

from __future__ import annotations

from urllib.parse import urlsplit

import aiohttp
import pytest

from tests.cluster.cluster import Cluster
from tests.stories.restaurant import BUSINESS_LICENCE_CLAIMS
from tongban.exchange.datadir import ca_certificate_pem
from tongban.licence.status_list import LicenceStatus, verify_status_list
from tongban.signing import load_pem_certificates
from tongban.signing.clock import SystemClock

pytestmark = pytest.mark.slow


async def test_licence_status_changes_take_effect_on_every_node(cluster: Cluster) -> None:
    a, b = await cluster.start(["node-a", "node-b"])
    samr_a = cluster.client(a, "samr", "SC-1")
    samr_b = cluster.client(b, "samr", "SC-1")
    licence = await samr_a.issue_licence(
        "business-licence", BUSINESS_LICENCE_CLAIMS, case_id="DJ-2026-0001", reason="设立登记"
    )
    assert (await samr_b.verify_licence(licence.qr)).verified
    roots = load_pem_certificates(ca_certificate_pem(cluster.settings))

    async def served_by_b() -> int | None:
        # The licence names the public URL; ask node B for the same list.
        path = urlsplit(licence.status_uri).path
        async with aiohttp.ClientSession() as http, http.get(f"http://{b.http}{path}") as got:
            assert got.status == 200
            token = await got.text()
        status_list = verify_status_list(
            token, uri=licence.status_uri, roots=roots, now=SystemClock().now()
        )
        return status_list.get(licence.status_index)

    assert await served_by_b() == LicenceStatus.VALID
    for action, status, reason in (
        ("suspend", LicenceStatus.SUSPENDED, "LICENCE_SUSPENDED"),
        ("reinstate", LicenceStatus.VALID, ""),
        ("revoke", LicenceStatus.INVALID, "LICENCE_REVOKED"),
    ):
        await samr_a.change_licence_status(licence.number, action, f"{action}：集群测试")
        result = await samr_b.verify_licence(licence.qr)
        assert result.verified is (status == LicenceStatus.VALID)
        assert result.reason == reason
        assert await served_by_b() == status
