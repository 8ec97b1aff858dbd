"""Evasive variants of attack traffic, for adversarial training rounds (`distillshield train --rounds`).

Each transform takes labelled traffic records (dicts in the public format) and rewrites the attack
accounts only, the way an adaptive attacker would after being caught: paraphrase the prompts, jitter
and stretch the timing to look human (or drop pacing altogether and send as fast as a client or a batch
job can), mix in benign cover traffic, and spread the campaign over more accounts. Benign records pass
through untouched. Strength grows with the round number.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

OPENERS = (
    "",
    "hey, ",
    "Quick question: ",
    "So I was wondering, ",
    "For a class I'm taking: ",
    "Hmm. ",
    "Could you help with this? ",
    "ok so ",
    "I'm revising for an exam. ",
    "My colleague asked me this: ",
)
CLOSERS = ("", " thanks!", " Thanks in advance.", " (no rush)", " cheers", " ty", " Appreciate it.")
SWAPS = (
    ("step by step", "one step at a time"),
    ("Explain", "Walk me through"),
    ("reasoning", "thinking"),
    ("Solve", "Work out"),
    ("following", "next"),
    ("answer", "result"),
    ("detailed", "careful"),
    ("complete", "whole"),
    ("Show", "Lay out"),
    ("problem", "question"),
)


def is_attack(rec: dict[str, Any]) -> bool:
    return str(rec.get("label", "")).startswith("attack:")


def split_attack_accounts(
    records: Iterable[dict[str, Any]],
) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    """(attack records per account, each account's in time order; every other record, as read)."""
    by_acct: dict[str, list[dict[str, Any]]] = defaultdict(list)
    rest: list[dict[str, Any]] = []
    for rec in records:
        (by_acct[rec["account_id"]] if is_attack(rec) else rest).append(rec)
    for recs in by_acct.values():
        recs.sort(key=lambda x: x["ts"])
    return by_acct, rest


def _rewrite(r: random.Random, text: str, strength: float) -> str:
    for a, b in SWAPS:
        if a in text and r.random() < strength:
            text = text.replace(a, b)
    if r.random() < strength:
        parts = text.split("\n\n")
        if len(parts) > 1 and r.random() < 0.5:
            parts = parts[1:] + parts[:1]  # move the instruction to the other end
        text = "\n\n".join(parts)
    return (OPENERS[r.randrange(len(OPENERS))] + text + CLOSERS[r.randrange(len(CLOSERS))]).strip()


def _last_user_text(items: list[Any]) -> tuple[dict[str, Any], str] | None:
    """(the dict that holds the last user turn's text under "text" or "content", that key) in a list of chat
    messages or Responses input items (copied in place, so the caller's records stay as they were); None
    when the last user turn has no plain text."""
    for i in range(len(items) - 1, -1, -1):
        m = items[i]
        if not isinstance(m, dict) or m.get("role") != "user" or m.get("type", "message") != "message":
            continue
        m = items[i] = dict(m)
        if isinstance(m.get("content"), str):
            return m, "content"
        if isinstance(m.get("content"), list):  # Responses content parts: the last input_text part
            parts = m["content"] = list(m["content"])
            for j in range(len(parts) - 1, -1, -1):
                if (
                    isinstance(parts[j], dict)
                    and parts[j].get("type") == "input_text"
                    and isinstance(parts[j].get("text"), str)
                ):
                    parts[j] = dict(parts[j])
                    return parts[j], "text"
        return None
    return None


def paraphrase(records: Iterable[dict[str, Any]], seed: int, strength: float = 0.5) -> list[dict[str, Any]]:
    """Reword each attack prompt's last user turn (openers, closers, synonym swaps, instruction moved)."""
    r = random.Random(seed)
    out = []
    for rec in records:
        if is_attack(rec):
            rec = {**rec, "request": dict(rec["request"])}
            req = rec["request"]
            if rec.get("endpoint") == "/v1/responses":  # OpenAI Responses: the prompt is in `input`
                if isinstance(req.get("input"), str):
                    req["input"] = _rewrite(r, req["input"], strength)
                elif isinstance(req.get("input"), list):
                    req["input"] = list(req["input"])
                    found = _last_user_text(req["input"])
                    if found is not None:
                        holder, key = found
                        holder[key] = _rewrite(r, holder[key], strength)
            elif isinstance(req.get("messages"), list) and req["messages"]:
                msgs = [dict(m) if isinstance(m, dict) else m for m in req["messages"]]
                for m in reversed(msgs):
                    if isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str):
                        m["content"] = _rewrite(r, m["content"], strength)
                        break
                req["messages"] = msgs
            elif isinstance(req.get("prompt"), str):
                req["prompt"] = _rewrite(r, req["prompt"], strength)
        out.append(rec)
    return out


