"""Peers as witnesses: the province's exchange witnesses the county's access log over the
peer link (PeerService/AddCheckpoint, real mutual TLS with the county's node
certificate), its state in the province's PostgreSQL, shared by its nodes; the county's
collector asks it as ``<key>@peer:province`` and ``tongban audit verify --witnesses 1``
counts its cosignature. Split views, rewritten logs, other exchanges' logs, bad
signatures and malformed bodies are refused with the spec's meanings as reason codes;
unpinned and suspended peers are refused; two nodes racing on the shared state cosign at
most one root per size (docs/federation.md, "Peers as witnesses")."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import asyncpg
import grpc
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.cli_helpers import atongban, cli_env
from tests.conftest import raw_channel as department_channel
from tests.exchange.federation.conftest import (
    county_node,
    link,
    owner_pool,
    parts,
    set_peer_status,
)
from tests.exchange.witness.test_node_witnessing import grow, until_kept, verify
from tongban.client.errors import ExchangeError, from_rpc_error
from tongban.exchange.audit.cosignature import WitnessKey, open_cosignatures
from tongban.exchange.audit.merkle import Frontier, NodeId, consistency_proof, leaf_hash
from tongban.exchange.audit.note import checkpoint_body, key_hash, sign_note, verifier_key
from tongban.exchange.datadir import ca_certificate_pem, load_node_credentials, log_origin
from tongban.exchange.db.database import Database
from tongban.exchange.federation.peers import Peer, PeerStatus, PeerStore
from tongban.exchange.federation.witnessing import PeerWitness
from tongban.exchange.node import Node
from tongban.exchange.settings import Settings
from tongban.exchange.witness.collector import (
    WitnessAnswer,
    WitnessUnavailable,
    parse_witness_endpoints,
)
from tongban.exchange.witness.keys import WitnessIdentity, init_witness, load_witness
from tongban.exchange.witness.protocol import WitnessConflict, add_checkpoint_body
from tongban.exchange.witness.shared_state import SharedWitnessState
from tongban.signing.clock import SystemClock
from tongban.v1 import federation_pb2, federation_pb2_grpc

WITNESS_NAME = "province.example/witness"
ORIGIN = "tongban.exchange/county-test/access-log"


def _seeded(n: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(
        hashlib.sha256(f"peer witness {n}".encode()).digest()
    )


LOG_KEY, OTHER_KEY = _seeded(1), _seeded(2)


class Tree:
    """A log in memory with the leaves given: forks of one log share a prefix."""

    def __init__(self, origin: str, key: Ed25519PrivateKey, leaves: Sequence[bytes] = ()) -> None:
        self.origin, self.key, self.leaves = origin, key, list(leaves)
        self.frontier, self.nodes = Frontier(), dict[NodeId, bytes]()
        for leaf in self.leaves:
            self.nodes.update(self.frontier.append(leaf_hash(leaf)))

    @property
    def size(self) -> int:
        return len(self.leaves)

    @property
    def root(self) -> bytes:
        return self.frontier.root()

    @property
    def vkey(self) -> str:
        return verifier_key(self.origin, self.key.public_key())

    def plus(self, tag: str, count: int) -> Tree:
        more = [f"{tag} {self.size + i}".encode() for i in range(count)]
        return Tree(self.origin, self.key, [*self.leaves, *more])

    def checkpoint(self, key: Ed25519PrivateKey | None = None) -> str:
        body = checkpoint_body(self.origin, self.size, self.root)
        return sign_note(body, self.origin, key or self.key)

    def request(self, old: int, key: Ed25519PrivateKey | None = None) -> bytes:
        proof = consistency_proof(old, self.size, self.nodes)
        return add_checkpoint_body(old, proof, self.checkpoint(key))


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The province's data dir, with the exchange's witness key (`tongban witness init`)."""
    init_witness(settings, WITNESS_NAME, None)
    return settings


def witness_of(node: Node) -> WitnessIdentity:
    identity = parts(node).witness.identity
    assert identity is not None
    return identity


