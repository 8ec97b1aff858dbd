"""Threat-intelligence exchange (docs/intel.md): a simulated hydra campaign exported as STIX 2.1, shared
through a real TAXII 2.1 server (OASIS medallion, memory back end, on loopback), pulled by a second provider
whose new accounts on the campaign's infrastructure and templates are flagged on the indicators alone.

medallion is a dev dependency (`make install`); when it cannot start the TAXII tests skip with a message,
unless DISTILLSHIELD_REQUIRE_SERVICES=1 (CI), which makes that a failure.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import stix2
from stix2patterns.validator import run_validator

from distillshield.detect.analyze import analyze_file
from distillshield.intel import stix
from distillshield.intel.export import ExportOptions, export_campaign
from distillshield.intel.indicators import read_bundle
from distillshield.intel.matcher import IntelMatcher, IpRanges
from distillshield.intel.store import IntelStore, import_bundle, load_matcher
from distillshield.store import Store
from tests.conftest import free_port

SALT = "test-salt-0123456789"
COLLECTION = "472c94ae-3113-4e3e-a4dd-a9f4ac7471d4"


def cli(*args: str, store: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """`distillshield ...` as a user runs it (the console entry point: one-line errors, exit codes)."""
    e = {**os.environ, "COLUMNS": "250", **env}
    if store is not None:
        e["DISTILLSHIELD_STORE__URL"] = f"sqlite+aiosqlite:///{store}"
    return subprocess.run(
        [sys.executable, "-m", "distillshield", *args], capture_output=True, text=True, timeout=300, env=e
    )


# -- provider A: a simulated hydra, analysed, its cluster exported ------------------------------------------


class Campaign:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.traffic = root / "traffic.jsonl"
        self.report_path = root / "report.json"
        self.report = json.loads(self.report_path.read_text())
        self.records = [json.loads(line) for line in self.traffic.read_text().splitlines()]
        # the cluster whose members the simulator labels hydra (ground truth: tests only)
        label = {r["account_id"]: r["label"] for r in self.records}
        self.cluster = max(
            self.report["clusters"], key=lambda c: sum(label[a] == "attack:hydra" for a in c["accounts"])
        )
        self.members = set(self.cluster["accounts"])
        self.bundle_path = root / "bundle.json"

    def bundle(self, **opts: Any) -> dict[str, Any]:
        from distillshield.detect.corpus import LineErrors, read_records
        from distillshield.evaluate.verdicts import load_report

        o = ExportOptions(salt=SALT, **opts)
        report = load_report(self.report_path)
        return export_campaign(report, read_records(self.traffic, LineErrors()), o, cluster=self.cluster["cluster_id"])


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> Campaign:
    root = tmp_path_factory.mktemp("provider-a")
    r = cli("simulate", "--scenario", "smoke", "--seed", "1", "--out", str(root / "traffic.jsonl"))
    assert r.returncode == 0, r.stderr
    r = cli("analyze", str(root / "traffic.jsonl"), "--out", str(root / "report.json"), "--json")
    assert r.returncode == 0, r.stderr
    c = Campaign(root)
    r = cli(
        "intel", "export", "--report", str(c.report_path), "--traffic", str(c.traffic),
        "--cluster", c.cluster["cluster_id"], "--out", str(c.bundle_path), "--salt", SALT,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return c


def objects(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [o for o in bundle["objects"] if o["type"] == kind]


def test_exported_bundle_validates_as_stix_2_1_and_every_pattern_parses(campaign: Campaign) -> None:
    bundle = json.loads(campaign.bundle_path.read_text())
    parsed = stix2.parse(bundle, allow_custom=False, version="2.1")  # the library's validator, no custom content
    assert parsed.type == "bundle"
    indicators = objects(bundle, "indicator")
    assert indicators, "the hydra's infrastructure and templates give indicators"
    for ind in indicators:
        assert ind["pattern_type"] == "stix"
        assert run_validator(ind["pattern"], stix_version="2.1") == [], ind["pattern"]
    kinds = {ind["labels"][0] for ind in indicators}
    assert {"distillshield:ip-range", "distillshield:template"} <= kinds
    for kind in ("identity", "campaign", "sighting", "relationship", "marking-definition"):
        assert objects(bundle, kind), f"no {kind} in the bundle"
    assert all(s["count"] >= 1 for s in objects(bundle, "sighting"))
    assert {r["source_ref"] for r in objects(bundle, "relationship")} == {i["id"] for i in indicators}


def test_ip_ranges_travel_with_observed_data_that_counts_the_campaigns_requests(campaign: Campaign) -> None:
    bundle = json.loads(campaign.bundle_path.read_text())
    by_id = {o["id"]: o for o in bundle["objects"]}
    ranges = [i for i in objects(bundle, "indicator") if i["labels"] == ["distillshield:ip-range"]]
    sightings = {s["sighting_of_ref"]: s for s in objects(bundle, "sighting")}
    assert ranges and len(objects(bundle, "observed-data")) == len(ranges)
    for ind in ranges:
        sighting = sightings[ind["id"]]
        (observed,) = [by_id[ref] for ref in sighting["observed_data_refs"]]
        assert observed["type"] == "observed-data"
        assert observed["number_observed"] == sighting["count"] >= 1
        assert (observed["first_observed"], observed["last_observed"]) == (
            sighting["first_seen"],
            sighting["last_seen"],
        )
        (address,) = [by_id[ref] for ref in observed["object_refs"]]
        assert f"ISSUBSET '{address['value']}'" in ind["pattern"]
        kind = stix2.IPv6Address if address["type"] == "ipv6-addr" else stix2.IPv4Address
        assert address["id"] == kind(value=address["value"]).id, "the id STIX 2.1 defines for this observable"


def test_bundle_is_marked_tlp_amber_by_default_and_confidence_comes_from_the_risk(campaign: Campaign) -> None:
    bundle = json.loads(campaign.bundle_path.read_text())
    (marking,) = objects(bundle, "marking-definition")
    assert marking["id"] == stix.TLP2_IDS["amber"] and marking["name"] == "TLP:AMBER"
    assert all(
        marking["id"] in o["object_marking_refs"] for o in bundle["objects"] if o["type"] != "marking-definition"
    )
    (camp,) = objects(bundle, "campaign")
    assert camp["confidence"] == round(100 * campaign.cluster["risk"])
    green = campaign.bundle(tlp="green")
    assert objects(green, "marking-definition")[0]["id"] == stix.TLP2_IDS["green"]


def test_template_fingerprints_are_minhash_signatures_in_the_documented_extension(campaign: Campaign) -> None:
    bundle = json.loads(campaign.bundle_path.read_text())
    ext_id = stix.template_extension_id()
    templates = [i for i in objects(bundle, "indicator") if i["labels"] == ["distillshield:template"]]
    minhash = [i["extensions"][ext_id] for i in templates if i["extensions"][ext_id]["fingerprint"] == "minhash"]
    assert minhash, "template families are shared as MinHash signatures"
    for ext in minhash:
        assert ext["extension_type"] == "property-extension"
        assert len(ext["signature"]) == ext["num_perm"] == 64
        assert all(0 <= v < 2**32 for v in ext["signature"])


def test_bundle_carries_no_prompt_text_and_no_internal_id(campaign: Campaign) -> None:
    text = campaign.bundle_path.read_text()
    low = text.lower()
    ids = set()
    for r in campaign.records:
        ids.update(v for v in (r["account_id"], r.get("org_id"), r.get("key_id")) if v)
    ids.update(c["cluster_id"] for c in campaign.report["clusters"] + campaign.report["linked_groups"])
    leaked = sorted(i for i in ids if i.lower() in low)
    assert not leaked, f"internal ids in the bundle: {leaked[:5]}"
    # No six consecutive words of any prompt the campaign sent appear in the bundle.
    bundle_words = re.findall(r"\w+", low)
    grams = {" ".join(bundle_words[i : i + 6]) for i in range(len(bundle_words) - 5)}
    checked = 0
    for r in campaign.records:
        if r["account_id"] not in campaign.members:
            continue
        for m in r["request"].get("messages", []):
            if isinstance(m.get("content"), str):
                words = re.findall(r"\w+", m["content"].lower())
                for i in range(len(words) - 5):
                    assert " ".join(words[i : i + 6]) not in grams, f"prompt text in the bundle: {m['content'][:80]!r}"
                checked += 1
    assert checked > 100


def test_reexport_keeps_every_id_and_only_moves_modified(campaign: Campaign) -> None:
    first = campaign.bundle(now=time.time())
    later = campaign.bundle(now=time.time() + 86400)
    by_id = {o["id"]: o for o in first["objects"]}
    assert {o["id"] for o in later["objects"]} == set(by_id)
    ind = objects(later, "indicator")[0]
    assert ind["modified"] > by_id[ind["id"]]["modified"]
    other_salt = export_with_salt(campaign, "another-salt-987654321")
    assert objects(other_salt, "campaign")[0]["id"] != objects(first, "campaign")[0]["id"]


def export_with_salt(campaign: Campaign, salt: str) -> dict[str, Any]:
    from distillshield.detect.corpus import LineErrors, read_records
    from distillshield.evaluate.verdicts import load_report

    return export_campaign(
        load_report(campaign.report_path),
        read_records(campaign.traffic, LineErrors()),
        ExportOptions(salt=salt),
        cluster=campaign.cluster["cluster_id"],
    )


def test_dry_run_shows_what_would_leave_and_writes_nothing(campaign: Campaign, tmp_path: Path) -> None:
    out = tmp_path / "never.json"
    r = cli(
        "intel", "export", "-r", str(campaign.report_path), "-t", str(campaign.traffic),
        "--cluster", campaign.cluster["cluster_id"], "--out", str(out), "--dry-run", "--salt", SALT,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert not out.exists()
    assert "TLP:AMBER" in r.stdout and "ipv4-addr:value ISSUBSET" in r.stdout and "never leaves" in r.stdout


def test_one_account_exports_as_a_campaign_under_a_pseudonym(campaign: Campaign, tmp_path: Path) -> None:
    # a lone harvester: flagged, in no cluster (an account of a cluster shares its IP range with the others,
    # which are outside a one-account export, so that range stays home)
    account = next(a["account_id"] for a in campaign.report["accounts"] if a["verdict"] == "extraction"
                   and a["cluster_id"] is None)  # fmt: skip
    out = tmp_path / "account.json"
    r = cli("intel", "export", "-r", str(campaign.report_path), "-t", str(campaign.traffic),
            "--account", account, "--out", str(out), "--salt", SALT, "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    bundle = json.loads(out.read_text())
    stix.parse_bundle(bundle)
    assert account not in out.read_text()
    (camp,) = objects(bundle, "campaign")
    assert camp["aliases"][0].startswith("ps-") and camp["aliases"][0] in camp["name"]
    assert objects(bundle, "indicator"), "its own IP range at least"


def test_export_without_a_salt_is_refused_in_one_line(campaign: Campaign) -> None:
    r = cli("intel", "export", "-r", str(campaign.report_path), "-t", str(campaign.traffic),
            "--cluster", campaign.cluster["cluster_id"], "--dry-run")  # fmt: skip
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error: no pseudonym salt") and "Traceback" not in r.stderr


# -- the TAXII server -------------------------------------------------------------------------------------


@pytest.fixture
def medallion(tmp_path: Path) -> Iterator[str]:
    """OASIS medallion (TAXII 2.1, memory back end) on a free loopback port; yields the API root."""
    exe = Path(sys.executable).with_name("medallion")
    port = free_port()
    api_root = f"http://127.0.0.1:{port}/api1/"
    data = {
        "/discovery": {"title": "test", "default": api_root, "api_roots": [api_root]},
        "api1": {
            "information": {
                "title": "api1",
                "versions": ["application/taxii+json;version=2.1"],
                "max_content_length": 104857600,
            },  # fmt: skip
            "status": [],
            "collections": [
                {
                    "id": COLLECTION,
                    "title": "distillation campaigns",
                    "can_read": True,
                    "can_write": True,
                    "media_types": ["application/stix+json;version=2.1"],
                    "objects": [],
                    "manifest": [],
                }
            ],  # fmt: skip
        },
    }
    (tmp_path / "data.json").write_text(json.dumps(data))
    conf = {
        "backend": {
            "module": "medallion.backends.memory_backend",
            "module_class": "MemoryBackend",
            "filename": str(tmp_path / "data.json"),
        },  # fmt: skip
        "users": {"provider-a": "a-secret", "provider-b": "b-secret"},
        "taxii": {"max_page_size": 100},
    }
    (tmp_path / "medallion.json").write_text(json.dumps(conf))
    proc = None
    problem = None
    if not exe.exists():
        problem = f"medallion is not installed at {exe} (make install installs it)"
    else:
        log = open(tmp_path / "medallion.log", "wb")  # noqa: SIM115 - closed below
        args = [str(exe), "--host", "127.0.0.1", "--port", str(port), str(tmp_path / "medallion.json")]
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while problem is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if proc.poll() is not None:
                    problem = (
                        f"medallion exited with {proc.returncode}: {(tmp_path / 'medallion.log').read_text()[-300:]}"
                    )
                elif time.monotonic() > deadline:
                    problem = "medallion did not listen within 30 s"
                time.sleep(0.1)
    if problem is not None:
        if proc is not None:
            proc.kill()
        if os.environ.get("DISTILLSHIELD_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{problem}; DISTILLSHIELD_REQUIRE_SERVICES=1 forbids skipping")
        pytest.skip(f"{problem}; the TAXII round trip needs it")
    try:
        yield api_root
    finally:
        assert proc is not None
        proc.terminate()
        proc.wait(10)
        log.close()


def taxii_args(api_root: str, user: str, password: str) -> list[str]:
    return ["--url", api_root, "--collection", COLLECTION, "--user", user, "--password", password]


def new_accounts_on_campaign_infrastructure(campaign: Campaign, path: Path, per_account: int = 3) -> dict[str, str]:
    """Provider B's traffic: accounts B has never seen (new ids, orgs and keys) that reuse the hydra campaign's IP
    ranges, user agents and prompt templates, a few requests each; beside them, honest accounts of B's own."""
    rename: dict[str, str] = {}
    seen: dict[str, int] = {}
    lines = []
    for r in campaign.records:
        a = r["account_id"]
        if a in campaign.members and r["label"] == "attack:hydra":  # the campaign itself (simulator truth)
            if seen.get(a, 0) >= per_account:
                continue
            seen[a] = seen.get(a, 0) + 1
            new = rename.setdefault(a, f"b-new-{len(rename)}")
            r = {**r, "account_id": new, "org_id": f"b-org-{new}", "key_id": f"b-key-{new}"}
        elif r["label"].startswith("attack"):
            continue
        lines.append(json.dumps(r))
    path.write_text("\n".join(lines) + "\n")
    return rename


