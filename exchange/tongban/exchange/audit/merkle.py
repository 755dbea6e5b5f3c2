"""RFC 6962 / RFC 9162 Merkle tree math over SHA-256, as plain functions over plain data.

Proofs are made of the hashes of *perfect* subtrees: node ``(level, index)`` is the root
of leaves ``[index * 2**level, (index + 1) * 2**level)``, and level 0 holds the leaf
hashes. Those nodes never change once written, so the database side keeps the large ones
(what :meth:`Frontier.extend` returns from some level up), computes the small ones from
their leaves (:func:`nodes_from_leaves`) and, to answer a proof request, gathers the
nodes named by :func:`inclusion_nodes` or :func:`consistency_nodes` and passes them to
:func:`inclusion_proof` or :func:`consistency_proof`.

A subtree on the right edge of the tree may be imperfect (its size is not a power of two).
Its hash is the fold of the perfect nodes that decompose it, largest first:
``H(a, H(b, c))`` -- the same fold :meth:`Frontier.root` applies to the whole tree.

The verifiers follow RFC 9162 sections 2.1.3.2 and 2.1.4.2 step by step and raise
:class:`ProofInvalid`; they never return a bool.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from tongban.errors import TongbanError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "Completed",
    "Frontier",
    "NodeId",
    "NodeMissing",
    "ProofInvalid",
    "ProofRequestInvalid",
    "consistency_nodes",
    "consistency_proof",
    "inclusion_nodes",
    "inclusion_proof",
    "leaf_hash",
    "mth",
    "node_hash",
    "nodes_from_leaves",
    "subtree_nodes",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
"""Length in bytes of every hash in the tree (SHA-256)."""

EMPTY_ROOT: bytes = hashlib.sha256(b"").digest()
"""The root of the empty tree: SHA-256 of the empty string (RFC 6962 section 2.1)."""

NodeId = tuple[int, int]
"""A perfect node as ``(level, index)``,
the root of leaves ``[index << level, (index + 1) << level)``."""


class ProofRequestInvalid(TongbanError):
    """A proof was asked for with an index or tree sizes outside the tree."""

    reason = "PROOF_OUT_OF_RANGE"
    status = "OUT_OF_RANGE"


class ProofInvalid(TongbanError):
    """An inclusion or consistency proof does not verify against the given root(s)."""

    reason = "PROOF_INVALID"
    status = "FAILED_PRECONDITION"


class NodeMissing(TongbanError):
    """A node needed to compute a proof or a frontier was not among the nodes supplied, or
    is not a 32-byte hash: the fetch asked for the wrong nodes, or the stored tree is
    incomplete."""

    reason = "MERKLE_NODE_MISSING"
    status = "INTERNAL"


def leaf_hash(leaf: bytes) -> bytes:
    """Return the RFC 6962 leaf hash ``SHA-256(0x00 || leaf)``."""
    return hashlib.sha256(b"\x00" + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return the RFC 6962 interior node hash ``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def mth(leaves: Sequence[bytes]) -> bytes:
    """Return the Merkle Tree Hash of raw leaf data by the recursive definition of RFC 9162
    section 2.1.1.

    This is the reference implementation (tests, offline verification); the log itself
    uses :class:`Frontier`, which never holds more than one hash per level.
    """
    n = len(leaves)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaf_hash(leaves[0])
    k = _split(n)
    return node_hash(mth(leaves[:k]), mth(leaves[k:]))


def subtree_nodes(start: int, end: int) -> list[NodeId]:
    """Return the perfect nodes that decompose the leaf range ``[start, end)``, left to right.

    Each step takes the largest node that starts at ``start`` (so is aligned there) and fits
    before ``end``. When ``start`` is a multiple of a power of two at least ``end - start``
    -- true of every subtree an RFC 6962 proof names -- the nodes come largest first, and
    folding them as ``H(a, H(b, c))`` gives the subtree's Merkle Tree Hash.

    Returns an empty list for an empty range. Raises ``ValueError`` if
    ``0 <= start <= end`` does not hold.
    """
    if not 0 <= start <= end:
        raise ValueError(f"not a leaf range: [{start}, {end})")
    nodes: list[NodeId] = []
    while start < end:
        # Largest level the position is aligned to (unbounded at 0), capped by what fits.
        level = (start & -start).bit_length() - 1 if start else (end - start).bit_length()
        while start + (1 << level) > end:
            level -= 1
        nodes.append((level, start >> level))
        start += 1 << level
    return nodes


class Completed(NamedTuple):
    """Interior nodes completed by ``Frontier.extend``, in the order it made them: node
    ``k`` is at ``(levels[k], indices[k])`` with hash ``hashes[32k : 32k + 32]``."""

    levels: list[int]
    indices: list[int]
    hashes: bytearray


@dataclass
class Frontier:
    """The compact range of a tree of ``size`` leaves: the roots of the perfect subtrees
    covering ``[0, size)``, largest first, one per set bit of ``size``.

    It is all the log needs in memory to append leaves and compute the root.
    """

    size: int = 0
    """Number of leaves in the tree."""
    roots: list[bytes] = field(default_factory=list)
    """Hashes of the nodes :meth:`frontier_nodes` names for ``size``, in that order."""

    def __post_init__(self) -> None:
        if self.size < 0:
            raise ValueError(f"a tree cannot have {self.size} leaves")
        if len(self.roots) != self.size.bit_count():
            raise ValueError(
                f"a tree of {self.size} leaves has {self.size.bit_count()} frontier roots, "
                f"not {len(self.roots)}"
            )
        for h in self.roots:
            _require_hash(h, "a frontier root")

    @staticmethod
    def frontier_nodes(size: int) -> list[NodeId]:
        """Return the perfect nodes whose hashes make up the frontier of a tree of ``size``
        leaves, largest first (fetch these to rebuild a frontier with :meth:`from_nodes`).

        Raises ``ValueError`` for a negative size.
        """
        if size < 0:
            raise ValueError(f"a tree cannot have {size} leaves")
        return subtree_nodes(0, size)

    @classmethod
    def from_nodes(cls, size: int, hashes: Mapping[NodeId, bytes]) -> Frontier:
        """Return the frontier of a tree of ``size`` leaves, built from stored nodes.

        ``hashes`` must hold (at least) the nodes :meth:`frontier_nodes` names. Raises
        :class:`NodeMissing` if one is absent or not 32 bytes, ``ValueError`` for a
        negative size.
        """
        return cls(size, [_lookup(hashes, node) for node in cls.frontier_nodes(size)])

    def append(self, leaf_hash: bytes) -> list[tuple[NodeId, bytes]]:
        """Add a leaf by its hash and return every perfect node this completes.

        The first pair is the leaf itself at ``(0, index)``; any further pairs are the
        nodes completed by merging, bottom-up. Storing what ``append`` returns for every
        leaf stores every perfect node of the tree. Raises ``ValueError`` if ``leaf_hash``
        is not 32 bytes.
        """
        _require_hash(leaf_hash, "a leaf hash")
        index = self.size
        completed: list[tuple[NodeId, bytes]] = [((0, index), leaf_hash)]
        h = leaf_hash
        level = 0
        # Each trailing one bit of the old size is a perfect subtree of the same height to
        # the left of the new node: merge with it.
        while (index >> level) & 1:
            h = node_hash(self.roots.pop(), h)
            level += 1
            completed.append(((level, index >> level), h))
        self.roots.append(h)
        self.size += 1
        return completed

    def extend(self, leaf_hashes: bytes, min_level: int = 1) -> Completed:
        """Add the leaves whose hashes ``leaf_hashes`` holds, 32 bytes each in index order,
        and return the interior nodes this completes at ``min_level`` or above (``append``
        for each, without its leaves and its tuples: the integrator's per-entry work).
        Raises ``ValueError`` if the length is not a multiple of 32."""
        if len(leaf_hashes) % HASH_SIZE:
            raise ValueError(f"leaf hashes come {HASH_SIZE} bytes each")
        completed = Completed([], [], bytearray())
        levels, indices, hashes = completed
        roots = self.roots
        index = self.size
        for start in range(0, len(leaf_hashes), HASH_SIZE):
            h = leaf_hashes[start : start + HASH_SIZE]
            level = 0
            while (index >> level) & 1:
                h = node_hash(roots.pop(), h)
                level += 1
                if level >= min_level:
                    levels.append(level)
                    indices.append(index >> level)
                    hashes += h
            roots.append(h)
            index += 1
        self.size = index
        return completed

    def root(self) -> bytes:
        """Return the RFC 6962 Merkle Tree Hash of the whole tree (:data:`EMPTY_ROOT` for an
        empty tree)."""
        return _fold(self.roots)


def nodes_from_leaves(
    first: int, leaf_hashes: bytes, wanted: Iterable[NodeId]
) -> dict[NodeId, bytes]:
    """Return the hashes of the nodes in ``wanted`` that lie wholly within the leaves
    ``[first, first + n)``, whose hashes ``leaf_hashes`` holds (32 bytes each, in index
    order), computed level by level; a node not wholly within them is left out (so
    :func:`_lookup` reports it missing). ``first`` must be a multiple of ``2**level`` for
    every wanted level: the first leaf of a stored subtree. Raises ``ValueError`` if it is
    not, or if the length of ``leaf_hashes`` is not a multiple of 32."""
    if len(leaf_hashes) % HASH_SIZE:
        raise ValueError(f"leaf hashes come {HASH_SIZE} bytes each")
    by_level: dict[int, list[int]] = {}
    for level, index in wanted:
        by_level.setdefault(level, []).append(index)
    if any(first % (1 << level) for level in by_level):
        raise ValueError(f"leaf {first} does not start a subtree of every wanted level")
    row = [leaf_hashes[i : i + HASH_SIZE] for i in range(0, len(leaf_hashes), HASH_SIZE)]
    found: dict[NodeId, bytes] = {}
    for level in range(max(by_level, default=-1) + 1):
        if level:
            row = [node_hash(row[i], row[i + 1]) for i in range(0, len(row) - 1, 2)]
        start = first >> level
        for index in by_level.get(level, ()):
            if start <= index < start + len(row):
                found[(level, index)] = row[index - start]
    return found


def inclusion_nodes(index: int, size: int) -> list[list[NodeId]]:
    """Return, for the inclusion proof of leaf ``index`` in a tree of ``size`` leaves, the
    perfect nodes making up each proof element.

    The proof (RFC 9162 section 2.1.3.1, ``PATH``) lists subtree hashes bottom-up; element
    ``i`` is the fold of the nodes in ``result[i]``, given left to right. Raises
    :class:`ProofRequestInvalid` unless ``0 <= index < size``.
    """
    _check_index(index, size)
    siblings: list[tuple[int, int]] = []  # top-down while descending
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            siblings.append((lo + k, hi))
            hi = lo + k
        else:
            siblings.append((lo, lo + k))
            lo += k
    return [subtree_nodes(a, b) for a, b in reversed(siblings)]


def inclusion_proof(index: int, size: int, nodes: Mapping[NodeId, bytes]) -> list[bytes]:
    """Return the RFC 9162 inclusion proof of leaf ``index`` in a tree of ``size`` leaves,
    computed from ``nodes`` (which must hold those :func:`inclusion_nodes` names).

    Raises :class:`ProofRequestInvalid` unless ``0 <= index < size``, and
    :class:`NodeMissing` if a needed node is absent or not 32 bytes.
    """
    return [_fold([_lookup(nodes, n) for n in element]) for element in inclusion_nodes(index, size)]


def consistency_nodes(old_size: int, new_size: int) -> list[list[NodeId]]:
    """Return, for the consistency proof between trees of ``old_size`` and ``new_size``
    leaves, the perfect nodes making up each proof element (left to right, folded as in
    :meth:`Frontier.root`).

    Follows ``SUBPROOF`` of RFC 9162 section 2.1.4.1. The proof is empty when
    ``old_size`` is 0 (every tree extends the empty tree) or equals ``new_size``. Raises
    :class:`ProofRequestInvalid` unless ``0 <= old_size <= new_size``.
    """
    if old_size < 0 or new_size < 0 or old_size > new_size:
        raise ProofRequestInvalid(
            f"cannot prove consistency from a tree of {old_size} leaves to one of "
            f"{new_size}; the old size must be between 0 and the new size",
            metadata={"old_size": str(old_size), "new_size": str(new_size)},
        )
    if old_size in (0, new_size):
        return []
    ranges: list[tuple[int, int]] = []  # top-down while descending
    m, lo, hi, whole = old_size, 0, new_size, True
    while True:
        if m == hi - lo:
            # SUBPROOF(m, D[m], b): nothing if this is the old tree itself, else its hash.
            if not whole:
                ranges.append((lo, hi))
            break
        k = _split(hi - lo)
        if m <= k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo += k
            m -= k
            whole = False
    return [subtree_nodes(a, b) for a, b in reversed(ranges)]


def consistency_proof(old_size: int, new_size: int, nodes: Mapping[NodeId, bytes]) -> list[bytes]:
    """Return the RFC 9162 consistency proof between trees of ``old_size`` and ``new_size``
    leaves, computed from ``nodes`` (which must hold those :func:`consistency_nodes` names).

    The proof is empty when ``old_size`` is 0 or equals ``new_size``. Raises
    :class:`ProofRequestInvalid` unless ``0 <= old_size <= new_size``, and
    :class:`NodeMissing` if a needed node is absent or not 32 bytes.
    """
    return [
        _fold([_lookup(nodes, n) for n in element])
        for element in consistency_nodes(old_size, new_size)
    ]


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Verify that the leaf with hash ``leaf_hash`` is at ``index`` in the tree of ``size``
    leaves whose root is ``root`` (RFC 9162 section 2.1.3.2).

    Returns ``None`` if the proof verifies. Raises :class:`ProofInvalid` if it does not:
    an index outside the tree, a hash that is not 32 bytes, a proof of the wrong length,
    or a root mismatch.
    """
    _check_hashes(leaf_hash, root, proof)
    if not 0 <= index < size:
        raise ProofInvalid(f"leaf index {index} is outside a tree of {size} leaves")
    fn, sn = index, size - 1
    r = leaf_hash
    for p in proof:
        if sn == 0:
            raise ProofInvalid(f"the inclusion proof is longer than a tree of {size} leaves needs")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofInvalid(f"the inclusion proof is shorter than a tree of {size} leaves needs")
    if not hmac.compare_digest(r, root):
        raise ProofInvalid(
            f"the inclusion proof for leaf {index} does not lead to the root of the tree of "
            f"{size} leaves"
        )


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Verify that the tree of ``new_size`` leaves with root ``new_root`` extends the tree
    of ``old_size`` leaves with root ``old_root`` (RFC 9162 section 2.1.4.2).

    Sizes the RFC leaves out: when ``old_size`` is 0 the proof must be empty and
    ``old_root`` must be :data:`EMPTY_ROOT` (any tree extends the empty tree); when the
    sizes are equal the proof must be empty and the roots equal.

    Returns ``None`` if the proof verifies. Raises :class:`ProofInvalid` if it does not:
    sizes out of order, a hash that is not 32 bytes, a proof of the wrong length, or a
    root mismatch.
    """
    _check_hashes(old_root, new_root, proof)
    if old_size < 0 or old_size > new_size:
        raise ProofInvalid(
            f"a tree of {new_size} leaves cannot extend one of {old_size}: sizes out of order"
        )
    if old_size == 0 and not hmac.compare_digest(old_root, EMPTY_ROOT):
        raise ProofInvalid("the old root is not the root of the empty tree")
    if old_size in (0, new_size):
        if proof:
            raise ProofInvalid(
                f"the consistency proof from {old_size} to {new_size} leaves must be empty"
            )
        if old_size == new_size and not hmac.compare_digest(old_root, new_root):
            raise ProofInvalid(f"two different roots for the same tree size {old_size}")
        return
    if not proof:
        raise ProofInvalid(f"the consistency proof from {old_size} to {new_size} leaves is empty")

    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofInvalid(
                f"the consistency proof from {old_size} to {new_size} leaves is too long"
            )
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofInvalid(
            f"the consistency proof from {old_size} to {new_size} leaves is too short"
        )
    if not hmac.compare_digest(fr, old_root):
        raise ProofInvalid(f"the consistency proof does not lead to the old root ({old_size})")
    if not hmac.compare_digest(sr, new_root):
        raise ProofInvalid(f"the consistency proof does not lead to the new root ({new_size})")


def _split(n: int) -> int:
    """The largest power of two strictly below ``n`` (``n >= 2``): RFC 6962's ``k``."""
    return 1 << ((n - 1).bit_length() - 1)


def _fold(hashes: Sequence[bytes]) -> bytes:
    """Fold subtree roots (largest first) into one hash: ``H(a, H(b, c))``."""
    if not hashes:
        return EMPTY_ROOT
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = node_hash(h, acc)
    return acc


def _lookup(nodes: Mapping[NodeId, bytes], node: NodeId) -> bytes:
    h = nodes.get(node)
    if h is None or len(h) != HASH_SIZE:
        level, index = node
        what = "missing" if h is None else f"{len(h)} bytes long, not {HASH_SIZE}"
        raise NodeMissing(
            f"Merkle node at level {level}, index {index} is {what}; fetch the nodes the "
            "*_nodes function names",
            metadata={"level": str(level), "index": str(index)},
        )
    return h


def _require_hash(h: bytes, what: str) -> None:
    if len(h) != HASH_SIZE:
        raise ValueError(f"{what} must be {HASH_SIZE} bytes, not {len(h)}")


def _check_hashes(a: bytes, b: bytes, proof: Sequence[bytes]) -> None:
    for h in (a, b, *proof):
        if len(h) != HASH_SIZE:
            raise ProofInvalid(f"a hash in the proof check is {len(h)} bytes, not {HASH_SIZE}")


def _check_index(index: int, size: int) -> None:
    if not 0 <= index < size:
        valid = f"0 to {size - 1}" if size > 0 else "none: the tree is empty"
        raise ProofRequestInvalid(
            f"leaf index {index} is outside the tree of {size} leaves; valid indices: {valid}",
            metadata={"index": str(index), "size": str(size)},
        )
