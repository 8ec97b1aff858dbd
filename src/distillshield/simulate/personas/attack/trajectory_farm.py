"""Trajectory farm: agentic tool-use episodes generated from task templates, with simulated tool results.

Imitates an operator who distils agentic behaviour (tool use, multi-step planning): it runs
episodes in a few tool domains (retail orders, airline reservations, banking, calendar and email:
`fresh3_text.EPISODE_TOOLS`), each from a task template with fresh slot values (names, order ids,
booking codes, amounts), with a system prompt that asks the model to reason before each tool call.
The operator's own simulator plays the tools: every step re-sends the transcript with the model's
last tool call and a made-up tool result, until the task's scripted tool sequence is done and the
model gives its final answer. Parallel workers run episodes around the clock at machine pace under
the account's rpm share; the domains and templates are swept evenly. OpenAI API (tools), one cloud
address and an agent-framework or script user agent per account, one `cluster_id` per entry.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson
from pydantic import Field, field_validator

from distillshield.simulate import bodies, fresh3_text, netid
from distillshield.simulate.personas.base import Account, IdFactory, Knobs, Persona, Req, pick
from distillshield.simulate.personas.common import merge_lanes

DOMAINS = tuple(fresh3_text.EPISODE_TOOLS)
REASONING = (
    "First I need to verify who I am talking to, so I'll look them up.",
    "The policy requires checking the current state before acting. Let me retrieve it.",
    "I have what I need to take the next step. Calling the tool now.",
    "Based on the result, the request is allowed under the policy, so I'll proceed.",
)


class TrajectoryFarmKnobs(Knobs):
    requests_per_day: float = Field(1200.0, gt=0, description="requests (episode steps) per account per day")
    workers: int = Field(6, ge=1, le=64, description="episodes an account runs in parallel")
    domains: list[str] = Field(
        default_factory=lambda: list(DOMAINS), description=f"tool domains swept, from {', '.join(DOMAINS)}"
    )

    @field_validator("domains")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        bad = [d for d in v if d not in DOMAINS]
        if bad or not v:
            raise ValueError(f"unknown domain(s) {bad or '[]'}; choose from {', '.join(DOMAINS)}")
        return v


def episode_messages(
    r: random.Random,
    system: str,
    task: str,
    tools_seq: tuple[str, ...],
    slots: dict[str, Any],
    tag: str,
    reasoning: tuple[str, ...] | None = REASONING,
) -> list[list[dict[str, Any]]]:
    """The transcript each step of an episode sends: system + task, then one tool call and result per step
    (the assistant's tool-call turns carry a line of `reasoning`, or no text when None)."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}, {"role": "user", "content": task}]
    out = [list(messages)]
    for s, tool in enumerate(tools_seq):
        args, result = fresh3_text.tool_result(r, tool, slots)
        call_id = f"call_{tag}_{s}"
        messages.append(
            {
                "role": "assistant",
                "content": pick(r, reasoning) if reasoning else None,
                "tool_calls": [
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": tool, "arguments": orjson.dumps(args).decode()},
                    }
                ],
            }
        )
        messages.append({"role": "tool", "tool_call_id": call_id, "content": result})
        out.append(list(messages))
    return out


class TrajectoryFarm(Persona):
    name = "trajectory_farm"
    kind = "attack"
    split = "fresh3"
    Knobs = TrajectoryFarmKnobs
    signature = "templated tool-use episodes in several domains with made-up tool results, 24/7 in parallel"
    tiers = (("pro", 0.6), ("enterprise", 0.4))
    verifications = (("email", 0.5), ("business", 0.5))
    apis = (("openai", 1.0),)  # tool calls go through the OpenAI shape
    activity_sigma = 0.25
    rpm_fill = 0.8
    account_age_days = (4.0, 45.0)

    def account_ips(self, rng: np.random.Generator) -> list[str]:
        return [netid.cloud_ip(rng)]

    def account_user_agent(self, rng: np.random.Generator, api: str) -> str:
        return netid.user_agent(rng, "agent" if rng.random() < 0.6 else "script")

    def after_accounts(self, accounts: list[Account], rng: np.random.Generator, ids: IdFactory) -> None:
        cluster, campaign = ids.new("clu"), ids.new("camp")
        for a in accounts:
            a.cluster_id, a.campaign_id = cluster, campaign

    def requests(self, account: Account) -> Iterator[Req]:
        k = self.k
        assert isinstance(k, TrajectoryFarmKnobs)
        ctx = self.ctx
        per_worker = self.expected_total(account) / k.workers
        gap = (ctx.end - ctx.start) / max(per_worker, 1e-9)  # mean seconds between one worker's requests
        lanes = [self._worker(account, w, gap) for w in range(k.workers)]
        min_gap = self.min_gap()
        last = -math.inf
        for t, endpoint, body, ip, ua, sim in merge_lanes(lanes):
            t = max(t, last + min_gap)  # the account's requests never exceed its rpm share
            if t >= ctx.end:
                return
            last = t
            yield (t, endpoint, body, ip, ua, sim)

    def _worker(self, account: Account, w: int, gap: float) -> Iterator[Req]:
        k = self.k
        assert isinstance(k, TrajectoryFarmKnobs)
        ctx = self.ctx
        r = random.Random(account.seed * 131 + w)
        model = ctx.models.primary
        t = ctx.start + r.uniform(0, gap)
        episode = 0
        while t < ctx.end:
            domain = k.domains[(w + episode * k.workers) % len(k.domains)]  # even sweep over domains
            tasks = fresh3_text.EPISODE_TASKS[domain]
            t_idx = (episode // len(k.domains)) % len(tasks)
            template, seq = tasks[t_idx]
            slots = fresh3_text.episode_slots(r)
            tag = f"{account.seed % 10**6}_{w}_{episode}"
            steps = episode_messages(r, fresh3_text.EPISODE_SYSTEM[domain], template.format(**slots), seq, slots, tag)
            for s, messages in enumerate(steps):
                if t >= ctx.end:
                    return
                endpoint, body = bodies.openai_chat(
                    model,
                    messages,
                    max_tokens=2048,
                    temperature=0.8,
                    extra={"tools": fresh3_text.EPISODE_TOOLS[domain], "tool_choice": "auto"},
                )
                sim = {
                    "end_user": None,
                    "harvest": True,
                    "conversation_id": f"{account.id}:w{w}:{episode}",
                    "turn": s + 1,
                    "capability": "agentic",
                    "template_id": f"episode/{domain}/{t_idx}",
                    "source": "episode-templates",
                }
                yield (t, endpoint, body, account.ips[0], account.user_agent, sim)
                t += gap * r.lognormvariate(-0.08, 0.4)
            episode += 1
