"""A detected campaign as a STIX 2.1 bundle: what another provider needs to recognise it, and nothing else.

The campaign is a cluster of an analyser report (or one account); its evidence is read again from the
traffic the report was made from, through the detector's own Extractor, so every fingerprint is computed
exactly as detection computes it (`detect/text.py` skeletons and frames, `detect/engine.py` MinHash):

- IP ranges (/24, IPv6 /48) the campaign's accounts used,
- client user agents,
- prompt templates: the MinHash signature of a near-duplicate family of prompt skeletons, and the hash of
  a template's opening words (its head frame), in the `x-distillshield-template` extension. Closing frames
  are not shared: a prompt's last words are most often its payload's (a public question bank's fixed
  suffix), which honest users send too.

Each indicator travels with a sighting (how many of the campaign's requests, from how many of its accounts,
first and last seen); an IP range also with the observed-data the sighting rests on (the range as an address
object, `number_observed`).

Only what is specific to the campaign leaves: an indicator must be seen from at least `min_accounts` of its
accounts and from at most `max_outside` accounts outside it in the same traffic (an honest user's proxy,
a popular SDK's user agent, a common opening never become indicators). No prompt, response, API key or
account id is written: accounts and clusters appear only as salted pseudonyms (HMAC-SHA256).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from distillshield.detect.corpus import Extractor, Obs
from distillshield.detect.engine import NUM_PERM, MinHasher, _minhash_lsh
from distillshield.detect.signals.templates import SHARED_MIN_ACCOUNTS
from distillshield.detect.text import SHINGLE_WORDS
from distillshield.intel import stix
from distillshield.traffic import TrafficRecord

MAX_SIGNATURES = 48  # per template family: enough to pick a representative (the medoid)
# A shared signature flags on its own, at a consumer that knows nothing else of the account: stricter than the
# engine's family threshold (LSH_THRESHOLD). At 0.5-0.6, honest users of the public question banks a campaign
# draws its payloads from matched too (benchmarks/intel_match.py); at 0.7 none did, and every hydra account did.
MATCH_JACCARD = 0.7
# A template is the campaign's when a quarter of its accounts run on it; a near-duplicate seen from only a
# few of them is most often one public question (a benchmark item) that they, and honest users, all asked.
TEMPLATE_MIN_SHARE = 0.25
SKELETON_SCHEME = "distillshield-skeleton-v1"
MINHASH_SCHEME = "minhash-affine32-crc32"


class ExportError(ValueError):
    """The campaign cannot be exported as asked (unknown cluster, no evidence); the message says why."""


@dataclass
class ExportOptions:
    producer: str = "DistillShield deployment"
    salt: str = ""
    tlp: str = "amber"
    min_accounts: int = 2  # an indicator is seen from at least this many of the campaign's accounts
    max_outside: int = 0  # ... and from at most this many accounts outside it
    max_templates: int = 40  # template fingerprints per bundle, the most widely used first
    valid_days: float = 90.0  # indicators are valid this long after the export
    now: float | None = None  # export time (tests pin it)


@dataclass
class Seen:
    """Where one candidate indicator was seen: which accounts inside and outside the campaign, how often."""

    inside: set[str] = field(default_factory=set)
    outside: set[str] = field(default_factory=set)
    requests: int = 0
    first: float = float("inf")
    last: float = float("-inf")
    prompts: set[int] = field(default_factory=set)  # distinct prompts (a frame is a template around varied ones)

    def add(self, obs: Obs, inside: bool) -> None:
        if not inside:
            if len(self.outside) < 1000:
                self.outside.add(obs.account)
            return
        self.inside.add(obs.account)
        self.requests += 1
        self.first = min(self.first, obs.ts)
        self.last = max(self.last, obs.ts)
        if len(self.prompts) < 8:
            self.prompts.add(obs.raw_hash)


@dataclass
class Evidence:
    """A campaign's candidate indicators as the traffic shows them."""

    accounts: set[str] = field(default_factory=set)  # the campaign's accounts that sent traffic
    requests: int = 0
    first: float = float("inf")
    last: float = float("-inf")
    ips: dict[str, Seen] = field(default_factory=dict)
    uas: dict[str, Seen] = field(default_factory=dict)
    frames: dict[int, Seen] = field(default_factory=dict)
    families: dict[int, Seen] = field(default_factory=dict)
    signatures: dict[int, list[np.ndarray]] = field(default_factory=dict)


