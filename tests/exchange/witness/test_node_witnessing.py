"""A node and its witnesses, over real sockets: the node asks after each checkpoint and
serves checkpoints with the cosignatures, ``tongban audit verify --witnesses N`` counts
them, a rewritten log gathers none, and a witness answering with another key is not
believed. Witnesses run in process (``WitnessServer``); ``test_witness_cli`` runs them as
``tongban witness serve``."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tests.cli_helpers import Result, atongban, cli_env
from tests.conftest import client_for
from tongban.exchange.audit.cosignature import WitnessKey, open_cosignatures
from tongban.exchange.audit.merkle import Frontier, NodeId, leaf_hash
from tongban.exchange.audit.note import key_hash, verifier_key
from tongban.exchange.audit.recorder import AccessRecorder
from tongban.exchange.datadir import load_log_signer, log_origin
from tongban.exchange.node import Node
from tongban.exchange.settings import ListenAddress, Settings, load_settings
from tongban.exchange.witness import Witness, WitnessServer, WitnessState, log_keys
from tongban.signing.clock import FixedClock, SystemClock

_NODE_FIELDS = (
    "data_dir",
    "database_url",
    "grpc_listen",
    "http_listen",
    "key_passphrase",
    "shutdown_grace_seconds",
)


@dataclass
class InProcessWitness:
    server: WitnessServer
    state: WitnessState
    key: WitnessKey

    def at(self) -> str:
        """This witness's TONGBAN_WITNESSES entry."""
        return f"{self.key.vkey}@{self.server.url}"

    def cosigned_size(self, origin: str) -> int | None:
        record = self.state.latest(origin)
        return None if record is None else record.size

    async def stop(self) -> None:
        await self.server.stop()
        self.state.close()


def _key(name: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(name.encode()).digest())


def log_public_key(settings: Settings) -> Ed25519PublicKey:
    public = load_log_signer(settings).public_key()
    assert isinstance(public, Ed25519PublicKey)
    return public


def log_vkey(settings: Settings) -> str:
    return verifier_key(log_origin(settings), log_public_key(settings))


async def start_witness(
    directory: Path, settings: Settings, name: str, *, advertised: WitnessKey | None = None
) -> InProcessWitness:
    """A witness of this node's log; ``advertised`` is the key the node is told (to
    configure a witness that signs with another key than the node believes)."""
    key = _key(name)
    identity = WitnessKey(name, key.public_key())
    state = WitnessState(directory / "state.sqlite3")
    witness = Witness(identity, key, log_keys([log_vkey(settings)]), state, SystemClock())
    server = WitnessServer(witness, ListenAddress("127.0.0.1", 0))
    await server.start()
    return InProcessWitness(server, state, advertised or identity)


def with_witnesses(settings: Settings, witnesses: Sequence[InProcessWitness]) -> Settings:
    return load_settings(
        **{name: getattr(settings, name) for name in _NODE_FIELDS},
        witnesses=",".join(w.at() for w in witnesses),
    )


async def grow(node: Node, entries: int) -> int:
    """Append ``entries`` entries and sign a checkpoint of them; return its size."""
    assert node.access_log is not None
    assert node.checkpointer is not None
    recorder = AccessRecorder(node.settings.node_name)
    await node.access_log.append(
        [
            recorder.entry(
                at=node.clock.now(),
                department="operator",
                officer=None,
                action="audit.search",
                purpose=f"witness test {i}",
            )
            for i in range(entries)
        ]
    )
    return (await node.checkpointer.sign_now()).size


async def kept_size(node: Node, witness: WitnessKey) -> int | None:
    """The largest checkpoint the node keeps ``witness``'s cosignature of."""
    assert node.db is not None
    size: int | None = await node.db.pool.fetchval(
        "SELECT max(size) FROM witness_cosignature WHERE witness = $1", witness.name
    )
    return size


async def until_kept(node: Node, witness: WitnessKey, size: int) -> None:
    for _ in range(600):
        if await kept_size(node, witness) == size:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{witness.name} never cosigned size {size}")


def outcomes(node: Node, witness: WitnessKey, outcome: str) -> float:
    value = node.metrics.registry.get_sample_value(
        "tongban_witness_requests_total", {"witness": witness.name, "outcome": outcome}
    )
    return value or 0.0


async def until_outcome(node: Node, witness: WitnessKey, outcome: str) -> None:
    for _ in range(600):
        if outcomes(node, witness, outcome) >= 1:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{witness.name} never answered {outcome}")


