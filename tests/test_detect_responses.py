"""Detection on OpenAI Responses traffic (`/v1/responses`): the analyser reads `instructions` + `input` as it
reads a chat request's messages, so one request sent either way gives the same prompt texts, the same
observation and, for a whole campaign, the same verdicts. Also the adversarial rewrites of such bodies."""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from distillshield.detect import adversary
from distillshield.detect import text as T
from distillshield.detect.analyze import analyze_file, extract
from distillshield.detect.corpus import ENDPOINT_CODES, Extractor, Obs
from distillshield.detect.scoring import DetectionModel
from distillshield.traffic import TrafficRecord

CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
LOGPROBS_INCLUDE = "message.output_text.logprobs"
T0 = 1_772_409_600.0


# --- chat -> Responses conversion (the same request, as a Responses client would send it) ---------------


def _part(role: str, text: str) -> dict[str, str]:
    return {"type": "output_text" if role == "assistant" else "input_text", "text": text}


def to_responses(body: dict[str, Any], string_input: bool = True) -> dict[str, Any]:
    """A chat completions body as the equivalent Responses body: leading system messages become
    `instructions`, the rest `input` (a string when it is one user turn and `string_input`, else message
    items with `input_text`/`output_text` parts), `max_tokens` becomes `max_output_tokens`, `logprobs`
    becomes `include: ["message.output_text.logprobs"]`, function tools take the flat Responses shape."""
    msgs = list(body["messages"])
    system: list[str] = []
    while msgs and msgs[0]["role"] in ("system", "developer"):
        system.append(msgs.pop(0)["content"])
    out: dict[str, Any] = {}
    for k, v in body.items():
        if k in ("messages", "stream_options", "n", "logit_bias"):
            continue
        if k in ("max_tokens", "max_completion_tokens"):
            out["max_output_tokens"] = v
        elif k == "logprobs":
            if v:
                out["include"] = [LOGPROBS_INCLUDE]
        elif k == "tools":
            out["tools"] = [
                {"type": "function", **t["function"]} if isinstance(t, dict) and "function" in t else t for t in v
            ]
        else:
            out[k] = v
    if system:
        out["instructions"] = "\n".join(system)
    if string_input and len(msgs) == 1 and msgs[0]["role"] == "user":
        out["input"] = msgs[0]["content"]
    else:
        out["input"] = [
            {"type": "message", "role": m["role"], "content": [_part(m["role"], m["content"])]} for m in msgs
        ]
    return out


def convertible(body: dict[str, Any]) -> bool:
    """Chat bodies with an exact Responses equivalent: text turns only, no `n` and no `logit_bias`."""
    return (
        "n" not in body
        and "logit_bias" not in body
        and all(
            m.get("role") in ("system", "developer", "user", "assistant")
            and isinstance(m.get("content"), str)
            and set(m) <= {"role", "content"}
            for m in body["messages"]
        )
    )


def record(endpoint: str, body: dict[str, Any], account: str = "acct_1", ts: float = T0) -> TrafficRecord:
    return TrafficRecord(ts=ts, account_id=account, endpoint=endpoint, request=body, ip="198.51.100.7",
                         user_agent="OpenAI/Python 1.99", org_id="org-1")  # fmt: skip


SYSTEM = "You are a careful tutor. Answer in English."
QUESTION = "Solve the following problem step by step: what is 17 * 23? Put the final answer last."
CHAT_BODIES: dict[str, dict[str, Any]] = {
    "one turn": {"model": "m1", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 512},
    "system + one turn": {
        "model": "m1",
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
        "max_tokens": 300,
        "temperature": 0.2,
        "logprobs": True,
        "top_logprobs": 5,
        "user": "end-user-9",
    },
    "conversation": {
        "model": "m2",
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": "hi there, I have a maths question"},
            {"role": "assistant", "content": "Sure, go ahead."},
            {"role": "user", "content": QUESTION},
        ],
        "max_tokens": 64,
        "temperature": 0.9,
        "logprobs": True,
        "tools": [{"type": "function", "function": {"name": "calc", "parameters": {"type": "object"}}}],
    },
}


