"""The policy file's validation and PolicyEngine.decide: ordering, continue, shadow, allowlists, review
state, standing blocks."""

from __future__ import annotations

import orjson
import pytest

from distillshield.contracts import AccountRisk
from distillshield.gateway.policy import ALLOW, DEFAULT_POLICY, PolicyEngine, PolicyError, compile_policy, parse_policy
from distillshield.gateway.policy.engine import Decision, LoggedDecision, Mark
from distillshield.gateway.policy.rules import load_policy
from distillshield.store.database import Account, ApiKey, KeyContext, Org


def ctx(account: str = "a1", org: str = "o1", tier: str = "standard", verification: str = "none") -> KeyContext:
    key = ApiKey("k" + account, account, "", "00", "00", 0.0, None)
    return KeyContext(key, Account(account, org, account, 0.0, tier, verification, "active"), Org(org, org, 0.0))


def risk(
    account: str = "a1", verdict: str = "extraction", r: float = 0.95, cluster: str | None = None, **signals: float
):
    return AccountRisk(account, r, verdict, cluster, dict(signals))


def engine(yaml_text: str, **kw) -> PolicyEngine:
    return PolicyEngine(compile_policy(parse_policy(yaml_text), "test"), **kw)


ORDERED = """
rules:
  - {name: first, when: {verdict: [extraction]}, action: challenge}
  - {name: second, when: {verdict: [extraction]}, action: block}
"""


def test_first_matching_rule_decides() -> None:
    d = engine(ORDERED).decide(ctx(), risk())
    assert (d.action, d.rule) == ("challenge", "first")
    reordered = ORDERED.replace("first", "x").replace("second", "first").replace("challenge", "tmp")
    reordered = reordered.replace("block", "challenge").replace("tmp", "block")
    assert engine(reordered).decide(ctx(), risk()).action == "block"


def test_continue_merges_effects_and_reports_the_most_severe_action() -> None:
    e = engine("""
rules:
  - {name: wm, when: {verdict: [extraction]}, action: watermark, params: {mode: strong}, continue: true}
  - {name: deg, when: {verdict: [extraction]}, action: degrade, params: {max_tokens: 100}, continue: true}
  - name: deg2
    when: {risk: {gte: 0.9}}
    action: degrade
    params: {max_tokens: 50, reasoning: summarize}
    continue: true
  - {name: thr, when: {verdict: [extraction]}, action: throttle, params: {factor: 0.5}}
  - {name: never, when: {verdict: [extraction]}, action: block}
""")
    d = e.decide(ctx(), risk(r=0.95))
    assert d.action == "degrade" and d.rules == ("wm", "deg", "deg2", "thr")
    eff = d.effects
    assert eff.watermark is not None and eff.watermark.mode == "strong"
    assert eff.degrade is not None and eff.degrade.max_tokens == 50 and eff.degrade.reasoning == "strip"
    assert eff.throttle is not None and eff.throttle.factor == 0.5 and eff.block is None


def test_accounts_without_a_verdict_take_the_fast_path() -> None:
    e = compile_policy(load_policy(DEFAULT_POLICY), "default")
    assert not e.clean_can_match
    assert PolicyEngine(e).decide(ctx(), None) is ALLOW
    assert PolicyEngine(e).decide(ctx(), risk(verdict="benign", r=0.1)) is ALLOW


def test_rules_on_tier_apply_without_a_verdict() -> None:
    e = engine(
        "rules:\n  - {name: free-no-logprobs, when: {tier: [free]}, action: degrade, params: {reasoning: keep}}\n"
    )
    assert e.policy.clean_can_match
    assert e.decide(ctx(tier="free"), None).action == "degrade"
    assert e.decide(ctx(tier="pro"), None) is ALLOW


