"""Observations on the wire: a batch of extracted requests (corpus.Obs) as bytes, between the extraction shards
and the one detection engine of a fleet (`distillshield worker extract` -> `worker detect --shards N`).

Extraction (parsing a request, its frames and hashes, the CoT classifier, MinHash and content vectors) is
more than half of what online detection costs per request and depends only on the request and its own
account's earlier requests, so it is sharded by account (`shard_of`); the engine's folding and scoring reads
population-wide state at every rescore and stays in one process (docs/fleet.md).

The format, one batch per stream entry:

- `obs`: JSON (orjson) with the scalar columns' names, one row of values per observation, and for each of the
  two array fields (`minhash`, `cvec`) which observations carry one, with its length and dtype;
- `minhash`, `cvec`: the arrays of those observations, concatenated, as raw bytes;
- `shard`: "<i>/<n>", the shard that extracted the batch; `upto`: the audit stream entry id of the last row
  it read for the batch (per shard, increasing: the engine drops a batch it has seen, one redelivered after
  the shard crashed between publishing it and acknowledging its rows).

Hand-written rather than pickled: a pickle read from Redis would run whatever code a writer to that Redis
put in it, and JSON columns plus raw array bytes decode about as fast. The column names travel with each
batch, so an engine rejects (with one line naming the field) a batch from an extractor of another version
instead of misreading it.
"""

from __future__ import annotations

import sys
import zlib
from dataclasses import dataclass, fields
from operator import attrgetter
from typing import Any

import numpy as np
import orjson

from distillshield.detect.corpus import Obs

WIRE_VERSION = 1
# Arrays travel as bytes; these are dropped by the Extractor once used and never travel.
_ARRAYS = ("minhash", "cvec")
_LOCAL = frozenset({"emb", "clf_text", "ctext"})
SCALARS = tuple(f.name for f in fields(Obs) if f.name not in _ARRAYS and f.name not in _LOCAL)
_INTERNED = frozenset({"account", "model", "org", "ip24", "ua", "end_user_id"})
_row = attrgetter(*SCALARS)
# Decoding builds each Obs from its row positionally (the fastest way), so the scalars must be Obs's first fields.
if [f.name for f in fields(Obs)][: len(SCALARS)] != list(SCALARS):
    raise RuntimeError("corpus.Obs: the array and local fields must come after every scalar field (detect/wire.py)")


class WireError(ValueError):
    """A batch that cannot be decoded: named field, one line."""


def shard_of(account_id: str, shards: int) -> int:
    """The extraction shard that owns an account: crc32 of its id, modulo the number of shards (stable across
    processes and versions, like the batch engines' account partitions)."""
    return zlib.crc32(account_id.encode("utf-8", "surrogatepass")) % shards


@dataclass(frozen=True, slots=True)
class ObservationBatch:
    shard: int
    shards: int
    upto: str  # audit stream entry id of the last row read for this batch
    observations: list[Obs]

    def to_fields(self) -> dict[bytes, bytes]:
        """The batch as stream entry fields."""
        rows = [list(_row(o)) for o in self.observations]
        meta: dict[str, Any] = {"v": WIRE_VERSION, "cols": SCALARS, "rows": rows}
        out: dict[bytes, bytes] = {b"shard": f"{self.shard}/{self.shards}".encode(), b"upto": self.upto.encode()}
        for name in _ARRAYS:
            carriers = [(i, getattr(o, name)) for i, o in enumerate(self.observations) if getattr(o, name) is not None]
            if carriers:
                dtype = carriers[0][1].dtype
                meta[name] = {"dtype": dtype.str, "at": [[i, int(a.size)] for i, a in carriers]}
                out[name.encode()] = b"".join(np.ascontiguousarray(a, dtype=dtype).tobytes() for _i, a in carriers)
        out[b"obs"] = orjson.dumps(meta)
        return out

    @classmethod
    def from_fields(cls, raw: dict[bytes, bytes]) -> ObservationBatch:
        """Decode stream entry fields; WireError naming what is wrong."""
        try:
            shard_text = raw[b"shard"].decode()
            i, _, n = shard_text.partition("/")
            shard, shards = int(i), int(n)
            upto = raw[b"upto"].decode()
            meta = orjson.loads(raw[b"obs"])
        except (KeyError, ValueError, UnicodeDecodeError) as exc:
            raise WireError(f"not an observation batch ({type(exc).__name__}: {exc})") from None
        if meta.get("v") != WIRE_VERSION:
            raise WireError(f"observation batch format {meta.get('v')!r}, this engine reads {WIRE_VERSION}")
        cols = meta.get("cols")
        if not isinstance(cols, list) or tuple(cols) != SCALARS:
            unknown = sorted(set(cols or ()) ^ set(SCALARS))
            raise WireError(f"observation batch columns differ from this engine's: {', '.join(unknown) or 'order'}")
        interned = [j for j, c in enumerate(cols) if c in _INTERNED]
        obs = []
        try:
            for values in meta["rows"]:
                for j in interned:
                    values[j] = sys.intern(values[j])
                obs.append(Obs(*values))
        except (TypeError, IndexError) as exc:
            raise WireError(f"observation batch: a row does not match its columns ({exc})") from None
        for name in _ARRAYS:
            spec = meta.get(name)
            if spec is None:
                continue
            flat = np.frombuffer(raw.get(name.encode(), b""), dtype=np.dtype(spec["dtype"]))
            at = 0
            for idx, size in spec["at"]:
                if at + size > flat.size:
                    raise WireError(f"observation batch: the {name} bytes end before observation {idx}'s array")
                setattr(obs[idx], name, flat[at : at + size].copy())
                at += size
        return cls(shard, shards, upto, obs)
