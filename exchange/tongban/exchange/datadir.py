"""The node's data directory: CA, node credentials, department bundles, PostgreSQL.

Layout::

    tongban.json            written last by ``init``: its presence means "initialised"
    secrets/key-passphrase  generated passphrase (only when TONGBAN_KEY_PASSPHRASE is unset)
    ca/ca.crt, ca/ca.key    exchange root CA (key: encrypted PKCS#8); the key may be moved
                            offline once an issuing CA exists (docs/keys.md, "The root
                            and its issuing CAs")
    ca/issuing/NNNN/        the issuing (intermediate) CAs, one directory per generation:
                            issuing.crt, issuing.key (gone once retired), takes-over (when
                            it starts signing, ISO 8601)
    node/node.crt, node.key this node's TLS certificate (serverAuth + clientAuth) and key
    node/sign.crt, sign.key this node's signing certificate (signed answers) and key
    node/log.key            the Ed25519 key that signs the access log's checkpoints (every
                            node of one exchange needs the same one)
    secrets/log-hmac.key    the key of the subject-id HMACs in the access log (32 bytes;
                            every node of one exchange needs the same one)
    secrets/db-node.password  the password of the node's database login (tongban_node),
                            made on first use; the migrating login sets it
    secrets/kafka-payload.keys  the keys that seal personal fields on Kafka topics (JSON:
                            key ids, the current one, the subject pseudonym key; every
                            node of one exchange needs the same file; docs/events.md)
    bundles/<code>/         department credential bundles written by ``dept add``
    pg/                     embedded PostgreSQL (when TONGBAN_DATABASE_URL is unset)

``init`` writes into a staging directory and renames into place, then writes the marker;
an ``init`` that failed half-way is simply run again.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509

from tongban.client.bundle import Bundle
from tongban.exchange.errors import CaRotationRefused, DataDirNotInitialised, DataDirUnusable
from tongban.exchange.kafka.sealing import PayloadKeys
from tongban.exchange.settings import Settings
from tongban.signing.certs import (
    certificate_fingerprint,
    certificate_pem,
    create_issuing_ca,
    create_root_ca,
    issue_department_tls_certificate,
    issue_node_signing_certificate,
    issue_node_tls_certificate,
    issue_seal_certificate,
    load_pem_certificates,
    save_certificate,
)
from tongban.signing.errors import KeyFileMissing, TokenKeyMissing
from tongban.signing.files import make_dirs, write_atomic
from tongban.signing.keys import (
    LocalSigner,
    PrivateKey,
    PublicKey,
    Signer,
    generate_private_key,
    load_private_key,
    private_key_pem,
    save_private_key,
)
from tongban.signing.pkcs11 import Token, TokenConfig, TokenSigner
from tongban.signing.sm2 import Sm2PrivateKey, load_sm2_private_key, save_sm2_private_key
from tongban.signing.sm2_certs import create_sm2_root_ca, issue_sm2_node_signing_certificate

__all__ = [
    "CHECKPOINT_KEY_LABEL",
    "NODE_KEY_LABEL",
    "SM2_CHECKPOINT_KEY",
    "CertificateAuthority",
    "DepartmentCredentials",
    "InitResult",
    "IssuingCa",
    "NodeCredentials",
    "Sm2Signing",
    "ensure_node_keys",
    "ensure_sm2_answer_signing",
    "ensure_sm2_root",
    "first_log_verifier_key",
    "init_data_dir",
    "install_next_log_signer",
    "is_initialised",
    "issue_department_credentials",
    "issuing_ca_states",
    "issuing_cas",
    "issuing_certificates",
    "key_passphrase",
    "load_ca",
    "load_kafka_payload_keys",
    "load_log_key",
    "load_log_signer",
    "load_log_sm2_signer",
    "load_node_credentials",
    "load_node_signing",
    "load_notify_secret",
    "load_sm2_answer_signing",
    "log_origin",
    "next_log_signer",
    "open_token",
    "record_log_verifier_key",
    "rotate_issuing_ca",
    "rotate_node_signing",
    "sm2_ca_certificate_pem",
    "sm2_roots",
]

_MARKER = "tongban.json"
_PAYLOAD_KEYS = "kafka-payload.keys"


@dataclass(frozen=True)
class InitResult:
    created: bool
    data_dir: Path
    ca_fingerprint: str
    node_fingerprint: str


@dataclass(frozen=True)
class CertificateAuthority:
    """The CA that issues this exchange's certificates now: an issuing CA under the root,
    or the root itself in a data dir made before issuing CAs."""

    cert: x509.Certificate
    key: PrivateKey
    root: x509.Certificate

    @property
    def intermediates(self) -> tuple[x509.Certificate, ...]:
        """What goes between a certificate it issues and the root in a chain."""
        return () if self.cert == self.root else (self.cert,)


@dataclass(frozen=True)
class IssuingCa:
    """One generation of issuing CA in ``ca/issuing/``."""

    generation: int
    cert: x509.Certificate
    takes_over: datetime
    has_key: bool


@dataclass(frozen=True)
class NodeCredentials:
    ca_pem: bytes
    cert_chain_pem: bytes
    key_pem: bytes


@dataclass(frozen=True)
class DepartmentCredentials:
    bundle: Bundle
    tls_fingerprint: bytes
    seal_fingerprint: bytes


def is_initialised(data_dir: Path) -> bool:
    return (data_dir / _MARKER).is_file()


def _passphrase(settings: Settings, *, create: bool) -> bytes:
    if settings.key_passphrase is not None:
        given = settings.key_passphrase.get_secret_value()
        if not given:
            raise DataDirUnusable("TONGBAN_KEY_PASSPHRASE is set but empty; give it a value.")
        return given.encode()
    path = settings.passphrase_file
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        if settings.key_passphrase_file is not None:
            raise DataDirUnusable(
                f"TONGBAN_KEY_PASSPHRASE_FILE names {path}, which does not exist; mount the "
                "passphrase secret there, or unset it."
            ) from None
        if not create:
            raise DataDirNotInitialised(
                f"No key passphrase: set TONGBAN_KEY_PASSPHRASE or run `tongban init --data-dir "
                f"{settings.data_dir}` first."
            ) from None
    except OSError as e:
        raise DataDirUnusable(f"Cannot read {path}: {e.strerror}.") from e
    value = secrets.token_urlsafe(32).encode()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(value + b"\n")
    return value


_PASSWORD = re.compile(r"[A-Za-z0-9_-]{32,200}")


def node_password(settings: Settings) -> str | None:
    """The password of the node's database login (``secrets/db-node.password``), made on
    first use; None if the data dir cannot hold it (then the node logs in as the migrating
    user, see ``db.database``)."""
    path = settings.data_dir / "secrets" / "db-node.password"
    try:
        if not path.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            staged = path.with_name(f".db-node.password.{secrets.token_hex(4)}")
            fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32) + "\n")
            try:
                os.link(staged, path)  # exclusive: another process may have made one first
            except FileExistsError:
                pass
            finally:
                staged.unlink()
        password = path.read_text().strip()
    except OSError:
        return None
    if not _PASSWORD.fullmatch(password):
        raise DataDirUnusable(
            f"{path} is not a password tongban made (32+ URL-safe characters); delete it "
            "and start the node again to make a new one."
        )
    return password


def key_passphrase(settings: Settings, *, create: bool = False) -> bytes:
    """The node key passphrase (TONGBAN_KEY_PASSPHRASE, or the one ``init`` generated):
    it also encrypts the seal keys the exchange holds in PostgreSQL. With ``create``, one
    is generated into ``secrets/key-passphrase`` if none is set or there (as ``init``
    does; ``tongban witness init`` on a witness's own data dir). Raises
    DataDirNotInitialised or DataDirUnusable."""
    return _passphrase(settings, create=create)


def init_data_dir(settings: Settings, now: datetime) -> InitResult:
    """Create the CA and node credentials if absent; return what is there.

    Idempotent: an initialised data dir is left as it is (after checking that the
    passphrase opens its CA key). Raises DataDirUnusable or a signing error
    (KeyPassphraseWrong) when the existing keys cannot be opened.
    """
    root = settings.data_dir
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=root, prefix=".probe-")  # noqa: SIM115
        probe.close()
    except OSError as e:
        raise DataDirUnusable(
            f"The data directory {root} cannot be created or written ({e.strerror}); "
            "choose another --data-dir or fix its permissions."
        ) from e
    if is_initialised(root):
        ensure_node_keys(settings, now)
        ca = load_ca(settings, now)
        node = x509.load_pem_x509_certificate((root / "node" / "node.crt").read_bytes())
        return InitResult(
            False,
            root,
            certificate_fingerprint(ca.root).hex(),
            certificate_fingerprint(node).hex(),
        )
    try:
        passphrase = _passphrase(settings, create=True)
        # Leftovers of an init that died half-way: nothing was issued from them (no marker).
        for name in ("ca", "node"):
            shutil.rmtree(root / name, ignore_errors=True)
        for stale in root.glob(".init-*"):
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=".init-", dir=root))
        ca_key = generate_private_key("P-256")
        ca_cert = create_root_ca(
            common_name=f"Tongban Exchange Root CA ({settings.node_name})",
            key=ca_key,
            now=now,
            path_length=1,
        )
        issuing_key = generate_private_key("P-256")
        issuing = create_issuing_ca(
            root_cert=ca_cert,
            root_key=ca_key,
            common_name=_issuing_name(settings, 1),
            public_key=issuing_key.public_key(),
            now=now,
        )
        node_key = generate_private_key("P-256")
        node_cert = issue_node_tls_certificate(
            ca_cert=issuing,
            ca_key=issuing_key,
            node_name=settings.node_name,
            public_key=node_key.public_key(),
            hostnames=settings.node_hostnames,
            ip_addresses=settings.node_ips,
            now=now,
        )
        save_private_key(staging / "ca" / "ca.key", ca_key, passphrase)
        save_certificate(staging / "ca" / "ca.crt", [ca_cert])
        _write_generation(
            staging / "ca" / "issuing" / _generation_name(1), issuing, issuing_key, now, passphrase
        )
        save_private_key(staging / "node" / "node.key", node_key, passphrase)
        save_certificate(staging / "node" / "node.crt", [node_cert, issuing, ca_cert])
        for name in ("ca", "node"):
            (staging / name).rename(root / name)
        staging.rmdir()
        marker = {
            "format": "tongban-data-dir/1",
            "node_name": settings.node_name,
            "ca_fingerprint": certificate_fingerprint(ca_cert).hex(),
            "initialised_at": now.isoformat(),
        }
        tmp = root / f".{_MARKER}.tmp"
        tmp.write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        tmp.rename(root / _MARKER)
        ensure_node_keys(settings, now)
    except OSError as e:
        raise DataDirUnusable(
            f"Initialising {root} failed ({e.strerror}); fix the cause and run init again."
        ) from e
    return InitResult(
        True, root, certificate_fingerprint(ca_cert).hex(), certificate_fingerprint(node_cert).hex()
    )


def _require_initialised(settings: Settings) -> None:
    if not is_initialised(settings.data_dir):
        raise DataDirNotInitialised(
            f"{settings.data_dir} is not initialised; run `tongban init --data-dir "
            f"{settings.data_dir}` first."
        )


_ISSUING_KEY, _ISSUING_CRT, _TAKES_OVER = "issuing.key", "issuing.crt", "takes-over"


def _issuing_name(settings: Settings, generation: int) -> str:
    return f"Tongban Issuing CA {generation} ({settings.node_name})"[:64]


def _generation_name(generation: int) -> str:
    return f"{generation:04d}"


def _write_generation(
    path: Path, cert: x509.Certificate, key: PrivateKey, takes_over: datetime, passphrase: bytes
) -> None:
    save_private_key(path / _ISSUING_KEY, key, passphrase)
    save_certificate(path / _ISSUING_CRT, [cert])
    write_atomic(
        path / _TAKES_OVER, takes_over.isoformat().encode() + b"\n", mode=0o644, dir_mode=0o700
    )


def issuing_cas(settings: Settings) -> list[IssuingCa]:
    """Every generation of issuing CA in the data dir, oldest first (empty for a data dir
    made before issuing CAs, where the root issues). Raises DataDirUnusable for a
    generation that cannot be read."""
    base = settings.data_dir / "ca" / "issuing"
    if not base.is_dir():
        return []
    found = []
    for entry in sorted(base.iterdir()):
        if not (entry.is_dir() and entry.name.isdigit()):
            continue  # a rotation's staging directory, or something else
        try:
            cert = load_pem_certificates((entry / _ISSUING_CRT).read_bytes())[0]
            takes_over = datetime.fromisoformat((entry / _TAKES_OVER).read_text().strip())
        except (OSError, ValueError) as e:
            raise DataDirUnusable(
                f"The issuing CA in {entry} cannot be read ({e}); restore it from a backup."
            ) from e
        if takes_over.tzinfo is None:
            raise DataDirUnusable(f"{entry / _TAKES_OVER} holds a time without a zone.")
        found.append(IssuingCa(int(entry.name), cert, takes_over, (entry / _ISSUING_KEY).exists()))
    return found


def issuing_certificates(settings: Settings, now: datetime) -> tuple[x509.Certificate, ...]:
    """The issuing CA certificates to publish beside the root (in chains and the trust
    list) at ``now``: every generation not yet expired, the upcoming one included."""
    return tuple(c.cert for c in issuing_cas(settings) if now <= c.cert.not_valid_after_utc)


def _retire(settings: Settings, generations: list[IssuingCa], now: datetime) -> IssuingCa:
    """The generation that issues at ``now`` (the newest whose time has come); delete the
    keys of the ones before it, which will never issue again."""
    due = [g for g in generations if g.takes_over <= now] or generations[:1]
    current = due[-1]
    base = settings.data_dir / "ca" / "issuing"
    for older in generations:
        if older.generation < current.generation and older.has_key:
            with contextlib.suppress(FileNotFoundError):
                (base / _generation_name(older.generation) / _ISSUING_KEY).unlink()
    return current


def issuing_ca_states(settings: Settings, now: datetime) -> list[tuple[IssuingCa, str]]:
    """Each issuing CA generation with its state at ``now``: "issuing", "upcoming",
    "retired" (taken over from; what it issued verifies until it expires) or "expired".
    Keys of retired generations are deleted on the way, as ``load_ca`` does."""
    _require_initialised(settings)
    generations = issuing_cas(settings)
    if not generations:
        return []
    current = _retire(settings, generations, now)
    states = []
    for g in issuing_cas(settings):
        if g.generation == current.generation:
            state = "issuing"
        elif g.generation > current.generation:
            state = "upcoming"
        else:
            state = "expired" if now > g.cert.not_valid_after_utc else "retired"
        states.append((g, state))
    return states


def rotate_issuing_ca(
    settings: Settings,
    now: datetime,
    *,
    overlap: timedelta,
    root_key_file: Path | None = None,
) -> tuple[IssuingCa, bool]:
    """Make the next issuing CA, signed by the root, to take over at ``now + overlap``;
    return it and whether it was made now. If one is already waiting to take over it is
    returned as it is (False), so running the command again is harmless.

    The root key is read from ``root_key_file`` (the offline medium it lives on) or
    ``ca/ca.key``, decrypted with the key passphrase, and used for this one signature.
    The new generation is written to a staging directory renamed into place, so a
    process killed part-way leaves nothing half-made (the staging directory is removed
    by the next run).

    Raises CaRotationRefused (a root made with path length 0; no root key; a key that is
    not the root's), ValueError for a negative overlap, DataDirNotInitialised, or a key
    error (wrong passphrase)."""
    _require_initialised(settings)
    if overlap < timedelta(0):
        raise ValueError("The overlap cannot be negative.")
    ca_dir = settings.data_dir / "ca"
    root_cert = load_pem_certificates((ca_dir / "ca.crt").read_bytes())[0]
    constraints = root_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    if constraints.path_length == 0:
        raise CaRotationRefused(
            "This exchange's root CA was made with path length 0, before issuing CAs, so it "
            "cannot sign one; its root keeps issuing directly (docs/keys.md, 'The root and "
            "its issuing CAs', says how to move to a new root)."
        )
    generations = issuing_cas(settings)
    waiting = [g for g in generations if g.takes_over > now]
    if waiting:
        return waiting[-1], False
    passphrase = _passphrase(settings, create=False)
    key_path = root_key_file if root_key_file is not None else ca_dir / "ca.key"
    try:
        root_key = load_private_key(key_path, passphrase)
    except KeyFileMissing:
        raise CaRotationRefused(
            f"The root CA key is not at {key_path}; mount the offline medium that holds it "
            "and name it with --root-key PATH."
        ) from None
    if root_key.public_key() != root_cert.public_key():
        raise CaRotationRefused(
            f"{key_path} is not the key of this exchange's root CA (ca/ca.crt); give the "
            "root key of this exchange."
        )
    number = (generations[-1].generation if generations else 0) + 1
    key = generate_private_key("P-256")
    cert = create_issuing_ca(
        root_cert=root_cert,
        root_key=root_key,
        common_name=_issuing_name(settings, number),
        public_key=key.public_key(),
        now=now,
    )
    base = ca_dir / "issuing"
    try:
        base.mkdir(mode=0o755, exist_ok=True)
        for stale in base.glob(".gen-*"):
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=".gen-", dir=base))
        _write_generation(staging, cert, key, now + overlap, passphrase)
        try:
            staging.rename(base / _generation_name(number))
        except OSError:  # another rotation made this generation first: keep its
            shutil.rmtree(staging, ignore_errors=True)
            made = [g for g in issuing_cas(settings) if g.generation == number]
            if made:
                return made[0], False
            raise
    except OSError as e:
        raise DataDirUnusable(
            f"Writing the new issuing CA under {base} failed ({e.strerror}); fix the cause "
            "and run the rotation again."
        ) from e
    return IssuingCa(number, cert, now + overlap, True), True


def load_ca(settings: Settings, now: datetime) -> CertificateAuthority:
    """The CA that issues at ``now``: the newest issuing CA whose time has come, or the
    root in a data dir made before issuing CAs. An issuing CA that has been taken over
    from is retired here: its key file is deleted (its certificate stays, so what it
    issued keeps verifying).

    Raises DataDirNotInitialised, DataDirUnusable (no usable issuing CA key) or a key
    error (wrong passphrase)."""
    _require_initialised(settings)
    root = settings.data_dir
    root_cert = load_pem_certificates((root / "ca" / "ca.crt").read_bytes())[0]
    passphrase = _passphrase(settings, create=False)
    generations = issuing_cas(settings)
    if not generations:
        key = load_private_key(root / "ca" / "ca.key", passphrase)
        return CertificateAuthority(root_cert, key, root_cert)
    current = _retire(settings, generations, now)
    base = root / "ca" / "issuing"
    try:
        key = load_private_key(
            base / _generation_name(current.generation) / _ISSUING_KEY, passphrase
        )
    except KeyFileMissing:
        raise DataDirUnusable(
            f"The key of issuing CA {current.generation} is missing from {base}: it was "
            "retired, or this data dir's ca/ directory is incomplete; copy ca/ from a node "
            "that has the current issuing CA."
        ) from None
    return CertificateAuthority(current.cert, key, root_cert)


def ca_certificate_pem(settings: Settings) -> bytes:
    """The root CA certificate (PEM); raise DataDirNotInitialised."""
    _require_initialised(settings)
    return (settings.data_dir / "ca" / "ca.crt").read_bytes()


def load_node_credentials(settings: Settings) -> NodeCredentials:
    """Load the node's TLS credentials for the gRPC server."""
    _require_initialised(settings)
    root = settings.data_dir
    key = load_private_key(root / "node" / "node.key", _passphrase(settings, create=False))
    return NodeCredentials(
        ca_pem=(root / "ca" / "ca.crt").read_bytes(),
        cert_chain_pem=(root / "node" / "node.crt").read_bytes(),
        key_pem=private_key_pem(key),
    )


def issue_department_credentials(
    settings: Settings, *, code: str, name: str, endpoint: str, now: datetime
) -> DepartmentCredentials:
    """Issue a department's TLS and seal certificates (new keys) as a bundle in memory;
    each certificate file holds the issuing CA after the leaf, so the department's TLS
    client sends the chain and its seals carry it."""
    ca = load_ca(settings, now)
    tls_key = generate_private_key("P-256")
    tls_cert = issue_department_tls_certificate(
        ca_cert=ca.cert,
        ca_key=ca.key,
        code=code,
        name=name,
        public_key=tls_key.public_key(),
        now=now,
    )
    seal_key = generate_private_key("P-256")
    seal_cert = issue_seal_certificate(
        ca_cert=ca.cert,
        ca_key=ca.key,
        code=code,
        name=name,
        public_key=seal_key.public_key(),
        now=now,
    )
    bundle = Bundle(
        department=code,
        name=name,
        endpoint=endpoint,
        server_name=settings.node_hostnames[0],
        ca_pem=certificate_pem(ca.root),
        tls_cert_pem=b"".join(map(certificate_pem, (tls_cert, *ca.intermediates))),
        tls_key_pem=private_key_pem(tls_key),
        seal_cert_pem=b"".join(map(certificate_pem, (seal_cert, *ca.intermediates))),
        seal_key_pem=private_key_pem(seal_key),
    )
    return DepartmentCredentials(
        bundle, certificate_fingerprint(tls_cert), certificate_fingerprint(seal_cert)
    )


@dataclass(frozen=True)
class Sm2Signing:
    """The node's SM2 answer key and its certificate (issued by the exchange's SM2 root)."""

    key: Sm2PrivateKey
    chain: tuple[x509.Certificate, ...]


@dataclass(frozen=True)
class NodeSigning:
    """The node's answer-signing key and its certificate chain (leaf first), and the SM2
    key that signs beside it when the data dir has one (``tongban key sm2 answers``)."""

    signer: Signer
    chain: tuple[x509.Certificate, ...]
    sm2: Sm2Signing | None = None


def ensure_node_keys(settings: Settings, now: datetime, *, keys_in_token: bool = False) -> None:
    """Create the node signing key, the log HMAC key and the Kafka payload keys if this
    data dir lacks them (data dirs initialised by an earlier version). Idempotent.

    With ``keys_in_token`` the signing keys are a PKCS#11 token's: a key file removed after
    ``tongban key import`` is not made again."""
    root = settings.data_dir
    sign_key, sign_crt = root / "node" / "sign.key", root / "node" / "sign.crt"
    if not sign_crt.exists() and not keys_in_token:
        ca = load_ca(settings, now)
        key = generate_private_key("P-256")
        cert = issue_node_signing_certificate(
            ca_cert=ca.cert,
            ca_key=ca.key,
            node_name=settings.node_name,
            public_key=key.public_key(),
            now=now,
        )
        save_private_key(sign_key, key, _passphrase(settings, create=False))
        save_certificate(sign_crt, [cert, *ca.intermediates, ca.root])
    log_signing = root / "node" / "log.key"
    if not log_signing.exists() and not keys_in_token:
        save_private_key(
            log_signing, generate_private_key("Ed25519"), _passphrase(settings, create=False)
        )
    log_key = root / "secrets" / "log-hmac.key"
    if not log_key.exists():
        log_key.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(log_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
    payload_keys = root / "secrets" / _PAYLOAD_KEYS
    if not payload_keys.exists():
        try:
            _create_payload_keys(payload_keys)
        except OSError as e:
            raise DataDirUnusable(
                f"Cannot create {payload_keys} ({e.strerror}); copy the exchange's Kafka "
                "payload keys file there, or start one node on a writable data dir."
            ) from e


def _create_payload_keys(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    staged = path.with_name(f".{_PAYLOAD_KEYS}.{secrets.token_hex(4)}")
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(PayloadKeys.generate().to_json())
    try:
        os.link(staged, path)  # exclusive: nodes sharing a data dir may start at once
    except FileExistsError:
        pass
    finally:
        staged.unlink()


def load_kafka_payload_keys(settings: Settings) -> PayloadKeys:
    """The keys that seal personal fields on Kafka topics (``secrets/kafka-payload.keys``).
    Raises DataDirUnusable if the file cannot be read or is not a keyring."""
    path = settings.data_dir / "secrets" / _PAYLOAD_KEYS
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataDirUnusable(
            f"Cannot read the Kafka payload keys {path}: {e.strerror}; copy the exchange's "
            "keys file there (every node needs the same one)."
        ) from e
    try:
        return PayloadKeys.from_json(data)
    except ValueError as e:
        raise DataDirUnusable(
            f"{path} is not a Kafka payload keyring ({e}); restore it from another node or "
            "a backup (docs/events.md, key rotation)."
        ) from None


#: The labels of the node's own keys in a PKCS#11 token (docs/keys.md).
NODE_KEY_LABEL = "node-sign"
CHECKPOINT_KEY_LABEL = "log-checkpoint"
#: The SM2 checkpoint key's file under ``node/`` (SM2 has no PKCS#11 mechanism: docs/keys.md).
SM2_CHECKPOINT_KEY = "log-sm2.key"


def open_token() -> Token | None:
    """The PKCS#11 token named by ``TONGBAN_PKCS11_*``, logged in, or None when none is
    configured. With a token, the node's signing keys come from it and nowhere else."""
    config = TokenConfig.from_environment()
    return None if config is None else Token(config)


def _token_signer(token: Token, label: str, what: str) -> TokenSigner:
    try:
        return token.signer(label)
    except TokenKeyMissing as e:
        raise TokenKeyMissing(
            f"A PKCS#11 token is configured but holds no {what} labelled {label!r}: import the "
            f"data dir's key with `tongban key import {label} FILE` (docs/keys.md)."
        ) from e


def load_node_signing(settings: Settings, token: Token | None = None) -> NodeSigning:
    """The key that signs the node's answers and trust lists, with its certificate chain:
    from ``token`` (label ``node-sign``) when one is given, else ``node/sign.key``."""
    _require_initialised(settings)
    root = settings.data_dir
    chain = load_pem_certificates((root / "node" / "sign.crt").read_bytes())
    signer: Signer
    if token is None:
        key = load_private_key(root / "node" / "sign.key", _passphrase(settings, create=False))
        signer, where = LocalSigner(key), str(root / "node" / "sign.key")
    else:
        signer = _token_signer(token, NODE_KEY_LABEL, "node signing key")
        where = f"the token's {NODE_KEY_LABEL!r} key"
    if signer.public_key() == chain[0].public_key():
        return NodeSigning(signer, tuple(chain), load_sm2_answer_signing(settings))
    if (root / "node" / "sign.crt.next").exists():
        raise DataDirUnusable(
            f"A rotation of the node signing key was cut short: {where} is not the key of "
            "node/sign.crt. Run `tongban key rotate node` again to finish it."
        )
    raise DataDirUnusable(
        f"{where} is not the key of {root / 'node' / 'sign.crt'}; import node/sign.key "
        "under that label, or re-issue the certificate."
    )


_SM2_CA_KEY, _SM2_CA_CRT = "sm2-ca.key", "sm2-ca.crt"
_SM2_SIGN_KEY, _SM2_SIGN_CRT = "sign-sm2.key", "sign-sm2.crt"


def sm2_ca_certificate_pem(settings: Settings) -> bytes | None:
    """The exchange's SM2 root (``ca/sm2-ca.crt``) as PEM, or None if it has none."""
    path = settings.data_dir / "ca" / _SM2_CA_CRT
    return path.read_bytes() if path.exists() else None


def sm2_roots(settings: Settings) -> tuple[x509.Certificate, ...]:
    """The exchange's SM2 root (``ca/sm2-ca.crt``), if it has one, as a trust anchor."""
    pem = sm2_ca_certificate_pem(settings)
    return tuple(load_pem_certificates(pem)) if pem else ()


def ensure_sm2_root(settings: Settings, now: datetime) -> tuple[x509.Certificate, Sm2PrivateKey]:
    """The exchange's SM2 root (``ca/sm2-ca.crt``, key ``ca/sm2-ca.key``), made if the data
    dir lacks it. Repeatable."""
    _require_initialised(settings)
    passphrase = _passphrase(settings, create=False)
    ca_dir = settings.data_dir / "ca"
    if (ca_dir / _SM2_CA_CRT).exists():
        root = load_pem_certificates((ca_dir / _SM2_CA_CRT).read_bytes())[0]
        return root, load_sm2_private_key(ca_dir / _SM2_CA_KEY, passphrase)
    if (ca_dir / _SM2_CA_KEY).exists():
        ca_key = load_sm2_private_key(ca_dir / _SM2_CA_KEY, passphrase)
    else:
        ca_key = Sm2PrivateKey.generate()
        save_sm2_private_key(ca_dir / _SM2_CA_KEY, ca_key, passphrase)
    root = create_sm2_root_ca(common_name="Tongban Exchange SM2 Root", key=ca_key, now=now)
    save_certificate(ca_dir / _SM2_CA_CRT, [root])
    return root, ca_key


def ensure_sm2_answer_signing(settings: Settings, now: datetime) -> bool:
    """Make the exchange's SM2 root and this node's SM2 answer key and certificate if the
    data dir lacks them; return whether anything was made. Repeatable."""
    _require_initialised(settings)
    passphrase = _passphrase(settings, create=False)
    node = settings.data_dir / "node"
    made = not (settings.data_dir / "ca" / _SM2_CA_CRT).exists()
    root, ca_key = ensure_sm2_root(settings, now)
    if not (node / _SM2_SIGN_CRT).exists():
        if (node / _SM2_SIGN_KEY).exists():
            key = load_sm2_private_key(node / _SM2_SIGN_KEY, passphrase)
        else:
            key = Sm2PrivateKey.generate()
            save_sm2_private_key(node / _SM2_SIGN_KEY, key, passphrase)
        cert = issue_sm2_node_signing_certificate(
            ca_cert=root, ca_key=ca_key, node_name=settings.node_name,
            public_key=key.public, now=now,
        )  # fmt: skip
        save_certificate(node / _SM2_SIGN_CRT, [cert])
        made = True
    return made


def load_sm2_answer_signing(settings: Settings) -> Sm2Signing | None:
    """This node's SM2 answer key and certificate, or None when the data dir has none."""
    node = settings.data_dir / "node"
    if not (node / _SM2_SIGN_CRT).exists():
        return None
    key = load_sm2_private_key(node / _SM2_SIGN_KEY, _passphrase(settings, create=False))
    chain = tuple(load_pem_certificates((node / _SM2_SIGN_CRT).read_bytes()))
    return Sm2Signing(key, chain)


def rotate_node_signing(
    settings: Settings, now: datetime, token: Token | None = None
) -> tuple[bytes, bytes]:
    """Give this node a new answer-signing key and certificate; return the old and the new
    certificate's fingerprint. Answers and trust lists signed before keep verifying: each
    carries its certificate (``x5c``), valid until it expires. The node signs with the new
    key from its next start.

    Every step can be repeated, so a rotation cut short (a killed process) is finished by
    running it again: the new certificate waits in ``node/sign.crt.next`` and the new key
    in ``node/sign.key.next`` (or on the token as ``node-sign-next``) until both are moved
    into place; the old ones are kept under ``node/retired/`` (or relabelled
    ``node-sign-retired-<sha256 prefix>``)."""
    _require_initialised(settings)
    node = settings.data_dir / "node"
    passphrase = _passphrase(settings, create=False)
    old_cert = load_pem_certificates((node / "sign.crt").read_bytes())[0]
    pending = node / "sign.crt.next"
    if pending.exists():  # finish a rotation cut short
        new_cert = load_pem_certificates(pending.read_bytes())[0]
        if new_cert.public_key() == old_cert.public_key():
            pending.unlink()
            return certificate_fingerprint(old_cert), certificate_fingerprint(old_cert)
    else:
        public = _next_node_key(node, passphrase, token)
        ca = load_ca(settings, now)
        new_cert = issue_node_signing_certificate(
            ca_cert=ca.cert, ca_key=ca.key, node_name=settings.node_name,
            public_key=public, now=now,
        )  # fmt: skip
        save_certificate(pending, [new_cert, *ca.intermediates, ca.root])
    old_fp, new_fp = certificate_fingerprint(old_cert), certificate_fingerprint(new_cert)
    _install_next_key(
        node, token, name="sign", label=NODE_KEY_LABEL, retired=old_fp[:8].hex(), keep="sign.crt"
    )
    os.replace(pending, node / "sign.crt")
    return old_fp, new_fp


def _next_node_key(node: Path, passphrase: bytes, token: Token | None) -> PublicKey:
    """The next node signing key's public half, made now (or found, if a rotation cut
    short made it already)."""
    if token is not None:
        label = f"{NODE_KEY_LABEL}-next"
        try:
            return token.signer(label).public_key()
        except TokenKeyMissing:
            return token.generate(label).public_key
    path = node / "sign.key.next"
    if path.exists():
        return load_private_key(path, passphrase).public_key()
    key = generate_private_key("P-256")
    save_private_key(path, key, passphrase)
    return key.public_key()


def load_notify_secret(settings: Settings) -> bytes:
    """The key case-notice webhooks are signed with (``secrets/case-notify.key``, made on
    first use): give the receiver the file's text."""
    path = settings.data_dir / "secrets" / "case-notify.key"
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32) + "\n")
        return path.read_text().strip().encode()
    except OSError as e:
        raise DataDirUnusable(
            f"Cannot read or create {path} ({e.strerror}); check the data directory's permissions."
        ) from e


def load_log_key(settings: Settings) -> bytes:
    _require_initialised(settings)
    try:
        return (settings.data_dir / "secrets" / "log-hmac.key").read_bytes()
    except OSError as e:
        raise DataDirUnusable(
            f"Cannot read the access-log key in {settings.data_dir / 'secrets'}: {e.strerror}."
        ) from e


def load_log_signer(settings: Settings, token: Token | None = None) -> Signer:
    """The Ed25519 key that signs checkpoints of the access log: from ``token`` (label
    ``log-checkpoint``) when one is given, else ``node/log.key``."""
    _require_initialised(settings)
    if token is not None:
        signer: Signer = _token_signer(token, CHECKPOINT_KEY_LABEL, "checkpoint key")
        where = f"the token's {CHECKPOINT_KEY_LABEL!r} key"
    else:
        path = settings.data_dir / "node" / "log.key"
        signer = LocalSigner(load_private_key(path, _passphrase(settings, create=False)))
        where = str(path)
    if signer.algorithm != "EdDSA":
        raise DataDirUnusable(
            f"{where} is not an Ed25519 key; checkpoints are signed with Ed25519 (C2SP signed "
            "notes)."
        )
    return signer


_LOG_KEY_HISTORY = "log-keys.txt"


def first_log_verifier_key(settings: Settings) -> str | None:
    """The verifier key of the log's first checkpoint key, as recorded at its first
    rotation (``node/log-keys.txt``), or None before any rotation: the key ``tongban
    audit verify`` follows the changes from."""
    path = settings.data_dir / "node" / _LOG_KEY_HISTORY
    try:
        lines = path.read_text(encoding="utf-8").split()
    except FileNotFoundError:
        return None
    return lines[0] if lines else None


def record_log_verifier_key(settings: Settings, vkey: str) -> None:
    """Append ``vkey`` to the data dir's history of checkpoint keys (once)."""
    path = settings.data_dir / "node" / _LOG_KEY_HISTORY
    known = path.read_text(encoding="utf-8").split() if path.exists() else []
    if vkey not in known:
        write_atomic(path, "".join(f"{k}\n" for k in [*known, vkey]).encode(), mode=0o644,
                     dir_mode=0o700)  # fmt: skip


def next_log_signer(settings: Settings, token: Token | None) -> Signer:
    """The checkpoint key a rotation moves to: ``node/log.key.next`` (or the token's
    ``log-checkpoint-next``), made now unless a rotation cut short made it already."""
    if token is not None:
        label = f"{CHECKPOINT_KEY_LABEL}-next"
        try:
            return token.signer(label)
        except TokenKeyMissing:
            token.generate(label, "Ed25519")
            return token.signer(label)
    path = settings.data_dir / "node" / "log.key.next"
    passphrase = _passphrase(settings, create=False)
    if not path.exists():
        save_private_key(path, generate_private_key("Ed25519"), passphrase)
    return LocalSigner(load_private_key(path, passphrase))


def install_next_log_signer(settings: Settings, token: Token | None, retired_name: str) -> None:
    """Put the next checkpoint key where ``load_log_signer`` finds it, keeping the old one
    as ``retired_name`` (under ``node/retired/``, or as a token label suffix). Repeatable:
    a step already done is skipped."""
    node = settings.data_dir / "node"
    _install_next_key(node, token, name="log", label=CHECKPOINT_KEY_LABEL, retired=retired_name)


def _install_next_key(
    node: Path, token: Token | None, *, name: str, label: str, retired: str, keep: str = ""
) -> None:
    """Put a rotation's upcoming key in place of the current one: ``node/<name>.key.next``
    becomes ``node/<name>.key``, the old key (and the ``keep`` file beside it) copied to
    ``node/retired/<name>-<retired>.*``; or, on the token, ``<label>-next`` becomes
    ``<label>`` and the old key ``<label>-retired-<retired>``. A step already done is
    skipped, so a rotation cut short is finished by calling it again."""
    if token is not None:
        upcoming = f"{label}-next"
        if all(key.label != upcoming for key in token.key_pairs()):
            return  # installed already
        with contextlib.suppress(TokenKeyMissing):  # the old key was relabelled already
            token.relabel(label, f"{label}-retired-{retired}")
        token.relabel(upcoming, label)
        return
    upcoming_file = node / f"{name}.key.next"
    if not upcoming_file.exists():
        return
    make_dirs(node / "retired", 0o700)
    for current in (f"{name}.key", keep):
        if current:
            suffix = current.rsplit(".", 1)[1]
            shutil.copy2(node / current, node / "retired" / f"{name}-{retired}.{suffix}")
    os.replace(upcoming_file, node / f"{name}.key")


def load_log_sm2_signer(settings: Settings) -> Sm2PrivateKey | None:
    """The SM2 key that signs checkpoints beside the Ed25519 one (``node/log-sm2.key``,
    made by ``tongban key sm2 checkpoint``), or None when the data dir has none."""
    path = settings.data_dir / "node" / SM2_CHECKPOINT_KEY
    if not path.exists():
        return None
    return load_sm2_private_key(path, _passphrase(settings, create=False))


def log_origin(settings: Settings) -> str:
    """The log's origin line (and checkpoint key name): TONGBAN_LOG_ORIGIN, or one derived
    from the exchange root CA, so that every node of one exchange names the same log."""
    if settings.log_origin:
        return settings.log_origin
    ca = load_pem_certificates(ca_certificate_pem(settings))[0]
    return f"tongban.exchange/{certificate_fingerprint(ca).hex()[:16]}/access-log"
