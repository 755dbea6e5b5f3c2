"""The witness's identity: its name and Ed25519 cosigning key, kept in the witness's own
directory (``DATA_DIR/witness``), beside its state file.

``witness.json`` names the witness and says where its key is: ``witness.key`` in the same
directory (passphrase-encrypted PKCS#8, as every key file, with the key passphrase of the
data dir) or, when a PKCS#11 token is configured (``TONGBAN_PKCS11_*``) at
``tongban witness init``, the token's key labelled ``witness-cosign``. A witness needs no
CA, node credentials or database: only this directory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tongban.errors import TongbanError
from tongban.exchange.audit.cosignature import WitnessKey, check_witness_name
from tongban.exchange.datadir import key_passphrase
from tongban.exchange.settings import Settings
from tongban.signing.errors import TokenKeyMissing, TokenUnavailable
from tongban.signing.files import write_atomic
from tongban.signing.keys import (
    LocalSigner,
    Signer,
    generate_private_key,
    load_private_key,
    save_private_key,
)
from tongban.signing.pkcs11 import Token

__all__ = [
    "WITNESS_KEY_LABEL",
    "WitnessExists",
    "WitnessIdentity",
    "WitnessNotInitialised",
    "find_witness",
    "init_witness",
    "load_witness",
    "state_path",
    "witness_dir",
]

WITNESS_KEY_LABEL = "witness-cosign"
"""The label of the witness's key in a PKCS#11 token."""


class WitnessNotInitialised(TongbanError):
    """The data dir has no witness yet."""

    reason = "WITNESS_NOT_INITIALISED"
    status = "FAILED_PRECONDITION"


class WitnessExists(TongbanError):
    """The data dir already holds a witness of another name."""

    reason = "WITNESS_EXISTS"
    status = "ALREADY_EXISTS"


@dataclass(frozen=True)
class WitnessIdentity:
    """The witness's name and public key, and the signer of its cosignatures."""

    key: WitnessKey
    signer: Signer
    where: str
    """Where the private key is: a file path, or the token and label."""


def witness_dir(settings: Settings) -> Path:
    return settings.data_dir / "witness"


def state_path(settings: Settings) -> Path:
    """The witness's state file (``witness.state``)."""
    return witness_dir(settings) / "state.sqlite3"


def _config_path(settings: Settings) -> Path:
    return witness_dir(settings) / "witness.json"


def init_witness(settings: Settings, name: str, token: Token | None) -> WitnessIdentity:
    """Make the witness ``name`` (its key in ``token`` if given, else a key file), or
    return the existing one if it has that name.

    Raises WitnessExists if the data dir holds a witness of another name,
    WitnessKeyInvalid for a name signed notes cannot carry, and the key and token errors
    of loading.
    """
    path = _config_path(settings)
    if path.exists():
        existing = load_witness(settings, token)
        if existing.key.name != name:
            raise WitnessExists(
                f"{witness_dir(settings)} already holds witness {existing.key.name!r}; give "
                "that name or another data dir."
            )
        return existing
    check_witness_name(name)
    if token is not None:
        try:
            token.signer(WITNESS_KEY_LABEL)
        except TokenKeyMissing:
            token.generate(WITNESS_KEY_LABEL, "Ed25519")
        where = "token"
    else:
        save_private_key(
            witness_dir(settings) / "witness.key",
            generate_private_key("Ed25519"),
            key_passphrase(settings, create=True),
        )
        where = "file"
    config = {"name": name, "key": where, "label": WITNESS_KEY_LABEL}
    write_atomic(path, json.dumps(config, indent=2).encode() + b"\n", mode=0o600, dir_mode=0o700)
    return load_witness(settings, token)


def find_witness(settings: Settings, token: Token | None) -> WitnessIdentity | None:
    """The witness of this data dir, or None if it has none: a node's, whose exchange
    witnesses its peers' logs when its operator made one (docs/federation.md). Raises as
    ``load_witness`` for a witness that is there but unusable."""
    if not _config_path(settings).exists():
        return None
    return load_witness(settings, token)


def load_witness(settings: Settings, token: Token | None) -> WitnessIdentity:
    """The witness of this data dir. Raises WitnessNotInitialised if there is none, and
    TokenUnavailable if its key is in a token and none is configured."""
    path = _config_path(settings)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        name, kind = str(config["name"]), str(config["key"])
    except FileNotFoundError:
        raise WitnessNotInitialised(
            f"{witness_dir(settings)} holds no witness; make one with `tongban witness init "
            f"--name NAME --data-dir {settings.data_dir}`."
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise WitnessNotInitialised(f"{path} is not a witness description: {e}.") from None
    signer: Signer
    if kind == "token":
        if token is None:
            raise TokenUnavailable(
                f"Witness {name!r} keeps its key in a PKCS#11 token ({WITNESS_KEY_LABEL!r}); "
                "set TONGBAN_PKCS11_MODULE, TONGBAN_PKCS11_TOKEN and TONGBAN_PKCS11_PIN_FILE."
            )
        signer = token.signer(WITNESS_KEY_LABEL)
        where = f"token {token.label!r}, key {WITNESS_KEY_LABEL!r}"
    else:
        key_file = witness_dir(settings) / "witness.key"
        signer = LocalSigner(load_private_key(key_file, key_passphrase(settings)))
        where = str(key_file)
    public = signer.public_key()
    if not isinstance(public, Ed25519PublicKey):
        raise WitnessNotInitialised(f"The witness key ({where}) is not an Ed25519 key.")
    return WitnessIdentity(WitnessKey(name, public), signer, where)