def test_signal_conditions_and_the_signals_that_fired() -> None:
    e = engine("""
rules:
  - {name: cot, when: {signals: {cot: {gte: 0.7}}}, action: degrade}
  - {name: any, when: {any_signal: {templates: {gt: 0.8}, coverage: {gt: 0.8}}}, action: monitor}
""")
    d = e.decide(ctx(), risk(verdict="suspicious", r=0.6, cot=0.9, coverage=0.2))
    assert d.rule == "cot" and d.signals == {"cot": 0.9}
    d = e.decide(ctx(), risk(verdict="suspicious", r=0.6, cot=0.5, coverage=0.85))
    assert d.rule == "any" and d.signals == {"templates": 0.0, "coverage": 0.85}
    assert e.decide(ctx(), risk(verdict="suspicious", r=0.6, cot=0.5)) is ALLOW


def test_audit_json_names_rule_signals_and_shadow() -> None:
    d = engine(ORDERED).decide(ctx(), risk(cot=0.9))
    row = orjson.loads(d.audit(refused="verification_required"))
    assert row["action"] == "challenge" and row["rule"] == "first" and row["shadow"] is False
    assert row["signals"] == {"cot": 0.9} and row["refuse"] == "verification_required"
    assert ALLOW.audit() == "allow" and ALLOW.audit("rate_limit_requests") == "refuse:rate_limit_requests"


def test_global_shadow_mode_marks_every_decision_shadow() -> None:
    d = engine(ORDERED, mode="shadow").decide(ctx(), risk())
    assert d.shadow and d.action == "challenge" and not d.enforced


def test_a_shadow_rule_is_recorded_and_evaluation_goes_on() -> None:
    e = engine("""
rules:
  - {name: trial-block, when: {verdict: [extraction]}, action: block, shadow: true}
  - {name: live, when: {verdict: [extraction]}, action: throttle, params: {factor: 0.5}}
""")
    d = e.decide(ctx(), risk())
    assert d.action == "throttle" and not d.shadow and d.shadowed == (("trial-block", "block"),)
    assert not e.blocks.count  # a shadow block does not stand
    only_shadow = e.decide(ctx(), risk(verdict="suspicious"))
    assert only_shadow is ALLOW


def test_allowlists_win_over_every_rule() -> None:
    e = engine("allowlist: {orgs: [trusted], accounts: [vip]}\n" + ORDERED)
    assert e.decide(ctx(org="trusted"), risk()).rule == "allowlist"
    assert e.decide(ctx(account="vip"), risk("vip")).action == "allow"
    e.book.allow_org("o2")
    assert e.decide(ctx(org="o2"), risk()).rule == "review:allowlisted"


def test_a_clear_holds_until_detection_reports_worse() -> None:
    e = engine(ORDERED + "  - {name: watch, when: {verdict: [suspicious]}, action: monitor}\n")
    e.book.set("a1", Mark("cleared", rank=1))
    assert e.decide(ctx(), risk(verdict="suspicious")).rule == "review:cleared"
    assert e.decide(ctx(), risk(verdict="extraction")).rule == "first"  # worse than what was cleared


def test_review_state_conditions() -> None:
    e = engine("rules:\n  - {name: confirmed, when: {review: [confirmed]}, action: block}\n")
    assert e.decide(ctx(), risk()) is ALLOW
    e.book.set("a1", Mark("confirmed", rank=2))
    assert e.decide(ctx(), risk()).rule == "confirmed"


def test_an_escalated_item_is_open_to_the_rules() -> None:
    e = engine(
        "rules:\n  - {name: confirmed, when: {review: [confirmed]}, action: block}\n"
        "  - {name: under-review, when: {review: [open]}, action: monitor}\n"
    )
    e.book.set("a1", Mark("escalated", rank=2))
    assert e.decide(ctx(), risk()).rule == "under-review"


def test_cluster_block_stands_for_every_flagged_member() -> None:
    e = engine(
        "rules:\n  - {name: hydra, when: {verdict: [extraction], in_cluster: true}, action: block,"
        " params: {scope: cluster}}\n"
    )
    assert e.decide(ctx("m2"), risk("m2", "suspicious", 0.5, "c1")) is ALLOW  # before the block
    assert e.decide(ctx("m1"), risk("m1", cluster="c1")).action == "block"
    d = e.decide(ctx("m2"), risk("m2", "suspicious", 0.5, "c1"))  # mild verdict, no rule of its own
    assert d.action == "block" and d.rule == "hydra" and d.effects.block.scope == "cluster"
    assert e.decide(ctx("m3"), risk("m3", "benign", 0.1, "c1")) is ALLOW  # scored benign: left to review
    assert e.decide(ctx("x"), risk("x", "suspicious", 0.5, "c2")) is ALLOW
    e.blocks.lift("cluster", "c1")
    assert e.decide(ctx("m2"), risk("m2", "suspicious", 0.5, "c1")) is ALLOW


