"""The root and its issuing CAs: `tongban init` makes a root that signs only an issuing CA,
everything else chains through that CA, the root key can go offline, and `tongban key
rotate ca-intermediate` brings in the next issuing CA without downtime (docs/keys.md,
"The root and its issuing CAs")."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from tests.cli_helpers import atongban, cli_env, tongban
from tests.conftest import client_for
from tests.stories.restaurant import BUSINESS_LICENCE_CLAIMS
from tongban.exchange.datadir import (
    init_data_dir,
    issue_department_credentials,
    issuing_ca_states,
    issuing_cas,
    key_passphrase,
    load_ca,
    rotate_issuing_ca,
)
from tongban.exchange.errors import CaRotationRefused
from tongban.exchange.node import Node
from tongban.exchange.settings import Settings, load_settings
from tongban.licence import verify_qr
from tongban.licence.errors import SignerUntrusted
from tongban.signing import FixedClock, SystemClock, certificate_fingerprint
from tongban.signing.certs import (
    create_root_ca,
    load_pem_certificates,
    save_certificate,
    verify_certificate,
)
from tongban.signing.keys import generate_private_key, save_private_key

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="the openssl CLI is not installed")
PASSPHRASE = "test passphrase"


def _data_dir(tmp_path: Path) -> Settings:
    settings = load_settings(data_dir=tmp_path / "data", key_passphrase=PASSPHRASE)
    init_data_dir(settings, SystemClock().now())
    return settings


def _path_length(cert: x509.Certificate) -> int | None:
    return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length


def test_init_makes_a_root_that_signs_only_an_issuing_ca(tmp_path: Path) -> None:
    settings = _data_dir(tmp_path)
    ca_dir = settings.data_dir / "ca"
    root = load_pem_certificates((ca_dir / "ca.crt").read_bytes())[0]
    (first,) = issuing_cas(settings)
    assert _path_length(root) == 1
    assert _path_length(first.cert) == 0
    assert first.cert.issuer == root.subject
    assert first.has_key
    # The node's TLS and signing certificates chain through it, and carry it.
    for name in ("node.crt", "sign.crt"):
        chain = load_pem_certificates((settings.data_dir / "node" / name).read_bytes())
        assert chain[0].issuer == first.cert.subject
        assert chain[1:] == [first.cert, root]


@needs_openssl
def test_openssl_verifies_what_the_issuing_ca_issued(tmp_path: Path) -> None:
    settings = _data_dir(tmp_path)
    credentials = issue_department_credentials(
        settings, code="samr", name="市场监督管理局", endpoint="", now=SystemClock().now()
    )
    for name, pem in (("tls", credentials.bundle.tls_cert_pem),
                      ("seal", credentials.bundle.seal_cert_pem)):  # fmt: skip
        leaf, *rest = load_pem_certificates(pem)
        assert len(rest) == 1, "a bundle's certificate file carries its issuing CA"
        save_certificate(tmp_path / f"{name}.pem", [leaf])
        save_certificate(tmp_path / f"{name}-chain.pem", rest)
        ok = subprocess.run(
            [str(OPENSSL), "verify", "-CAfile", str(settings.data_dir / "ca" / "ca.crt"),
             "-untrusted", str(tmp_path / f"{name}-chain.pem"), str(tmp_path / f"{name}.pem")],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert ok.returncode == 0, ok.stdout + ok.stderr
        # Without the issuing CA there is no path: the root signs no leaf itself.
        alone = subprocess.run(
            [str(OPENSSL), "verify", "-CAfile", str(settings.data_dir / "ca" / "ca.crt"),
             str(tmp_path / f"{name}.pem")],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert alone.returncode != 0


def test_the_root_key_goes_offline_and_rotation_takes_it_from_there(tmp_path: Path) -> None:
    settings = _data_dir(tmp_path)
    now = SystemClock().now()
    offline = tmp_path / "offline-medium" / "ca.key"
    offline.parent.mkdir()
    shutil.move(settings.data_dir / "ca" / "ca.key", offline)
    # Issuing carries on without the root key.
    credentials = issue_department_credentials(
        settings, code="samr", name="市场监督管理局", endpoint="", now=now
    )
    assert credentials.bundle.department == "samr"
    # A rotation needs it, and says where to give it; nothing is written meanwhile.
    with pytest.raises(CaRotationRefused, match="--root-key"):
        rotate_issuing_ca(settings, now, overlap=timedelta(hours=2))
    assert len(issuing_cas(settings)) == 1
    # A key that is not the root's is refused too.
    other = tmp_path / "other.key"
    save_private_key(other, generate_private_key("P-256"), PASSPHRASE.encode())
    with pytest.raises(CaRotationRefused, match="not the key of this exchange's root"):
        rotate_issuing_ca(settings, now, overlap=timedelta(hours=2), root_key_file=other)
    made, new = rotate_issuing_ca(settings, now, overlap=timedelta(hours=2), root_key_file=offline)
    assert new
    assert made.generation == 2
    # Run again while it waits: the same one, nothing new.
    again, new = rotate_issuing_ca(settings, now, overlap=timedelta(hours=2), root_key_file=offline)
    assert not new
    assert again.cert == made.cert


def test_the_next_issuing_ca_takes_over_after_the_overlap(tmp_path: Path) -> None:
    settings = _data_dir(tmp_path)
    now = SystemClock().now()
    first = load_ca(settings, now)
    root = first.root
    before = issue_department_credentials(
        settings, code="samr", name="市场监督管理局", endpoint="", now=now
    )
    made, _ = rotate_issuing_ca(settings, now, overlap=timedelta(hours=2))
    states = {g.generation: s for g, s in issuing_ca_states(settings, now)}
    assert states == {1: "issuing", 2: "upcoming"}
    # During the overlap the first one still issues.
    assert load_ca(settings, now + timedelta(hours=1)).cert == first.cert
    # After it the new one does, and the first one's key is gone for good.
    later = now + timedelta(hours=3)
    current = load_ca(settings, later)
    assert current.cert == made.cert
    assert current.intermediates == (made.cert,)
    assert not (settings.data_dir / "ca" / "issuing" / "0001" / "issuing.key").exists()
    states = {g.generation: s for g, s in issuing_ca_states(settings, later)}
    assert states == {1: "retired", 2: "issuing"}
    after = issue_department_credentials(
        settings, code="tax", name="税务局", endpoint="", now=later
    )
    # What the first one issued still verifies, through its own certificate.
    for bundle, issuer in ((before.bundle, first.cert), (after.bundle, made.cert)):
        leaf, *rest = load_pem_certificates(bundle.seal_cert_pem)
        assert rest == [issuer]
        chain = verify_certificate(leaf, roots=[root], intermediates=rest, now=later, usage="seal")
        assert chain[-1] == root


def test_a_rotation_cut_short_leaves_nothing_half_made(tmp_path: Path) -> None:
    settings = _data_dir(tmp_path)
    base = settings.data_dir / "ca" / "issuing"
    # What a process killed between writing the new CA and moving it into place leaves.
    stale = base / ".gen-killed"
    stale.mkdir()
    (stale / "issuing.key").write_bytes(b"half a key")
    assert [g.generation for g in issuing_cas(settings)] == [1]
    now = SystemClock().now()
    assert load_ca(settings, now).cert == issuing_cas(settings)[0].cert
    made, new = rotate_issuing_ca(settings, now, overlap=timedelta(0))
    assert new
    assert made.generation == 2
    assert not stale.exists()
    assert load_ca(settings, now).cert == made.cert


def test_a_root_made_before_issuing_cas_keeps_issuing_and_cannot_rotate(tmp_path: Path) -> None:
    # A data dir as versions before issuing CAs made it: a path-length-0 root only.
    settings = load_settings(data_dir=tmp_path / "old", key_passphrase=PASSPHRASE)
    now = SystemClock().now()
    key = generate_private_key("P-256")
    root = create_root_ca(common_name="Tongban Exchange Root CA (old)", key=key, now=now)
    save_private_key(settings.data_dir / "ca" / "ca.key", key, PASSPHRASE.encode())
    save_certificate(settings.data_dir / "ca" / "ca.crt", [root])
    (settings.data_dir / "tongban.json").write_text(json.dumps({"format": "tongban-data-dir/1"}))
    ca = load_ca(settings, now)
    assert ca.cert == root
    assert ca.intermediates == ()
    with pytest.raises(CaRotationRefused, match="path length 0"):
        rotate_issuing_ca(settings, now, overlap=timedelta(hours=1))
    assert issuing_cas(settings) == []


def test_the_cli_refuses_a_rotation_without_the_root_key(tmp_path: Path) -> None:
    settings = _data_dir(tmp_path)
    (settings.data_dir / "ca" / "ca.key").unlink()
    env = cli_env(TONGBAN_KEY_PASSPHRASE=PASSPHRASE)
    done = tongban(
        "key", "rotate", "ca-intermediate", "--data-dir", str(settings.data_dir), env=env
    )
    assert done.code != 0
    assert "CA_ROTATION_REFUSED" in done.stderr
    assert "--root-key" in done.stderr
    assert "Traceback" not in done.stderr
    listed = tongban("key", "cas", "--data-dir", str(settings.data_dir), "--json", env=env)
    assert listed.code == 0, listed.stderr
    assert [r["state"] for r in listed.json()["issuing_cas"]] == ["issuing"]


async def test_licences_sealed_under_either_issuing_ca_verify_from_the_trust_list(
    node: Node,
) -> None:
    """The operator's path on a running exchange: rotate the issuing CA, then the seal;
    the QR codes sealed before and after both verify offline with the root and the trust
    list alone, because the list names the issuing CAs."""
    assert isinstance(node.clock, FixedClock)
    assert node.licensing is not None
    settings = node.settings
    assert settings.database_url is not None
    env = cli_env(
        TONGBAN_DATABASE_URL=settings.database_url.get_secret_value(),
        TONGBAN_KEY_PASSPHRASE=key_passphrase(settings).decode(),
    )

    async def cli(*args: str) -> dict[str, object]:
        done = await atongban(*args, "--data-dir", str(settings.data_dir), "--json", env=env)
        assert done.code == 0, done.stdout + done.stderr
        result: dict[str, object] = done.json()
        return result

    async def issue() -> str:
        async with client_for(node, "samr", "SC-0001") as samr:
            licence = await samr.issue_licence(
                "business-licence", BUSINESS_LICENCE_CLAIMS, case_id="DJ-CA", reason="设立登记"
            )
        return licence.qr

    old_qr = await issue()
    rotated = await cli("key", "rotate", "ca-intermediate", "--overlap", "0")
    assert rotated["generation"] == 2
    assert rotated["made_now"] is True
    sealed = await cli("key", "rotate", "seal", "samr", "--overlap", "0")
    node.clock.set(datetime.fromisoformat(str(sealed["signs_from"])) + timedelta(minutes=1))
    new_qr = await issue()
    seal = await node.licensing.vault.get("samr")
    assert seal.certificate.issuer != load_ca(settings, SystemClock().now()).root.subject
    assert certificate_fingerprint(seal.certificate).hex() == sealed["seal_sha256"]

    trust_list = await node.licensing.trust.trust_list()
    issuers = {c.subject for c in trust_list.intermediates}
    assert {g.cert.subject for g in issuing_cas(settings)} <= issuers
    roots = list(node.licensing.roots)
    now = node.clock.now()
    for qr in (old_qr, new_qr):
        verified = verify_qr(
            qr, certificates=trust_list.certificates_for("samr"), roots=roots, now=now,
            intermediates=trust_list.intermediates,
        )  # fmt: skip
        assert verified.claims.issuer == "samr"
        async with client_for(node, "samr", "SC-0001") as samr:
            result = await samr.verify_licence(qr)
        assert (result.verified, result.reason) == (True, "")
    # The list's issuing CAs are what make the path: without them there is none.
    with pytest.raises(SignerUntrusted):
        verify_qr(new_qr, certificates=trust_list.certificates_for("samr"), roots=roots, now=now)
