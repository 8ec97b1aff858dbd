"""What distillation attackers ask for: question pools by capability, shared by the attack personas.

Attackers do not use people's prompts: they generate question banks for the capabilities they want to
copy (maths, logic, puzzles, code reasoning from reasoning-gym generators; coding tasks from HumanEval
and real program descriptions; agentic tool-use tasks) and add general-knowledge questions from
public benchmarks. Every item carries its answer where one exists (CoT and rubric attacks use it).
"""

from __future__ import annotations

import random
from functools import lru_cache
from typing import Annotated

from pydantic import AfterValidator

from distillshield.simulate import corpora, text
from distillshield.simulate.sampling import pick

# Capabilities an attacker can target, in sweep order.
CAPABILITIES: tuple[str, ...] = ("coding", "math", "logic", "puzzle", "code", "agentic", "general")

Item = tuple[str, str, str]  # (question, answer or "", source)


@lru_cache(maxsize=64)
def items(capability: str, seed: int) -> tuple[Item, ...]:
    """Every item of one capability's pool, in a fixed (sweepable) order."""
    if capability in corpora.BANK_DATASETS:
        return tuple((q.question, q.answer, q.source) for q in corpora.question_bank(capability, seed))
    if capability == "coding":
        out = [(t.prompt, t.solution, "humaneval") for t in corpora.humaneval()]
        out += [
            (f"{s.description}\n\nWrite a Python function `main_solution` that does this.", "", "codeio")
            for s in corpora.code_samples()[:1200]
        ]
        return tuple(out)
    if capability == "agentic":
        out = []
        for i, t in enumerate(corpora.humaneval()):
            mod = text.CODE_MODULES[i % len(text.CODE_MODULES)]
            out.append(
                (text.AGENTIC_TASKS[i % 2].format(fn=t.entry_point, mod=mod) + "\n\n" + t.prompt, "", "humaneval")
            )
            out.append((text.AGENTIC_TASKS[4].format(mod=mod), "", "agentic-tasks"))
        out += [(text.AGENTIC_TASKS[2].format(topic=topic), "", "agentic-tasks") for topic in text.RESEARCH_TOPICS]
        out += [(text.AGENTIC_TASKS[3].format(question=q), "", "agentic-tasks") for q in text.DATA_QUESTIONS]
        return tuple(out)
    if capability == "general":
        out = [
            (c.turns[0], c.references[0] if c.references else "", c.source)
            for c in corpora.mt_bench() + corpora.vicuna()
        ]
        out += [(c.turns[0], "", c.source) for c in corpora.wildchat_prompts()]
        return tuple(out)
    raise ValueError(f"unknown capability '{capability}'; choose from {', '.join(CAPABILITIES)}")


def draw(r: random.Random, capability: str, seed: int) -> Item:
    pool = items(capability, seed)
    return pick(r, pool)


def pick_capability(r: random.Random, capabilities: list[str]) -> str:
    return pick(r, capabilities)


def toolset_for(capability: str, question: str) -> list[dict] | None:
    """The tools an agentic harvesting request attaches (None for other capabilities)."""
    if capability != "agentic":
        return None
    if "warehouse" in question:
        return text.AGENT_TOOLSETS["data"]
    if "search tools" in question:
        return text.AGENT_TOOLSETS["research"]
    return text.AGENT_TOOLSETS["coding"]


def _validate_capabilities(v: list[str]) -> list[str]:
    bad = [c for c in v if c not in CAPABILITIES]
    if bad or not v:
        raise ValueError(f"unknown capability(ies) {bad or '[]'}; choose from {', '.join(CAPABILITIES)}")
    return v


# A knob type: a non-empty list of known capabilities (the error names the bad ones).
Capabilities = Annotated[list[str], AfterValidator(_validate_capabilities)]
