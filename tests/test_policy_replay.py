"""Shadow replay (gateway/policy/replay.py) on a small synthetic audit log whose per-rule counts are worked out
by hand below, and over a real SQLite store."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from distillshield.contracts import AccountRisk
from distillshield.gateway.policy.engine import compile_policy
from distillshield.gateway.policy.replay import LoggedDecisions, Now, replay, replay_window
from distillshield.gateway.policy.rules import parse_policy
from distillshield.store.database import Account, Store

POLICY = """
version: 1
allowlist: {accounts: [acct-e]}
rules:
  - {name: block-confirmed, when: {review: [confirmed]}, action: block}
  - {name: wm-extraction, when: {verdict: [extraction]}, action: watermark, continue: true}
  - {name: throttle-risky, when: {risk: {gte: 0.7}}, action: throttle, params: {factor: 0.5}}
  - {name: shadow-suspicious, when: {verdict: [suspicious]}, action: block, shadow: true}
  - {name: pro-monitor, when: {tier: [pro]}, action: monitor}
"""


def _decision(verdict: str, risk: float, rule: str = "some-rule") -> str:
    return orjson.dumps({"action": "watermark", "rule": rule, "signals": {}, "verdict": verdict, "risk": risk}).decode()


def _account(account_id: str, tier: str = "standard") -> Account:
    return Account(account_id, "org-1", "", 0.0, tier, "none", "active")


def _board(account_id: str, verdict: str) -> AccountRisk:
    return AccountRisk(account_id, 0.9 if verdict != "benign" else 0.1, verdict)


# Per account: its logged decisions, and what is true now.
LOGGED = [
    LoggedDecisions("acct-a", _decision("extraction", 0.95), 3),  # confirmed: block-confirmed takes all 5
    LoggedDecisions("acct-a", "allow", 2),
    LoggedDecisions("acct-b", _decision("extraction", 0.8), 4),  # wm-extraction (continues), throttle-risky
    LoggedDecisions("acct-c", _decision("suspicious", 0.5), 6),  # shadow-suspicious only
    LoggedDecisions("acct-d", "allow", 10),  # unscored, but a pro account: pro-monitor
    LoggedDecisions("acct-e", _decision("extraction", 0.99), 7),  # on the policy's allowlist: nothing
    LoggedDecisions("acct-f", _decision("suspicious", 0.75), 2),  # throttle-risky stops before shadow-suspicious
]
NOW = {
    "acct-a": Now(_account("acct-a"), "confirmed", _board("acct-a", "extraction")),
    "acct-b": Now(_account("acct-b"), "cleared", _board("acct-b", "benign")),  # dismissed, not flagged now
    "acct-c": Now(_account("acct-c"), "open", _board("acct-c", "suspicious")),
    "acct-d": Now(_account("acct-d", tier="pro"), None, None),  # not flagged now
    "acct-e": Now(_account("acct-e"), None, _board("acct-e", "extraction")),
    "acct-f": Now(None, None, _board("acct-f", "extraction")),  # not in the store
}


def _counts(policy_yaml: str = POLICY) -> dict[str, tuple[int, list[str], int, int]]:
    policy = compile_policy(parse_policy(policy_yaml), "test")
    out = replay(policy, LOGGED, NOW, lambda _c: 0)
    return {r.name: (r.requests, sorted(r.accounts), r.dismissed, r.not_flagged) for r in out.rules}


def test_each_rule_counts_the_requests_and_accounts_it_would_have_acted_on_in_order() -> None:
    policy = compile_policy(parse_policy(POLICY), "test")
    out = replay(policy, LOGGED, NOW, lambda _c: 0)
    assert (out.requests, out.accounts, out.unscored, out.allowlisted) == (34, 6, 12, 7)
    assert _counts() == {
        # rule: (requests, accounts, of them dismissed by a reviewer, of them not flagged now)
        "block-confirmed": (5, ["acct-a"], 0, 0),
        "wm-extraction": (4, ["acct-b"], 1, 1),
        "throttle-risky": (6, ["acct-b", "acct-f"], 1, 1),
        "shadow-suspicious": (6, ["acct-c"], 0, 0),
        "pro-monitor": (10, ["acct-d"], 0, 1),
    }
    b = out.rule("throttle-risky").accounts["acct-b"]  # type: ignore[union-attr]
    assert (b.requests, b.verdict, b.risk, b.review, b.flagged_now) == (4, "extraction", 0.8, "cleared", False)
    assert [a.account_id for a in out.rule("throttle-risky").ranked()] == ["acct-b", "acct-f"]  # type: ignore[union-attr]


def test_a_terminal_rule_above_hides_the_rules_below_it() -> None:
    # the same log, with throttle-risky made to continue: acct-f now reaches shadow-suspicious too
    counts = _counts(POLICY.replace("params: {factor: 0.5}}", "params: {factor: 0.5}, continue: true}"))
    assert counts["shadow-suspicious"] == (8, ["acct-c", "acct-f"], 0, 0)
    assert counts["pro-monitor"] == (10, ["acct-d"], 0, 1)


def _row(account_id: str, decision: str, ts: float) -> dict[str, Any]:
    return {
        "ts": ts, "request_id": uuid.uuid4().hex, "account_id": account_id, "org_id": "org-1", "key_id": None,
        "ip": None, "user_agent": None, "endpoint": "/v1/chat/completions", "model": "m", "stream": False,
        "status": 200, "latency_ms": 1.0, "request": "{}", "response_text": None, "finish_reason": None,
        "prompt_tokens": None, "completion_tokens": None, "decision": decision, "error": None,
    }  # fmt: skip


def test_the_window_is_read_from_the_store_grouped(tmp_path: Path) -> None:
    async def run() -> dict[str, tuple[int, list[str], int, int]]:
        store = Store(f"sqlite+aiosqlite:///{tmp_path / 'replay.db'}")
        await store.init()
        try:
            await store.create_account("acct-b", "org-1")
            now = time.time()
            rows = [_row("acct-b", _decision("extraction", 0.8), now - 60 * i) for i in range(4)]
            rows += [_row("acct-b", _decision("extraction", 0.99), now - 2 * 86400)]  # outside the window
            rows += [_row("acct-d", "allow", now - 10)]
            await store.append_audit(sorted(rows, key=lambda r: r["ts"]))
            policy = compile_policy(parse_policy(POLICY), "test")
            out = await replay_window(store, policy, lambda a: None, lambda _c: 0, now=now)
        finally:
            await store.close()
        assert (out.requests, out.accounts, out.unscored) == (5, 2, 1)
        return {r.name: (r.requests, sorted(r.accounts), r.dismissed, r.not_flagged) for r in out.rules}

    counts = asyncio.run(run())
    assert counts["wm-extraction"] == (4, ["acct-b"], 0, 1)
    assert counts["throttle-risky"] == (4, ["acct-b"], 0, 1)
    assert counts["pro-monitor"] == (0, [], 0, 0)  # acct-d is not in the store: no tier
