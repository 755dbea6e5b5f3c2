"""RFC 6962 / RFC 9162 Merkle math: published known answers, edge cases, and properties
over generated trees (roots against the recursive definition, proofs built from the nodes
``Frontier.append`` stores, and corrupted proofs refused)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tongban.exchange.audit.merkle import (
    EMPTY_ROOT,
    Frontier,
    NodeId,
    NodeMissing,
    ProofInvalid,
    ProofRequestInvalid,
    consistency_nodes,
    consistency_proof,
    inclusion_nodes,
    inclusion_proof,
    leaf_hash,
    mth,
    node_hash,
    nodes_from_leaves,
    subtree_nodes,
    verify_consistency,
    verify_inclusion,
)

# Known answers: the RFC 6962 test vectors published in github.com/transparency-dev/merkle,
# proof/verify_test.go (carried over from certificate-transparency-go's merkle tests; the
# same leaves and roots appear in Chromium's CT tests). Go numbers inclusion leaves from 1;
# the indices below are 0-based.
LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
ROOTS = [  # ROOTS[n - 1] is the root of the tree of the first n leaves
    bytes.fromhex(h)
    for h in (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    )
]
INCLUSION = [  # (index, size, proof)
    (0, 1, []),
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]
CONSISTENCY = [  # (old_size, new_size, proof)
    (1, 1, []),
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
]

PROPERTY = settings(max_examples=40, deadline=None)


def build(leaves: list[bytes]) -> tuple[Frontier, dict[NodeId, bytes], list[bytes]]:
    """Append every leaf; return the frontier, every node ``append`` returned, and the root
    after each size (``roots[n]`` for ``n`` leaves)."""
    frontier = Frontier()
    stored: dict[NodeId, bytes] = {}
    roots = [frontier.root()]
    for leaf in leaves:
        for node, digest in frontier.append(leaf_hash(leaf)):
            assert node not in stored, f"{node} returned twice"
            stored[node] = digest
        roots.append(frontier.root())
    return frontier, stored, roots


def distinct_leaves(size: int, salt: bytes) -> list[bytes]:
    # Distinct leaves: with equal leaves, swapped siblings hash alike and a wrong index
    # could legitimately verify.
    return [salt + i.to_bytes(4, "big") for i in range(size)]


def flipped(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def inclusion_shape(index: int, size: int) -> tuple[str, ...]:
    """Which side of the leaf each proof element lies on, bottom-up."""
    return tuple(
        "L" if element[0][1] << element[0][0] < index else "R"
        for element in inclusion_nodes(index, size)
    )


def consistency_shape(old_size: int, new_size: int) -> tuple[str, ...]:
    """Where each proof element lies relative to the old tree's last leaf."""
    shape = []
    for element in consistency_nodes(old_size, new_size):
        (first_level, first_index), (last_level, last_index) = element[0], element[-1]
        start, end = first_index << first_level, (last_index + 1) << last_level
        shape.append("L" if end <= old_size - 1 else "R" if start >= old_size else "S")
    return tuple(shape)


# --- known answers -------------------------------------------------------------------------


def test_hash_functions_follow_rfc6962_domain_separation() -> None:
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()
    assert (
        node_hash(b"a" * 32, b"b" * 32) == hashlib.sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()
    )


def test_empty_tree() -> None:
    assert mth([]) == EMPTY_ROOT
    assert Frontier().root() == EMPTY_ROOT
    assert Frontier.frontier_nodes(0) == []
    assert Frontier.from_nodes(0, {}) == Frontier()


def test_published_roots_for_every_size() -> None:
    _, _, roots = build(LEAVES)
    for n in range(1, 9):
        assert mth(LEAVES[:n]) == ROOTS[n - 1]
        assert roots[n] == ROOTS[n - 1]


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION)
def test_published_inclusion_proofs(index: int, size: int, proof: list[str]) -> None:
    _, stored, _ = build(LEAVES)
    expected = [bytes.fromhex(h) for h in proof]
    assert inclusion_proof(index, size, stored) == expected
    verify_inclusion(leaf_hash(LEAVES[index]), index, size, expected, ROOTS[size - 1])


@pytest.mark.parametrize(("old_size", "new_size", "proof"), CONSISTENCY)
def test_published_consistency_proofs(old_size: int, new_size: int, proof: list[str]) -> None:
    _, stored, _ = build(LEAVES)
    expected = [bytes.fromhex(h) for h in proof]
    assert consistency_proof(old_size, new_size, stored) == expected
    verify_consistency(old_size, new_size, ROOTS[old_size - 1], ROOTS[new_size - 1], expected)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 8])