# --- prompt texts ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("string_input", [True, False], ids=["string input", "input items"])
@pytest.mark.parametrize("name", list(CHAT_BODIES))
def test_responses_body_gives_the_chat_texts(name: str, string_input: bool) -> None:
    chat = CHAT_BODIES[name]
    resp = to_responses(chat, string_input)
    assert "messages" not in resp and "input" in resp
    user, system, users, turns = T.request_texts(RESPONSES, resp)
    assert user == QUESTION  # the last user turn, not the first one nor the empty string
    assert (user, system, users, turns) == T.request_texts(CHAT, chat)


def test_responses_texts_by_hand() -> None:
    """Independent of the converter: instructions are the system text, parts are joined, assistant turns count."""
    body = {
        "instructions": "Grade the answer.",
        "input": [
            {"role": "developer", "content": "Use a 1-10 scale."},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Question: 2+2?"},
                                                            {"type": "input_text", "text": "Answer: 4"}]},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Score?"}]},
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "not a prompt"}]},
            {"type": "function_call_output", "call_id": "c1", "output": "not a prompt either"},
            {"role": "user", "content": "Give the score only."},
        ],
    }  # fmt: skip
    assert T.request_texts(RESPONSES, body) == (
        "Give the score only.", "Grade the answer.\nUse a 1-10 scale.", 2, 3,
    )  # fmt: skip
    assert T.request_texts(RESPONSES, {"input": "just this"}) == ("just this", "", 1, 1)
    assert T.request_texts(RESPONSES, {"instructions": "sys only"}) == ("", "sys only", 0, 0)
    # a chat-shaped body sent to /v1/responses is not read as chat: Responses has no `messages`
    assert T.request_texts(RESPONSES, {"messages": [{"role": "user", "content": "x"}]})[0] == ""


# --- observations ---------------------------------------------------------------------------------------


def _same_obs(a: Obs, b: Obs, skip: tuple[str, ...] = ("endpoint",)) -> list[str]:
    """Names of the fields that differ (numpy arrays compared by value)."""
    diff = []
    for f in dataclasses.fields(Obs):
        if f.name in skip:
            continue
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            same = x is not None and y is not None and np.array_equal(x, y)
        else:
            same = x == y
        if not same:
            diff.append(f.name)
    return diff


@pytest.fixture(scope="module")
def model() -> DetectionModel:
    return DetectionModel.load()


@pytest.mark.parametrize("string_input", [True, False], ids=["string input", "input items"])
def test_responses_record_gives_the_chat_observation(model: DetectionModel, string_input: bool) -> None:
    """Every field of the observation (classifier scores, MinHash and content vector included) but the
    endpoint code is that of the chat record."""
    chats = [record(CHAT, b, ts=T0 + i) for i, b in enumerate(CHAT_BODIES.values())]
    resps = [record(RESPONSES, to_responses(b, string_input), ts=T0 + i) for i, b in enumerate(CHAT_BODIES.values())]
    a, b = extract(chats, model), extract(resps, model)
    assert len(a) == len(b) == len(CHAT_BODIES)
    for x, y in zip(a, b, strict=True):
        assert _same_obs(x, y) == []
        assert x.user_chars == len(QUESTION) and y.minhash is not None and y.cot >= 0
    sys_one, conv = b[1], b[2]
    assert (sys_one.max_tokens, sys_one.temperature, sys_one.logprobs) == (300.0, 0.2, True)
    assert sys_one.system_hash != 0 and sys_one.end_user != 0 and not sys_one.tools
    assert (conv.max_tokens, conv.logprobs, conv.tools, conv.turns, conv.user_turns) == (64.0, True, True, 3, 2)


