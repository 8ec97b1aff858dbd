"""The traffic simulator: labelled honest and attack traffic in the public traffic format.

    from distillshield.simulate import load_scenario, write
    scenario, seed = load_scenario("smoke")          # a named scenario or a YAML file
    summary = write(scenario, seed, "traffic.jsonl")  # deterministic per seed, streaming

Scenarios (scenario.py) say which personas (personas/), how many accounts, duration, volume and
mix; the engine (engine.py) merges every account's requests by time; live.py replays them against a
gateway on this machine. docs/simulator.md documents personas, knobs, sources and the dev / held-out
/ fresh / fresh2 / fresh3 / fresh4 splits.
"""

from __future__ import annotations

from distillshield.simulate.engine import Summary, iter_records, write
from distillshield.simulate.scenario import (
    FRESH2_SEED_MIN,
    FRESH_SEED_MIN,
    HELDOUT_SEED_MIN,
    Scenario,
    ScenarioError,
    named_scenarios,
)
from distillshield.simulate.scenario import load as load_scenario

__all__ = [
    "FRESH2_SEED_MIN",
    "FRESH_SEED_MIN",
    "HELDOUT_SEED_MIN",
    "Scenario",
    "ScenarioError",
    "Summary",
    "iter_records",
    "load_scenario",
    "named_scenarios",
    "write",
]
