"""Agent loop: developers driving a terminal coding agent whose tool loops fire steps a second or two apart.

Imitates a coding CLI (the `Quill` tool: `fresh4_text.LOOP_SYSTEM` and `LOOP_TOOLS`) used by one
developer per account: a session starts with the developer's task in their own words
(`fresh4_text.loop_task`), then the agent loops: every step re-sends the whole transcript, grown by its
last tool call and the tool's output (directory listings, source files, grep hits, test runs:
`fresh4_text.loop_tool_result`), so contexts get long; tools run locally in well under a second and the
model answers in a second or two, so steps follow each other closely. When the loop ends the developer
reads the result and often sends a follow-up (`fresh4_text.LOOP_FOLLOW_UPS`) after a human pause, which
starts another loop. Sessions fall in the developer's working day; streamed; one home or office
address, the tool's user agent.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson
from pydantic import Field

from distillshield.simulate import bodies, fresh4_text, timing
from distillshield.simulate.personas.base import Account, Knobs, Persona, Req, pick

DONE = (
    "Done. The change is in place and the tests pass.",
    "Fixed: the function now handles that case. All tests pass.",
    "I made the edit and ran the suite; one unrelated test was already failing before my change.",
)
TOOL_ORDER = ("list_dir", "grep", "read_file", "read_file", "apply_patch", "run")


class AgentLoopKnobs(Knobs):
    requests_per_day: float = Field(150.0, gt=0, description="mean requests (loop steps) per account per day")
    steps_mean: float = Field(8.0, ge=2, le=40, description="mean tool steps per loop (geometric, capped at 40)")
    follow_up_share: float = Field(0.6, ge=0, le=0.95, description="chance the developer follows up after a loop")
    step_s: float = Field(1.6, gt=0, description="median seconds between two steps (model plus local tool)")


class AgentLoop(Persona):
    name = "agent_loop"
    kind = "benign"
    split = "fresh4"
    Knobs = AgentLoopKnobs
    signature = "a coding CLI's tool loops a second or two apart on growing transcripts, human follow-ups between"
    tiers = (("standard", 0.5), ("pro", 0.5))
    verifications = (("email", 0.7), ("phone", 0.3))
    apis = (("openai", 1.0),)
    activity_sigma = 0.5

    def _k(self) -> AgentLoopKnobs:
        k = self.k
        assert isinstance(k, AgentLoopKnobs)
        return k

    def account_user_agent(self, rng: np.random.Generator, api: str) -> str:
        return fresh4_text.LOOP_UA[int(rng.integers(len(fresh4_text.LOOP_UA)))]

    def requests(self, account: Account) -> Iterator[Req]:
        k = self._k()
        ctx = self.ctx
        per_session = (k.steps_mean + 1) / (1 - k.follow_up_share)  # loops per session are geometric
        starts = timing.diurnal_times(
            account.np, ctx.start, ctx.end, self.expected_total(account) / per_session, account.tz, "work"
        ).tolist()
        t_free = -math.inf
        for s, t0 in enumerate(starts):
            t = max(t0, t_free)  # one developer: a session starts after the last one ended
            for req in self._session(account, s, t):
                t_free = req[0] + 30.0
                yield req

    def _session(self, account: Account, s: int, t: float) -> Iterator[Req]:
        k = self._k()
        r = account.r
        ctx = self.ctx
        model = self.model_for(account, t)
        mod = pick(r, fresh4_text.LOOP_MODULES)
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": fresh4_text.LOOP_SYSTEM},
            {"role": "user", "content": fresh4_text.loop_task(r)},
        ]
        turn = 0
        while True:
            steps = min(40, 1 + int(math.log(1 - r.random()) / math.log(1 - 1 / k.steps_mean)))
            for step in range(steps + 1):
                if t >= ctx.end:
                    return
                turn += 1
                endpoint, body = bodies.openai_chat(
                    model,
                    list(messages),
                    max_tokens=4096,
                    stream=True,
                    extra={"tools": fresh4_text.LOOP_TOOLS, "parallel_tool_calls": False},
                )
                sim = {
                    "end_user": None,
                    "harvest": False,
                    "conversation_id": f"{account.id}:s{s}",
                    "turn": turn,
                    "source": "loop-tasks",
                }
                yield (t, endpoint, body, self.ip(account), account.user_agent, sim)
                if step == steps:
                    messages.append({"role": "assistant", "content": pick(r, DONE)})
                    break
                tool = TOOL_ORDER[step] if step < len(TOOL_ORDER) else pick(r, TOOL_ORDER[1:])
                args, out = fresh4_text.loop_tool_result(r, tool, mod)
                call_id = f"call_{account.seed % 10**6}_{s}_{turn}"
                messages.append(
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": call_id,
                                "type": "function",
                                "function": {"name": tool, "arguments": orjson.dumps(args).decode()},
                            }
                        ],
                    }
                )
                messages.append({"role": "tool", "tool_call_id": call_id, "content": out})
                t += max(0.25, r.lognormvariate(math.log(k.step_s), 0.5))
            if r.random() >= k.follow_up_share:
                return
            messages.append({"role": "user", "content": pick(r, fresh4_text.LOOP_FOLLOW_UPS)})
            t += 8.0 + r.lognormvariate(math.log(45.0), 0.8)  # the developer reads, thinks, types