def jitter(records: Iterable[dict[str, Any]], seed: int, stretch: float = 2.0) -> list[dict[str, Any]]:
    """Human-looking timing: each attack account's requests are spread `stretch` times wider from its first
    request, with log-normal gaps instead of a regular beat (order within the account is kept)."""
    r = random.Random(seed)
    by_acct, out = split_attack_accounts(records)
    for recs in by_acct.values():
        t = recs[0]["ts"]
        mean_gap = (recs[-1]["ts"] - t) / max(len(recs) - 1, 1) * stretch
        for rec in recs:
            out.append({**rec, "ts": t})
            t += mean_gap * r.lognormvariate(-0.5, 1.0)
    return out


def machine_pace(records: Iterable[dict[str, Any]], seed: int, share: float = 0.5) -> list[dict[str, Any]]:
    """A fast client or a batch job: `share` of the attack accounts drop human pacing and send their requests
    in dense bursts (20-500 requests a burst, 0.1-5 s apart) separated by pauses of a minute to a day, at
    any hour. Order within an account is kept; the other attack accounts keep their timing.

    Why: the simulator's attackers pace themselves under the rate limits while its honest pipelines and
    coding assistants burst, so a model trained on them alone learns that speed is honest (docs/detection.md,
    "machine-paced bursts"); an attacker who sends fast, or through the Batch API, must be in the data."""
    r = random.Random(seed)
    by_acct, out = split_attack_accounts(records)
    for recs in by_acct.values():
        if r.random() >= share:
            out.extend(recs)
            continue
        t = recs[0]["ts"]
        left = 0
        for i, rec in enumerate(recs):
            if left == 0:
                left = round(math.exp(r.uniform(math.log(20), math.log(500))))
                if i:
                    t += math.exp(r.uniform(math.log(60), math.log(86400)))
            elif i:
                t += math.exp(r.uniform(math.log(0.1), math.log(5.0)))
            out.append({**rec, "ts": t})
            left -= 1
    return out


def cover(records: list[dict[str, Any]], seed: int, share: float = 0.3) -> list[dict[str, Any]]:
    """Benign cover traffic: each attack account also replays benign prompts (taken from benign accounts)
    so that `share` of its requests look honest."""
    r = random.Random(seed)
    benign = [x for x in records if not is_attack(x)]
    if not benign:
        return list(records)
    extra = []
    for rec in records:
        if is_attack(rec) and r.random() < share / (1 - share):
            donor = benign[r.randrange(len(benign))]
            extra.append(
                {
                    **donor,
                    "account_id": rec["account_id"],
                    "ts": rec["ts"] + r.uniform(1, 120),
                    "label": rec["label"],
                    "label_meta": rec.get("label_meta"),
                    "ip": rec.get("ip"),
                    "user_agent": rec.get("user_agent"),
                    "org_id": rec.get("org_id"),
                }
            )
    return list(records) + extra


def spread(records: Iterable[dict[str, Any]], seed: int, factor: int = 3) -> list[dict[str, Any]]:
    """Spread each attack account over `factor` accounts (round-robin), as a hydra adds members to stay
    under per-account volume thresholds."""
    r = random.Random(seed)
    counters: dict[str, int] = defaultdict(int)
    suffix: dict[str, list[str]] = {}
    out = []
    for rec in records:
        if is_attack(rec):
            aid = rec["account_id"]
            names = suffix.setdefault(aid, [f"{aid}-s{r.randrange(16**6):06x}" for _ in range(factor)])
            i = counters[aid]
            counters[aid] += 1
            rec = {**rec, "account_id": names[i % factor]}
        out.append(rec)
    return out


ASKS = (
    "Can you explain how you got there?",
    "Walk me through it.",
    "I'd like to see the reasoning, not just the answer.",
    "How would you think about this?",
    "Go through it slowly please.",
    "What's the logic behind it?",
    "Show me how you'd work it out.",
    "Break it down for me.",
    "",
)
CHATTER = ("hi there!", "hey, how's it going?", "good evening", "hello, I have a question", "quick one for you",
           "hope you're well :)", "ok so I'm studying", "hiya")  # fmt: skip
REPLIES = ("Hi! How can I help?", "Sure, go ahead.", "Hello! What's your question?", "Happy to help.")


INSTRUCTION_WORDS = ("step by step", "step-by-step", "reasoning", "final answer", "explain", "solution", "think")


def _strip_frame(text: str) -> str:
    """Drop the instruction paragraphs of a templated prompt and keep the question: the longest paragraph
    without instruction words (else the longest)."""
    parts = [p for p in text.split("\n\n") if p.strip()]
    if not parts:
        return text
    plain = [p for p in parts if not any(w in p.lower() for w in INSTRUCTION_WORDS)]
    return max(plain or parts, key=len)


