"""The policy stage: declarative rules turn detection verdicts into graduated countermeasures.

rules.py (the YAML schema, validated) -> engine.py (compiled rules, `decide`) -> actions.py (what
throttle, block and challenge do) -> stage.py (the request-path stage and its upkeep); shared.py shares
the standing blocks with the other replicas of a fleet. The shipped
default policy is default.yaml, documented line by line in docs/policy.md.
"""

from distillshield.gateway.policy.actions import PolicyRefusal
from distillshield.gateway.policy.engine import ALLOW, Decision, PolicyEngine, compile_policy
from distillshield.gateway.policy.rules import DEFAULT_POLICY, PolicyError, load_policy, parse_policy
from distillshield.gateway.policy.stage import PolicyStage

__all__ = [
    "ALLOW",
    "DEFAULT_POLICY",
    "Decision",
    "PolicyEngine",
    "PolicyError",
    "PolicyRefusal",
    "PolicyStage",
    "compile_policy",
    "load_policy",
    "parse_policy",
]