def test_small_trees_against_the_recursive_definition(size: int) -> None:
    leaves = [f"entry {i}".encode() for i in range(size)]
    frontier, stored, _ = build(leaves)
    assert frontier.root() == mth(leaves)
    # append stored exactly the perfect nodes, each the MTH of its leaves.
    perfect = {
        (level, index) for level in range(size.bit_length()) for index in range(size >> level)
    }
    assert set(stored) == perfect
    for (level, index), digest in stored.items():
        assert digest == mth(leaves[index << level : (index + 1) << level])


def test_node_layout() -> None:
    assert Frontier.frontier_nodes(13) == [(3, 0), (2, 2), (0, 12)]
    assert subtree_nodes(8, 13) == [(2, 2), (0, 12)]
    assert subtree_nodes(5, 5) == []
    assert inclusion_nodes(0, 7) == [[(0, 1)], [(1, 1)], [(1, 2), (0, 6)]]
    assert inclusion_nodes(6, 7) == [[(1, 2)], [(2, 0)]]
    assert consistency_nodes(3, 7) == [[(0, 2)], [(0, 3)], [(1, 0)], [(1, 2), (0, 6)]]
    assert consistency_nodes(4, 7) == [[(1, 2), (0, 6)]]
    with pytest.raises(ValueError, match="not a leaf range"):
        subtree_nodes(3, 2)


def test_frontier_rebuilt_from_stored_nodes() -> None:
    leaves = [f"entry {i}".encode() for i in range(21)]
    frontier, stored, _ = build(leaves)
    rebuilt = Frontier.from_nodes(21, stored)
    assert rebuilt == frontier
    more = leaf_hash(b"next")
    assert rebuilt.append(more) == frontier.append(more)
    assert rebuilt.root() == frontier.root() == mth([*leaves, b"next"])


def test_frontier_refuses_inconsistent_state() -> None:
    with pytest.raises(ValueError, match="frontier roots"):
        Frontier(3, [EMPTY_ROOT])
    with pytest.raises(ValueError, match="leaves"):
        Frontier(-1, [])
    with pytest.raises(ValueError, match="32 bytes"):
        Frontier().append(b"short")


# --- refusing requests and proofs ----------------------------------------------------------


@pytest.mark.parametrize(("index", "size"), [(8, 8), (0, 0), (-1, 5), (9, 8)])
def test_inclusion_request_out_of_range(index: int, size: int) -> None:
    with pytest.raises(ProofRequestInvalid) as info:
        inclusion_nodes(index, size)
    assert info.value.reason == "PROOF_OUT_OF_RANGE"
    assert info.value.status == "OUT_OF_RANGE"
    assert info.value.metadata == {"index": str(index), "size": str(size)}


@pytest.mark.parametrize(("old_size", "new_size"), [(5, 4), (-1, 3), (1, 0)])
def test_consistency_request_out_of_range(old_size: int, new_size: int) -> None:
    with pytest.raises(ProofRequestInvalid):
        consistency_nodes(old_size, new_size)


def test_consistency_from_empty_or_same_size_is_empty() -> None:
    assert consistency_nodes(0, 5) == []
    assert consistency_nodes(5, 5) == []
    assert consistency_nodes(0, 0) == []


def test_missing_or_malformed_node() -> None:
    _, stored, _ = build(LEAVES)
    del stored[(1, 1)]
    with pytest.raises(NodeMissing) as info:
        inclusion_proof(0, 8, stored)
    assert info.value.metadata == {"level": "1", "index": "1"}
    stored[(1, 1)] = b"short"
    with pytest.raises(NodeMissing):
        consistency_proof(1, 8, stored)
    with pytest.raises(NodeMissing):
        Frontier.from_nodes(8, {})


def test_verify_inclusion_refuses_malformed_input() -> None:
    leaf = leaf_hash(LEAVES[0])
    proof = [bytes.fromhex(h) for h in INCLUSION[1][2]]
    verify_inclusion(leaf, 0, 8, proof, ROOTS[7])
    bad = [
        (leaf[:31], 0, 8, proof, ROOTS[7]),  # short leaf hash
        (leaf, 0, 8, proof, ROOTS[7][:31]),  # short root
        (leaf, 0, 8, [*proof[:2], proof[2] + b"\x00"], ROOTS[7]),  # long element
        (leaf, 0, 8, proof[:2], ROOTS[7]),  # too short
        (leaf, 0, 8, [*proof, ROOTS[7]], ROOTS[7]),  # too long
        (leaf, 8, 8, proof, ROOTS[7]),  # index out of range
        (leaf, -1, 8, proof, ROOTS[7]),
        (leaf, 0, 0, [], EMPTY_ROOT),  # nothing is in the empty tree
    ]
    for args in bad:
        with pytest.raises(ProofInvalid) as info:
            verify_inclusion(*args)
        assert info.value.reason == "PROOF_INVALID"
        assert info.value.status == "FAILED_PRECONDITION"


