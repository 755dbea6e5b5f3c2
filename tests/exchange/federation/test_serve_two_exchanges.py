"""Two exchanges as operators run them: two ``tongban serve`` processes, each with its own
data dir, root CA and embedded PostgreSQL, linked with ``tongban peer add`` from each
other's root certificate; an owner's federated dataset shows in the other's catalogue."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.cli_helpers import atongban, cli_env
from tests.exchange.test_serve_process import Served
from tongban.client import Bundle
from tongban.exchange.db.embedded import temp_root
from tongban.v1 import federation_pb2, federation_pb2_grpc

EXAMPLE = Path(__file__).parents[3] / "docs" / "examples" / "samr.enterprise.json"


@pytest.fixture
def root() -> Iterator[Path]:
    # Outside pytest's 0700 tmp root: as root, PostgreSQL runs as another user.
    made = temp_root("tongban-test-federation-")
    yield made
    shutil.rmtree(made, ignore_errors=True)


async def _remote_codes(bundle_path: Path, target: str) -> set[str]:
    bundle = Bundle.load(bundle_path)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=bundle.ca_pem,
        private_key=bundle.tls_key_pem,
        certificate_chain=bundle.tls_cert_pem,
    )
    async with grpc.aio.secure_channel(
        target, credentials, options=[("grpc.ssl_target_name_override", bundle.server_name)]
    ) as channel:
        answer = await federation_pb2_grpc.FederationServiceStub(channel).ListRemoteDatasets(
            federation_pb2.ListRemoteDatasetsRequest(), timeout=10
        )
    return {d.code for d in answer.datasets}


@pytest.mark.timeout(240)
async def test_two_served_exchanges_share_a_catalogue_entry(root: Path) -> None:
    province_dir, county_dir = root / "province", root / "county"
    province = Served(province_dir, "--demo")
    try:
        county = Served(county_dir, "--demo")
        try:
            env = cli_env()

            async def run(*args: str, data: Path) -> dict[str, object]:
                done = await atongban(*args, "--data-dir", str(data), "--json", env=env)
                assert done.code == 0, done.stdout + done.stderr
                result: dict[str, object] = done.json()
                return result

            # The operators swap root certificates out of band, then add each other.
            await run(
                "peer", "add", "province", "--ca", str(province_dir / "ca" / "ca.crt"),
                "--endpoint", province.ready["grpc"], "--level", "province", "--parent",
                data=county_dir,
            )  # fmt: skip
            await run(
                "peer", "add", "county-a", "--ca", str(county_dir / "ca" / "ca.crt"),
                "--endpoint", county.ready["grpc"], "--level", "county",
                data=province_dir,
            )  # fmt: skip

            samr = str(province_dir / "bundles" / "samr")
            as_samr = ("--as", samr, "--endpoint", province.ready["grpc"])
            await run(
                "catalogue", "register", str(EXAMPLE), "--publish", *as_samr, data=province_dir
            )
            done = await run(
                "catalogue", "federate", "samr.enterprise", *as_samr, data=province_dir
            )
            assert done["federation"] == {
                "code": "samr.enterprise", "federated": True, "peers": []
            }  # fmt: skip

            tax = county_dir / "bundles" / "tax"
            async with asyncio.timeout(60):  # the province's notice makes the county pull
                while "province:samr.enterprise" not in await _remote_codes(
                    tax, county.ready["grpc"]
                ):
                    await asyncio.sleep(0.2)
            shown = await run(
                "catalogue", "remote", "--as", str(tax), "--endpoint", county.ready["grpc"],
                data=county_dir,
            )  # fmt: skip
            datasets = shown["datasets"]
            assert isinstance(datasets, list)
            assert [(d["code"], d["owner"], d["peer_level"]) for d in datasets] == [
                ("province:samr.enterprise", "province/samr", "province")
            ]
            peers = (await run("peer", "list", data=county_dir))["peers"]
            assert isinstance(peers, list)
            assert peers[0]["sync"]["error_reason"] is None
        finally:
            assert county.stop()[0] == 0
    finally:
        assert province.stop()[0] == 0