def test_cluster_block_with_members_all_stops_benign_members_too() -> None:
    e = engine(
        "rules:\n  - {name: hydra, when: {verdict: [extraction], in_cluster: true}, action: block,"
        " params: {scope: cluster, members: all}}\n"
    )
    e.decide(ctx("m1"), risk("m1", cluster="c1"))
    assert e.decide(ctx("m3"), risk("m3", "benign", 0.1, "c1")).action == "block"


def test_challenge_passes_accounts_verified_at_the_level_it_asks() -> None:
    e = engine("""
rules:
  - {name: verify, when: {verdict: [extraction]}, action: challenge, params: {level: phone}}
  - {name: then-degrade, when: {verdict: [extraction]}, action: degrade}
""")
    assert e.decide(ctx(verification="email"), risk()).action == "challenge"
    assert e.decide(ctx(verification="phone"), risk()).action == "degrade"
    assert e.decide(ctx(verification="business"), risk()).action == "degrade"


def test_cluster_size_condition_reads_the_board() -> None:
    sizes = {"big": 5, "small": 2}
    e = engine(
        "rules:\n  - {name: big, when: {cluster_size: {gte: 3}}, action: monitor}\n", cluster_size=sizes.__getitem__
    )
    assert e.decide(ctx(), risk(cluster="big")).rule == "big"
    assert e.decide(ctx(), risk(cluster="small")) is ALLOW


@pytest.mark.parametrize(
    ("yaml_text", "needles"),
    [
        ("rules:\n  - {name: r1, action: explode}\n", ["rule 0 ('r1')", "action", "explode"]),
        (
            "rules:\n  - {name: ok, action: allow, when: {tier: [pro]}}\n"
            "  - {name: t, action: throttle, params: {factor: 2}}\n",
            ["rule 1 ('t')", "params.factor", "less than or equal to 1"],
        ),
        (
            "rules:\n  - {name: w, action: monitor, when: {verdit: [extraction]}}\n",
            ["rule 0 ('w')", "when.verdit", "unknown key"],
        ),
        (
            "rules:\n  - {name: v, action: monitor, when: {verdict: [evil]}}\n",
            ["rule 0 ('v')", "when.verdict", "'evil'"],
        ),
        (
            "rules:\n  - {name: r, action: monitor, when: {risk: {}}}\n",
            ["rule 0 ('r')", "when.risk", "at least one bound"],
        ),
        ("rules:\n  - {name: d, action: block}\n  - {name: d, action: monitor}\n", ["rule 1 ('d')", "already used"]),
        (
            "rules:\n  - {name: all, action: allow}\n  - {name: dead, action: block}\n",
            ["rule 1 ('dead') can never match"],
        ),
        ("rules:\n  - {name: c, action: block, continue: true}\n", ["rule 0 ('c')", "continue"]),
        ("rules:\n  - {name: b, action: block, params: {scope: galaxy}}\n", ["rule 0 ('b')", "params.scope", "galaxy"]),
        ("rules: [unclosed\n", ["not valid YAML", "line"]),
        ("- a list\n", ["must be a mapping"]),
        ("rules:\n  - {action: block}\n", ["rule 0", "name", "required"]),
    ],
)
def test_invalid_policies_name_the_rule_and_the_field(yaml_text: str, needles: list[str]) -> None:
    with pytest.raises(PolicyError) as exc:
        parse_policy(yaml_text, "bad.yaml")
    msg = str(exc.value)
    assert "bad.yaml" in msg
    for needle in needles:
        assert needle in msg, msg


