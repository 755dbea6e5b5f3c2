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
   Then, informative, the same seal in the token with an SM2 seal added (``tongban seal
   sm2``): each licence also gets its SM2/SM3 signature beside the SD-JWT.

5. **witness cosignature round trip** on loopback: the node's side of one add-checkpoint
   (a checkpoint one entry larger and its consistency proof POSTed to a ``tongban witness``
   server, which verifies the log's signature and the proof, records the checkpoint in
   its SQLite state durably, cosigns and answers; then the cosignature verified), one
   request at a time. Baseline: a plain aiohttp POST of a body of the same size to a
   handler that answers a fixed line, same loop, same run, alternating blocks. Target:
   p99 <= 50 ms.

Not measured, and why, printed with the figures: SM2 in a token (SoftHSM2 offers no SM2
mechanism).

The token is a fresh SoftHSM2 token in a temporary directory. Targets are printed as met
or missed, never asserted.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench._table import latency_row
from bench.licence import (
    BATCH,
    TASKS,
    Figure,
    _paired,
    _raw_p256,
    _trivial_pdf,
    enrol_as_owner,
    format_report,
    licensing_on,
    write_json,
)
from tongban.cli import story_data as story
from tongban.errors import TongbanError
from tongban.exchange.audit.cosignature import WitnessKey, open_cosignatures
from tongban.exchange.audit.log import AccessLog
from tongban.exchange.audit.merkle import Frontier, NodeId, consistency_proof, leaf_hash
from tongban.exchange.audit.note import checkpoint_body, key_hash, sign_note, verifier_key
from tongban.exchange.datadir import (
    init_data_dir,
)
from tongban.exchange.db.database import Database
from tongban.exchange.db.embedded import temp_root
from tongban.exchange.departments import DepartmentStore
from tongban.exchange.identity import Caller
from tongban.exchange.licensing.issuance import IssueInput
from tongban.exchange.licensing.service import Licensing
from tongban.exchange.licensing.setup import (
    enrol_sm2_seal,
    ensure_status_key,
    sm2_seals_for,
    vault_for,
)
from tongban.exchange.settings import ListenAddress, load_settings
from tongban.exchange.witness import Witness, WitnessServer, WitnessState, log_keys
from tongban.exchange.witness.protocol import add_checkpoint_body, parse_cosignature_lines
from tongban.signing import (
    LocalSigner,
    create_root_ca,
    generate_private_key,
    issue_seal_certificate,
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
    witness_rounds: int = int(os.environ.get("BENCH_KEYS_WITNESS_ROUNDS", "2000"))


QUICK = Config(seconds=1.0, issue=2_000, pdfs=10, witness_rounds=400)

NOT_MEASURED = (
    "SM2 in a token: SoftHSM2 has no SM2 mechanism (PKCS#11 defines none; HSM vendors "
    "add their own), so SM2 keys are file keys here",
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

    base = rate(file_key, file_chain)
    in_token = rate(token_signer, token_chain)
    return [Figure("PAdES seal, key in SoftHSM2", in_token, "seals/s",
                   "PAdES seal, key in memory", base, "-", True)]  # fmt: skip


async def _issuance_figures(config: Config, token: Token) -> list[Figure]:
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
        await enrol_as_owner(settings, clock)
        vault = vault_for(db.pool, settings, token)
        await ensure_status_key(vault, settings, clock.now())
        log, licensing = await licensing_on(db, settings, clock, vault)
        samr = Caller(await DepartmentStore(db.pool).get("samr"), "BENCH-1", b"")
        request = IssueInput("business-licence", story.BUSINESS_LICENCE_CLAIMS, case_id="BENCH")

        async def issue_rate(licensing: Licensing) -> float:
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

        in_database = await issue_rate(licensing)
        if await vault.move_to_token("samr") is None:
            raise RuntimeError("samr's seal was in the token before the baseline ran")
        in_token = await issue_rate(licensing)
        async with await Database.open(settings, pool_size=1, owner=True) as owner:
            owner_seals = sm2_seals_for(owner.pool, settings, clock)
            await enrol_sm2_seal(owner_seals, owner.pool, settings, "samr", clock.now())
        # The same service as a node builds it once departments may have SM2 seals.
        await log.stop()
        log = None
        log, licensing = await licensing_on(
            db, settings, clock, vault, sm2_seals_for(db.pool, settings, clock)
        )
        with_sm2 = await issue_rate(licensing)
        return [
            Figure("licence issue, seal in SoftHSM2", in_token, "licences/s",
                   "licence issue, seal in the database", in_database,
                   ">= 50% of baseline", in_token >= 0.5 * in_database),
            Figure("licence issue, SoftHSM2 seal + SM2 seal", with_sm2, "licences/s",
                   "licence issue, seal in SoftHSM2", in_token, "-", True),
        ]  # fmt: skip
    finally:
        if log is not None:
            await log.stop()
        if db is not None:
            await db.close()
        await asyncio.to_thread(shutil.rmtree, work, True)


@dataclass(frozen=True)
class RoundTrips:
    """Latencies (ms) of the witness round trip and of its plain-HTTP baseline."""

    witness: list[float]
    baseline: list[float]

    @staticmethod
    def p(values: list[float], q: int) -> float:
        return statistics.quantiles(values, n=100, method="inclusive")[q - 1]

    def figures(self) -> list[Figure]:
        p99, base99 = self.p(self.witness, 99), self.p(self.baseline, 99)
        p50, base50 = self.p(self.witness, 50), self.p(self.baseline, 50)
        return [
            Figure("witness cosignature round trip p50", p50, "ms",
                   "plain aiohttp POST round trip p50", base50, "-", True),
            Figure("witness cosignature round trip p99", p99, "ms",
                   "plain aiohttp POST round trip p99", base99, "<= 50 ms", p99 <= 50),
        ]  # fmt: skip

    def report(self) -> str:
        p99 = self.p(self.witness, 99)
        verdict = "met" if p99 <= 50 else "MISSED"
        return "\n".join(
            [
                "witness cosignature round trip (loopback, one request at a time)",
                latency_row(
                    "add-checkpoint, cosignature verified",
                    self.p(self.witness, 50),
                    max(self.witness),
                    f"  p99 {p99:5.1f} ms  target <= 50 ms: {verdict}",
                ),
                latency_row(
                    "  baseline: plain aiohttp POST, same body",
                    self.p(self.baseline, 50),
                    max(self.baseline),
                    f"  p99 {self.p(self.baseline, 99):5.1f} ms",
                ),
            ]
        )


def _witness_requests(origin: str, log_key: Ed25519PrivateKey, rounds: int) -> list[bytes]:
    """add-checkpoint bodies of a log growing one entry a request: old size, its proof to
    the next size, the signed checkpoint (made before timing, as a node has them)."""
    frontier, nodes = Frontier(), dict[NodeId, bytes]()
    bodies = []
    for size in range(1, rounds + 2):
        for node, digest in frontier.append(leaf_hash(f"entry {size}".encode())):
            nodes[node] = digest
        note = sign_note(checkpoint_body(origin, size, frontier.root()), origin, log_key)
        old = size - 1
        bodies.append(add_checkpoint_body(old, consistency_proof(old, size, nodes), note))
    return bodies


async def _witness_round_trips(config: Config) -> RoundTrips:
    origin = "bench.example/access-log"
    log_key, witness_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    identity = WitnessKey("bench.example/witness", witness_key.public_key())
    bodies = _witness_requests(origin, log_key, config.witness_rounds)
    log_ids = [(origin, key_hash(origin, log_key.public_key()))]
    answer = f"\u2014 bench.example/witness {'A' * 96}\n".encode()

    async def echo(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=answer, content_type="text/plain")

    plain = web.AppRunner(web.Application(client_max_size=2 << 20), access_log=None)
    plain.app.router.add_post("/add-checkpoint", echo)
    await plain.setup()
    site = web.TCPSite(plain, "127.0.0.1", 0)
    await site.start()
    plain_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    with tempfile.TemporaryDirectory(prefix="tongban-bench-witness-") as work:
        state = WitnessState(Path(work) / "state.sqlite3")
        logs = log_keys([verifier_key(origin, log_key.public_key())])
        witness = Witness(identity, witness_key, logs, state, SystemClock())
        try:
            async with (
                WitnessServer(witness, ListenAddress("127.0.0.1", 0)) as server,
                aiohttp.ClientSession() as session,
            ):

                async def witness_trip(body: bytes) -> float:
                    started = time.perf_counter()
                    async with session.post(f"{server.url}/add-checkpoint", data=body) as r:
                        if r.status != 200:
                            raise RuntimeError(f"the witness answered {r.status}: {await r.text()}")
                        lines = parse_cosignature_lines(await r.read())
                    note = body.decode().partition("\n\n")[2]
                    found = open_cosignatures(note + "".join(lines), [identity], log_keys=log_ids)
                    if len(found.valid) != 1:
                        raise RuntimeError("the witness's answer holds no valid cosignature")
                    return (time.perf_counter() - started) * 1000

                async def plain_trip(body: bytes) -> float:
                    started = time.perf_counter()
                    url = f"http://127.0.0.1:{plain_port}/add-checkpoint"
                    async with session.post(url, data=body) as r:
                        await r.read()
                    return (time.perf_counter() - started) * 1000

                await witness_trip(bodies[0])  # warm-up: connections, the state file
                await plain_trip(bodies[0])
                trips = RoundTrips([], [])
                block = max(1, len(bodies[1:]) // 8)
                for start in range(1, len(bodies), block):  # alternating blocks
                    chunk = bodies[start : start + block]
                    trips.baseline.extend([await plain_trip(b) for b in chunk])
                    trips.witness.extend([await witness_trip(b) for b in chunk])
                return trips
        finally:
            state.close()
            await plain.cleanup()


async def run(config: Config) -> tuple[list[Figure], RoundTrips]:
    with tempfile.TemporaryDirectory(prefix="tongban-bench-hsm-") as hsm_dir:
        softhsm = SoftHsm(Path(hsm_dir))
        with Token(softhsm.new_token()) as token:
            figures = _signing_figures(config, token)
            figures += await asyncio.to_thread(_seal_figures, config, token)  # own loop
            figures.extend(await _issuance_figures(config, token))
    return figures, await _witness_round_trips(config)


def main(*, quick: bool = False) -> int:
    """Run the key-custody phases, print the table, write the JSON; return the exit status."""
    config = QUICK if quick else Config()
    try:
        figures, trips = asyncio.run(run(config))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (RuntimeError, TongbanError, OSError) as e:
        message = e.diagnostics() if isinstance(e, TongbanError) else f"{type(e).__name__}: {e}"
        print(f"bench failed: {message}", file=sys.stderr)
        return 1
    print(format_report(figures, "key custody (in process; baselines from this run)"))
    print(trips.report())
    for what in NOT_MEASURED:
        print(f"  not measured: {what}")
    path = write_json([*figures, *trips.figures()], config, "keys")
    print(f"\nfigures written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