def collect(records: Iterable[TrafficRecord], members: set[str]) -> Evidence:
    """One pass over the traffic: every candidate indicator of the campaign `members`, with who else used it."""
    ev = Evidence()
    hasher = MinHasher()
    extractor = Extractor(None, hasher, None)
    lsh = _minhash_lsh()
    next_family = 1
    for obs in extractor.extract(records):
        inside = obs.account in members
        if inside:
            ev.accounts.add(obs.account)
            ev.requests += 1
            ev.first, ev.last = min(ev.first, obs.ts), max(ev.last, obs.ts)
        if "/" in obs.ip24:
            ev.ips.setdefault(obs.ip24, Seen()).add(obs, inside)
        if obs.ua:
            ev.uas.setdefault(obs.ua, Seen()).add(obs, inside)
        if obs.head:
            ev.frames.setdefault(obs.head, Seen()).add(obs, inside)
        if obs.minhash is not None:
            # Near-duplicate families as the engine finds them (Engine._family: the same LSH, the same threshold).
            lean = hasher.lean(obs.minhash)
            hits = lsh.query(lean)
            if hits:
                fid = min(hits)
            else:
                fid, next_family = next_family, next_family + 1
                lsh.insert(fid, lean)
            ev.families.setdefault(fid, Seen()).add(obs, inside)
            sigs = ev.signatures.setdefault(fid, [])
            if inside and len(sigs) < MAX_SIGNATURES:
                sigs.append(obs.minhash)
    return ev


def medoid(signatures: list[np.ndarray]) -> np.ndarray:
    """The signature closest, on average, to the family's others (estimated Jaccard): its representative."""
    m = np.stack(signatures)
    sim = (m[:, None, :] == m[None, :, :]).mean(axis=2)
    return m[int(sim.sum(axis=1).argmax())]


