"""Agents: long tool-use loops (coding, research, data analysis), each step re-sending the transcript.

Signature: loops of many steps (mean ~14) a few seconds apart; every request carries `tools` and a
transcript that grows by an assistant tool call and a tool result per step; the loop ends with a
plain answer. Interactive agents follow office hours; background agents run around the clock.
Tasks: HumanEval functions and real programs to fix (coding), WildChat requests and research topics
(research), analyst questions (data). Tool outputs are synthesised the way tools format them (test
runner output, file contents from real programs, search snippets from a real book).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson
from pydantic import Field

from distillshield.simulate import bodies, corpora, netid, text, timing
from distillshield.simulate.personas.base import Account, Knobs, Persona, Req, pick

AGENT_KINDS = tuple(text.AGENT_TOOLSETS)


class AgentKnobs(Knobs):
    requests_per_day: float = Field(120.0, gt=0, description="mean requests (loop steps) per account per day")
    steps_mean: float = Field(14.0, ge=2, description="mean steps per task (geometric, capped at 60)")
    tool_s: float = Field(3.0, gt=0, description="median seconds a tool takes between steps")
    model_s: float = Field(5.0, gt=0, description="median seconds the model takes per step")
    background_share: float = Field(0.3, ge=0, le=1, description="share of accounts running unattended 24/7")
    max_tool_chars: int = Field(3000, ge=200, description="tool outputs are truncated to this many characters")


def tool_step(account: Account, kind: str, step: int, fn: str) -> tuple[str, dict[str, Any], str]:
    """(tool name, arguments, tool output) for one step of an agent of this kind."""
    r = account.r
    mod = pick(r, text.CODE_MODULES)
    if kind == "coding":
        choice = ("search_code", "read_file", "read_file", "write_file", "run_tests")[
            step % 5 if step < 5 else r.randrange(5)
        ]
        if choice == "search_code":
            return choice, {"pattern": f"def {fn}"}, f"src/{mod}.py:{r.randrange(5, 300)}: def {fn}("
        if choice == "read_file":
            s = pick(r, corpora.code_samples())
            return choice, {"path": f"src/{mod}.py"}, s.code
        if choice == "write_file":
            s = pick(r, corpora.code_samples())
            return choice, {"path": f"src/{mod}.py", "content": s.code[:1500]}, f"wrote {len(s.code[:1500])} bytes"
        n = r.randrange(8, 120)
        out = text.TEST_OUTPUTS[r.randrange(2)].format(
            n=n,
            mod=mod,
            fn=fn,
            dots="." * min(n, 60),
            line=r.randrange(10, 200),
            passed=n - 1,
            secs=f"{r.uniform(0.3, 9):.2f}",
        )
        return choice, {"target": f"tests/test_{mod}.py"}, out
    if kind == "research":
        passages = corpora.book_passages()
        if step % 3 == 0:
            q = pick(r, text.RESEARCH_TOPICS)
            hits = "\n".join(f"{i + 1}. {pick(r, passages)[:220]}..." for i in range(5))
            return "web_search", {"query": q}, hits
        if step % 3 == 1:
            return (
                "fetch_url",
                {"url": f"https://example.org/articles/{r.randrange(10**6)}"},
                pick(r, passages),
            )
        return "save_note", {"text": pick(r, passages)[:300]}, "saved"
    if step % 2 == 0:
        cols = ("week", "category", "orders", "revenue")
        rows = [",".join(cols)] + [
            f"2026-W{w:02d},cat_{r.randrange(12)},{r.randrange(50, 5000)},{r.uniform(1e3, 9e5):.2f}"
            for w in range(1, 2 + r.randrange(20))
        ]
        return (
            "sql_query",
            {
                "sql": "SELECT week, category, count(*) AS orders, sum(total) AS revenue FROM orders "
                f"GROUP BY 1, 2 LIMIT {len(rows) - 1}"
            },
            "\n".join(rows),
        )
    return "plot", {"spec": "line chart of revenue by week"}, f"chart rendered: chart_{r.randrange(1000)}.png"


class Agent(Persona):
    name = "agent"
    kind = "benign"
    split = "dev"
    Knobs = AgentKnobs
    signature = "long tool-use loops: `tools` on every request, transcripts growing by tool call + result per step"
    tiers = (("pro", 0.6), ("enterprise", 0.4))
    verifications = (("business", 0.5), ("email", 0.5))
    apis = (("openai", 1.0),)  # tool calls go through the OpenAI shape (the gateway's Messages API is text-only)

    def account_ips(self, rng: np.random.Generator) -> list[str]:
        return [netid.cloud_ip(rng)] if rng.random() < 0.5 else [netid.residential_ip(rng)]

    def account_user_agent(self, rng: np.random.Generator, api: str) -> str:
        return netid.user_agent(rng, "agent")

    def requests(self, account: Account) -> Iterator[Req]:
        k = self.k
        assert isinstance(k, AgentKnobs)
        r = account.r
        ctx = self.ctx
        kind = pick(r, AGENT_KINDS)
        profile = "flat" if r.random() < k.background_share else "work"
        starts = timing.diurnal_times(
            account.np, ctx.start, ctx.end, self.expected_total(account) / k.steps_mean, account.tz, profile
        ).tolist()
        tools = text.AGENT_TOOLSETS[kind]
        t_free = ctx.start
        for task_no, t0 in enumerate(starts):
            t = max(t0, t_free)
            task, source, fn = self._task(account, kind)
            messages: list[dict[str, Any]] = [
                {"role": "system", "content": text.AGENT_SYSTEM[kind]},
                {"role": "user", "content": task},
            ]
            n = 2 + int(math.log(1 - r.random()) / math.log(1 - 1 / (k.steps_mean - 1)))
            model = self.model_for(account, t, 0.3)
            for step in range(min(n, 60)):
                if t >= ctx.end:
                    return
                endpoint, body = bodies.openai_chat(
                    model,
                    list(messages),
                    max_tokens=2048,
                    temperature=0.0,
                    extra={"tools": tools, "tool_choice": "auto"},
                )
                sim = {
                    "end_user": None,
                    "harvest": False,
                    "conversation_id": f"{account.id}:task{task_no}",
                    "turn": step + 1,
                    "source": source,
                }
                yield (t, endpoint, body, self.ip(account), account.user_agent, sim)
                name, args, output = tool_step(account, kind, step, fn)
                call_id = f"call_{account.seed % 10**6}_{task_no}_{step}"
                messages.append(
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": call_id,
                                "type": "function",
                                "function": {"name": name, "arguments": orjson.dumps(args).decode()},
                            }
                        ],
                    }
                )
                messages.append({"role": "tool", "tool_call_id": call_id, "content": output[: k.max_tool_chars]})
                t += r.lognormvariate(math.log(k.model_s), 0.5) + r.lognormvariate(math.log(k.tool_s), 0.8)
            t_free = t

    @staticmethod
    def _task(account: Account, kind: str) -> tuple[str, str, str]:
        r = account.r
        mod = pick(r, text.CODE_MODULES)
        if kind == "coding":
            task = pick(r, corpora.humaneval())
            tmpl = text.AGENTIC_TASKS[r.randrange(2)]
            return tmpl.format(fn=task.entry_point, mod=mod) + "\n\n" + task.prompt, "humaneval", task.entry_point
        if kind == "research":
            if r.random() < 0.5:
                conv = pick(r, corpora.wildchat_prompts())
                return conv.turns[0], conv.source, "search"
            topic = pick(r, text.RESEARCH_TOPICS)
            return text.AGENTIC_TASKS[2].format(topic=topic), "research-topics", "search"
        return pick(r, text.DATA_QUESTIONS), "analyst-questions", "query"
