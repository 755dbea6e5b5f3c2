"""Credential bundles: what a department system needs to call an exchange.

A bundle is a directory::

    bundle.json   {"format": "tongban-bundle/1", "department": ..., "name": ...,
                   "endpoint": "host:port", "server_name": "localhost"}
    ca.crt        the exchange root CA (trust anchor for the node's certificate)
    tls.crt       the department's TLS client certificate
    tls.key       its private key, PKCS#8 PEM, mode 0600
    seal.crt      the department's seal certificate (licences, document seals)
    seal.key      its private key, PKCS#8 PEM, mode 0600

The keys are not encrypted: gRPC needs them in clear, and a bundle belongs in the
department system's own secret store. Treat the whole directory as a secret.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tongban.errors import TongbanError

__all__ = ["BUNDLE_FORMAT", "Bundle", "BundleInvalid", "write_bundle"]

BUNDLE_FORMAT = "tongban-bundle/1"
_PRIVATE = ("tls.key", "seal.key")
_FILES = ("bundle.json", "ca.crt", "tls.crt", "tls.key", "seal.crt", "seal.key")


class BundleInvalid(TongbanError):
    reason = "BUNDLE_INVALID"
    status = "FAILED_PRECONDITION"


@dataclass(frozen=True)
class Bundle:
    """A loaded bundle: PEM bytes plus where to connect."""

    department: str
    name: str
    endpoint: str
    server_name: str
    ca_pem: bytes
    tls_cert_pem: bytes
    tls_key_pem: bytes
    seal_cert_pem: bytes
    seal_key_pem: bytes

    @classmethod
    def load(cls, path: Path) -> Bundle:
        """Read a bundle directory; raise BundleInvalid naming what is missing or wrong."""
        if not path.is_dir():
            raise BundleInvalid(f"{path} is not a bundle directory; pass the folder, not a file.")
        try:
            meta = json.loads((path / "bundle.json").read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise BundleInvalid(f"{path} has no bundle.json; is it a tongban bundle?") from e
        except (OSError, ValueError) as e:
            raise BundleInvalid(f"{path / 'bundle.json'} cannot be read as JSON.") from e
        if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
            raise BundleInvalid(
                f"{path / 'bundle.json'} is not a {BUNDLE_FORMAT} bundle; re-export it."
            )
        for key in ("department", "name", "endpoint", "server_name"):
            if not isinstance(meta.get(key), str) or not meta[key]:
                raise BundleInvalid(f"{path / 'bundle.json'} lacks the {key!r} entry.")
        files: dict[str, bytes] = {}
        for name in _FILES[1:]:
            try:
                files[name] = (path / name).read_bytes()
            except OSError as e:
                raise BundleInvalid(f"Cannot read {path / name}: {e.strerror}.") from e
            if b"-----BEGIN " not in files[name]:
                raise BundleInvalid(f"{path / name} is not a PEM file.")
        return cls(
            department=meta["department"],
            name=meta["name"],
            endpoint=meta["endpoint"],
            server_name=meta["server_name"],
            ca_pem=files["ca.crt"],
            tls_cert_pem=files["tls.crt"],
            tls_key_pem=files["tls.key"],
            seal_cert_pem=files["seal.crt"],
            seal_key_pem=files["seal.key"],
        )


def write_bundle(bundle: Bundle, path: Path) -> Path:
    """Write ``bundle`` as a directory at ``path`` (which must not exist), atomically.

    The files are written to a temporary sibling directory that is renamed into place, so a
    failure leaves nothing behind. Returns ``path``. Raises BundleInvalid if ``path`` exists
    or cannot be written.
    """
    if path.exists():
        raise BundleInvalid(f"{path} already exists; choose another --out or remove it.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    except OSError as e:
        raise BundleInvalid(f"Cannot write a bundle under {path.parent}: {e.strerror}.") from e
    try:
        meta = {
            "format": BUNDLE_FORMAT,
            "department": bundle.department,
            "name": bundle.name,
            "endpoint": bundle.endpoint,
            "server_name": bundle.server_name,
        }
        contents = {
            "bundle.json": (json.dumps(meta, ensure_ascii=False, indent=2) + "\n").encode(),
            "ca.crt": bundle.ca_pem,
            "tls.crt": bundle.tls_cert_pem,
            "tls.key": bundle.tls_key_pem,
            "seal.crt": bundle.seal_cert_pem,
            "seal.key": bundle.seal_key_pem,
        }
        for name, data in contents.items():
            mode = 0o600 if name in _PRIVATE else 0o644
            fd = os.open(staging / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        staging.chmod(0o700)
        staging.rename(path)
    except OSError as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise BundleInvalid(f"Cannot write the bundle {path}: {e.strerror}.") from e
    return path