def _responses_question(req: dict[str, Any]) -> str | None:
    """The last input turn's text of a Responses body when that turn is the user's (as humanize reads the
    last chat message), else None."""
    given = req.get("input")
    if isinstance(given, str):
        return given
    if isinstance(given, list) and given:
        last = given[-1]
        if isinstance(last, dict) and last.get("role") == "user" and last.get("type", "message") == "message":
            found = _last_user_text([last])
            return found[0][found[1]] if found is not None else None
    return None


def humanize(
    records: Iterable[dict[str, Any]], seed: int, converse_share: float = 0.5, ask_share: float = 1.0
) -> list[dict[str, Any]]:
    """The adaptive attacker: every prompt reworded afresh around its question (no shared frame survives),
    small talk opening half the conversations, a human day with think times, and home IP addresses."""
    r = random.Random(seed)
    by_acct, out = split_attack_accounts(records)
    for recs in by_acct.values():
        tz = r.uniform(-8, 9)
        ips = [f"{r.choice((24, 73, 86, 98, 174))}.{r.randrange(256)}.{r.randrange(256)}.{r.randrange(1, 255)}"
               for _ in range(1 + r.randrange(2))]  # fmt: skip
        day0 = recs[0]["ts"] // 86400 * 86400
        t = day0 + (9 - tz) % 24 * 3600 + r.uniform(0, 3600)
        for rec in recs:
            t += r.lognormvariate(4.0, 1.2)  # think time: a minute or two, sometimes much longer
            local_hour = (t / 3600 + tz) % 24
            if local_hour < 8 or local_hour > 23:
                t += (32 - local_hour) % 24 * 3600  # asleep: resume next morning
            rec = {**rec, "ts": t, "ip": r.choice(ips), "user_agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64)",
                   "request": dict(rec["request"])}  # fmt: skip
            req = rec["request"]
            responses = rec.get("endpoint") == "/v1/responses"
            last = _responses_question(req) if responses else None
            msgs = req.get("messages")
            if not responses and (
                isinstance(msgs, list)
                and msgs
                and isinstance(msgs[-1], dict)
                and isinstance(msgs[-1].get("content"), str)
            ):
                last = msgs[-1]["content"]
            if last is not None:
                q = _strip_frame(last)
                ask = ASKS[r.randrange(len(ASKS))] if r.random() < ask_share else ""
                body = f"{OPENERS[r.randrange(len(OPENERS))]}{q} {ask}{CLOSERS[r.randrange(len(CLOSERS))]}".strip()
                new = [{"role": "user", "content": body}]
                if r.random() < converse_share:
                    new = [{"role": "user", "content": r.choice(CHATTER)},
                           {"role": "assistant", "content": r.choice(REPLIES)}] + new  # fmt: skip
                if responses:
                    req["input"] = new
                    req.pop("instructions", None)
                    req.pop("max_output_tokens", None)
                else:
                    req["messages"] = new
                    req.pop("system", None)
                    req.pop("max_tokens", None)
            out.append(rec)
    return out


def evasive(records: list[dict[str, Any]], round_no: int, seed: int, pace: bool = True) -> list[dict[str, Any]]:
    """Evasions at the strength of `round_no`, sorted by time.

    Round 1: paraphrase, timing jitter, 15% cover traffic, each account spread over two; half of the
    accounts then send at machine pace (bursts, no human day) instead, unless `pace` is off (the recipe
    of a combiner meant for human-paced attackers: the shipped ensemble's primary).
    Round 2: the adaptive attacker (humanize: fresh rewording around the bare question with a reasoning
    ask, small talk, a human day, home IPs) with 30% cover traffic, spread over three accounts.
    Round 3 and later: the same with a reasoning ask on only 60% of the prompts, 50% cover traffic,
    spread over four accounts.

    Machine pace only in round 1: with half of round 3's accounts bursting too, the human-paced adaptive
    attacker was under-represented and the model lost half of it (docs/detection.md, round 6).
    """
    if round_no <= 1:
        out = paraphrase(records, seed, strength=0.3)
        out = jitter(out, seed + 1, stretch=2.0)
        if pace:
            out = machine_pace(out, seed + 4, share=0.5)
        out = cover(out, seed + 2, share=0.15)
        out = spread(out, seed + 3, factor=2)
    elif round_no == 2:
        out = humanize(records, seed, ask_share=1.0)
        out = cover(out, seed + 2, share=0.3)
        out = spread(out, seed + 3, factor=3)
    else:
        out = humanize(records, seed, ask_share=0.6)
        out = cover(out, seed + 2, share=0.5)
        out = spread(out, seed + 3, factor=4)
    out.sort(key=lambda x: x["ts"])
    return out
