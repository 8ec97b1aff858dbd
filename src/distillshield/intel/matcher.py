"""Matching requests against imported indicators, cheaply enough for every request.

- IP ranges: the ranges cut into disjoint segments, sorted; one bisect finds the segment of an address
  (or of a request's /24), whose ranges contain it;
- user agents and template frames: exact, one dictionary lookup;
- template signatures: MinHash LSH over the imported signatures (banding parameters from datasketch's
  MinHashLSH), each candidate confirmed by its estimated Jaccard similarity to the request's signature (the
  threshold the producer set, at least 0.3).

Only active indicators (not revoked, not expired) are loaded; `IntelMatcher.build` is rerun when the store
changes. Request signatures come from the detector's Extractor (`detect/corpus.py`), so they are computed
exactly as the producer's were.
"""

from __future__ import annotations

import ipaddress
import socket
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from distillshield.detect.engine import NUM_PERM
from distillshield.intel.indicators import Indicator

# How much a match of each kind says on its own (times the producer's confidence): a template fingerprint is
# the campaign's own wording; an IP range can be a shared proxy; a user agent is the easiest to share by chance.
KIND_WEIGHT = {"template": 1.0, "ip-range": 0.9, "user-agent": 0.7}
MATCH_LABEL = {"ip-range": "IP range", "user-agent": "user agent", "frame": "template frame", "minhash": "template"}
_CACHE_MAX = 65_536


class IpRanges:
    """Which ranges contain an address or a network: disjoint segments, sorted, found by bisect."""

    def __init__(self, ranges: Iterable[tuple[int, int, int]]) -> None:
        """`ranges`: (first address, last address, owner) as integers of one address family."""
        ranges = list(ranges)
        self.bounds = {owner: (lo, hi) for lo, hi, owner in ranges}
        by_start: dict[int, list[int]] = {}
        by_end: dict[int, list[int]] = {}
        for lo, hi, o in ranges:
            by_start.setdefault(lo, []).append(o)
            by_end.setdefault(hi + 1, []).append(o)
        points = sorted(by_start.keys() | by_end.keys())
        active: set[int] = set()
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.owners: list[tuple[int, ...]] = []
        for i, p in enumerate(points[:-1]):  # a sweep over the boundaries: the ranges covering each segment
            active.difference_update(by_end.get(p, ()))
            active.update(by_start.get(p, ()))
            if active:
                self.starts.append(p)
                self.ends.append(points[i + 1] - 1)
                self.owners.append(tuple(sorted(active)))

    def containing(self, lo: int, hi: int) -> tuple[int, ...]:
        """Owners of the ranges that contain all of [lo, hi]."""
        i = bisect_right(self.starts, lo) - 1
        if i < 0 or self.ends[i] < lo:
            return ()
        return tuple(o for o in self.owners[i] if self.bounds[o][1] >= hi)


def _bounds(ip: str) -> tuple[int, int, int] | None:
    """(address family, first, last address) of an address or a network; None when it is neither. An address,
    what the request path sees on every request from a client not seen before, is parsed by the C library
    (inet_pton, strict: no shorthand forms): ipaddress takes several times as long."""
    if "/" not in ip:
        family, version = (socket.AF_INET6, 6) if ":" in ip else (socket.AF_INET, 4)
        try:
            n = int.from_bytes(socket.inet_pton(family, ip), "big")
        except OSError:
            return None
        return version, n, n
    try:
        net = ipaddress.ip_network(ip, strict=False)
    except ValueError:
        return None
    return net.version, int(net.network_address), int(net.broadcast_address)


@dataclass(frozen=True, slots=True)
class Hit:
    indicator: Indicator
    kind: str  # ip-range | user-agent | frame | minhash
    value: str  # what matched: the range, the user agent, or the similarity

    @property
    def strength(self) -> float:
        kind = "template" if self.kind in ("frame", "minhash") else self.kind
        return self.indicator.confidence / 100 * KIND_WEIGHT[kind]

    def describe(self) -> str:
        """What matched, naming the indicator, its producer and its confidence (a reason's first part)."""
        ind = self.indicator
        shown = self.value if self.kind != "minhash" else f"signature similarity {self.value}"
        return (
            f"matches imported indicator {ind.id} ({ind.name}) from {ind.producer}, confidence {ind.confidence}: "
            f"{MATCH_LABEL[self.kind]} {shown}"
        )