def test_round_trip_through_taxii_flags_new_accounts_on_the_indicators_alone(
    campaign: Campaign, medallion: str, tmp_path: Path
) -> None:
    # Provider A pushes its bundle.
    r = cli("intel", "push", str(campaign.bundle_path), *taxii_args(medallion, "provider-a", "a-secret"), "--json")
    assert r.returncode == 0, r.stderr
    pushed = json.loads(r.stdout)
    bundle = json.loads(campaign.bundle_path.read_text())
    assert pushed["failed"] == 0 and pushed["succeeded"] == len(bundle["objects"])

    # Provider B, a store of its own, pulls.
    store_b = tmp_path / "provider-b.db"
    r = cli("intel", "pull", *taxii_args(medallion, "provider-b", "b-secret"), "--json", store=store_b)
    assert r.returncode == 0, r.stderr
    pulled = json.loads(r.stdout)
    assert pulled["added"] == len(objects(bundle, "indicator")) and pulled["unsupported"] == 0
    again = cli("intel", "pull", *taxii_args(medallion, "provider-b", "b-secret"), "--json", store=store_b)
    assert json.loads(again.stdout)["objects"] == 0, "a second pull asks only for what is new"

    # B's first requests from the campaign's infrastructure and templates, on accounts B has no history of.
    traffic_b = tmp_path / "traffic-b.jsonl"
    rename = new_accounts_on_campaign_infrastructure(campaign, traffic_b)

    async def matcher() -> Any:
        store = Store(f"sqlite+aiosqlite:///{store_b}")
        await store.init()
        try:
            return await load_matcher(store)
        finally:
            await store.close()

    m = asyncio.run(matcher())
    with_intel = analyze_file(traffic_b, content=False, on_engine=lambda e: e.intel.fit(m)).report
    without = analyze_file(traffic_b, content=False).report
    before = {a["account_id"]: a for a in without["accounts"]}
    indicator_ids = {i["id"] for i in objects(bundle, "indicator")}
    flagged = 0
    for a in with_intel["accounts"]:
        if a["account_id"] not in rename.values():
            assert not any(x["signal"] == "intel" for x in a["reasons"]), f"honest {a['account_id']} matched"
            continue
        assert before[a["account_id"]]["verdict"] == "benign", "three requests are too few to flag on B's own"
        assert a["verdict"] != "benign", a
        (reason,) = [x for x in a["reasons"] if x["signal"] == "intel"]
        named = re.search(r"indicator (indicator--[0-9a-f-]{36})", reason["detail"])
        assert named and named.group(1) in indicator_ids
        assert "from DistillShield deployment, confidence" in reason["detail"]
        flagged += 1
    assert flagged == len(rename) >= 10


