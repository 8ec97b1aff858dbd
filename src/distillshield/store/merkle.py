"""A Merkle tree over the audit log, as Certificate Transparency v2 defines it (RFC 9162, section 2.1).

    leaf hash   MTH({d}) = SHA-256(0x00 || d)
    node hash   SHA-256(0x01 || left || right)
    tree head   MTH(D[0:n]) = node(MTH(D[0:k]), MTH(D[k:n])), k the largest power of two below n

A leaf's bytes are the audit row's canonical encoding (`chain.canonical`), the same bytes the hash chain
hashes, so one row has one encoding. Leaf i is the row with seq i + 1.

Written by hand on purpose: no maintained pure-Python library implements RFC 9162's inclusion and
consistency proofs (the Go transparency-dev/merkle package is the reference this follows), and the
algorithms are short. The verifiers are the RFC's own (sections 2.1.3.2 and 2.1.4.2), step by step.

Three tools, for three jobs:
- `Frontier`: the right edge of the tree (one complete subtree per binary digit of n), O(log n) per
  appended leaf; the gateway keeps one so a tree head never needs a rehash of the log.
- `MerkleLevels`: every complete subtree's hash, level by level (2n hashes in flat byte arrays), for
  answering many proofs over one tree (evidence bundles).
- `root`, `inclusion_proof`, `consistency_proof` over a plain list of leaf hashes: the RFC's recursive
  definitions, for tests and small trees.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()  # MTH({}) = SHA-256() (RFC 9162, 2.1.1)


def leaf_hash(data: bytes) -> bytes:
    """SHA-256(0x00 || data): the hash of one leaf."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right): the hash of an interior node."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


# -- the recursive definitions (RFC 9162, 2.1.1, 2.1.3.1, 2.1.4.1), over leaf hashes -----------------


def root(leaves: Sequence[bytes]) -> bytes:
    """MTH of a list of leaf hashes."""
    n = len(leaves)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaves[0]
    k = _split(n)
    return node_hash(root(leaves[:k]), root(leaves[k:]))


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """PATH(index, leaves): the audit path of leaf `index` in the tree of these leaves."""
    n = len(leaves)
    if not 0 <= index < n:
        raise ValueError(f"leaf {index} is not in a tree of size {n}")
    if n == 1:
        return []
    k = _split(n)
    if index < k:
        return [*inclusion_proof(leaves[:k], index), root(leaves[k:])]
    return [*inclusion_proof(leaves[k:], index - k), root(leaves[:k])]


def consistency_proof(leaves: Sequence[bytes], m: int) -> list[bytes]:
    """PROOF(m, leaves): that the tree of the first m leaves is a prefix of the tree of all of them."""
    n = len(leaves)
    if not 0 < m <= n:
        raise ValueError(f"no consistency proof from size {m} to size {n}")
    return _subproof(m, leaves, True)


def _subproof(m: int, leaves: Sequence[bytes], complete: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if complete else [root(leaves)]
    k = _split(n)
    if m <= k:
        return [*_subproof(m, leaves[:k], complete), root(leaves[k:])]
    return [*_subproof(m - k, leaves[k:], False), root(leaves[:k])]


# -- verification (RFC 9162, 2.1.3.2 and 2.1.4.2) ----------------------------------------------------


def root_from_inclusion_proof(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes | None:
    """The root that `proof` leads to from leaf hash `leaf` at `index`, or None when the proof is malformed."""
    if not 0 <= index < size:
        return None
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if len(p) != HASH_SIZE or sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return r if sn == 0 else None


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes], root_hash: bytes) -> bool:
    """True when `proof` shows leaf hash `leaf` at `index` in the tree of `size` leaves with head `root_hash`."""
    return root_from_inclusion_proof(index, size, leaf, proof) == root_hash


def verify_consistency(m: int, n: int, root_m: bytes, root_n: bytes, proof: Sequence[bytes]) -> bool:
    """True when `proof` shows the tree of size m (head `root_m`) is a prefix of the tree of size n."""
    if not 0 < m <= n:
        return False
    if m == n:
        return not proof and root_m == root_n
    path = list(proof)
    if not path or any(len(p) != HASH_SIZE for p in path):
        return False
    if m & (m - 1) == 0:  # m a power of two: the old root is itself the first node of the path
        path.insert(0, root_m)
    fn, sn = m - 1, n - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == root_m and sr == root_n and sn == 0


# -- incremental tree head --------------------------------------------------------------------------


