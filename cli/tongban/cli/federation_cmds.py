"""``tongban catalogue federate`` and ``tongban catalogue remote``: a department offers
its dataset to peer exchanges, and sees the datasets peers offer (docs/federation.md).

They call the node's ``FederationService`` as the bundle's department, over the same
mutual TLS as every other ``--as`` command.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc

from tongban.cli.common import emit, message_dict
from tongban.client import Bundle
from tongban.client.errors import from_rpc_error
from tongban.exchange.server.interceptor import OFFICER_METADATA
from tongban.v1 import catalogue_pb2, federation_pb2, federation_pb2_grpc

__all__ = ["add_catalogue_parsers", "run_federation"]


def add_catalogue_parsers(cat_sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    federate = cat_sub.add_parser(
        "federate",
        parents=parents,
        help="offer one of your datasets to peer exchanges (all, or --peer ones), or --off",
    )
    federate.add_argument("code")
    federate.add_argument(
        "--peer", action="append", default=[], help="offer it to this peer only (repeatable)"
    )
    federate.add_argument("--off", action="store_true", help="withdraw it from every peer")
    remote = cat_sub.add_parser(
        "remote", parents=parents, help="the datasets peer exchanges offer this exchange"
    )
    remote.add_argument("--peer", default="", help="only this peer's")


@asynccontextmanager
async def _federation(args: argparse.Namespace) -> AsyncIterator[Any]:
    bundle = Bundle.load(args.bundle)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=bundle.ca_pem,
        private_key=bundle.tls_key_pem,
        certificate_chain=bundle.tls_cert_pem,
    )
    channel = grpc.aio.secure_channel(
        args.endpoint or bundle.endpoint,
        credentials,
        options=[("grpc.ssl_target_name_override", bundle.server_name)],
    )
    try:
        yield federation_pb2_grpc.FederationServiceStub(channel)
    finally:
        await channel.close(None)


async def run_federation(args: argparse.Namespace) -> int:
    metadata = ((OFFICER_METADATA, args.officer),) if args.officer else ()
    async with _federation(args) as stub:
        try:
            if args.catalogue_command == "federate":
                done = await stub.SetFederation(
                    federation_pb2.SetFederationRequest(
                        code=args.code, federated=not args.off, peers=args.peer
                    ),
                    metadata=metadata,
                    timeout=30,
                )
                to = ", ".join(done.peers) or "every peer"
                emit(
                    args,
                    {"federation": message_dict(done)},
                    f"{done.code} is offered to {to}"
                    if done.federated
                    else f"{done.code} is offered to no peer",
                )
                return 0
            answer = await stub.ListRemoteDatasets(
                federation_pb2.ListRemoteDatasetsRequest(peer=args.peer),
                metadata=metadata,
                timeout=30,
            )
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e) from e
    lines = [
        f"{d.code:<36} {d.owner:<20} v{d.version:<4} {_share(d.spec.share_class):<14} "
        f"{d.spec.title}"
        for d in answer.datasets
    ]
    emit(
        args,
        {"datasets": [message_dict(d) for d in answer.datasets]},
        "\n".join(lines) if lines else "no datasets offered by peers",
    )
    return 0


def _share(value: int) -> str:
    return catalogue_pb2.ShareClass.Name(value).removeprefix("SHARE_CLASS_").lower()  # type: ignore[arg-type]