def test_pull_with_wrong_credentials_is_a_one_line_error(medallion: str, tmp_path: Path) -> None:
    r = cli("intel", "pull", *taxii_args(medallion, "provider-b", "wrong"), store=tmp_path / "b.db")
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error: TAXII server at") and "401" in r.stderr and "Traceback" not in r.stderr


# -- import, expiry, revocation ------------------------------------------------------------------------------


def store_of(path: Path) -> Store:
    return Store(f"sqlite+aiosqlite:///{path}")


async def imported(path: Path, *bundles: dict[str, Any]) -> list[Any]:
    store = store_of(path)
    await store.init()
    try:
        for b in bundles:
            await import_bundle(store, b, "test")
        return await IntelStore(store).active()
    finally:
        await store.close()


def test_expired_indicators_are_kept_but_never_matched(campaign: Campaign, tmp_path: Path) -> None:
    old = campaign.bundle(now=time.time() - 30 * 86400, valid_days=7)
    assert asyncio.run(imported(tmp_path / "b.db", old)) == []
    r = cli("intel", "list", "--all", "--json", store=tmp_path / "b.db")
    listed = json.loads(r.stdout)
    assert listed and not any(i["active"] for i in listed)
    inds, _ = read_bundle(old)
    ip = next(i for i in inds if i.keys[0][0] == "ip-range")
    assert IntelMatcher(inds, time.time()).match(ip=ip.keys[0][1]) == []
    assert IntelMatcher(inds, ip.valid_from + 1).match(ip=ip.keys[0][1]), "valid then, so it matched then"


