"""``tongban key``: keys in the PKCS#11 token named by ``TONGBAN_PKCS11_MODULE``,
``TONGBAN_PKCS11_TOKEN`` and ``TONGBAN_PKCS11_PIN_FILE`` (or ``TONGBAN_PKCS11_PIN``).

``generate`` makes a key pair on the token, ``list`` shows the token's key pairs, and
``import`` copies a key file of the data dir (encrypted with the node's key passphrase)
into the token; the private half is then held only by the token, sensitive and not
extractable, and the file can be destroyed (the command says so rather than deleting a
key it cannot take back).

``rotate seal DEPT`` gives a department's seal a successor that the trust list names at
once and that signs after ``--overlap``; ``revoke seal DEPT SHA256`` withdraws one of its
keys (what it signed then fails with SEAL_REVOKED); ``seals`` lists every custodial key
with its state. These work on the exchange's database (and its token, when configured).

``rotate ca-intermediate`` makes the next issuing CA under the root (the root key from
``--root-key``, its offline medium), named in trust lists at once and issuing after
``--overlap``; ``cas`` lists the issuing CAs with their state.

``rotate node`` and ``rotate checkpoint`` replace this node's answer-signing key and the
log's checkpoint key; both can be run again to finish a rotation cut short. ``sm2
checkpoint`` and ``sm2 answers`` set up the SM2 keys that sign beside Ed25519 and ES256.
docs/keys.md has the details of each.
"""

from __future__ import annotations

import argparse
import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import hashes

from tongban.cli.common import emit, settings_from_args
from tongban.exchange.datadir import key_passphrase
from tongban.exchange.errors import InvalidArgument
from tongban.signing import TokenUnavailable, load_private_key
from tongban.signing.pkcs11 import Token, TokenConfig, TokenKey
from tongban.signing.sm2 import Sm2PrivateKey, save_sm2_private_key

if TYPE_CHECKING:
    from tongban.exchange.licensing.custody import SealKey

__all__ = ["add_parsers", "run_key"]

_MAX_OVERLAP_HOURS = 24 * 90
_SHA256 = hashes.SHA256()
_MAX_REASON = 500


def add_parsers(
    sub: Any, common: argparse.ArgumentParser, parser_class: type[argparse.ArgumentParser]
) -> None:
    """Add ``tongban key generate|list|import``."""
    key = sub.add_parser("key", help="keys in the PKCS#11 token (HSM)")
    key_sub = key.add_subparsers(dest="key_command", required=True, parser_class=parser_class)
    generate = key_sub.add_parser(
        "generate", parents=[common], help="make a non-extractable key pair on the token"
    )
    generate.add_argument("label", help="the key's label on the token (1-64 characters)")
    generate.add_argument(
        "--algorithm",
        choices=["P-256", "Ed25519"],
        default="P-256",
        help="P-256 (seals, node signatures; default) or Ed25519 (log checkpoints)",
    )
    key_sub.add_parser("list", parents=[common], help="the token's key pairs")
    imported = key_sub.add_parser(
        "import",
        parents=[common],
        help="copy a key file (encrypted with the node's key passphrase) into the token",
    )
    imported.add_argument("label", help="the key's label on the token (1-64 characters)")
    imported.add_argument("file", type=Path, help="the key file, e.g. DATA_DIR/node/sign.key")
    rotate = key_sub.add_parser(
        "rotate",
        parents=[common],
        help="give a department's seal, or this node's signing key, a successor (no downtime)",
    )
    rotate.add_argument(
        "kind",
        choices=["seal", "node", "checkpoint", "ca-intermediate"],
        help="a department's seal, this node's signing key, the log's checkpoint key, or "
        "the exchange's issuing CA",
    )
    rotate.add_argument("department", nargs="?", help="the department code (for a seal)")
    rotate.add_argument(
        "--overlap",
        type=float,
        default=24.0,
        metavar="HOURS",
        help="how long the trust list names the new certificate before it signs "
        "(verifiers refresh daily; default 24)",
    )
    rotate.add_argument(
        "--root-key",
        type=Path,
        metavar="PATH",
        help="ca-intermediate: the root CA key file (encrypted with the key passphrase) on "
        "its offline medium; default DATA_DIR/ca/ca.key",
    )
    key_sub.add_parser("cas", parents=[common], help="the exchange's issuing CAs with their state")
    revoke = key_sub.add_parser(
        "revoke", parents=[common], help="revoke one of a department's seal keys"
    )
    revoke.add_argument("kind", choices=["seal"], help="what to revoke (seal keys, for now)")
    revoke.add_argument("department", help="the department code")
    revoke.add_argument("sha256", help="the seal certificate's SHA-256 (`tongban key seals`)")
    revoke.add_argument("--reason", required=True, help="why (1-500 characters; verifiers see it)")
    sm2 = key_sub.add_parser(
        "sm2",
        parents=[common],
        help="make (or show) the SM2 key that signs checkpoints beside Ed25519",
    )
    sm2.add_argument(
        "kind",
        choices=["checkpoint", "answers"],
        help="checkpoint: the log's SM2 line; answers: the exchange's SM2 root and this "
        "node's SM2 answer key, signing answers beside ES256",
    )
    seals = key_sub.add_parser(
        "seals", parents=[common], help="custodial seal keys with their state"
    )
    seals.add_argument("department", nargs="?", help="this department's only")