def test_verify_consistency_edge_sizes() -> None:
    root = ROOTS[4]
    verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    verify_consistency(0, 5, EMPTY_ROOT, root, [])
    verify_consistency(5, 5, root, root, [])
    bad = [
        (0, 5, root, root, []),  # the old root of size 0 must be the empty root
        (0, 5, EMPTY_ROOT, root, [root]),  # from the empty tree the proof is empty
        (0, 0, EMPTY_ROOT, root, []),
        (5, 5, root, ROOTS[3], []),  # same size, different roots
        (5, 5, root, root, [root]),  # same size, non-empty proof
        (2, 1, ROOTS[1], ROOTS[0], []),  # sizes out of order
        (-1, 1, EMPTY_ROOT, ROOTS[0], []),
        (1, 2, ROOTS[0], ROOTS[1], []),  # empty proof
        (5, 5, root[:31], root[:31], []),  # not 32 bytes
    ]
    for args in bad:
        with pytest.raises(ProofInvalid):
            verify_consistency(*args)


# --- properties over generated trees -------------------------------------------------------


@PROPERTY
@given(st.lists(st.binary(max_size=12), max_size=300))
def test_frontier_root_is_the_merkle_tree_hash(leaves: list[bytes]) -> None:
    frontier, stored, _ = build(leaves)
    assert frontier.root() == mth(leaves)
    assert Frontier.from_nodes(len(leaves), stored) == frontier


@PROPERTY
@given(st.integers(1, 300), st.data(), st.binary(max_size=8))
def test_inclusion_proofs_verify_and_corruptions_fail(
    size: int, data: st.DataObject, salt: bytes
) -> None:
    index = data.draw(st.integers(0, size - 1), label="index")
    leaves = distinct_leaves(size, salt)
    _, stored, roots = build(leaves)
    root, leaf = roots[size], leaf_hash(leaves[index])
    proof = inclusion_proof(index, size, stored)
    verify_inclusion(leaf, index, size, proof, root)

    for i, element in enumerate(proof):
        for bit in range(256):
            corrupt = [*proof[:i], flipped(element, bit), *proof[i + 1 :]]
            with pytest.raises(ProofInvalid):
                verify_inclusion(leaf, index, size, corrupt, root)
    for bit in range(256):
        with pytest.raises(ProofInvalid):
            verify_inclusion(flipped(leaf, bit), index, size, proof, root)
        with pytest.raises(ProofInvalid):
            verify_inclusion(leaf, index, size, proof, flipped(root, bit))
    for wrong in [p for p in (proof[:-1], [*proof, root], [root, *proof]) if p != proof]:
        with pytest.raises(ProofInvalid):
            verify_inclusion(leaf, index, size, wrong, root)
    for other in range(size):
        if other != index:
            with pytest.raises(ProofInvalid):
                verify_inclusion(leaf, other, size, proof, root)
    # RFC 9162 binds the size only through the proof's shape: a proof for one size also
    # verifies for another size whose path has the same left/right pattern (the signed
    # checkpoint is what binds size to root). Any other size must fail.
    for other in range(index + 1, size + 40):
        if other == size:
            continue
        same_shape = inclusion_shape(index, other) == inclusion_shape(index, size)
        try:
            verify_inclusion(leaf, index, other, proof, root)
        except ProofInvalid:
            assert not same_shape, f"size {other} has the same shape but failed"
        else:
            assert same_shape, f"a proof for size {size} verified as size {other}"