@pytest_asyncio.fixture
async def county(tmp_path: Path, county_database_url: str, province: Node) -> AsyncIterator[Node]:
    """The county, which names the province's exchange as its witness."""
    at = f"{witness_of(province).key.vkey}@peer:province"
    async with county_node(tmp_path, county_database_url, witnesses=at) as running:
        yield running


def _peer_channel(caller: Node, target: Node) -> grpc.aio.Channel:
    """What ``caller``'s node presents to ``target``: its node certificate."""
    own = load_node_credentials(caller.settings)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca_certificate_pem(target.settings),
        private_key=own.key_pem,
        certificate_chain=own.cert_chain_pem,
    )
    return grpc.aio.secure_channel(f"127.0.0.1:{target.grpc_port}", credentials)


async def _submit(channel: grpc.aio.Channel, body: bytes) -> str:
    stub = federation_pb2_grpc.PeerServiceStub(channel)
    reply = await stub.AddCheckpoint(federation_pb2.AddCheckpointRequest(body=body), timeout=10)
    return reply.cosignatures


async def _refused(channel: grpc.aio.Channel, body: bytes) -> ExchangeError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _submit(channel, body)
    return from_rpc_error(caught.value)


async def _pin(at: Node, peer: str, log_key: str) -> None:
    async with owner_pool(at) as pool:
        await PeerStore(pool).set_log_key(peer, log_key)
    await at.caches_settled()


def _state(node: Node) -> SharedWitnessState:
    assert node.db is not None
    return SharedWitnessState(node.db.pool, node_name=node.settings.node_name)


def _check_cosignature(line: str, tree: Tree, witness: WitnessKey) -> None:
    found = open_cosignatures(
        tree.checkpoint() + line,
        [witness],
        log_keys=[(tree.origin, key_hash(tree.origin, tree.key.public_key()))],
    )
    assert [c.witness for c in found.valid] == [witness]


async def test_the_province_witnesses_the_county_log_through_the_collector(
    province: Node, county: Node
) -> None:
    await link(province, county)
    assert county.checkpointer is not None
    await _pin(province, "county-a", county.checkpointer.verifier_key)
    witness = witness_of(province).key

    size = await grow(county, 5)
    assert county.cosigner is not None
    [endpoint] = parse_witness_endpoints(county.settings.witnesses)
    assert endpoint.peer == "province"
    # The collector's background task may have asked already; either way it is kept.
    assert await county.cosigner.ask(endpoint) in ("cosigned", "current")
    await until_kept(county, witness, size)

    stored = await _state(province).latest(log_origin(county.settings))
    assert stored is not None
    assert stored.size == size
    assert stored.exchange == (await _peer(county, province)).ca_fingerprint

    # The auditor's check on the county counts the province's cosignature.
    at = f"{witness.vkey}@peer:province"
    passed = await verify(county.settings, "--witnesses", "1", TONGBAN_WITNESSES=at)
    assert passed.code == 0, passed.stdout + passed.stderr
    assert passed.json()["witnessed"]["witnesses"] == [WITNESS_NAME]
    assert passed.json()["witnessed"]["size"] >= size


async def _peer(of: Node, at: Node) -> Peer:
    """``at``'s registry entry for exchange ``of``."""
    peers = [
        p for p in parts(at).trust.peers() if p.ca_fingerprint == parts(of).trust.own_fingerprint
    ]
    assert len(peers) == 1
    return peers[0]