def cli(settings: Settings, **extra: str) -> dict[str, str]:
    assert settings.database_url is not None
    return cli_env(
        TONGBAN_DATABASE_URL=settings.database_url.get_secret_value(),
        TONGBAN_KEY_PASSPHRASE="test passphrase",
        **extra,
    )


async def verify(settings: Settings, *args: str, **env: str) -> Result:
    return await atongban(
        "audit", "verify", "--data-dir", str(settings.data_dir), "--json", *args,
        env=cli(settings, **env),
    )  # fmt: skip


WITNESS = pytest.StashKey[InProcessWitness]()


@pytest_asyncio.fixture
async def settings(
    settings: Settings, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Settings]:
    """The ``node`` fixture's settings, with one witness (in ``request.node.stash``)."""
    witness = await start_witness(tmp_path / "w1", settings, "witness.example/w1")
    request.node.stash[WITNESS] = witness
    yield with_witnesses(settings, [witness])
    await witness.stop()


async def test_checkpoints_are_served_with_the_witness_cosignature(
    node: Node, request: pytest.FixtureRequest
) -> None:
    witness = request.node.stash[WITNESS]
    size = await grow(node, 5)
    await until_kept(node, witness.key, size)
    origin = log_origin(node.settings)
    assert witness.cosigned_size(origin) == size
    # Over gRPC, as an auditor: the log's note with the witness's line appended.
    async with client_for(node, "audit") as auditor:
        served = await auditor.audit_checkpoint()
    assert served.size == size
    log_ids = [(origin, key_hash(origin, log_public_key(node.settings)))]
    found = open_cosignatures(served.note, [witness.key], log_keys=log_ids)
    assert [c.witness for c in found.valid] == [witness.key]
    assert found.unknown == ()
    # Growing again: asked again, from the size it cosigned (no resynchronising).
    bigger = await grow(node, 3)
    await until_kept(node, witness.key, bigger)
    assert outcomes(node, witness.key, "resync") == 0
    assert outcomes(node, witness.key, "cosigned") >= 2


async def test_audit_verify_counts_valid_cosignatures_of_trusted_witnesses(
    settings: Settings, tmp_path: Path
) -> None:
    w1 = await start_witness(tmp_path / "a", settings, "witness.example/a")
    w2 = await start_witness(tmp_path / "b", settings, "witness.example/b")
    try:
        async with Node(
            with_witnesses(settings, [w1, w2]), clock=FixedClock(SystemClock().now())
        ) as node:
            size = await grow(node, 7)
            await until_kept(node, w1.key, size)
            await until_kept(node, w2.key, size)
        both = f"{w1.at()},{w2.at()}"
        passed = await verify(settings, "--witnesses", "2", TONGBAN_WITNESSES=both)
        assert passed.code == 0, passed.stdout + passed.stderr
        witnessed = passed.json()["witnessed"]
        assert witnessed["size"] == size
        assert witnessed["witnesses"] == ["witness.example/a", "witness.example/b"]
        # Trusting one of them: two are not there, and the other is named as unknown.
        only_a = await verify(settings, "--witnesses", "2", "--witness", w1.key.vkey)
        assert only_a.code == 1
        assert only_a.json()["reason"] == "WITNESS_UNKNOWN"
        assert w2.key.label in only_a.json()["message"]
        assert (await verify(settings, "--witnesses", "1", "--witness", w1.key.vkey)).code == 0
        # More than there are.
        three = await verify(settings, "--witnesses", "3", TONGBAN_WITNESSES=both)
        assert (three.code, three.json()["reason"]) == (1, "WITNESS_QUORUM_NOT_MET")
        assert "fewer than the 3 required" in three.json()["message"]
        # None trusted at all: refused, not passed.
        none = await verify(settings, "--witnesses", "1")
        assert (none.code, none.json()["reason"]) == (1, "WITNESSES_NOT_CONFIGURED")
        # A cosignature altered behind the node's back fails the check.
        await _alter_cosignature(settings, w1.key, size)
        bad = await verify(settings, "--witnesses", "1", "--witness", w1.key.vkey)
        assert (bad.code, bad.json()["reason"]) == (1, "COSIGNATURE_INVALID")
    finally:
        await w1.stop()
        await w2.stop()


