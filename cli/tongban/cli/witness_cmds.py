"""``tongban witness``: a standalone C2SP tlog-witness (docs/audit-log.md, "Witnesses").

``init`` makes the witness's name and Ed25519 key (a passphrase-encrypted file in
``DATA_DIR/witness``, or the PKCS#11 token's ``witness-cosign`` key when
``TONGBAN_PKCS11_*`` is set); ``key`` prints its verifier key, which node operators put in
``TONGBAN_WITNESSES``; ``serve`` answers ``POST /add-checkpoint`` for the logs given with
``--log`` or ``TONGBAN_WITNESS_LOGS``; ``status`` shows the latest checkpoint cosigned for
each log and the refusals kept as evidence. A witness needs only its own data dir: no
CA, node credentials or database.

On a node's data dir, ``init`` makes the exchange's witness key instead: the node then
witnesses its peers' logs over the peer link, its state in the exchange's PostgreSQL
(docs/federation.md, "Peers as witnesses"), so ``serve`` refuses to run there: one key
with two states could cosign two views of one log.

Also here: the trusted witnesses of ``tongban audit verify --witnesses N``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import signal
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tongban.cli.common import emit, settings_from_args
from tongban.exchange.audit.cosignature import WitnessKey, WitnessKeyInvalid
from tongban.exchange.audit.note import NoteInvalid, parse_verifier_key
from tongban.exchange.audit.witnessed import WitnessedReport, verify_witnessed
from tongban.exchange.datadir import is_initialised, open_token
from tongban.exchange.db.database import Database
from tongban.exchange.errors import ConfigInvalid
from tongban.exchange.settings import Settings, parse_listen_address
from tongban.exchange.witness import (
    Witness,
    WitnessServer,
    WitnessState,
    init_witness,
    load_witness,
    log_keys,
    parse_witness_endpoints,
)
from tongban.exchange.witness.keys import WitnessNotInitialised, state_path
from tongban.signing.clock import SystemClock
from tongban.signing.pkcs11 import Token

__all__ = [
    "add_parsers",
    "run_witness",
    "trusted_witnesses",
    "witness_key_argument",
    "witnessed_summary",
]


def _vkey(value: str) -> str:
    try:
        parse_verifier_key(value)
    except NoteInvalid as e:
        raise argparse.ArgumentTypeError(f"not a log's verifier key: {e.message}") from None
    return value


def witness_key_argument(value: str) -> WitnessKey:
    """``--witness VKEY``: a witness's verifier key, as ``tongban witness key`` prints it."""
    try:
        return WitnessKey.parse(value)
    except WitnessKeyInvalid as e:
        raise argparse.ArgumentTypeError(e.message) from None


def add_parsers(
    sub: Any, common: argparse.ArgumentParser, parser_class: type[argparse.ArgumentParser]
) -> None:
    """Add ``tongban witness init|key|serve|status``."""
    witness = sub.add_parser("witness", help="a C2SP tlog-witness that cosigns logs' checkpoints")
    witness_sub = witness.add_subparsers(
        dest="witness_command", required=True, parser_class=parser_class
    )
    init = witness_sub.add_parser(
        "init", parents=[common], help="make the witness's name and key; print its verifier key"
    )
    init.add_argument(
        "--name", required=True, help="the witness's name, a schema-less URL (witness.example/w1)"
    )
    witness_sub.add_parser("key", parents=[common], help="print the witness's verifier key")
    serve = witness_sub.add_parser(
        "serve", parents=[common], help="answer add-checkpoint requests until stopped"
    )
    serve.add_argument(
        "--listen", help="HTTP address (default $TONGBAN_WITNESS_LISTEN or 127.0.0.1:8090)"
    )
    serve.add_argument(
        "--log",
        action="append",
        default=[],
        type=_vkey,
        metavar="VKEY",
        help="a log to witness, by its verifier key (`tongban audit key`); repeatable, "
        "added to $TONGBAN_WITNESS_LOGS",
    )
    witness_sub.add_parser(
        "status", parents=[common], help="the latest checkpoint cosigned for each log"
    )


async def run_witness(args: argparse.Namespace) -> int:
    """Run one ``tongban witness`` command."""
    settings = settings_from_args(args)
    token = await asyncio.to_thread(open_token)
    try:
        if args.witness_command == "serve":
            return await _serve(args, settings, token)
        if args.witness_command == "status":
            return await asyncio.to_thread(_status, args, settings)
        if args.witness_command == "init":
            identity = await asyncio.to_thread(init_witness, settings, args.name, token)
        else:
            identity = await asyncio.to_thread(load_witness, settings, token)
        emit(
            args,
            {
                "witness": identity.key.name,
                "verifier_key": identity.key.vkey,
                "key": identity.where,
            },
            identity.key.vkey
            if args.witness_command == "key"
            else f"witness {identity.key.name} (key: {identity.where})\n  verifier key: "
            f"{identity.key.vkey}\n  give nodes TONGBAN_WITNESSES={identity.key.vkey}@<URL>"
            + (
                " (or, on a peer exchange's nodes, @peer:<its name for this exchange>)"
                if is_initialised(settings.data_dir)
                else ""
            ),
        )
        return 0
    finally:
        if token is not None:
            token.close()