class Frontier:
    """The right edge of a growing tree: the hashes of its complete subtrees, largest first, one per
    set bit of the size. Appending a leaf costs one hash plus one per carry (amortised two); the head
    folds the edge from the right, O(log n)."""

    __slots__ = ("hashes", "size")

    def __init__(self, size: int = 0, hashes: Iterable[bytes] = ()) -> None:
        self.size = size
        self.hashes = list(hashes)
        if len(self.hashes) != size.bit_count():
            raise ValueError(f"a tree of size {size} has {size.bit_count()} edge subtrees, not {len(self.hashes)}")

    def append(self, leaf: bytes) -> None:
        """Add one leaf hash."""
        h = leaf
        n = self.size
        while n & 1:  # each trailing 1 bit is a complete subtree of the same height: merge
            h = node_hash(self.hashes.pop(), h)
            n >>= 1
        self.hashes.append(h)
        self.size += 1

    def root(self) -> bytes:
        """The tree head of the leaves appended so far."""
        if not self.hashes:
            return EMPTY_ROOT
        r = self.hashes[-1]
        for h in reversed(self.hashes[:-1]):
            r = node_hash(h, r)
        return r

    def copy(self) -> Frontier:
        return Frontier(self.size, self.hashes)

    def encode(self) -> str:
        """The edge as text (hex hashes, space-separated), for the store."""
        return " ".join(h.hex() for h in self.hashes)

    @classmethod
    def decode(cls, size: int, text: str) -> Frontier:
        return cls(size, [bytes.fromhex(h) for h in text.split()])


class MerkleLevels:
    """Every complete, aligned subtree of a tree: level h holds the hashes of the blocks of 2**h leaves,
    packed in one bytearray. Any tree head or proof for a size up to `size` is then O(log n) hashes away."""

    def __init__(self) -> None:
        self.levels: list[bytearray] = [bytearray()]
        self.size = 0

    def append(self, leaf: bytes) -> None:
        self.levels[0] += leaf
        self.size += 1
        i, h = self.size - 1, 0
        while i & 1:  # this leaf completed a block at level h + 1
            if len(self.levels) == h + 1:
                self.levels.append(bytearray())
            lvl = self.levels[h]
            self.levels[h + 1] += node_hash(lvl[-2 * HASH_SIZE : -HASH_SIZE], lvl[-HASH_SIZE:])
            i >>= 1
            h += 1

    def leaf(self, index: int) -> bytes:
        return bytes(self.levels[0][index * HASH_SIZE : (index + 1) * HASH_SIZE])

    def _block(self, height: int, j: int) -> bytes:
        return bytes(self.levels[height][j * HASH_SIZE : (j + 1) * HASH_SIZE])

    def _hash(self, lo: int, hi: int) -> bytes:
        """MTH(D[lo:hi]) for a range of the RFC's recursion: lo is a multiple of the largest power of two
        below hi - lo, so the range is one complete block or a complete block and a right part."""
        n = hi - lo
        if n & (n - 1) == 0:
            return self._block(n.bit_length() - 1, lo // n)
        k = _split(n)
        return node_hash(self._block(k.bit_length() - 1, lo // k), self._hash(lo + k, hi))

    def _check(self, size: int) -> None:
        if not 0 <= size <= self.size:
            raise ValueError(f"the tree holds {self.size} leaves, not {size}")

    def root(self, size: int) -> bytes:
        """The tree head of the first `size` leaves."""
        self._check(size)
        return EMPTY_ROOT if size == 0 else self._hash(0, size)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """The audit path of leaf `index` in the tree of the first `size` leaves."""
        self._check(size)
        if not 0 <= index < size:
            raise ValueError(f"leaf {index} is not in a tree of size {size}")
        out: list[bytes] = []
        lo, hi = 0, size
        while hi - lo > 1:
            k = _split(hi - lo)
            if index < lo + k:
                out.append(self._hash(lo + k, hi))
                hi = lo + k
            else:
                out.append(self._hash(lo, lo + k))
                lo += k
        out.reverse()  # the RFC lists the path from the leaf up
        return out

    def consistency_proof(self, m: int, n: int) -> list[bytes]:
        """PROOF(m, D[0:n]) from the tree of the first m leaves to the tree of the first n."""
        self._check(n)
        if not 0 < m <= n:
            raise ValueError(f"no consistency proof from size {m} to size {n}")
        out: list[bytes] = []
        lo, hi, complete = 0, n, True
        while m != hi - lo:
            k = _split(hi - lo)
            if m <= k:
                out.append(self._hash(lo + k, hi))
                hi = lo + k
            else:
                out.append(self._hash(lo, lo + k))
                m -= k
                lo += k
                complete = False
        if not complete:
            out.append(self._hash(lo, hi))
        out.reverse()
        return out
