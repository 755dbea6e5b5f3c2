"""``tongban peer``: the operator links this exchange to peer exchanges (docs/federation.md).

Like ``tongban dept``, these write the registry with the schema owner's login (the node's
role only reads it) and every running node applies the change at once.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tongban.cli.common import emit, settings_from_args
from tongban.exchange.datadir import ca_certificate_pem
from tongban.exchange.db.database import Database
from tongban.exchange.departments import Level
from tongban.exchange.federation.errors import PeerCaInvalid
from tongban.exchange.federation.peers import Peer, PeerStatus, PeerStore, check_peer_ca
from tongban.signing.certs import load_pem_certificates
from tongban.signing.clock import SystemClock

__all__ = ["add_parsers", "run_peer"]


def add_parsers(
    sub: Any, common: argparse.ArgumentParser, parser_class: type[argparse.ArgumentParser]
) -> None:
    peer = sub.add_parser("peer", help="link this exchange to peer exchanges (federation)")
    peer_sub = peer.add_subparsers(dest="peer_command", required=True, parser_class=parser_class)
    add = peer_sub.add_parser(
        "add", parents=[common], help="add a peer exchange, after swapping root CAs out of band"
    )
    add.add_argument("name", help="this exchange's name for the peer, e.g. province")
    add.add_argument("--ca", required=True, type=Path, help="the peer's root CA (PEM)")
    add.add_argument("--endpoint", required=True, help="the peer's gRPC address, HOST:PORT")
    add.add_argument("--level", required=True, choices=[level.value for level in Level])
    add.add_argument(
        "--parent", action="store_true", help="the peer is the exchange above this one"
    )
    log_key = peer_sub.add_parser(
        "log-key",
        parents=[common],
        help="pin the verifier key of a peer's access log (for `tongban audit trail`)",
    )
    log_key.add_argument("name")
    log_key.add_argument("key", help="what the peer operator's `tongban audit key` prints")
    peer_sub.add_parser("list", parents=[common], help="list peers and their last pull")
    for name, what in (
        ("suspend", "refuse a peer's calls and stop calling it"),
        ("activate", "lift a peer's suspension"),
        ("remove", "forget a peer and the datasets it offered"),
    ):
        one = peer_sub.add_parser(name, parents=[common], help=what)
        one.add_argument("name")


async def run_peer(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    owner = args.peer_command != "list"
    async with await Database.open(settings, pool_size=2, owner=owner) as db:
        store = PeerStore(db.pool)
        if args.peer_command == "add":
            try:
                pem = args.ca.read_bytes()
            except OSError as e:
                raise PeerCaInvalid(
                    f"Cannot read the peer's CA file {args.ca}: {e.strerror}."
                ) from e
            ca = check_peer_ca(
                pem,
                own_root=load_pem_certificates(ca_certificate_pem(settings))[0],
                now=SystemClock().now(),
            )
            peer = await store.add(
                name=args.name,
                ca=ca,
                endpoint=args.endpoint,
                level=Level(args.level),
                is_parent=args.parent,
            )
            emit(
                args,
                {"peer": peer.to_dict()},
                f"added peer {peer.name} ({peer.level.value}"
                f"{', parent' if peer.is_parent else ''}) at {peer.endpoint}; root CA sha256 "
                f"{peer.ca_fingerprint.hex()}",
            )
        elif args.peer_command == "list":
            peers = await store.list()
            emit(
                args,
                {"peers": [p.to_dict() for p in peers]},
                "\n".join([_HEADER, *map(_line, peers)]) if peers else "no peers configured",
            )
        elif args.peer_command == "log-key":
            peer = await store.set_log_key(args.name, args.key)
            emit(args, {"peer": peer.to_dict()}, f"pinned the log key of {peer.name}: {args.key}")
        elif args.peer_command == "remove":
            await store.remove(args.name)
            emit(args, {"removed": args.name}, f"removed peer {args.name}")
        else:
            status = PeerStatus.SUSPENDED if args.peer_command == "suspend" else PeerStatus.ACTIVE
            peer = await store.set_status(args.name, status)
            emit(args, {"peer": peer.to_dict()}, f"{peer.name} is now {peer.status.value}")
    return 0


_HEADER = f"{'NAME':<16} {'LEVEL':<9} {'PARENT':<7} {'STATUS':<10} {'ENDPOINT':<24} LAST PULL"


def _line(peer: Peer) -> str:
    sync = peer.sync
    if sync is None:
        pulled = "never"
    elif sync.error_reason:
        pulled = f"failed {sync.attempted_at:%Y-%m-%d %H:%M:%S}: {sync.error_reason}"
    else:
        pulled = f"{sync.synced_at:%Y-%m-%d %H:%M:%S}" if sync.synced_at else "never"
    return (
        f"{peer.name:<16} {peer.level.value:<9} {'yes' if peer.is_parent else '-':<7} "
        f"{peer.status.value:<10} {peer.endpoint:<24} {pulled}"
    )