@PROPERTY
@given(st.integers(1, 300), st.data(), st.binary(max_size=8))
def test_consistency_proofs_verify_and_corruptions_fail(
    new_size: int, data: st.DataObject, salt: bytes
) -> None:
    old_size = data.draw(st.integers(1, new_size), label="old_size")
    _, stored, roots = build(distinct_leaves(new_size, salt))
    old_root, new_root = roots[old_size], roots[new_size]
    proof = consistency_proof(old_size, new_size, stored)
    verify_consistency(old_size, new_size, old_root, new_root, proof)

    for i, element in enumerate(proof):
        for bit in range(256):
            corrupt = [*proof[:i], flipped(element, bit), *proof[i + 1 :]]
            with pytest.raises(ProofInvalid):
                verify_consistency(old_size, new_size, old_root, new_root, corrupt)
    for bit in range(256):
        with pytest.raises(ProofInvalid):
            verify_consistency(old_size, new_size, flipped(old_root, bit), new_root, proof)
        with pytest.raises(ProofInvalid):
            verify_consistency(old_size, new_size, old_root, flipped(new_root, bit), proof)
    for wrong in [p for p in (proof[:-1], [*proof, new_root], [old_root, *proof]) if p != proof]:
        with pytest.raises(ProofInvalid):
            verify_consistency(old_size, new_size, old_root, new_root, wrong)
    for other in range(0, new_size + 40):
        if other != old_size:
            with pytest.raises(ProofInvalid):
                verify_consistency(other, new_size, old_root, new_root, proof)
    # As for inclusion, the new size is bound only through the proof's shape.
    for other in range(old_size, new_size + 40):
        if other == new_size:
            continue
        same_shape = consistency_shape(old_size, other) == consistency_shape(old_size, new_size)
        try:
            verify_consistency(old_size, other, old_root, new_root, proof)
        except ProofInvalid:
            assert not same_shape, f"size {other} has the same shape but failed"
        else:
            assert same_shape, f"a proof to size {new_size} verified as size {other}"


@PROPERTY
@given(st.integers(0, 300), st.binary(max_size=8))
def test_every_size_extends_the_empty_tree(new_size: int, salt: bytes) -> None:
    _, stored, roots = build(distinct_leaves(new_size, salt))
    assert consistency_proof(0, new_size, stored) == []
    verify_consistency(0, new_size, EMPTY_ROOT, roots[new_size], [])
    with pytest.raises(ProofInvalid):
        verify_consistency(0, new_size, flipped(EMPTY_ROOT, 0), roots[new_size], [])


@PROPERTY
@given(before=st.integers(min_value=0, max_value=70), added=st.integers(min_value=0, max_value=70))
def test_extend_completes_the_nodes_append_does(before: int, added: int) -> None:
    leaves = distinct_leaves(before + added, b"extend")
    one_by_one, _, _ = build(leaves[:before])
    at_once = Frontier(one_by_one.size, list(one_by_one.roots))
    expected = [
        (node, digest)
        for leaf in leaves[before:]
        for node, digest in one_by_one.append(leaf_hash(leaf))[1:]  # above the leaf
    ]
    levels, indices, hashes = at_once.extend(b"".join(leaf_hash(leaf) for leaf in leaves[before:]))
    completed = [
        ((level, index), bytes(hashes[32 * k : 32 * k + 32]))
        for k, (level, index) in enumerate(zip(levels, indices, strict=True))
    ]
    assert completed == expected
    assert len(hashes) == 32 * len(levels)
    assert (at_once.size, at_once.roots, at_once.root()) == (
        one_by_one.size,
        one_by_one.roots,
        one_by_one.root(),
    )


def test_extend_refuses_a_partial_hash() -> None:
    with pytest.raises(ValueError, match="32 bytes each"):
        Frontier().extend(bytes(33))


@PROPERTY
@given(
    run=st.integers(min_value=0, max_value=3),
    count=st.integers(min_value=1, max_value=64),
    levels=st.sets(st.integers(min_value=0, max_value=4), min_size=1),
)
def test_nodes_from_leaves_equal_the_stored_ones_and_leave_out_what_the_leaves_lack(
    run: int, count: int, levels: set[int]
) -> None:
    """Given the leaves ``[16 * run, 16 * run + count)`` (a run of a tree of subtrees of 16),
    every node wholly inside comes out as ``append`` stores it; one reaching past the last
    leaf, or starting before the first, is left out."""
    leaves = distinct_leaves(16 * run + count, b"run")
    _, stored, _ = build(leaves)
    first = 16 * run
    digests = b"".join(leaf_hash(leaf) for leaf in leaves[first:])
    wanted = [(level, i) for level in levels for i in range(((first + count) >> level) + 2)]
    found = nodes_from_leaves(first, digests, wanted)
    assert found == {
        (level, i): stored[(level, i)]
        for level, i in wanted
        if first <= i << level and (i + 1) << level <= first + count
    }


def test_nodes_from_leaves_refuses_a_run_that_starts_no_wanted_subtree() -> None:
    digests = leaf_hash(b"a") * 4
    with pytest.raises(ValueError, match="does not start a subtree"):
        nodes_from_leaves(2, digests, [(2, 0)])
    with pytest.raises(ValueError, match="32 bytes each"):
        nodes_from_leaves(0, digests[:-1], [(0, 0)])
