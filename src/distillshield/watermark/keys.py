"""Per-account watermark keys and the one seeding function every scheme shares.

A key is derived from the server secret and a label ("account:alice" or "cluster:c7") with
HMAC-SHA256, so no key is stored and every account's key can be re-derived for detection and
attribution. From a key, `prf32(key, contexts, tokens)` gives a pseudo-random 32-bit value per
(previous `h` tokens, candidate token) pair: the KGW green list is "prf32 < gamma * 2**32", the
Gumbel scheme's uniform draw is "prf32 / 2**32". Generation (over the whole vocabulary, once per
token) and detection (over the scored pairs of a text) call the same functions, so they cannot
drift apart.

Why this construction instead of a seeded permutation per token (as lm-watermarking does): the
hook runs once per generated token on 49,152 scores. A per-key table H[t] (computed once, cached)
plus one 32-bit mix per vocabulary entry costs ~60 us, against ~1 ms for a fresh permutation.
The green indicator of (context, token) is fmix32(H[token] XOR seed(context)): a keyed
pseudo-random function of the pair, so under the null (text written without the key) each
de-duplicated pair is green with probability gamma, independently.

Not a cryptographic PRF: the key material is 128 bits (k0 for the token table, k1 for context
seeds) behind integer mixing functions. It resists casual inspection and brute force, not a
cryptanalyst with many watermarked outputs; the server secret must stay secret either way.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

_DOMAIN = b"distillshield-watermark-v1\x00"
_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_SM1 = 0xBF58476D1CE4E5B9
_SM2 = 0x94D049BB133111EB
_F1 = np.uint32(0x85EBCA6B)
_F2 = np.uint32(0xC2B2AE35)
SCOPES = ("account", "cluster")


@dataclass(frozen=True)
class WatermarkKey:
    """A derived key. `label` names what it marks (account:ID or cluster:ID); k0/k1 are secret."""

    label: str
    k0: int
    k1: int

    def __repr__(self) -> str:  # never print key material
        return f"WatermarkKey({self.label!r})"

    @property
    def fingerprint(self) -> str:
        """A public identifier of the key (not the key): safe in reports and logs."""
        return hashlib.sha256(f"{self.k0:016x}{self.k1:016x}".encode()).hexdigest()[:16]


def key_label(scope: str, ident: str) -> str:
    """'account:alice' / 'cluster:c7'; the string the key is derived from."""
    if scope not in SCOPES:
        raise ValueError(f"key scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    if not ident:
        raise ValueError("a watermark key needs a non-empty account or cluster id")
    return f"{scope}:{ident}"


def derive_key(secret: str | bytes, label: str) -> WatermarkKey:
    """HMAC-SHA256(secret, domain || label) -> (k0, k1). Deterministic: detection re-derives it."""
    if isinstance(secret, str):
        secret = secret.encode("utf-8")
    if not secret:
        raise ValueError("the watermark secret is empty; set watermark.secret")
    mac = hmac.new(secret, _DOMAIN + label.encode("utf-8"), hashlib.sha256).digest()
    return WatermarkKey(label, int.from_bytes(mac[:8], "little"), int.from_bytes(mac[8:16], "little"))


MIN_SECRET_CHARS = 16  # as watermark.secret's own rule


def secret_from_file(path: Path, *, create: bool = False) -> str:
    """The server secret kept in `path` (its text, stripped). With `create`, a file that is absent is written
    first: 64 random hex digits, mode 0600, never over an existing file; when several gateway replicas start at
    once on a shared volume, one writes it and the others read the same secret. ValueError naming the file when
    it is absent (without `create`), unreadable, or too short."""
    if create and not path.exists():
        # written whole under a temporary name, then linked into place: link never replaces a file, so a replica
        # that lost the race reads the winner's secret, and nobody ever reads a half-written one
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as fh:
                fh.write(secrets.token_hex(32) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        except OSError as exc:
            raise ValueError(f"watermark.secret_file: cannot create {path}: {exc.strerror}") from None
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ValueError(
            f"watermark.secret_file: {path} does not exist (the gateway writes it on its first start; copy the "
            "gateway's file here to detect its watermarks)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"watermark.secret_file: cannot read {path}: {exc}") from None
    if len(text) < MIN_SECRET_CHARS:
        raise ValueError(
            f"watermark.secret_file: {path} holds {len(text)} characters; a secret needs at least {MIN_SECRET_CHARS}"
        )
    return text


class KeyRing:
    """Derives and caches keys from one secret (the secret is not exposed by repr or attributes)."""

    def __init__(self, secret: str | bytes) -> None:
        self._secret = secret.encode("utf-8") if isinstance(secret, str) else secret
        if not self._secret:
            raise ValueError("the watermark secret is empty; set watermark.secret")
        self._derive = lru_cache(maxsize=65536)(lambda label: derive_key(self._secret, label))

    def __repr__(self) -> str:
        return "KeyRing(<secret>)"

    def key(self, label: str) -> WatermarkKey:
        return self._derive(label)

    def account(self, account_id: str) -> WatermarkKey:
        return self.key(key_label("account", account_id))

    def cluster(self, cluster_id: str) -> WatermarkKey:
        return self.key(key_label("cluster", cluster_id))


# -- the shared seeding function ---------------------------------------------------------------------


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on a uint64 array (wrapping arithmetic, no warnings on arrays)."""
    z = z ^ (z >> np.uint64(30))
    z = z * np.uint64(_SM1)
    z = z ^ (z >> np.uint64(27))
    z = z * np.uint64(_SM2)
    return z ^ (z >> np.uint64(31))


