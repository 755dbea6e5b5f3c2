"""``tongban audit trail CASE``: one case followed across exchanges (docs/federation.md,
"One trail per case"). The local entries, and each peer entry they name fetched from the
peer with the node's certificate and checked here against the peer's pinned log key."""

from __future__ import annotations

import argparse
from datetime import tzinfo

from tongban.cli.common import emit
from tongban.exchange.audit.store import AuditStore
from tongban.exchange.datadir import load_node_credentials
from tongban.exchange.db.database import Database
from tongban.exchange.federation.links import PeerLinks
from tongban.exchange.federation.peers import PeerStore
from tongban.exchange.federation.trail import CaseTrail, CaseTrails
from tongban.exchange.settings import Settings

__all__ = ["run_trail"]


async def run_trail(
    args: argparse.Namespace, settings: Settings, db: Database, store: AuditStore, zone: tzinfo
) -> int:
    """Print the trail; exit 0 when every peer entry was shown and checked, 1 otherwise."""
    tls = load_node_credentials(settings)
    links = PeerLinks(
        key_pem=tls.key_pem, chain_pem=tls.cert_chain_pem, call_seconds=settings.peer_call_seconds
    )
    try:
        trail = await CaseTrails(store, PeerStore(db.pool), links).follow(args.case)
    finally:
        await links.close()
    emit(args, trail.to_dict(), _text(trail, zone))
    return 0 if all(r.state == "verified" for r in trail.remote) else 1


def _text(trail: CaseTrail, zone: tzinfo) -> str:
    lines = [f"case {trail.case_id}: {len(trail.local)} local entries"]
    lines += [
        f"  {e.index:>8}  {e.at.astimezone(zone):%Y-%m-%d %H:%M:%S}  {e.caller:<14} "
        f"{e.action:<14} {e.decision:<7} {e.dataset or '-':<26} {e.reason or ''}"
        for e in trail.local
    ]
    if not trail.remote:
        lines.append("no forwarded requests")
    for r in trail.remote:
        head = f"peer {r.peer} entry {r.index}: "
        if r.entry is None:
            lines.append(f"{head}{r.state.upper()} {r.reason}: {r.message}")
            continue
        e = r.entry
        lines.append(
            f"{head}VERIFIED under its checkpoint of size {r.checkpoint_size}: "
            f"{e.at.astimezone(zone):%Y-%m-%d %H:%M:%S} {e.caller} {e.action} "
            f"{e.decision} {e.dataset or '-'} {e.reason or ''}"
        )
    return "\n".join(lines)