def _rotate_node(args: argparse.Namespace) -> int:
    """A new answer-signing key and certificate for this node (in the token when one is
    configured); a rotation cut short is finished by running it again."""
    from tongban.exchange.datadir import open_token, rotate_node_signing

    settings = settings_from_args(args)
    token = open_token()
    try:
        old, new = rotate_node_signing(settings, datetime.now(UTC), token)
    finally:
        if token is not None:
            token.close()
    emit(
        args,
        {"old_sha256": old.hex(), "new_sha256": new.hex()},
        f"node signing certificate sha256 {new.hex()} replaces {old.hex()}; the node signs "
        "with it from its next start, and what the old key signed keeps verifying",
    )
    return 0


async def _rotate_checkpoint(args: argparse.Namespace) -> int:
    """A new checkpoint key for the log, announced in a note signed by the old one; every
    step can be repeated, so running it again finishes a rotation cut short."""
    from tongban.exchange.audit.checkpoints import Checkpointer
    from tongban.exchange.audit.note import key_hash
    from tongban.exchange.datadir import (
        install_next_log_signer,
        load_log_signer,
        log_origin,
        next_log_signer,
        open_token,
        record_log_verifier_key,
    )
    from tongban.exchange.db.database import Database
    from tongban.signing import SystemClock

    settings = settings_from_args(args)
    origin = log_origin(settings)
    token = await asyncio.to_thread(open_token)
    try:
        current = load_log_signer(settings, token)
        upcoming = next_log_signer(settings, token)
        async with await Database.open(settings, pool_size=1) as db:
            checkpoints = Checkpointer(db.pool, current, origin, SystemClock(), signer="cli")
            old_vkey, old_key = checkpoints.verifier_key, checkpoints.public_key
            # The first key is what verifiers start from: keep it before the change is made.
            record_log_verifier_key(settings, old_vkey)
            from_size = await checkpoints.rotate(upcoming)
        install_next_log_signer(settings, token, key_hash(origin, old_key).hex())
        new_vkey = checkpoints.verifier_key
        record_log_verifier_key(settings, new_vkey)
    finally:
        if token is not None:
            token.close()
    emit(
        args,
        {"from_size": from_size, "old_verifier_key": old_vkey, "new_verifier_key": new_vkey},
        f"checkpoints from size {from_size:,} on are signed by {new_vkey}\n  announced in a "
        f"note signed by {old_vkey}; running nodes load the new key at their next checkpoint. "
        "Give witnesses the new key (TONGBAN_WITNESS_LOGS).",
    )
    return 0


def _sm2_answer_key(args: argparse.Namespace) -> int:
    """Make the exchange's SM2 root and this node's SM2 answer key if missing; nodes
    started after sign every signed answer with SM2 beside ES256 (docs/keys.md)."""
    from tongban.exchange.datadir import ensure_sm2_answer_signing, sm2_ca_certificate_pem
    from tongban.signing import certificate_fingerprint, load_pem_certificates

    settings = settings_from_args(args)
    made = ensure_sm2_answer_signing(settings, datetime.now(UTC))
    pem = sm2_ca_certificate_pem(settings)
    assert pem is not None  # just made, or there already
    root = certificate_fingerprint(load_pem_certificates(pem)[0]).hex()
    emit(
        args,
        {"created": made, "sm2_root_sha256": root},
        f"SM2 answer signing {'set up' if made else 'already set up'}: nodes started from now "
        f"on sign answers with SM2 beside ES256. SM2 root (ca/sm2-ca.crt) sha256 {root}",
    )
    return 0