async def test_bad_submissions_get_the_spec_meaning_as_a_reason_code(
    province: Node, county: Node
) -> None:
    await link(province, county)
    witness = witness_of(province).key
    log = Tree(ORIGIN, LOG_KEY).plus("a", 5)
    async with _peer_channel(county, province) as channel:
        # No key pinned for the county yet.
        unpinned = await _refused(channel, log.request(0))
        assert (unpinned.status, unpinned.reason) == ("FAILED_PRECONDITION", "PEER_LOG_KEY_UNSET")
        await _pin(province, "county-a", log.vkey)

        elsewhere = Tree("tongban.exchange/elsewhere/access-log", LOG_KEY).plus("a", 5)
        cases = [
            (b"garbage", "INVALID_ARGUMENT", "WITNESS_REQUEST_MALFORMED"),
            (b"old 0\n\nnot a note\n", "INVALID_ARGUMENT", "WITNESS_REQUEST_MALFORMED"),
            (elsewhere.request(0), "NOT_FOUND", "WITNESS_LOG_UNKNOWN"),
            (log.request(0, key=OTHER_KEY), "PERMISSION_DENIED", "WITNESS_SIGNATURE_INVALID"),
            (add_checkpoint_body(9, [], log.checkpoint()), "INVALID_ARGUMENT",
             "WITNESS_OLD_SIZE_INVALID"),
            (log.request(2), "ABORTED", "WITNESS_CONFLICT"),
        ]  # fmt: skip
        for body, status, reason in cases:
            refused = await _refused(channel, body)
            assert (refused.status, refused.reason) == (status, reason), refused.message
            assert refused.message.endswith("."), refused.message
        assert (await _refused(channel, log.request(2))).metadata["latest_size"] == "0"
        assert await _state(province).latest(ORIGIN) is None  # a refusal changes nothing

        line = await _submit(channel, log.request(0))
        _check_cosignature(line, log, witness)

        # A split view: another root at the size cosigned.
        fork = Tree(ORIGIN, LOG_KEY).plus("b", 5)
        split = await _refused(channel, fork.request(5))
        assert (split.status, split.reason, split.metadata["latest_size"]) == (
            "ABORTED", "WITNESS_CONFLICT", "5",
        )  # fmt: skip
        # A rewritten log: its proof from 5 does not lead to what was cosigned.
        rewritten = fork.plus("b", 3)
        proof = await _refused(channel, rewritten.request(5))
        assert (proof.status, proof.reason) == ("FAILED_PRECONDITION", "WITNESS_PROOF_INVALID")
        # A proof that does not verify.
        grown = log.plus("a", 3)
        bad = add_checkpoint_body(5, [bytes(32)] * 3, grown.checkpoint())
        assert (await _refused(channel, bad)).reason == "WITNESS_PROOF_INVALID"
        stored = await _state(province).latest(ORIGIN)
        assert stored is not None
        assert (stored.size, stored.root) == (5, log.root)

        # The honest log goes on; the same checkpoint again is cosigned again.
        _check_cosignature(await _submit(channel, grown.request(5)), grown, witness)
        _check_cosignature(await _submit(channel, grown.request(8)), grown, witness)

    assert province.db is not None
    evidence = await province.db.pool.fetch(
        "SELECT reason, note FROM peer_witness_refusal ORDER BY id"
    )
    assert [r["reason"] for r in evidence] == [
        "WITNESS_CONFLICT", "WITNESS_PROOF_INVALID", "WITNESS_PROOF_INVALID",
    ]  # fmt: skip
    assert evidence[0]["note"] == fork.checkpoint()

    # The county's collector sees the spec's HTTP meanings through its peer transport.
    transport = parts(county).witness_transport
    assert await transport.add_checkpoint("peer:province", fork.request(0)) == WitnessAnswer(
        409, b"8\n"
    )
    answer = await transport.add_checkpoint("peer:province", rewritten.plus("b", 2).request(8))
    assert answer.status == 422
    assert answer.body.endswith(b"[WITNESS_PROOF_INVALID]\n")


