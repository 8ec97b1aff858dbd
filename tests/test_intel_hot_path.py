"""Imported threat intelligence on the request path (docs/intel.md, "Matching"): a request whose client address
lies in an imported range (or whose prompt opens with an imported template frame) is matched before the policy
decides, so an `intel_match` rule acts on a new account's FIRST request, with the indicator named in the audit
row; no detection round is involved (detection is switched off in these gateways).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import stix2

from distillshield.contracts import AccountRisk, IntelHit
from distillshield.detect import text as T
from distillshield.intel.export import Evidence, ExportOptions, Seen, build_bundle
from distillshield.intel.indicators import read_bundle
from distillshield.intel.live import LiveIndicators
from distillshield.intel.matcher import IntelMatcher
from distillshield.intel.store import import_bundle
from tests.conftest import RunningGateway
from tests.fakes import FakeUpstream

RANGE = "203.0.113.0/24"  # the campaign's proxy range (TEST-NET-3)
INSIDE = "203.0.113.77"
OUTSIDE = "203.0.114.9"  # the next /24: just outside it
PRODUCER = "Provider A threat intel"
TEMPLATE = "You are a careful tutor. Answer the following exam question step by step, showing all reasoning: "


def campaign_bundle(now: float | None = None, valid_days: float = 90.0, frames: bool = False) -> dict[str, Any]:
    """Provider A's export (intel/export.py) of a campaign seen from RANGE (and, with `frames`, opening every prompt
    with TEMPLATE) by three of its accounts and by no other."""
    t = time.time() if now is None else now
    ev = Evidence(accounts={"a1", "a2", "a3"}, requests=30, first=t - 3600, last=t - 60)

    def seen() -> Seen:
        return Seen(inside={"a1", "a2", "a3"}, requests=30, first=t - 3600, last=t - 60, prompts={1, 2, 3})

    ev.ips[RANGE] = seen()
    if frames:
        ev.frames[opening_frame(TEMPLATE + "What is 2 + 2?")] = seen()
    opts = ExportOptions(producer=PRODUCER, salt="hot-path-salt-0123456789", now=t, valid_days=valid_days)
    return build_bundle(ev, "cluster:c1", 0.9, opts)


def opening_frame(prompt: str) -> int:
    return T.frames(T.words(T.skeleton(prompt)))[0]


def revocation_of_range(bundle: dict[str, Any]) -> dict[str, Any]:
    ind = next(o for o in bundle["objects"] if o["type"] == "indicator" and RANGE in o["pattern"])
    revoked = orjson.loads(stix2.parse(ind, version="2.1").new_version(revoked=True).serialize())
    return {"type": "bundle", "id": "bundle--0f0d6d3f-8e55-4e43-a7ad-7d11b3b1a7aa", "objects": [revoked]}


def start(gateway_factory: Any, tmp_path: Path, action: str, *bundles: dict[str, Any]) -> RunningGateway:
    """A gateway without detection (no detection round can flag anyone) whose policy acts on `intel_match`, with
    `bundles` imported and loaded into the request path."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        f"version: 1\nrules:\n  - name: shared-intel\n    when: {{intel_match: true}}\n    action: {action}\n"
    )
    gw = gateway_factory(
        {"upstream": FakeUpstream()},
        detection__enabled=False,
        server__trust_forwarded_for=True,
        policy__file=str(policy),
    )
    for b in bundles:
        gw.run(import_bundle(gw.state.store, b, "test"))
    live = gw.state.intel
    assert isinstance(live, LiveIndicators), "the intel extension publishes the imported indicators"
    gw.run(live.refresh(force=True))
    return gw


def send(gw: RunningGateway, key: str, ip: str, prompt: str = "Hello there, how are you today?") -> httpx.Response:
    headers = {"authorization": f"Bearer {key}", "x-forwarded-for": ip}
    body = {"model": "fake-model", "messages": [{"role": "user", "content": prompt}], "max_tokens": 8}
    return httpx.post(f"{gw.base}/v1/chat/completions", headers=headers, json=body, timeout=30)


def decisions(gw: RunningGateway, account_id: str) -> list[str]:
    gw.flush_audit()

    async def rows() -> list[str]:
        return [r["decision"] async for r in gw.state.store.iter_audit() if r["account_id"] == account_id]

    return gw.run(rows())


@pytest.mark.parametrize(("action", "code"), [("block", "account_blocked"), ("challenge", "verification_required")])
def test_the_first_request_from_an_imported_range_is_refused_with_the_indicator_named(
    gateway_factory: Any, tmp_path: Path, action: str, code: str
) -> None:
    bundle = campaign_bundle()
    gw = start(gateway_factory, tmp_path, action, bundle)
    key = gw.create_key("brand-new")
    first = send(gw, key, INSIDE)
    assert first.status_code == 403, first.text
    assert first.json()["error"]["code"] == code
    (row,) = decisions(gw, "brand-new")
    recorded = orjson.loads(row)
    assert recorded["rule"] == "shared-intel" and recorded["action"] == action
    ind = next(o for o in bundle["objects"] if o["type"] == "indicator")
    intel = recorded["intel"]
    assert intel["indicator"] == ind["id"] and intel["producer"] == PRODUCER
    assert intel["confidence"] == ind["confidence"] == 90 and intel["matched"] == RANGE
    assert ind["id"] in intel["detail"] and f"from {PRODUCER}, confidence 90" in intel["detail"]
    assert recorded["signals"]["intel"] > 0


def test_an_account_outside_the_imported_ranges_is_untouched(gateway_factory: Any, tmp_path: Path) -> None:
    gw = start(gateway_factory, tmp_path, "block", campaign_bundle())
    key = gw.create_key("honest")
    assert [send(gw, key, OUTSIDE).status_code for _ in range(3)] == [200, 200, 200]
    assert decisions(gw, "honest") == ["allow"] * 3


