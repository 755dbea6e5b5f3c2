"""``python -m bench keys``: what key custody costs, each figure beside a baseline from the
same run.

1. **signs per second** (in process, 300-byte messages): ES256 with a key in memory and
   with a key in a SoftHSM2 token; Ed25519 checkpoints (a C2SP signed note) likewise; SM2
   with SM3 from a key file. Baseline: raw P-256 signing with ``cryptography``.
2. **SM2 verify of a QR-sized payload** (300 bytes). Baseline: raw P-256 verification.
   Target: >= 1,000/s.
3. **PAdES seal** of a one-page PDF, key in memory vs in the token.
4. **licence issuance** (``Issuance.issue_many``, as ``bench licence`` phase 1: SD-JWT and
   QR signed, status allocated, COPY, events, log entries, commit) with the issuer's seal
   in the database (the baseline), then the same seal moved into the token
   (``SealVault.move_to_token``) on the same database. Target: >= 50% of the baseline.

Not measured, and why, printed with the figures: SM2 in a token (SoftHSM2 offers no SM2
mechanism) and the witness cosignature round trip (no witness yet).

The token is a fresh SoftHSM2 token in a temporary directory. Targets are printed as met
or missed, never asserted.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench.licence import (
    BATCH,
    TASKS,
    Figure,
    _paired,
    _raw_p256,
    _trivial_pdf,
    _without_grants,
    format_report,
    write_json,
)
from tongban.cli import story_data as story
from tongban.errors import TongbanError
from tongban.exchange.audit.log import AccessLog, SubjectHasher
from tongban.exchange.audit.note import sign_note
from tongban.exchange.datadir import (
    ca_certificate_pem,
    init_data_dir,
    load_log_key,
    load_node_signing,
)
from tongban.exchange.db.database import Database
from tongban.exchange.db.embedded import temp_root
from tongban.exchange.departments import DepartmentStore
from tongban.exchange.enrolment import enrol_demo_departments
from tongban.exchange.identity import Caller
from tongban.exchange.licensing.feed import LicenceFeed
from tongban.exchange.licensing.issuance import IssueInput
from tongban.exchange.licensing.service import Licensing
from tongban.exchange.licensing.setup import ensure_status_key, vault_for
from tongban.exchange.licensing.status import StatusLists
from tongban.exchange.settings import load_settings
from tongban.exchange.sharing.datasets import DatasetStore
from tongban.exchange.sharing.records import RecordStore
from tongban.licence import BUILTIN_REGISTRY
from tongban.signing import (
    LocalSigner,
    create_root_ca,
    generate_private_key,
    issue_seal_certificate,
    load_pem_certificates,
)
from tongban.signing.clock import SystemClock
from tongban.signing.pades import seal_pdf
from tongban.signing.pkcs11 import Token
from tongban.signing.sm2 import Sm2PrivateKey
from tongban.signing.softhsm import SoftHsm

__all__ = ["main"]


@dataclass(frozen=True)
class Config:
    seconds: float = float(os.environ.get("BENCH_KEYS_SECONDS", "3"))
    issue: int = int(os.environ.get("BENCH_KEYS_ISSUE", "10000"))
    pdfs: int = int(os.environ.get("BENCH_KEYS_PDFS", "40"))


QUICK = Config(seconds=1.0, issue=2_000, pdfs=10)

NOT_MEASURED = (
    "SM2 in a token: SoftHSM2 has no SM2 mechanism (PKCS#11 defines none; HSM vendors "
    "add their own), so SM2 keys are file keys here",
    "witness cosignature round trip: no witness yet (issue 18, witnessed checkpoints)",
)


def _signing_figures(config: Config, token: Token) -> list[Figure]:
    raw_sign, raw_verify = _raw_p256()
    message = os.urandom(300)
    file_es256 = LocalSigner(generate_private_key("P-256"))
    token.generate("bench-es256")
    token_es256 = token.signer("bench-es256")
    file_ed = LocalSigner(generate_private_key("Ed25519"))
    token.generate("bench-ed25519", "Ed25519")
    token_ed = token.signer("bench-ed25519")
    sm2 = Sm2PrivateKey.generate()
    sm2_signature = sm2.sign(message)
    body = "bench.example/log\n1000000\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"

    def pair(label: str, work: object, target: str = "", met: bool = True) -> Figure:
        rate, base = _paired(work, raw_sign, config.seconds)  # type: ignore[arg-type]
        return Figure(label, rate, "signs/s", "raw P-256 sign", base, target or "-", met)

    figures = [
        pair("ES256 sign, key in memory", lambda: file_es256.sign(message)),
        pair("ES256 sign, key in SoftHSM2", lambda: token_es256.sign(message)),
        pair("checkpoint (Ed25519 note), key in memory", lambda: sign_note(body, "b", file_ed)),
        pair("checkpoint (Ed25519 note), SoftHSM2", lambda: sign_note(body, "b", token_ed)),
        pair("SM2 sign (SM3), key file", lambda: sm2.sign(message)),
    ]
    verify, base = _paired(lambda: sm2.public.verify(sm2_signature, message), raw_verify,
                           config.seconds)  # fmt: skip
    figures.append(
        Figure(
            "SM2 verify, QR-sized payload",
            verify,
            "verifies/s",
            "raw P-256 verify",
            base,
            ">= 1,000/s",
            verify >= 1000,
        )
    )
    return figures


def _seal_figures(config: Config, token: Token) -> list[Figure]:
    now = datetime.now(UTC)
    ca_key = generate_private_key("P-256")
    ca = create_root_ca(common_name="Bench Root", key=ca_key, now=now)
    file_key = generate_private_key("P-256")
    made = token.generate("bench-seal")

    def cert(public: object) -> object:
        return issue_seal_certificate(ca_cert=ca, ca_key=ca_key, code="samr", name="bench",
                                      public_key=public, now=now)  # type: ignore[arg-type]  # fmt: skip

    file_chain = [cert(file_key.public_key()), ca]
    token_chain = [cert(made.public_key), ca]
    token_signer = token.signer("bench-seal")
    pdf = _trivial_pdf()

    def rate(key: object, chain: list[object]) -> float:
        seal_pdf(pdf, key=key, chain=chain, now=now)  # type: ignore[arg-type]  # warm-up
        started = time.perf_counter()
        for _ in range(config.pdfs):
            seal_pdf(pdf, key=key, chain=chain, now=now)  # type: ignore[arg-type]
        return config.pdfs / (time.perf_counter() - started)

    base = rate(file_key, file_chain)  # type: ignore[arg-type]
    in_token = rate(token_signer, token_chain)  # type: ignore[arg-type]
    return [Figure("PAdES seal, key in SoftHSM2", in_token, "seals/s",
                   "PAdES seal, key in memory", base, "-", True)]  # fmt: skip


async def _issuance_figure(config: Config, token: Token) -> Figure:
    work = temp_root("tongban-bench-keys-")
    db: Database | None = None
    log: AccessLog | None = None
    try:
        settings = load_settings(data_dir=work / "data", key_passphrase="bench")
        if settings.database_url is not None:
            raise RuntimeError("TONGBAN_DATABASE_URL is set; the keys bench needs a fresh one")
        clock = SystemClock()
        await asyncio.to_thread(init_data_dir, settings, clock.now())
        db = await Database.open(settings)
        # Enrolled without the token: the seals rest in the database first.
        await enrol_demo_departments(db, settings, clock.now())
        vault = vault_for(db.pool, settings, token)
        await ensure_status_key(vault, settings, clock.now())
        log = AccessLog(db.pool)
        await log.start()
        licensing = Licensing(
            db.pool,
            vault=vault,
            status_lists=StatusLists(db.pool, vault, "http://localhost:8080"),
            registry=BUILTIN_REGISTRY,
            feed=LicenceFeed(DatasetStore(db.pool)),
            records=RecordStore(db.pool),
            access_log=log,
            hasher=SubjectHasher(load_log_key(settings)),
            node_signing=load_node_signing(settings),
            roots=load_pem_certificates(ca_certificate_pem(settings)),
            clock=clock,
            node_name=settings.node_name,
            decide=_without_grants,
        )
        samr = Caller(await DepartmentStore(db.pool).get("samr"), "BENCH-1", b"")
        request = IssueInput("business-licence", story.BUSINESS_LICENCE_CLAIMS, case_id="BENCH")

        async def issue_rate() -> float:
            await licensing.issuance.issue_many(samr, [request] * 50)  # warm-up, fills caches
            per_task = config.issue // TASKS

            async def issuer() -> None:
                for start in range(0, per_task, BATCH):
                    await licensing.issuance.issue_many(
                        samr, [request] * min(BATCH, per_task - start)
                    )

            started = time.perf_counter()
            await asyncio.gather(*(issuer() for _ in range(TASKS)))
            return per_task * TASKS / (time.perf_counter() - started)

        in_database = await issue_rate()
        if await vault.move_to_token("samr") is None:
            raise RuntimeError("samr's seal was in the token before the baseline ran")
        in_token = await issue_rate()
        return Figure("licence issue, seal in SoftHSM2", in_token, "licences/s",
                      "licence issue, seal in the database", in_database,
                      ">= 50% of baseline", in_token >= 0.5 * in_database)  # fmt: skip
    finally:
        if log is not None:
            await log.stop()
        if db is not None:
            await db.close()
        await asyncio.to_thread(shutil.rmtree, work, True)


async def run(config: Config) -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="tongban-bench-hsm-") as hsm_dir:
        softhsm = SoftHsm(Path(hsm_dir))
        with Token(softhsm.new_token()) as token:
            figures = _signing_figures(config, token)
            figures += await asyncio.to_thread(_seal_figures, config, token)  # own loop
            figures.append(await _issuance_figure(config, token))
    return figures


def main(*, quick: bool = False) -> int:
    """Run the key-custody phases, print the table, write the JSON; return the exit status."""
    config = QUICK if quick else Config()
    try:
        figures = asyncio.run(run(config))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (RuntimeError, TongbanError, OSError) as e:
        message = e.diagnostics() if isinstance(e, TongbanError) else f"{type(e).__name__}: {e}"
        print(f"bench failed: {message}", file=sys.stderr)
        return 1
    print(format_report(figures, "key custody (in process; baselines from this run)"))
    for what in NOT_MEASURED:
        print(f"  not measured: {what}")
    path = write_json(figures, config, "keys")
    print(f"\nfigures written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
