"""The RFC 9162 Merkle tree: hand-checked small trees, every inclusion and consistency proof for sizes
1..40 from two independent constructions, and tampered proofs that must fail."""

from __future__ import annotations

import hashlib

import pytest

from distillshield.store import merkle
from distillshield.store.merkle import Frontier, MerkleLevels

MAX = 40


def sha(b: bytes) -> bytes:
    return hashlib.sha256(b).digest()


LEAVES = [merkle.leaf_hash(f"row {i}".encode()) for i in range(MAX)]


def levels(n: int) -> MerkleLevels:
    t = MerkleLevels()
    for leaf in LEAVES[:n]:
        t.append(leaf)
    return t


def test_hashes_are_domain_separated_as_in_the_rfc() -> None:
    assert merkle.leaf_hash(b"abc") == sha(b"\x00abc")
    assert merkle.node_hash(b"L" * 32, b"R" * 32) == sha(b"\x01" + b"L" * 32 + b"R" * 32)
    assert merkle.root([]) == sha(b"") == merkle.EMPTY_ROOT


def test_small_trees_by_hand() -> None:
    a, b, c, d, e = LEAVES[:5]
    n = merkle.node_hash
    assert merkle.root([a]) == a
    assert merkle.root([a, b, c]) == n(n(a, b), c)  # 3 leaves: the left subtree is the 2 first
    assert merkle.root([a, b, c, d, e]) == n(n(n(a, b), n(c, d)), e)
    assert merkle.inclusion_proof([a, b, c], 2) == [n(a, b)]
    assert merkle.inclusion_proof([a, b, c, d, e], 2) == [d, n(a, b), e]
    assert merkle.consistency_proof([a, b, c], 2) == [c]
    assert merkle.consistency_proof([a, b, c, d, e], 3) == [c, d, n(a, b), e]


@pytest.mark.parametrize("n", range(1, MAX + 1))
def test_incremental_heads_match_the_recursive_definition(n: int) -> None:
    f = Frontier()
    for leaf in LEAVES[:n]:
        f.append(leaf)
    want = merkle.root(LEAVES[:n])
    assert f.root() == want and levels(n).root(n) == want
    assert len(f.hashes) == n.bit_count()
    assert Frontier.decode(n, f.encode()).root() == want


@pytest.mark.parametrize("n", range(1, MAX + 1))
def test_every_inclusion_proof_verifies_and_tampering_fails(n: int) -> None:
    t = levels(MAX)
    head = merkle.root(LEAVES[:n])
    for i in range(n):
        proof = t.inclusion_proof(i, n)
        assert proof == merkle.inclusion_proof(LEAVES[:n], i)
        assert merkle.verify_inclusion(i, n, LEAVES[i], proof, head)
        assert not merkle.verify_inclusion(i, n, LEAVES[(i + 1) % MAX], proof, head)  # another leaf
        if n > 1:
            assert not merkle.verify_inclusion((i + 1) % n, n, LEAVES[i], proof, head)  # wrong index
            assert not merkle.verify_inclusion(i, n, LEAVES[i], proof[:-1], head)  # truncated path
            assert not merkle.verify_inclusion(i, n, LEAVES[i], [*proof, LEAVES[0]], head)  # padded
            for j in range(len(proof)):
                bad = list(proof)
                bad[j] = bytes([bad[j][0] ^ 1]) + bad[j][1:]
                assert not merkle.verify_inclusion(i, n, LEAVES[i], bad, head)
        assert not merkle.verify_inclusion(n, n, LEAVES[i], proof, head)  # index past the end


@pytest.mark.parametrize("n", range(1, MAX + 1))
def test_every_consistency_proof_verifies_and_tampering_fails(n: int) -> None:
    t = levels(MAX)
    head_n = merkle.root(LEAVES[:n])
    for m in range(1, n + 1):
        head_m = merkle.root(LEAVES[:m])
        proof = t.consistency_proof(m, n)
        assert proof == merkle.consistency_proof(LEAVES[:n], m)
        assert merkle.verify_consistency(m, n, head_m, head_n, proof)
        if m == n:
            assert proof == []
            continue
        other = merkle.root([LEAVES[0], *LEAVES[2 : m + 1]]) if m > 1 else LEAVES[1]  # a different old tree
        assert not merkle.verify_consistency(m, n, other, head_n, proof)
        assert not merkle.verify_consistency(m, n, head_m, other, proof)
        assert not merkle.verify_consistency(m, n, head_m, head_n, [])
        assert not merkle.verify_consistency(m, n, head_m, head_n, proof[:-1])
        assert not merkle.verify_consistency(m, n, head_m, head_n, [*proof, LEAVES[0]])
        for j in range(len(proof)):
            bad = list(proof)
            bad[j] = bytes([bad[j][0] ^ 1]) + bad[j][1:]
            assert not merkle.verify_consistency(m, n, head_m, head_n, bad)


def test_proofs_ask_for_leaves_the_tree_has() -> None:
    t = levels(5)
    with pytest.raises(ValueError, match="holds 5"):
        t.root(6)
    with pytest.raises(ValueError, match="not in a tree of size 3"):
        t.inclusion_proof(3, 3)
    with pytest.raises(ValueError, match="from size 4 to size 3"):
        t.consistency_proof(4, 3)
    with pytest.raises(ValueError, match="edge subtrees"):
        Frontier(3, [LEAVES[0]])