def _splitmix64_int(z: int) -> int:
    z ^= z >> 30
    z = (z * _SM1) & _M64
    z ^= z >> 27
    z = (z * _SM2) & _M64
    return z ^ (z >> 31)


def token_hashes(key: WatermarkKey, tokens: np.ndarray) -> np.ndarray:
    """H[t]: a keyed 32-bit hash per token id (uint32)."""
    t = np.asarray(tokens, dtype=np.uint64)
    return (_splitmix64(np.uint64(key.k0) ^ (t * np.uint64(_GOLDEN))) >> np.uint64(32)).astype(np.uint32)


@lru_cache(maxsize=128)
def token_table(key: WatermarkKey, vocab_size: int) -> np.ndarray:
    """H over the whole vocabulary, computed once per key (196 KB for 49,152 tokens)."""
    table = token_hashes(key, np.arange(vocab_size, dtype=np.uint64))
    table.setflags(write=False)
    return table


def context_seeds(key: WatermarkKey, contexts: np.ndarray) -> np.ndarray:
    """seed(context) for each row of an (n, h) array of previous token ids (uint32)."""
    ctx = np.asarray(contexts, dtype=np.uint64)
    z = np.full(ctx.shape[0], key.k1, dtype=np.uint64)
    for j in range(ctx.shape[1]):
        z = _splitmix64((z ^ (ctx[:, j] * np.uint64(_GOLDEN))) + np.uint64(j + 1))
    return (z >> np.uint64(32)).astype(np.uint32)


def context_seed(key: WatermarkKey, context: np.ndarray | list[int]) -> int:
    """seed(context) for one context, in plain integers (the per-token hot path; equals context_seeds)."""
    z = key.k1
    for j, c in enumerate(context):
        z = _splitmix64_int(((z ^ ((int(c) * _GOLDEN) & _M64)) + j + 1) & _M64)
    return z >> 32


def fmix32(x: np.ndarray, out: np.ndarray | None = None, tmp: np.ndarray | None = None) -> np.ndarray:
    """murmur3's 32-bit finaliser, in place when `out`/`tmp` buffers are given (the hot path)."""
    if out is None:
        out = x.copy()
    elif out is not x:
        np.copyto(out, x)
    if tmp is None:
        tmp = np.empty_like(out)
    np.right_shift(out, np.uint32(16), out=tmp)
    np.bitwise_xor(out, tmp, out=out)
    np.multiply(out, _F1, out=out)
    np.right_shift(out, np.uint32(13), out=tmp)
    np.bitwise_xor(out, tmp, out=out)
    np.multiply(out, _F2, out=out)
    np.right_shift(out, np.uint32(16), out=tmp)
    np.bitwise_xor(out, tmp, out=out)
    return out


def prf32(key: WatermarkKey, contexts: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """The keyed value of each (context row, token) pair: fmix32(H[token] ^ seed(context))."""
    return fmix32(token_hashes(key, tokens) ^ context_seeds(key, contexts))


def prf32_many(keys: list[WatermarkKey], contexts: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """prf32 under many keys at once: a (len(keys), n) array (attribution over 1,000 keys in one pass)."""
    k0 = np.array([k.k0 for k in keys], dtype=np.uint64)[:, None]
    k1 = np.array([k.k1 for k in keys], dtype=np.uint64)[:, None]
    t = np.asarray(tokens, dtype=np.uint64)[None, :]
    h = (_splitmix64(k0 ^ (t * np.uint64(_GOLDEN))) >> np.uint64(32)).astype(np.uint32)
    ctx = np.asarray(contexts, dtype=np.uint64)
    z = np.broadcast_to(k1, (len(keys), ctx.shape[0])).copy()
    for j in range(ctx.shape[1]):
        z = _splitmix64((z ^ (ctx[None, :, j] * np.uint64(_GOLDEN))) + np.uint64(j + 1))
    return fmix32(h ^ (z >> np.uint64(32)).astype(np.uint32))


def gamma_threshold(gamma: float) -> int:
    """The uint32 bound under which a value is green: P(prf32 < bound) = gamma."""
    if not 0.0 < gamma < 1.0:
        raise ValueError(f"gamma must be in (0, 1), got {gamma}")
    return min(int(round(gamma * 2**32)), 2**32 - 1)