def pseudonym(salt: str, kind: str, value: str) -> str:
    """A salted pseudonym (HMAC-SHA256) of an internal id: stable for one salt, unlinkable without it."""
    return "ps-" + hmac.new(salt.encode(), f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()[:16]


def signature_fingerprint(signature: np.ndarray) -> str:
    return "minhash:" + hashlib.sha256(np.asarray(signature, dtype="<u4").tobytes()).hexdigest()[:32]


def frame_fingerprint(h: int) -> str:
    return f"frame:{h:016x}"


@dataclass
class Candidate:
    kind: str  # ip-range | user-agent | template
    value: str  # the network, the user agent, or the template fingerprint
    seen: Seen
    extension: dict[str, Any] | None = None


def select(ev: Evidence, opts: ExportOptions, min_accounts: int) -> list[Candidate]:
    """The candidates specific enough to share (seen from enough of the campaign, from few others)."""

    def specific(s: Seen) -> bool:
        return len(s.inside) >= min_accounts and len(s.outside) <= opts.max_outside

    need = max(SHARED_MIN_ACCOUNTS, math.ceil(TEMPLATE_MIN_SHARE * len(ev.accounts)))

    def template(s: Seen) -> bool:
        # A template as the templates signal counts one (shared by SHARED_MIN_ACCOUNTS accounts, around
        # different prompts: the same prompt sent again is not a template), run by a quarter of the campaign.
        return specific(s) and len(s.inside) >= need and len(s.prompts) >= 2

    out: list[Candidate] = []
    out += [Candidate("ip-range", net, s) for net, s in sorted(ev.ips.items()) if specific(s)]
    out += [Candidate("user-agent", ua, s) for ua, s in sorted(ev.uas.items()) if specific(s)]
    templates: list[Candidate] = []
    for fid, s in sorted(ev.families.items()):
        if template(s):
            sig = medoid(ev.signatures[fid])
            ext = {
                "fingerprint": "minhash",
                "skeleton": SKELETON_SCHEME,
                "scheme": MINHASH_SCHEME,
                "num_perm": NUM_PERM,
                "seed": 1,
                "shingle_words": SHINGLE_WORDS,
                "jaccard_threshold": MATCH_JACCARD,
                "signature": [int(v) for v in sig],
            }
            templates.append(Candidate("template", signature_fingerprint(sig), s, ext))
    for h, s in sorted(ev.frames.items()):
        if template(s):
            ext = {"fingerprint": "frame", "skeleton": SKELETON_SCHEME, "hash": f"{h:016x}"}
            templates.append(Candidate("template", frame_fingerprint(h), s, ext))
    templates.sort(key=lambda c: (-len(c.seen.inside), -c.seen.requests, c.value))
    return out + templates[: opts.max_templates]


KIND_LABEL = {"ip-range": "IP range", "user-agent": "client user agent", "template": "prompt template"}


def _pattern(c: Candidate) -> str:
    if c.kind == "ip-range":
        return stix.ip_range_pattern(c.value)
    if c.kind == "user-agent":
        return stix.user_agent_pattern(c.value)
    return stix.template_pattern(c.value)


def build_bundle(
    ev: Evidence, campaign_key: str, risk: float, opts: ExportOptions, min_accounts: int | None = None
) -> dict[str, Any]:
    """The bundle (a plain dict in STIX 2.1 form, validated by `stix.parse_bundle`) of one campaign."""
    if not opts.salt:
        raise ExportError("no pseudonym salt: set intel.salt (or DISTILLSHIELD_INTEL__SALT), or pass --salt")
    if opts.tlp not in stix.TLP2_IDS:
        raise ExportError(f"unknown TLP level {opts.tlp!r}; choose one of {', '.join(stix.TLP_LEVELS)}")
    if not ev.accounts:
        raise ExportError("the campaign's accounts sent no request in this traffic: nothing to export")
    now = time.time() if opts.now is None else opts.now
    modified = stix.timestamp(max(now, ev.last))
    producer = opts.producer
    identity_id = stix.stix_id("identity", producer)
    tlp = stix.tlp_marking(opts.tlp)
    marking = [tlp["id"]]
    alias = pseudonym(opts.salt, "campaign", campaign_key)
    campaign_id = stix.stix_id("campaign", producer, alias)
    confidence = max(0, min(100, round(100 * risk)))
    common = {"spec_version": "2.1", "created_by_ref": identity_id, "object_marking_refs": marking}
    created = stix.timestamp(ev.first)
    ext_id = stix.template_extension_id()
    objects: list[dict[str, Any]] = [
        tlp,
        {
            "type": "identity",
            "spec_version": "2.1",
            "id": identity_id,
            "created": stix.IDENTITY_CREATED,  # the same object in every bundle of this producer
            "modified": stix.IDENTITY_CREATED,
            "name": producer,
            "identity_class": "organization",
            "object_marking_refs": marking,
        },
        {
            **common,
            "type": "campaign",
            "id": campaign_id,
            "created": created,
            "modified": modified,
            "name": f"Model distillation campaign {alias}",
            "description": f"Coordinated extraction of model outputs through {len(ev.accounts)} API accounts "
            f"({ev.requests} requests), detected by DistillShield; risk {risk:.2f}.",
            "aliases": [alias],
            "first_seen": created,
            "last_seen": stix.timestamp(ev.last),
            "objective": "Harvest model outputs (answers, reasoning traces) to train a copy of the model.",
            "confidence": confidence,
        },
    ]
    valid_until = stix.timestamp(now + opts.valid_days * 86400)
    candidates = select(ev, opts, opts.min_accounts if min_accounts is None else min_accounts)
    for c in candidates:
        ind_id = stix.stix_id("indicator", producer, c.kind, c.value)
        label = KIND_LABEL[c.kind]
        shown = c.value if c.kind != "template" else c.value.split(":", 1)[0] + " fingerprint"
        ind: dict[str, Any] = {
            **common,
            "type": "indicator",
            "id": ind_id,
            "created": stix.timestamp(c.seen.first),
            "modified": modified,
            "name": f"{label} of distillation campaign {alias}: {shown}",
            "indicator_types": ["malicious-activity"],
            "pattern": _pattern(c),
            "pattern_type": "stix",
            "pattern_version": "2.1",
            "valid_from": stix.timestamp(c.seen.first),
            "valid_until": valid_until,
            "confidence": confidence,
            "labels": [f"distillshield:{c.kind}"],
        }
        if c.extension is not None:
            ind["extensions"] = {ext_id: {"extension_type": "property-extension", **c.extension}}
        objects.append(ind)
        objects.append(
            {
                **common,
                "type": "relationship",
                "id": stix.stix_id("relationship", producer, ind_id, "indicates", campaign_id),
                "created": ind["created"],
                "modified": modified,
                "relationship_type": "indicates",
                "source_ref": ind_id,
                "target_ref": campaign_id,
            }
        )
        sighting: dict[str, Any] = {
            **common,
            "type": "sighting",
            "id": stix.stix_id("sighting", producer, ind_id),
            "created": ind["created"],
            "modified": modified,
            "sighting_of_ref": ind_id,
            "first_seen": stix.timestamp(c.seen.first),
            "last_seen": stix.timestamp(c.seen.last),
            "count": min(c.seen.requests, 999_999_999),
            "where_sighted_refs": [identity_id],
            "description": f"seen in {c.seen.requests} requests from {len(c.seen.inside)} of the campaign's accounts",
            "confidence": confidence,
        }
        if c.kind == "ip-range":
            # What was observed, as STIX records raw observations: the range (a cyber-observable) and how often the
            # campaign's requests came from it. User agents and template fingerprints have no observed-data: STIX
            # carries a user agent only inside a network-traffic object, which needs an endpoint address, and a
            # template fingerprint is no cyber-observable (it travels in the indicator's extension).
            address = stix.address_object(c.value, marking)
            observed = _observed_data(common, producer, ind_id, address["id"], c.seen, modified)
            objects += [address, observed]
            sighting["observed_data_refs"] = [observed["id"]]
        objects.append(sighting)
    ids = sorted(o["id"] + o.get("modified", "") for o in objects)
    return {"type": "bundle", "id": stix.stix_id("bundle", *ids), "objects": objects}


def _observed_data(
    common: dict[str, Any], producer: str, ind_id: str, observable_id: str, seen: Seen, modified: str
) -> dict[str, Any]:
    """The observed-data of one indicator's observable: how many of the campaign's requests showed it, when."""
    return {
        **common,
        "type": "observed-data",
        "id": stix.stix_id("observed-data", producer, ind_id),
        "created": stix.timestamp(seen.first),
        "modified": modified,
        "first_observed": stix.timestamp(seen.first),
        "last_observed": stix.timestamp(seen.last),
        "number_observed": max(1, min(seen.requests, 999_999_999)),
        "object_refs": [observable_id],
    }


def summarise(bundle: dict[str, Any]) -> dict[str, Any]:
    """What a bundle would send, object by object (the `--dry-run` view)."""
    objs = bundle["objects"]
    counts: dict[str, int] = {}
    for o in objs:
        counts[o["type"]] = counts.get(o["type"], 0) + 1
    marking = next((o["name"] for o in objs if o["type"] == "marking-definition"), None)
    indicators = [
        {"id": o["id"], "pattern": o["pattern"], "confidence": o.get("confidence"), "valid_until": o["valid_until"]}
        for o in objs
        if o["type"] == "indicator"
    ]
    return {"bundle": bundle["id"], "marking": marking, "objects": counts, "indicators": indicators}


def export_campaign(
    report: Any,
    records: Iterable[TrafficRecord],
    opts: ExportOptions,
    *,
    cluster: str | None = None,
    account: str | None = None,
) -> dict[str, Any]:
    """The bundle of one cluster (or one account) of a validated analyser report (evaluate.verdicts), its
    evidence read from `records` (the traffic the report was made from)."""
    if (cluster is None) == (account is None):
        raise ExportError("name the campaign: a cluster of the report, or one account")
    if cluster is not None:
        found = next((c for c in report.clusters if c.cluster_id == cluster), None)
        if found is None:
            known = ", ".join(c.cluster_id for c in report.clusters[:10]) or "none"
            raise ExportError(f"the report has no cluster {cluster!r} (its clusters: {known})")
        members, key, risk, min_accounts = set(found.accounts), f"cluster:{cluster}", found.risk or 0.0, None
    else:
        acc = next((a for a in report.accounts if a.account_id == account), None)
        if acc is None:
            raise ExportError(f"the report has no account {account!r}")
        # One account: every indicator it shows is its own (min_accounts 1), still none that others share.
        members, key, risk, min_accounts = {acc.account_id}, f"account:{acc.account_id}", acc.risk, 1
    ev = collect(records, members)
    return build_bundle(ev, key, risk, opts, min_accounts)