def test_the_shipped_default_policy_is_valid_and_graduated() -> None:
    e = PolicyEngine(compile_policy(load_policy(DEFAULT_POLICY), "default"))
    assert e.decide(ctx(verification="none"), risk()).action == "challenge"
    verified = e.decide(ctx(verification="business"), risk())
    assert verified.action == "degrade" and verified.effects.throttle is not None and verified.effects.watermark
    suspicious = e.decide(ctx(), risk(verdict="suspicious", r=0.6, cot=0.9, cluster="c"))
    assert suspicious.action == "watermark" and suspicious.effects.degrade is None  # nothing visible
    assert suspicious.effects.throttle is None and suspicious.effects.watermark.key == "cluster"
    sizes = {"h": 10}
    hydra = PolicyEngine(e.policy, cluster_size=sizes.__getitem__).decide(ctx(), risk(r=0.95, cluster="h"))
    assert hydra.action == "block" and hydra.rule == "hydra-cluster-block"


def test_a_challenge_stands_until_the_account_verifies() -> None:
    e = engine(ORDERED)
    assert e.decide(ctx(), risk()).action == "challenge"
    calm = e.decide(ctx(), risk(verdict="benign", r=0.1))  # the score dipped: the challenge still stands
    assert calm.action == "challenge" and calm.rule == "first"
    assert e.decide(ctx(verification="phone"), risk(verdict="benign", r=0.1)) is ALLOW  # verified: passed
    assert not e.blocks.by_scope["challenge"]


def test_clearing_an_account_lifts_its_standing_challenge_and_blocks() -> None:
    e = engine(ORDERED)
    e.decide(ctx(), risk())
    assert e.blocks.lift_account("a1") == 1
    assert e.decide(ctx(), risk(verdict="benign", r=0.1)) is ALLOW


def test_repeat_decisions_are_memoised_but_follow_every_change() -> None:
    e = engine("rules:\n  - {name: watch, when: {verdict: [suspicious]}, action: monitor}\n")
    c, r = ctx(), risk(verdict="suspicious", r=0.6)
    first = e.decide(c, r)
    assert e.decide(c, r) is first  # same inputs, same decision object (its audit JSON computed once)
    assert first.audit() is first.audit()
    e.book.set("a1", Mark("cleared", rank=1))
    assert e.decide(c, r).rule == "review:cleared"  # a review mark is an input
    e.book.set("a1", None)
    e.policy = compile_policy(parse_policy("rules:\n  - {name: other, action: monitor}\n"), "reloaded")
    assert e.decide(c, r).rule == "other"  # a reload is an input
    e.set_mode("shadow")
    assert e.decide(c, r).shadow  # so is the mode


def test_a_cluster_block_on_an_account_outside_any_cluster_blocks_the_account() -> None:
    e = engine("rules:\n  - {name: b, when: {verdict: [extraction]}, action: block, params: {scope: cluster}}\n")
    d = e.decide(ctx(), risk())
    assert d.action == "block" and e.blocks.by_scope["account"]["a1"].decision.effects.block.scope == "account"


def test_a_logged_decision_reads_back_what_the_audit_column_recorded() -> None:
    d = Decision("degrade", "strip", {"cot": 0.97}, verdict="extraction", risk=0.93123, rules=("mark", "strip"))
    back = LoggedDecision.parse(d.audit())
    assert back == LoggedDecision("degrade", "strip", ("mark", "strip"), "extraction", 0.9312, {"cot": 0.97}, None)
    one = LoggedDecision.parse(Decision("block", "verify", verdict="suspicious", risk=0.5).audit("cluster_blocked"))
    assert one is not None and one.rules == ("verify",) and one.refused == "cluster_blocked" and one.risk == 0.5
    unscored = LoggedDecision.parse(Decision("throttle", "pin:3", rules=("pin:3",)).audit())
    assert unscored is not None and unscored.verdict is None and unscored.risk is None and unscored.rules == ("pin:3",)
    for text in (None, "", "allow", "refuse:rate_limit_requests", "{not json", "[1, 2]"):
        assert LoggedDecision.parse(text) is None, text
    odd = LoggedDecision.parse('{"verdict": "benign", "risk": true, "signals": {"a": "x", "b": 1}, "rules": 5}')
    assert odd is not None and odd.risk is None and odd.signals == {"b": 1.0} and odd.rules == ()
