"""The witness over real HTTP on loopback: cosigning a growing log, every refusal the
tlog-witness spec defines with its status code and no change of state, split views,
atomic check-and-set under racing requests, and state that survives a restart."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.exchange.witness.toylog import ToyLog
from tongban.exchange.audit.cosignature import WitnessKey, open_cosignatures
from tongban.exchange.audit.note import key_hash, sign_note
from tongban.exchange.settings import ListenAddress
from tongban.exchange.witness import Witness, WitnessServer, WitnessState, log_keys
from tongban.exchange.witness.protocol import add_checkpoint_body
from tongban.exchange.witness.server import REASON_HEADER
from tongban.signing.clock import FixedClock

ORIGIN = "tongban.example/witness-test/access-log"
NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def seeded(n: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(
        hashlib.sha256(f"witness test {n}".encode()).digest()
    )


LOG_KEY, WITNESS_KEY, OTHER_KEY = seeded(1), seeded(2), seeded(3)
IDENTITY = WitnessKey("witness.example/w1", WITNESS_KEY.public_key())


@dataclass
class Answer:
    status: int
    content_type: str
    reason: str
    body: bytes


@dataclass
class Running:
    server: WitnessServer
    state: WitnessState
    session: aiohttp.ClientSession

    async def post(self, body: bytes) -> Answer:
        async with self.session.post(f"{self.server.url}/add-checkpoint", data=body) as r:
            return Answer(
                r.status,
                r.headers["Content-Type"],
                r.headers.get(REASON_HEADER, ""),
                await r.read(),
            )

    def stored(self) -> tuple[int, bytes] | None:
        record = self.state.latest(ORIGIN)
        return None if record is None else (record.size, record.root)


async def _start(path: Path, session: aiohttp.ClientSession) -> Running:
    state = WitnessState(path)
    logs = log_keys([ToyLog(ORIGIN, LOG_KEY).vkey])
    witness = Witness(IDENTITY, WITNESS_KEY, logs, state, FixedClock(NOW))
    server = WitnessServer(witness, ListenAddress("127.0.0.1", 0))
    await server.start()
    return Running(server, state, session)


async def _stop(running: Running) -> None:
    await running.server.stop()
    running.state.close()


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest_asyncio.fixture
async def witness(tmp_path: Path, session: aiohttp.ClientSession) -> AsyncIterator[Running]:
    running = await _start(tmp_path / "state.sqlite3", session)
    yield running
    await _stop(running)


def _cosigned(log: ToyLog, answer: Answer) -> int:
    """Check a 200 answer: one cosignature line by the witness on the checkpoint; return
    its timestamp."""
    assert answer.status == 200, answer.body
    note = log.checkpoint() + answer.body.decode()
    found = open_cosignatures(
        note, [IDENTITY], log_keys=[(ORIGIN, key_hash(ORIGIN, LOG_KEY.public_key()))]
    )
    assert len(found.valid) == 1
    assert found.unknown == ()
    return found.valid[0].timestamp


async def test_a_growing_log_is_cosigned_step_by_step(witness: Running) -> None:
    log = ToyLog(ORIGIN, LOG_KEY).grow(5)
    assert _cosigned(log, await witness.post(log.request(0))) == int(NOW.timestamp())
    assert witness.stored() == (5, log.frontier.root())
    log.grow(8)
    _cosigned(log, await witness.post(log.request(5)))
    assert witness.stored() == (13, log.frontier.root())
    # The same checkpoint again (a client that lost the answer): cosigned again.
    _cosigned(log, await witness.post(log.request(13)))
    assert witness.stored() == (13, log.frontier.root())


async def test_a_stale_old_size_gets_409_with_the_witness_size(witness: Running) -> None:
    log = ToyLog(ORIGIN, LOG_KEY).grow(7)
    _cosigned(log, await witness.post(log.request(0)))
    log.grow(3)
    for old in (0, 4, 9):
        answer = await witness.post(log.request(old))
        assert answer.status == 409
        assert answer.content_type == "text/x.tlog.size"
        assert answer.body == b"7\n"
        assert answer.reason == "WITNESS_CONFLICT"
    assert witness.stored() == (7, ToyLog(ORIGIN, LOG_KEY).grow(7).frontier.root())


async def test_a_split_view_is_refused_and_kept_as_evidence(witness: Running) -> None:
    honest = ToyLog(ORIGIN, LOG_KEY).grow(6)
    _cosigned(honest, await witness.post(honest.request(0)))
    fork = ToyLog(ORIGIN, LOG_KEY, seed="fork ").grow(6)  # same size, same key, other root
    answer = await witness.post(add_checkpoint_body(6, [], fork.checkpoint()))
    assert answer.status == 409
    assert answer.body == b"6\n"
    assert witness.stored() == (6, honest.frontier.root())
    [evidence] = witness.state.refusals()
    assert evidence.reason == "WITNESS_CONFLICT"
    assert evidence.note == fork.checkpoint()


async def test_a_fork_that_grew_cannot_prove_consistency(witness: Running) -> None:
    honest = ToyLog(ORIGIN, LOG_KEY).grow(6)
    _cosigned(honest, await witness.post(honest.request(0)))
    fork = ToyLog(ORIGIN, LOG_KEY, seed="fork ").grow(9)
    answer = await witness.post(fork.request(6))
    assert answer.status == 422
    assert answer.reason == "WITNESS_PROOF_INVALID"
    assert "does not verify" in answer.body.decode()
    assert witness.stored() == (6, honest.frontier.root())
    assert [r.reason for r in witness.state.refusals()] == ["WITNESS_PROOF_INVALID"]


def _zero_padded(log: ToyLog) -> str:
    """A validly signed note that is not a checkpoint: its size has a leading zero."""
    root = base64.b64encode(log.frontier.root()).decode()
    return sign_note(f"{ORIGIN}\n0{log.size}\n{root}\n", ORIGIN, LOG_KEY)


def _with_proof_line(body: bytes, line: bytes) -> bytes:
    head, _, rest = body.partition(b"\n")
    return head + b"\n" + line + b"\n" + rest


@pytest.mark.parametrize(
    ("build", "status", "reason"),
    [
        (lambda log: b"", 400, "WITNESS_REQUEST_MALFORMED"),
        (lambda log: b"\xff\xfe", 400, "WITNESS_REQUEST_MALFORMED"),
        (lambda log: log.request(5).replace(b"old 5", b"old 05"), 400, "WITNESS_REQUEST_MALFORMED"),
        (lambda log: log.request(5).replace(b"old 5", b"new 5"), 400, "WITNESS_REQUEST_MALFORMED"),
        (lambda log: log.request(5).replace(b"\n\n", b"\n", 1), 400, "WITNESS_REQUEST_MALFORMED"),
        (lambda log: _with_proof_line(log.request(5), b"not base64!"), 400,
         "WITNESS_REQUEST_MALFORMED"),
        (lambda log: _with_proof_line(log.request(5), base64.b64encode(b"short")), 400,
         "WITNESS_REQUEST_MALFORMED"),
        (lambda log: b"old 5\n" + b"".join([base64.b64encode(bytes(32)) + b"\n"] * 64) + b"\n"
         + log.checkpoint().encode(), 400, "WITNESS_REQUEST_MALFORMED"),
        (lambda log: b"old 5\n\n" + log.checkpoint().encode().replace(b"\n\n", b"\n"), 400,
         "WITNESS_REQUEST_MALFORMED"),
        (lambda log: add_checkpoint_body(5, [], _zero_padded(log)), 400,
         "WITNESS_REQUEST_MALFORMED"),
        (lambda log: add_checkpoint_body(20, [], log.checkpoint()), 400,
         "WITNESS_OLD_SIZE_INVALID"),
        (lambda log: add_checkpoint_body(5, log.proof(5), log.checkpoint(OTHER_KEY)), 403,
         "WITNESS_SIGNATURE_INVALID"),
        (lambda log: add_checkpoint_body(
            5, log.proof(5), log.checkpoint().replace(ORIGIN, ORIGIN + "x")), 404,
         "WITNESS_LOG_UNKNOWN"),
        (lambda log: add_checkpoint_body(5, log.proof(5)[:-1], log.checkpoint()), 422,
         "WITNESS_PROOF_INVALID"),
        (lambda log: add_checkpoint_body(5, [bytes(32), *log.proof(5)[1:]], log.checkpoint()),
         422, "WITNESS_PROOF_INVALID"),
    ],
)  # fmt: skip
async def test_bad_requests_get_the_spec_status_and_change_nothing(
    witness: Running, build: object, status: int, reason: str
) -> None:
    log = ToyLog(ORIGIN, LOG_KEY).grow(5)
    _cosigned(log, await witness.post(log.request(0)))
    before = witness.stored()
    log.grow(4)
    answer = await witness.post(build(log))  # type: ignore[operator]
    assert (answer.status, answer.reason) == (status, reason), answer.body
    assert answer.body.decode().endswith(f" [{reason}]\n")  # one sentence and its code
    assert witness.stored() == before
    # The same witness still takes the right request.
    _cosigned(log, await witness.post(log.request(5)))


async def test_a_log_never_cosigned_starts_from_zero(witness: Running) -> None:
    log = ToyLog(ORIGIN, LOG_KEY).grow(3)
    answer = await witness.post(log.request(3))  # the client believed the witness had 3
    assert (answer.status, answer.body) == (409, b"0\n")
    nonempty = add_checkpoint_body(0, [bytes(32)], log.checkpoint())
    assert (await witness.post(nonempty)).status == 422  # old 0 takes no proof
    assert witness.stored() is None
    _cosigned(log, await witness.post(log.request(0)))


async def test_racing_requests_from_one_old_size_cosign_only_one(witness: Running) -> None:
    log = ToyLog(ORIGIN, LOG_KEY).grow(4)
    _cosigned(log, await witness.post(log.request(0)))
    bodies = []
    for _ in range(6):
        log.grow(1)
        bodies.append(log.request(4))  # each extends 4, to a different size
    answers = await asyncio.gather(*(witness.post(body) for body in bodies))
    assert sorted(a.status for a in answers) == [200] + [409] * 5
    winner = next(i for i, a in enumerate(answers) if a.status == 200)
    assert witness.stored() is not None
    assert witness.stored()[0] == 5 + winner  # type: ignore[index]


async def test_the_state_survives_a_restart(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    path = tmp_path / "state.sqlite3"
    log = ToyLog(ORIGIN, LOG_KEY).grow(10)
    first = await _start(path, session)
    try:
        _cosigned(log, await first.post(log.request(0)))
    finally:
        await _stop(first)
    second = await _start(path, session)
    try:
        assert second.stored() == (10, log.frontier.root())
        fork = ToyLog(ORIGIN, LOG_KEY, seed="fork ").grow(10)
        assert (await second.post(add_checkpoint_body(10, [], fork.checkpoint()))).status == 409
        assert (await second.post(log.request(0))).body == b"10\n"
        log.grow(2)
        _cosigned(log, await second.post(log.request(10)))
    finally:
        await _stop(second)
