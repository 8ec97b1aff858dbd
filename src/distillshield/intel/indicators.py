"""A received STIX 2.1 bundle -> the indicators DistillShield can match.

Every bundle is validated first (`stix.parse_bundle`: the stix2 library and stix2-patterns). Of each
indicator's pattern, the comparisons DistillShield can observe become match keys:

- `ipv4-addr:value` / `ipv6-addr:value` with `=` or `ISSUBSET`: an IP range (a single address is a /32, /128);
- the HTTP request's `User-Agent` header (`network-traffic:extensions.'http-request-ext'.request_header.'User-Agent'`)
  with `=`: a client user agent;
- `x-distillshield-template:fingerprint` with `=`: a template fingerprint, whose MinHash signature or frame
  hash is in the `x-distillshield-template` extension.

A pattern whose observations are joined by AND or FOLLOWEDBY, or that has qualifiers, cannot be matched one
request at a time; such indicators (and those with nothing matchable) are kept but reported as unsupported.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, field
from typing import Any

from distillshield.detect.engine import NUM_PERM
from distillshield.intel import stix

MatchKey = tuple[str, str]  # (kind, value): ("ip-range", "193.32.226.0/24"), ("user-agent", ...), ("frame", hex)


@dataclass
class Indicator:
    """One received indicator, as the store keeps it and the matcher reads it."""

    id: str
    modified: float
    name: str
    producer: str
    confidence: int
    pattern: str
    valid_from: float | None
    valid_until: float | None
    revoked: bool
    keys: list[MatchKey] = field(default_factory=list)
    signature: list[int] | None = None  # MinHash of a template family (x-distillshield-template)
    jaccard: float = 0.5  # the signature's match threshold (estimated Jaccard similarity)
    campaign: str | None = None  # what it indicates (a campaign's name), when the bundle says

    def active(self, now: float) -> bool:
        """Neither revoked, nor expired, nor valid only from a later time."""
        if self.revoked:
            return False
        if self.valid_until is not None and self.valid_until <= now:
            return False
        return self.valid_from is None or self.valid_from <= now

    @property
    def kinds(self) -> list[str]:
        return sorted({"template" if k in ("minhash", "frame") else k for k, _ in self.keys})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Indicator:
        d = dict(d)
        d["keys"] = [tuple(k) for k in d.get("keys", [])]
        return cls(**d)


def _network(value: str) -> str | None:
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        return None


def match_keys(pattern: str, extension: dict[str, Any] | None) -> tuple[list[MatchKey], list[int] | None, float]:
    """The match keys of a STIX pattern (empty when nothing in it can be matched per request)."""
    from stix2patterns.pattern import Pattern

    data = Pattern(pattern).inspect()
    if data.qualifiers or data.observation_ops - {"OR"}:
        return [], None, 0.5
    keys: list[MatchKey] = []
    signature: list[int] | None = None
    jaccard = 0.5
    for obj_type, comparisons in data.comparisons.items():
        for path, op, literal in comparisons:
            value = stix.unquote(literal)
            if obj_type in ("ipv4-addr", "ipv6-addr") and path == ["value"] and op in ("=", "ISSUBSET"):
                net = _network(value)
                if net is not None:
                    keys.append(("ip-range", net))
            elif (
                obj_type == "network-traffic"
                and path == ["extensions", "http-request-ext", "request_header", "User-Agent"]
                and op == "="
            ):
                keys.append(("user-agent", value))
            elif obj_type == stix.TEMPLATE_OBJECT and path == ["fingerprint"] and op == "=" and extension:
                if extension.get("fingerprint") == "frame" and value.startswith("frame:"):
                    try:
                        keys.append(("frame", f"{int(extension['hash'], 16):016x}"))
                    except (KeyError, TypeError, ValueError):
                        continue
                elif extension.get("fingerprint") == "minhash" and value.startswith("minhash:"):
                    sig = extension.get("signature")
                    if (
                        isinstance(sig, list)
                        and len(sig) == NUM_PERM
                        and all(isinstance(v, int) and 0 <= v < 2**32 for v in sig)
                        and extension.get("num_perm", NUM_PERM) == NUM_PERM
                        and extension.get("seed", 1) == 1
                    ):
                        signature = sig
                        jaccard = float(extension.get("jaccard_threshold", 0.5))
                        jaccard = min(max(jaccard, 0.3), 1.0)  # a producer cannot make every prompt match
                        keys.append(("minhash", value))
    return keys, signature, jaccard


def _get(obj: Any, key: str) -> Any:
    try:
        return obj[key]
    except (KeyError, TypeError):
        return None


def read_bundle(data: str | bytes | dict[str, Any]) -> tuple[list[Indicator], int]:
    """(the bundle's indicators, how many of them cannot be matched); BundleError when it is not valid STIX 2.1."""
    bundle = stix.parse_bundle(data)
    objects = list(bundle.get("objects", []))
    names = {o["id"]: o.get("name", o["id"]) for o in objects if o["type"] in ("identity", "campaign", "intrusion-set")}
    indicates: dict[str, str] = {}
    for o in objects:
        if o["type"] == "relationship" and o["relationship_type"] == "indicates" and o["target_ref"] in names:
            indicates[o["source_ref"]] = names[o["target_ref"]]
    ext_id = stix.template_extension_id()
    out: list[Indicator] = []
    unsupported = 0
    for o in objects:
        if o["type"] != "indicator":
            continue
        ext = _get(_get(o, "extensions"), ext_id)
        if o["pattern_type"] == "stix":
            keys, signature, jaccard = match_keys(o["pattern"], dict(ext) if ext is not None else None)
        else:
            keys, signature, jaccard = [], None, 0.5
        if not keys:
            unsupported += 1
        creator = _get(o, "created_by_ref")
        out.append(
            Indicator(
                id=o["id"],
                modified=stix.parse_timestamp(o["modified"]) or 0.0,
                name=_get(o, "name") or o["id"],
                producer=names.get(creator, creator or "unknown producer"),
                confidence=int(_get(o, "confidence") or 0),
                pattern=o["pattern"],
                valid_from=stix.parse_timestamp(_get(o, "valid_from")),
                valid_until=stix.parse_timestamp(_get(o, "valid_until")),
                revoked=bool(_get(o, "revoked")),
                keys=keys,
                signature=signature,
                jaccard=jaccard,
                campaign=indicates.get(o["id"]),
            )
        )
    return out, unsupported