def test_a_revoked_indicator_stops_matching_and_an_older_copy_does_not_bring_it_back(
    campaign: Campaign, tmp_path: Path
) -> None:
    bundle = json.loads(campaign.bundle_path.read_text())
    ip_ind = next(o for o in objects(bundle, "indicator") if o["labels"] == ["distillshield:ip-range"])
    network = re.search(r"'(.+)'", ip_ind["pattern"]).group(1)
    revoked = stix2.parse(ip_ind, version="2.1").new_version(revoked=True)
    revocation = {"type": "bundle", "id": "bundle--0f0d6d3f-8e55-4e43-a7ad-7d11b3b1a7aa",
                  "objects": [json.loads(revoked.serialize())]}  # fmt: skip
    active = asyncio.run(imported(tmp_path / "b.db", bundle, revocation, bundle))
    assert ip_ind["id"] not in {i.id for i in active}
    assert len(active) == len(objects(bundle, "indicator")) - 1
    assert all(h.indicator.id != ip_ind["id"] for h in IntelMatcher(active, time.time()).match(ip=network))


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ('{"type": "bundle"', "not JSON"),
        ("[1, 2]", "not a STIX bundle"),
        ('{"type": "bundle", "id": "bundle--1", "objects": []}', "not valid STIX 2.1"),
        (
            json.dumps(
                {
                    "type": "bundle",
                    "id": "bundle--0f0d6d3f-8e55-4e43-a7ad-7d11b3b1a7ab",
                    "objects": [
                        {
                            "type": "indicator",
                            "spec_version": "2.1",
                            "id": "indicator--0f0d6d3f-8e55-4e43-a7ad-7d11b3b1a7ac",
                            "created": "2026-01-01T00:00:00.000Z",
                            "modified": "2026-01-01T00:00:00.000Z",
                            "pattern": "[ipv4-addr:value = '1.2.3.4'",
                            "pattern_type": "stix",
                            "valid_from": "2026-01-01T00:00:00.000Z",
                        }
                    ],
                }
            ),  # fmt: skip
            "not valid STIX 2.1",
        ),
    ],
    ids=["truncated-json", "not-a-bundle", "bad-id", "bad-pattern"],
)
def test_a_bad_bundle_is_a_one_line_cli_error(content: str, needle: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    r = cli("intel", "import", str(path), store=tmp_path / "b.db")
    assert r.returncode == 2, r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: ") and needle in lines[0], r.stderr


def test_importing_the_same_bundle_twice_changes_nothing(campaign: Campaign, tmp_path: Path) -> None:
    first = cli("intel", "import", str(campaign.bundle_path), "--json", store=tmp_path / "b.db")
    second = cli("intel", "import", str(campaign.bundle_path), "--json", store=tmp_path / "b.db")
    n = len(objects(json.loads(campaign.bundle_path.read_text()), "indicator"))
    assert json.loads(first.stdout)["added"] == n
    assert json.loads(second.stdout) == {**json.loads(second.stdout), "added": 0, "updated": 0, "unchanged": n}


# -- the matcher --------------------------------------------------------------------------------------------


def test_ip_ranges_match_only_what_they_contain() -> None:
    ranges = IpRanges([(10, 20, 0), (15, 30, 1), (40, 50, 2)])
    assert ranges.containing(16, 18) == (0, 1)
    assert ranges.containing(18, 25) == (1,)  # the network must lie wholly in the range
    assert ranges.containing(35, 35) == ()
    assert ranges.containing(50, 50) == (2,)
    assert ranges.containing(51, 51) == ()


def test_user_agents_match_exactly(campaign: Campaign) -> None:
    bundle = campaign.bundle(min_accounts=1, max_outside=1000)  # every user agent, to have some
    inds, _ = read_bundle(bundle)
    uas = [k[1] for i in inds for k in i.keys if k[0] == "user-agent"]
    assert uas
    m = IntelMatcher(inds, time.time())
    assert [h.kind for h in m.match(ua=uas[0])] == ["user-agent"]
    assert m.match(ua=uas[0] + " ") == [] and m.match(ua=uas[0].upper()) == []
    assert re.search(
        r"network-traffic:extensions\.'http-request-ext'\.request_header\.'User-Agent' = '", json.dumps(bundle)
    )


# -- the policy ---------------------------------------------------------------------------------------------


def test_the_policy_can_act_on_an_intel_match() -> None:
    from distillshield.contracts import AccountRisk
    from distillshield.gateway.policy.engine import PolicyEngine, compile_policy
    from distillshield.gateway.policy.rules import parse_policy
    from distillshield.store.database import Account, ApiKey, KeyContext, Org

    def ctx(account: str) -> KeyContext:
        key = ApiKey("k" + account, account, "", "00", "00", 0.0, None)
        return KeyContext(key, Account(account, "o1", account, 0.0, "standard", "none", "active"), Org("o1", "o1", 0.0))

    policy = "version: 1\nrules:\n  - name: shared-intel\n    when: {intel_match: true}\n    action: challenge\n"
    eng = PolicyEngine(compile_policy(parse_policy(policy), "test"))
    matched = AccountRisk("a1", 0.6, "suspicious", None, {"intel": 0.9})
    unmatched = AccountRisk("a2", 0.6, "suspicious", None, {"templates": 0.9})
    assert eng.decide(ctx("a1"), matched).action == "challenge"
    assert eng.decide(ctx("a2"), unmatched).action == "allow"
    assert eng.decide(ctx("a3"), None).action == "allow"


# -- the gateway ---------------------------------------------------------------------------------------------


def test_the_gateway_flags_a_new_account_on_imported_indicators_and_the_policy_acts(
    campaign: Campaign, gateway_factory: Any, tmp_path: Path
) -> None:
    import httpx

    from tests.fakes import FakeUpstream
    from tests.test_detect_online import detection, wait_loaded

    # On detection's verdict: the request path's own match (tests/test_intel_hot_path.py) cannot act before it.
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: 1\nrules:\n  - name: shared-intel\n    when: {intel_match: true, verdict: [suspicious]}\n"
        "    action: block\n"
    )
    gw = gateway_factory(
        {"upstream": FakeUpstream()},
        detection__interval_s=3600,
        server__trust_forwarded_for=True,
        policy__file=str(policy),
    )
    ext = detection(gw)
    wait_loaded(ext)
    result = gw.run(import_bundle(gw.state.store, campaign.bundle_path.read_bytes(), "test"))
    assert result.added == len(objects(json.loads(campaign.bundle_path.read_text()), "indicator"))
    hydra = [r for r in campaign.records if r["account_id"] in campaign.members and r["label"] == "attack:hydra"]
    key = gw.create_key("brand-new")

    def send(rec: dict[str, Any]) -> httpx.Response:
        headers = {"authorization": f"Bearer {key}", "x-forwarded-for": rec["ip"], "user-agent": rec["user_agent"]}
        body = {"model": "fake-model", "messages": rec["request"]["messages"], "max_tokens": 8}
        return httpx.post(f"{gw.base}/v1/chat/completions", headers=headers, json=body, timeout=30)

    for rec in hydra[:3]:
        assert send(rec).status_code == 200, "nothing is known of the account yet"
    gw.flush_audit()
    gw.run(ext.flush())
    shown = ext.account("brand-new")
    assert shown is not None and shown["verdict"] == "suspicious", shown
    (reason,) = [r for r in shown["reasons"] if r["signal"] == "intel"]
    assert "matches imported indicator indicator--" in reason["detail"]
    assert gw.state.risk.get("brand-new").signals["intel"] > 0
    refused = send(hydra[3])
    assert refused.status_code == 403, refused.text