async def _serve(args: argparse.Namespace, settings: Settings, token: Token | None) -> int:
    try:
        listen = parse_listen_address(args.listen) if args.listen else settings.witness_listen
    except ValueError as e:
        raise ConfigInvalid(f"--listen={args.listen!r}: {e}.") from None
    if is_initialised(settings.data_dir):
        raise ConfigInvalid(
            f"{settings.data_dir} is a node's data dir: its witness cosigns peers' logs over "
            "the peer link, with its state in the exchange's database; run `tongban witness "
            'serve` on a data dir of its own (docs/federation.md, "Peers as witnesses").'
        )
    vkeys = [*settings.witness_logs, *args.log]
    if not vkeys:
        raise ConfigInvalid(
            "The witness follows no log: give each log's verifier key with --log (as "
            "`tongban audit key` prints it) or TONGBAN_WITNESS_LOGS."
        )
    identity = await asyncio.to_thread(load_witness, settings, token)
    state = await asyncio.to_thread(WitnessState, state_path(settings))
    try:
        witness = Witness(identity.key, identity.signer, log_keys(vkeys), state, SystemClock())
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            async with WitnessServer(witness, listen) as server:
                emit(
                    args,
                    {
                        "event": "ready",
                        "url": server.url,
                        "witness": identity.key.vkey,
                        "logs": witness.origins,
                    },
                    f"witness {identity.key.name} ready: {server.url}/add-checkpoint\n"
                    f"  verifier key {identity.key.vkey}\n  logs: {', '.join(witness.origins)}"
                    "\n  stop with Ctrl-C",
                )
                await stop.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
    finally:
        state.close()
    emit(args, {"event": "stopped"}, "")
    return 0


def _status(args: argparse.Namespace, settings: Settings) -> int:
    path = state_path(settings)
    if not path.exists():
        raise WitnessNotInitialised(
            f"{path} does not exist: no witness has run on this data dir; make one with "
            "`tongban witness init --name NAME` and run `tongban witness serve`."
        )
    with WitnessState(path) as state:
        records = state.records()
        refusals = state.refusals(limit=1000)
    lines = [
        f"{r.origin}  size {r.size:,}  root {base64.b64encode(r.root).decode()}  "
        f"cosigned {r.cosigned_at:%Y-%m-%d %H:%M:%S} UTC"
        for r in records
    ] or ["no checkpoint cosigned yet"]
    if refusals:
        lines.append(f"{len(refusals)} refused checkpoint(s) kept as evidence")
    emit(
        args,
        {
            "state": str(path),
            "logs": [
                {
                    "origin": r.origin,
                    "size": r.size,
                    "root": base64.b64encode(r.root).decode(),
                    "cosigned_at": r.cosigned_at.isoformat(),
                }
                for r in records
            ],
            "refusals": len(refusals),
        },
        "\n".join(lines),
    )
    return 0


def trusted_witnesses(args: argparse.Namespace, settings: Settings) -> list[WitnessKey]:
    """The witnesses ``audit verify`` trusts: ``--witness`` keys, else TONGBAN_WITNESSES'."""
    given: list[WitnessKey] = list(getattr(args, "witness", None) or [])
    if given:
        return given
    return [endpoint.key for endpoint in parse_witness_endpoints(settings.witnesses)]


async def witnessed_summary(
    args: argparse.Namespace,
    settings: Settings,
    db: Database,
    origin: str,
    verifier: Ed25519PublicKey,
    total: int,
) -> tuple[dict[str, Any], str]:
    """``audit verify --witnesses N``: the JSON member and the sentence for the report;
    raises (exit 1 with a reason code) unless a checkpoint has N valid cosignatures."""
    report: WitnessedReport = await verify_witnessed(
        db.pool,
        origin=origin,
        verifier=verifier,
        witnesses=trusted_witnesses(args, settings),
        quorum=args.witnesses,
    )
    names = sorted(c.witness.name for c in report.cosignatures)
    return (
        {
            "size": report.size,
            "witnesses": names,
            "cosignatures_checked": report.checked,
            "unwitnessed_entries": total - report.size,
        },
        f"witnessed by {len(names)} of the required {args.witnesses} ({', '.join(names)}) up "
        f"to {report.size:,} entries ({total - report.size:,} later entries not yet); "
        f"{report.checked} kept cosignatures verify",
    )