class IntelMatcher:
    """Active indicators, indexed for matching one request at a time."""

    def __init__(self, indicators: Iterable[Indicator], now: float) -> None:
        self.indicators = [i for i in indicators if i.active(now) and i.keys]
        self.by_id = {i.id: i for i in self.indicators}
        self.built_at = now
        self.expires = min((i.valid_until for i in self.indicators if i.valid_until is not None), default=None)
        v4: list[tuple[int, int, int]] = []
        v6: list[tuple[int, int, int]] = []
        self.uas: dict[str, list[int]] = {}
        self.frames: dict[int, list[int]] = {}
        self._bands: list[tuple[int, int, dict[bytes, list[int]]]] = []  # (start, end, band key -> indicators)
        self._sigs: dict[int, np.ndarray] = {}
        self._ranges: list[tuple[int, str]] = []  # (indicator index, range): what IpRanges' owners point to
        for n, ind in enumerate(self.indicators):
            for kind, value in ind.keys:
                if kind == "ip-range":
                    net = ipaddress.ip_network(value)
                    owner = len(self._ranges)
                    self._ranges.append((n, value))
                    (v4 if net.version == 4 else v6).append(
                        (int(net.network_address), int(net.broadcast_address), owner)
                    )
                elif kind == "user-agent":
                    self.uas.setdefault(value[:120], []).append(n)  # the Extractor keeps 120 characters
                elif kind == "frame":
                    self.frames.setdefault(int(value, 16), []).append(n)
                elif kind == "minhash" and ind.signature is not None:
                    self._sigs[n] = np.asarray(ind.signature, dtype=np.uint32)
        self.v4, self.v6 = IpRanges(v4), IpRanges(v6)
        if self._sigs:
            from datasketch import MinHashLSH

            # Banding as datasketch's MinHashLSH chooses it for the lowest threshold any producer set (candidates
            # are then confirmed against each one's own); the bands are kept as plain dictionaries of the
            # signature slices' bytes, which a request's signature is looked up in without building a MinHash
            # object (about a fifth of MinHashLSH.query's cost, benchmarks/intel_match.py).
            lsh = MinHashLSH(threshold=min(self.indicators[n].jaccard for n in self._sigs), num_perm=NUM_PERM)
            for b in range(lsh.b):
                start, end = b * lsh.r, (b + 1) * lsh.r
                table: dict[bytes, list[int]] = {}
                for n, sig in self._sigs.items():
                    table.setdefault(sig[start:end].tobytes(), []).append(n)
                self._bands.append((start, end, table))
        self._ip_cache: dict[str, tuple[tuple[int, str], ...]] = {}

    def __len__(self) -> int:
        return len(self.indicators)

    def stale(self, now: float) -> bool:
        """An indicator loaded has expired since: rebuild."""
        return self.expires is not None and self.expires <= now

    def match_ip(self, ip: str) -> tuple[tuple[int, str], ...]:
        """(indicator index, its range) of every range containing `ip`: an address, or a network (the /24 or
        /48 detection keeps of a request), which must lie wholly in the range."""
        hit = self._ip_cache.get(ip)
        if hit is not None:
            return hit
        bounds = _bounds(ip)
        if bounds is None:
            return ()
        ranges = self.v4 if bounds[0] == 4 else self.v6
        owners = ranges.containing(bounds[1], bounds[2]) if ranges.starts else ()
        hit = tuple(self._ranges[o] for o in owners)
        if len(self._ip_cache) >= _CACHE_MAX:
            self._ip_cache.clear()
        self._ip_cache[ip] = hit
        return hit

    def match(
        self,
        ip: str = "",
        ua: str = "",
        frames: tuple[int, ...] = (),
        minhash: np.ndarray | None = None,
    ) -> list[Hit]:
        """Every active indicator one request matches."""
        out: list[Hit] = []
        inds = self.indicators
        if ip:
            out.extend(Hit(inds[n], "ip-range", net) for n, net in self.match_ip(ip))
        if ua and self.uas:
            out.extend(Hit(inds[n], "user-agent", ua) for n in self.uas.get(ua[:120], ()))
        if self.frames:
            for h in frames:
                out.extend(Hit(inds[n], "frame", f"{h:016x}") for n in self.frames.get(h, ()))
        if minhash is not None and self._bands:
            mh = np.asarray(minhash, dtype=np.uint32)
            candidates: set[int] = set()
            for start, end, table in self._bands:
                found = table.get(mh[start:end].tobytes())
                if found is not None:
                    candidates.update(found)
            for n in sorted(candidates):
                sim = float(np.count_nonzero(self._sigs[n] == mh)) / NUM_PERM
                if sim >= inds[n].jaccard:
                    out.append(Hit(inds[n], "minhash", f"{sim:.2f}"))
        return out

    def match_obs(self, obs: Any) -> list[Hit]:
        """The indicators a detection observation (`detect.corpus.Obs`) matches."""
        frames = (obs.head, obs.tail) if obs.head else ()
        return self.match(obs.ip24, obs.ua, frames, obs.minhash)