def _sm2_checkpoint_key(args: argparse.Namespace) -> int:
    """Make ``node/log-sm2.key`` if the data dir has none; print its verifier key. Nodes
    started after it add an SM2 line to every checkpoint (docs/keys.md)."""
    from tongban.exchange.audit.sm2_note import sm2_verifier_key
    from tongban.exchange.datadir import SM2_CHECKPOINT_KEY, load_log_sm2_signer, log_origin

    settings = settings_from_args(args)
    existing = load_log_sm2_signer(settings)
    key = existing or Sm2PrivateKey.generate()
    if existing is None:
        path = settings.data_dir / "node" / SM2_CHECKPOINT_KEY
        save_sm2_private_key(path, key, key_passphrase(settings))
    vkey = sm2_verifier_key(log_origin(settings), key.public)
    verb = "already had" if existing else "now has"
    emit(
        args,
        {"verifier_key": vkey, "created": existing is None},
        f"the data dir {verb} an SM2 checkpoint key; nodes started from now on add an SM2 "
        f"line to each checkpoint. Its verifier key:\n{vkey}",
    )
    return 0


def _token() -> Token:
    config = TokenConfig.from_environment()
    if config is None:
        raise TokenUnavailable(
            "No PKCS#11 token is configured: set TONGBAN_PKCS11_MODULE, TONGBAN_PKCS11_TOKEN "
            "and TONGBAN_PKCS11_PIN_FILE (see docs/keys.md)."
        )
    return Token(config)


def _described(key: TokenKey) -> dict[str, str]:
    return {"label": key.label, "algorithm": key.algorithm, "fingerprint": key.fingerprint}


def _rotate_issuing_ca(args: argparse.Namespace) -> int:
    """The next issuing CA, signed with the root key from its offline medium; running it
    again while one waits to take over shows that one."""
    from tongban.exchange.datadir import rotate_issuing_ca

    if not 0 <= args.overlap <= _MAX_OVERLAP_HOURS:
        raise InvalidArgument(f"--overlap is {args.overlap} hours; give 0 to {_MAX_OVERLAP_HOURS}.")
    made, new = rotate_issuing_ca(
        settings_from_args(args),
        datetime.now(UTC),
        overlap=timedelta(hours=args.overlap),
        root_key_file=args.root_key,
    )
    fingerprint = made.cert.fingerprint(_SHA256).hex()
    when = made.takes_over.isoformat(timespec="seconds")
    emit(
        args,
        {"generation": made.generation, "sha256": fingerprint,
         "takes_over": made.takes_over.isoformat(), "made_now": new},
        (f"issuing CA {made.generation} (sha256 {fingerprint}) made" if new else
         f"issuing CA {made.generation} (sha256 {fingerprint}) was already waiting")
        + f"; trust lists name it from their next signing, and it issues from {when}. Copy "
        "ca/issuing/ to the exchange's other nodes, and put the root key back offline.",
    )  # fmt: skip
    return 0


def _issuing_cas(args: argparse.Namespace) -> int:
    from tongban.exchange.datadir import issuing_ca_states

    states = issuing_ca_states(settings_from_args(args), datetime.now(UTC))
    rows = [
        {"generation": g.generation, "state": state, "sha256": g.cert.fingerprint(_SHA256).hex(),
         "takes_over": g.takes_over.isoformat(),
         "not_after": g.cert.not_valid_after_utc.isoformat(), "has_key": g.has_key}
        for g, state in states
    ]  # fmt: skip
    lines = [
        f"{r['generation']:>4}  {r['state']:<8}  sha256 {str(r['sha256'])[:16]}…  from "
        f"{str(r['takes_over'])[:19]}  until {str(r['not_after'])[:10]}"
        f"{'' if r['has_key'] else '  (key deleted)'}"
        for r in rows
    ]
    emit(
        args,
        {"issuing_cas": rows},
        "\n".join(lines) or "no issuing CA: this exchange's root issues directly",
    )
    return 0


async def run_key(args: argparse.Namespace) -> int:
    """Run one ``tongban key`` command; token errors surface as TongbanError."""
    if args.key_command == "rotate" and args.kind == "ca-intermediate":
        return await asyncio.to_thread(_rotate_issuing_ca, args)
    if args.key_command == "cas":
        return await asyncio.to_thread(_issuing_cas, args)
    if args.key_command == "rotate" and args.kind == "node":
        return await asyncio.to_thread(_rotate_node, args)
    if args.key_command == "rotate" and args.kind == "checkpoint":
        return await _rotate_checkpoint(args)
    if args.key_command == "rotate" and not args.department:
        raise InvalidArgument(
            "Name the department whose seal to rotate: `tongban key rotate seal CODE`."
        )
    if args.key_command in ("rotate", "revoke", "seals"):
        return await _custody(args)
    if args.key_command == "sm2" and args.kind == "answers":
        return await asyncio.to_thread(_sm2_answer_key, args)
    if args.key_command == "sm2":
        return await asyncio.to_thread(_sm2_checkpoint_key, args)
    return await asyncio.to_thread(_run, args)