def test_responses_parameters_by_hand() -> None:
    ex = Extractor(None, None)
    plain = ex._obs(record(RESPONSES, {"model": "m1", "input": "hello there"}))
    assert plain.max_tokens is None and not plain.logprobs and plain.user_chars == len("hello there")
    asked = ex._obs(record(RESPONSES, {"model": "m1", "input": "hi", "max_output_tokens": 77,
                                       "include": ["reasoning.encrypted_content", LOGPROBS_INCLUDE]}))  # fmt: skip
    assert asked.max_tokens == 77.0 and asked.logprobs
    other = ex._obs(record(RESPONSES, {"input": "hi", "include": ["reasoning.encrypted_content"]}))
    assert not other.logprobs
    tops = ex._obs(record(RESPONSES, {"input": "hi", "top_logprobs": 3}))
    assert tops.logprobs
    odd = ex._obs(record(RESPONSES, {"input": "hi", "include": LOGPROBS_INCLUDE, "max_output_tokens": "9"}))
    assert odd.max_tokens is None  # a malformed body is read leniently, never raises


def test_responses_has_its_own_endpoint_code() -> None:
    ex = Extractor(None, None)
    codes = {e: ex._obs(record(e, {"input": "hi", "messages": [], "prompt": "hi"})).endpoint for e in ENDPOINT_CODES}
    assert codes[RESPONSES] == ENDPOINT_CODES[RESPONSES]
    assert len(set(ENDPOINT_CODES.values())) == len(ENDPOINT_CODES) == 5


# --- a campaign, sent as chat and as Responses ------------------------------------------------------------

CAMPAIGN_PERSONAS = ("attack:hydra", "attack:cot_harvester", "attack:rubric_grader")
ACCOUNTS = 30


@pytest.fixture(scope="module")
def campaign_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Counter[str]]:
    """30 accounts of the smoke scenario (seed 1): the hydra campaign, the CoT and rubric harvesters and one
    benign account of each persona in turn; written once as simulated and once with every chat record as
    a Responses record (string `input` for one-turn requests on even seconds, input items otherwise)."""
    from distillshield.simulate import engine, scenario

    d = tmp_path_factory.mktemp("responses")
    sc, seed = scenario.load("smoke", 1)
    engine.write(sc, seed, d / "smoke.jsonl")
    recs = [orjson.loads(line) for line in (d / "smoke.jsonl").read_bytes().splitlines() if line.strip()]
    by_acct: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in recs:
        by_acct[r["account_id"]].append(r)
    ok = {a for a, rs in by_acct.items()
          if all(convertible(r["request"]) for r in rs if r["endpoint"] == CHAT)}  # fmt: skip
    label = {a: rs[0].get("label", "") for a, rs in by_acct.items()}
    chosen = sorted(a for a in ok if label[a] in CAMPAIGN_PERSONAS)
    benign: dict[str, list[str]] = defaultdict(list)
    for a in sorted(ok - set(chosen)):
        if label[a].startswith("benign:"):
            benign[label[a]].append(a)
    while len(chosen) < ACCOUNTS and any(benign.values()):
        for persona in sorted(benign):
            if benign[persona] and len(chosen) < ACCOUNTS:
                chosen.append(benign[persona].pop(0))
    keep = set(chosen)
    chat_lines, resp_lines = [], []
    endpoints: Counter[str] = Counter()
    for r in recs:
        if r["account_id"] not in keep:
            continue
        chat_lines.append(orjson.dumps(r))
        if r["endpoint"] == CHAT:
            r = {**r, "endpoint": RESPONSES, "request": to_responses(r["request"], int(r["ts"]) % 2 == 0)}
        endpoints[r["endpoint"]] += 1
        resp_lines.append(orjson.dumps(r))
    (d / "chat.jsonl").write_bytes(b"\n".join(chat_lines) + b"\n")
    (d / "responses.jsonl").write_bytes(b"\n".join(resp_lines) + b"\n")
    return d / "chat.jsonl", d / "responses.jsonl", endpoints


