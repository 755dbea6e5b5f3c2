"""A transparency log in memory, for talking to a witness: leaves, the RFC 6962 tree over
them, signed checkpoints and consistency proofs (``tongban.exchange.audit.merkle``)."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tongban.exchange.audit.merkle import Frontier, NodeId, consistency_proof, leaf_hash
from tongban.exchange.audit.note import checkpoint_body, sign_note, verifier_key
from tongban.exchange.witness.protocol import add_checkpoint_body


class ToyLog:
    def __init__(self, origin: str, key: Ed25519PrivateKey, *, seed: str = "") -> None:
        self.origin = origin
        self.key = key
        self.seed = seed
        self.frontier = Frontier()
        self.nodes: dict[NodeId, bytes] = {}

    @property
    def size(self) -> int:
        return self.frontier.size

    @property
    def vkey(self) -> str:
        return verifier_key(self.origin, self.key.public_key())

    def grow(self, count: int) -> ToyLog:
        for _ in range(count):
            leaf = f"{self.seed}leaf {self.frontier.size}".encode()
            for node, digest in self.frontier.append(leaf_hash(leaf)):
                self.nodes[node] = digest
        return self

    def checkpoint(self, key: Ed25519PrivateKey | None = None) -> str:
        body = checkpoint_body(self.origin, self.size, self.frontier.root())
        return sign_note(body, self.origin, key or self.key)

    def proof(self, old: int) -> list[bytes]:
        return consistency_proof(old, self.size, self.nodes)

    def request(self, old: int) -> bytes:
        """An add-checkpoint body for the latest checkpoint, proved from ``old``."""
        return add_checkpoint_body(old, self.proof(old), self.checkpoint())