async def _custody(args: argparse.Namespace) -> int:
    from tongban.exchange.datadir import open_token
    from tongban.exchange.db.database import Database
    from tongban.exchange.licensing.setup import rotate_seal, vault_for

    settings = settings_from_args(args)
    now = datetime.now(UTC)
    token = await asyncio.to_thread(open_token)  # with a token, the new key goes into it
    try:
        # A rotation registers the new seal's fingerprint: the registry owner's login.
        async with await Database.open(settings, pool_size=1, owner=True) as db:
            vault = vault_for(db.pool, settings, token)
            if args.key_command == "rotate":
                if not 0 <= args.overlap <= _MAX_OVERLAP_HOURS:
                    raise InvalidArgument(
                        f"--overlap is {args.overlap} hours; give 0 to {_MAX_OVERLAP_HOURS}."
                    )
                fingerprint, takes_over = await rotate_seal(
                    vault, db.pool, settings, args.department, now,
                    timedelta(hours=args.overlap),
                )  # fmt: skip
                emit(
                    args,
                    {"department": args.department, "seal_sha256": fingerprint.hex(),
                     "signs_from": takes_over.isoformat()},
                    f"{args.department}: new seal certificate sha256 {fingerprint.hex()}, in the "
                    f"trust list now, signing from {takes_over.isoformat(timespec='seconds')}; "
                    "the old seal signs until then and stays trusted until it expires",
                )  # fmt: skip
            elif args.key_command == "revoke":
                reason = args.reason.strip()
                if not 1 <= len(reason) <= _MAX_REASON:
                    raise InvalidArgument("--reason must be 1-500 characters.")
                try:
                    fingerprint = bytes.fromhex(args.sha256)
                except ValueError:
                    fingerprint = b""
                if len(fingerprint) != 32:
                    raise InvalidArgument(
                        f"{args.sha256[:80]!r} is not a SHA-256 in hex (64 characters); "
                        "`tongban key seals` lists them."
                    )
                await vault.revoke(args.department, fingerprint, reason, now)
                emit(
                    args,
                    {"department": args.department, "seal_sha256": fingerprint.hex(),
                     "revoked_at": now.isoformat()},
                    f"{args.department}: seal {fingerprint.hex()} revoked; the next trust list "
                    "names it revoked, and what it signed fails with SEAL_REVOKED",
                )  # fmt: skip
            else:
                keys = await vault.keys(args.department)
                emit(
                    args,
                    {"seals": [_seal_dict(k) for k in keys]},
                    "\n".join(_seal_line(k) for k in keys) or "no custodial seals",
                )  # fmt: skip
    finally:
        if token is not None:
            token.close()
    return 0


def _seal_line(key: SealKey) -> str:
    where = f"token {key.key_label}" if key.key_label else "database"
    return (
        f"{key.holder:<14} {key.state:<8} sha256 {key.fingerprint.hex()[:16]}…  from "
        f"{key.active_from.isoformat(timespec='seconds')}  until "
        f"{key.not_after.date().isoformat()}  {where}"
    )


def _seal_dict(key: SealKey) -> dict[str, str | None]:
    return {
        "holder": key.holder,
        "state": key.state,
        "sha256": key.fingerprint.hex(),
        "active_from": key.active_from.isoformat(),
        "not_after": key.not_after.isoformat(),
        "key_label": key.key_label,
    }


def _run(args: argparse.Namespace) -> int:
    if args.key_command == "import":
        # Read the file before touching the token: a wrong passphrase changes nothing.
        passphrase = key_passphrase(settings_from_args(args))
        private = load_private_key(args.file, passphrase)
    with _token() as token:
        if args.key_command == "generate":
            made = token.generate(args.label, args.algorithm)
            emit(
                args,
                {"key": _described(made)},
                f"{made.label}: {made.algorithm} key made on token {token.label}\n"
                f"  public key sha256 {made.fingerprint}",
            )
        elif args.key_command == "import":
            copied = token.import_key(args.label, private)
            emit(
                args,
                {"key": _described(copied), "file": str(args.file)},
                f"{copied.label}: {copied.algorithm} key copied into token {token.label}\n"
                f"  public key sha256 {copied.fingerprint}\n"
                f"  {args.file} still holds the key: destroy it (shred -u) once the token is "
                "backed up",
            )
        else:
            keys = token.key_pairs()
            lines = [f"{k.label}  {k.algorithm}  sha256 {k.fingerprint}" for k in keys]
            emit(
                args,
                {"token": token.label, "keys": [_described(k) for k in keys]},
                "\n".join(lines) or f"token {token.label} holds no keys",
            )
    return 0