def test_campaign_as_responses_gets_the_chat_verdicts(campaign_files: tuple[Path, Path, Counter[str]]) -> None:
    chat_path, resp_path, endpoints = campaign_files
    assert endpoints[RESPONSES] > 1000 and endpoints[CHAT] == 0  # the Responses file is mostly Responses
    chat = analyze_file(chat_path).report
    resp = analyze_file(resp_path).report
    assert chat["summary"]["accounts"] == resp["summary"]["accounts"] == ACCOUNTS
    verdicts = {a["account_id"]: a["verdict"] for a in chat["accounts"]}
    assert {a["account_id"]: a["verdict"] for a in resp["accounts"]} == verdicts
    # the comparison has teeth: flagged and benign accounts, risks that differ, prompt signals that fire
    assert "benign" in verdicts.values() and set(verdicts.values()) != {"benign"}
    risks = {a["account_id"]: a["risk"] for a in chat["accounts"]}
    assert len(set(risks.values())) >= 5
    assert {a["account_id"]: a["risk"] for a in resp["accounts"]} == pytest.approx(risks, abs=1e-9)
    reasons = {a["account_id"]: [(r["signal"], r["score"]) for r in a["reasons"]] for a in chat["accounts"]}
    assert {a["account_id"]: [(r["signal"], r["score"]) for r in a["reasons"]] for a in resp["accounts"]} == reasons
    assert any(s in ("cot", "templates") and score > 0 for rs in reasons.values() for s, score in rs)
    assert sorted(sorted(c["accounts"]) for c in resp["clusters"]) == sorted(
        sorted(c["accounts"]) for c in chat["clusters"]
    )


# --- adversarial rewrites ---------------------------------------------------------------------------------


def _attack(body: dict[str, Any], endpoint: str = RESPONSES) -> dict[str, Any]:
    return {"ts": T0, "account_id": "acct_a", "endpoint": endpoint, "request": body, "label": "attack:cot"}


def test_paraphrase_rewrites_the_last_user_turn_of_a_responses_body() -> None:
    long_q = "Explain the following problem step by step.\n\nSolve 12 * 12 and show the reasoning."
    for body in (
        {"instructions": SYSTEM, "input": long_q},
        {
            "input": [
                {"role": "user", "content": "first question"},
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": [{"type": "input_text", "text": long_q}]},
            ]
        },  # fmt: skip
    ):
        out = adversary.paraphrase([_attack(body)], seed=3, strength=1.0)[0]
        user, system, users, turns = T.request_texts(RESPONSES, out["request"])
        before = T.request_texts(RESPONSES, body)
        assert user != long_q and "one step at a time" in user and "Solve" not in user
        assert (system, users, turns) == before[1:]
        assert T.request_texts(RESPONSES, body)[0] == long_q  # the input record is not modified
        if isinstance(body["input"], list):
            assert out["request"]["input"][0]["content"] == "first question"
    benign = {**_attack({"input": long_q}), "label": "benign:chat"}
    assert adversary.paraphrase([benign], seed=3, strength=1.0)[0]["request"]["input"] == long_q


def test_humanize_rewrites_a_responses_body() -> None:
    q = "Think step by step and give the final answer.\n\nHow many primes are below 30?"
    body = {"instructions": "You are a solver.", "input": [{"role": "user", "content": [{"type": "input_text",
            "text": q}]}], "max_output_tokens": 2048}  # fmt: skip
    outs = adversary.humanize([_attack(body)], seed=1, converse_share=1.0)
    req = outs[0]["request"]
    user, system, users, turns = T.request_texts(RESPONSES, req)
    assert "How many primes are below 30?" in user and "step by step" not in user
    assert system == "" and "max_output_tokens" not in req and (users, turns) == (2, 3)
    assert "instructions" in body and body["max_output_tokens"] == 2048  # the input record is not modified
