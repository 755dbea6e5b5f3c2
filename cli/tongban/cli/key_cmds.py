"""``tongban key``: keys in the PKCS#11 token named by ``TONGBAN_PKCS11_MODULE``,
``TONGBAN_PKCS11_TOKEN`` and ``TONGBAN_PKCS11_PIN_FILE`` (or ``TONGBAN_PKCS11_PIN``).

``generate`` makes a key pair on the token, ``list`` shows the token's key pairs, and
``import`` copies a key file of the data dir (encrypted with the node's key passphrase)
into the token; the private half is then held only by the token, sensitive and not
extractable, and the file can be destroyed (the command says so rather than deleting a
key it cannot take back).
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from tongban.cli.common import emit, settings_from_args
from tongban.exchange.datadir import key_passphrase
from tongban.signing import TokenUnavailable, load_private_key
from tongban.signing.pkcs11 import Token, TokenConfig, TokenKey

__all__ = ["add_parsers", "run_key"]


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


async def run_key(args: argparse.Namespace) -> int:
    """Run one ``tongban key`` command; token errors surface as TongbanError."""
    return await asyncio.to_thread(_run, args)


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
            keys = token.keys()
            lines = [f"{k.label}  {k.algorithm}  sha256 {k.fingerprint}" for k in keys]
            emit(
                args,
                {"token": token.label, "keys": [_described(k) for k in keys]},
                "\n".join(lines) or f"token {token.label} holds no keys",
            )
    return 0