async def test_unpinned_suspended_and_non_peers_are_refused(province: Node, county: Node) -> None:
    log = Tree(ORIGIN, LOG_KEY).plus("a", 3)
    # Not a peer yet: the handshake itself fails.
    async with _peer_channel(county, province) as stranger:
        assert (await _refused(stranger, log.request(0))).status == "UNAVAILABLE"
    await link(province, county)
    await _pin(province, "county-a", log.vkey)
    async with _peer_channel(county, province) as channel:
        await _submit(channel, log.request(0))
        await set_peer_status(province, "county-a", PeerStatus.SUSPENDED)
        suspended = await _refused(channel, log.plus("a", 1).request(3))
        assert (suspended.status, suspended.reason) == ("PERMISSION_DENIED", "PEER_SUSPENDED")
    stored = await _state(province).latest(ORIGIN)
    assert stored is not None
    assert stored.size == 3

    # A department of the province is no peer.
    async with department_channel(province, "samr") as department:
        refused = await _refused(department, log.request(3))
        assert (refused.status, refused.reason) == ("PERMISSION_DENIED", "PEER_ONLY")

    # The county made no witness key: it witnesses no one.
    async with _peer_channel(province, county) as to_county:
        none = await _refused(to_county, log.request(0))
        assert (none.status, none.reason) == ("FAILED_PRECONDITION", "WITNESS_NOT_INITIALISED")

    # The county does not ask a peer it suspended.
    await set_peer_status(county, "province", PeerStatus.SUSPENDED)
    with pytest.raises(WitnessUnavailable):
        await parts(county).witness_transport.add_checkpoint("peer:province", log.request(3))


async def test_two_nodes_racing_cosign_at_most_one_root_per_size(
    province: Node, county: Node
) -> None:
    """Two nodes of the province's exchange, each with its own pool on the shared
    database, get two forks of the county's log of one size at once, round after round:
    exactly one is cosigned, the other refused, and the state follows the winner."""
    await link(province, county)
    base = Tree(ORIGIN, LOG_KEY)
    await _pin(province, "county-a", base.vkey)
    peer = await parts(province).trust.peer("county-a")
    assert peer is not None
    identity = witness_of(province)
    clock = SystemClock()
    async with await Database.open(province.settings, pool_size=4) as other:
        nodes = [
            PeerWitness(identity, _state(province), clock),
            PeerWitness(identity, SharedWitnessState(other.pool, node_name="node-b"), clock),
        ]
        for round_ in range(12):
            forks = [base.plus(f"{round_}/{side}", 1 + round_ % 3) for side in ("a", "b")]
            # Each node gets both forks, in opposite orders.
            submissions = list(zip(nodes * 2, forks + forks[::-1], strict=True))
            results = await asyncio.gather(
                *(node.add_checkpoint(peer, fork.request(base.size)) for node, fork in submissions),
                return_exceptions=True,
            )
            won = {
                fork.root
                for (_, fork), result in zip(submissions, results, strict=True)
                if isinstance(result, str)
            }
            assert len(won) == 1, results
            assert all(isinstance(r, str | WitnessConflict) for r in results), results
            [base] = [f for f in forks if f.root in won]
            stored = await _state(province).latest(ORIGIN)
            assert stored is not None
            assert (stored.size, stored.root) == (base.size, base.root)

    # Nor can any login move the state back or rewrite a root at a size.
    async with owner_pool(province) as pool:
        for statement in (
            "UPDATE peer_witness_state SET root = $1",
            "UPDATE peer_witness_state SET size = 0, root = $1",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await pool.execute(statement, bytes(32))
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await pool.execute("DELETE FROM peer_witness_state")


async def test_the_witness_key_of_a_node_data_dir_is_printed_and_not_served(
    settings: Settings,
) -> None:
    env = cli_env(TONGBAN_KEY_PASSPHRASE="test passphrase")
    data_dir = str(settings.data_dir)
    shown = await atongban("witness", "key", "--data-dir", data_dir, env=env)
    assert shown.code == 0, shown.stderr
    assert shown.stdout.strip() == load_witness(settings, None).key.vkey
    # Its state is the exchange's database: a standalone witness there would be a second.
    served = await atongban(
        "witness", "serve", "--data-dir", data_dir, "--log", Tree(ORIGIN, LOG_KEY).vkey,
        "--json", env=env,
    )  # fmt: skip
    assert (served.code, served.json()["reason"]) == (1, "CONFIG_INVALID")
    assert "node's data dir" in served.json()["message"]