async def _alter_cosignature(settings: Settings, witness: WitnessKey, size: int) -> None:
    assert settings.database_url is not None
    owner = await asyncpg.connect(settings.database_url.get_secret_value())
    try:
        line = await owner.fetchval(
            "SELECT line FROM witness_cosignature WHERE witness = $1 AND size = $2",
            witness.name,
            size,
        )
        dash, name, encoded = line.rstrip("\n").split(" ")
        blob = bytearray(base64.b64decode(encoded))
        blob[-1] ^= 1
        forged = f"{dash} {name} {base64.b64encode(bytes(blob)).decode()}\n"
        await owner.execute("ALTER TABLE witness_cosignature DISABLE TRIGGER USER")
        await owner.execute(
            "UPDATE witness_cosignature SET line = $1 WHERE witness = $2 AND size = $3",
            forged,
            witness.name,
            size,
        )
        await owner.execute("ALTER TABLE witness_cosignature ENABLE TRIGGER USER")
    finally:
        await owner.close()


async def test_a_rewritten_log_cannot_gather_cosignatures(
    settings: Settings, tmp_path: Path
) -> None:
    witness = await start_witness(tmp_path / "w", settings, "witness.example/w")
    try:
        async with Node(
            with_witnesses(settings, [witness]), clock=FixedClock(SystemClock().now())
        ) as node:
            witnessed = await grow(node, 12)
            await until_kept(node, witness.key, witnessed)
            await _rewrite_entry(settings, 4)
            rewritten = await grow(node, 3)  # the node signs a checkpoint of the new tree
            await until_outcome(node, witness.key, "proof_refused")
            assert await kept_size(node, witness.key) == witnessed
            assert node.checkpointer is not None
            assert (await node.checkpointer.latest()).size == rewritten
        origin = log_origin(settings)
        assert witness.cosigned_size(origin) == witnessed
        assert [r.reason for r in witness.state.refusals()][:1] == ["WITNESS_PROOF_INVALID"]
    finally:
        await witness.stop()


async def _rewrite_entry(settings: Settings, index: int) -> None:
    """What a superuser could do: change one leaf and recompute every stored hash and
    the head, so that the node's own appends go on from the rewritten tree."""
    assert settings.database_url is not None
    owner = await asyncpg.connect(settings.database_url.get_secret_value())
    try:
        leaves = [
            bytes(r["leaf"]) for r in await owner.fetch("SELECT leaf FROM access_log ORDER BY idx")
        ]
        leaves[index] = leaves[index].replace(b"witness test", b"rewritten!!!")
        frontier, nodes = Frontier(), dict[NodeId, bytes]()
        for leaf in leaves:
            nodes.update(frontier.append(leaf_hash(leaf)))
        for table in ("access_log", "log_node"):
            await owner.execute(f"ALTER TABLE {table} DISABLE TRIGGER {table}_no_update")
        await owner.execute("UPDATE access_log SET leaf = $1 WHERE idx = $2", leaves[index], index)
        await owner.executemany(
            "UPDATE log_node SET hash = $3 WHERE level = $1 AND idx = $2",
            [(level, idx, digest) for (level, idx), digest in nodes.items()],
        )
        for table in ("access_log", "log_node"):
            await owner.execute(f"ALTER TABLE {table} ENABLE TRIGGER {table}_no_update")
        await owner.execute(
            "UPDATE log_state SET root = $1, frontier = $2", frontier.root(), frontier.roots
        )
    finally:
        await owner.close()


async def test_a_cosignature_by_another_key_is_not_kept(settings: Settings, tmp_path: Path) -> None:
    believed = WitnessKey("witness.example/w", _key("the key the node was given").public_key())
    witness = await start_witness(
        tmp_path / "w", settings, "witness.example/w", advertised=believed
    )
    try:
        async with Node(
            with_witnesses(settings, [witness]), clock=FixedClock(SystemClock().now())
        ) as node:
            await grow(node, 2)
            await until_outcome(node, witness.key, "unknown_key")
            assert await kept_size(node, witness.key) is None
            assert outcomes(node, witness.key, "cosigned") == 0
    finally:
        await witness.stop()


async def test_a_bad_witnesses_setting_stops_with_one_sentence(settings: Settings) -> None:
    result = await verify(settings, "--witnesses", "1", TONGBAN_WITNESSES="not-a-witness")
    assert result.code == 1
    assert result.json()["reason"] == "CONFIG_INVALID"
    assert "TONGBAN_WITNESSES" in result.json()["message"]