def test_a_throttle_on_intel_match_applies_from_the_first_request(gateway_factory: Any, tmp_path: Path) -> None:
    gw = start(gateway_factory, tmp_path, "throttle\n    params: {factor: 0.5}", campaign_bundle())
    key = gw.create_key("new-harvester")
    assert send(gw, key, INSIDE).status_code == 200, "throttled, not refused"
    (row,) = decisions(gw, "new-harvester")
    assert orjson.loads(row)["action"] == "throttle" and orjson.loads(row)["intel"]["matched"] == RANGE


def test_a_batch_from_an_imported_range_is_refused_at_create(gateway_factory: Any, tmp_path: Path) -> None:
    import openai

    from tests.test_batches_api import chat_line, upload

    gw = start(gateway_factory, tmp_path, "block", campaign_bundle())
    key = gw.create_key("new-batcher")
    c = openai.OpenAI(base_url=f"{gw.base}/v1", api_key=key, max_retries=0, default_headers={"x-forwarded-for": INSIDE})
    fid = upload(c, [chat_line(0)])
    with pytest.raises(openai.PermissionDeniedError) as exc:
        c.batches.create(input_file_id=fid, endpoint="/v1/chat/completions", completion_window="24h")
    assert exc.value.body["code"] == "account_blocked"  # type: ignore[index]
    assert [b.id for b in c.batches.list()] == []


def test_a_revoked_indicator_stops_matching_on_the_request_path(gateway_factory: Any, tmp_path: Path) -> None:
    bundle = campaign_bundle()
    gw = start(gateway_factory, tmp_path, "block", bundle)
    assert send(gw, gw.create_key("before"), INSIDE).status_code == 403
    gw.run(import_bundle(gw.state.store, revocation_of_range(bundle), "test"))
    gw.run(gw.state.intel.refresh(force=True))  # what the extension does within intel.refresh_s of an import
    assert send(gw, gw.create_key("after"), INSIDE).status_code == 200
    assert decisions(gw, "after") == ["allow"]


def test_an_expired_indicator_does_not_match_on_the_request_path(gateway_factory: Any, tmp_path: Path) -> None:
    expired = campaign_bundle(now=time.time() - 30 * 86400, valid_days=7)
    gw = start(gateway_factory, tmp_path, "block", expired)
    key = gw.create_key("brand-new")
    assert send(gw, key, INSIDE).status_code == 200
    assert decisions(gw, "brand-new") == ["allow"]


def test_an_indicator_that_expires_after_loading_stops_matching_before_the_reload() -> None:
    inds, _ = read_bundle(campaign_bundle(now=time.time() - 8 * 86400, valid_days=7))  # expired a day ago
    live = LiveIndicators(store=None, refresh_s=3600)  # type: ignore[arg-type]  # never reloads here
    live.matcher = IntelMatcher(inds, now=time.time() - 2 * 86400)  # loaded while it was valid
    assert live.matcher.match(INSIDE), "the loaded matcher holds it"
    assert live.match_request(INSIDE, None) is None


def test_with_request_frames_a_new_account_is_matched_on_its_prompt_template_frame_alone() -> None:
    inds, _ = read_bundle(campaign_bundle(frames=True))
    live = LiveIndicators(store=None, frames=True)  # type: ignore[arg-type]  # loaded by hand: no store behind it
    live.matcher = IntelMatcher(inds, time.time())
    same_template = {"messages": [{"role": "user", "content": TEMPLATE + "Name three prime numbers above 40."}]}
    other = {"messages": [{"role": "user", "content": "Could you help me write a birthday card for my aunt?"}]}
    hit = live.match_request(OUTSIDE, "python-httpx/0.28", same_template)
    assert isinstance(hit, IntelHit) and hit.kind == "frame"
    assert "template frame" in hit.detail and PRODUCER in hit.detail
    assert live.match_request(OUTSIDE, "python-httpx/0.28", other) is None
    assert live.match_request(INSIDE, None, other).kind == "ip-range"  # type: ignore[union-attr]
    default = LiveIndicators(store=None)  # type: ignore[arg-type]  # intel.request_frames off: too costly
    default.matcher = live.matcher
    assert default.match_request(OUTSIDE, "python-httpx/0.28", same_template) is None


def test_the_policy_decides_on_the_request_match_without_a_verdict() -> None:
    from distillshield.gateway.policy.engine import PolicyEngine, compile_policy
    from distillshield.gateway.policy.rules import parse_policy
    from distillshield.store.database import Account, ApiKey, KeyContext, Org

    key = ApiKey("k1", "a1", "", "00", "00", 0.0, None)
    ctx = KeyContext(key, Account("a1", "o1", "a1", 0.0, "standard", "none", "active"), Org("o1", "o1", 0.0))
    policy = "version: 1\nrules:\n  - name: shared-intel\n    when: {intel_match: true}\n    action: throttle\n" \
             "    params: {factor: 0.5}\n"  # fmt: skip
    eng = PolicyEngine(compile_policy(parse_policy(policy), "test"))
    hit = IntelHit("indicator--x", "IP range", PRODUCER, 80, "ip-range", RANGE, 0.72, "matches imported indicator")
    assert eng.decide(ctx, None, hit).action == "throttle", "no verdict at all: a new account"
    benign = AccountRisk("a1", 0.1, "benign")  # scored since, nothing found: the same verdict for the next three
    assert eng.decide(ctx, benign, hit).action == "throttle"
    assert eng.decide(ctx, benign, None).action == "allow", "the next request, from elsewhere, matched nothing"
    assert eng.decide(ctx, benign, hit).intel is hit
