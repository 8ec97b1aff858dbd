"""The logit stage (gateway/logits.py) against a model small enough to steal in a test.

`RankModel` is a toy language model whose logits are W·h(prompt) with a hidden size of 4 over a
64-token vocabulary, answering top_logprobs *after* logit_bias as OpenAI's API did. Through the gateway,
with the combination allowed, the published attack (bias a block of tokens and a reference token into the
returned top-k, read their logit differences, stack prompts, count singular values) recovers the hidden
size exactly; with the default settings the gateway refuses the combination, and keyed noise on the
logprobs hides the rank while repeating a query does not average the noise away. Honest top-5 logprob
users get the upstream's exact answer."""

from __future__ import annotations

import time
import zlib
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import openai
import pytest

from distillshield.gateway.upstream.base import GenRequest
from tests.fakes import FakeUpstream
from tests.test_policy import audit_rows

HIDDEN, VOCAB, MODEL = 4, 64, "rank-model"


class RankModel(FakeUpstream):
    """Logits W·h(prompt): rank HIDDEN. Chat only; one token per answer; keeps the bodies it was sent."""

    def __init__(self) -> None:
        super().__init__(model=MODEL)
        rng = np.random.default_rng(7)
        self.w = rng.normal(size=(VOCAB, HIDDEN))
        self.bodies: list[dict[str, Any]] = []

    def logits(self, prompt: str) -> np.ndarray:
        h = np.random.default_rng(zlib.crc32(prompt.encode())).normal(size=HIDDEN)
        return self.w @ h

    async def complete(self, req: GenRequest) -> dict[str, Any]:
        body = req.body
        self.bodies.append(dict(body))
        z = self.logits(body["messages"][-1]["content"]).copy()
        for tok, b in (body.get("logit_bias") or {}).items():
            z[int(tok)] += float(b)
        lp = z - np.log(np.exp(z - z.max()).sum()) - z.max()
        best = int(np.argmax(lp))
        logprobs = None
        if body.get("logprobs"):
            top = np.argsort(-lp)[: int(body.get("top_logprobs") or 0)]
            alts = [{"token": f"t{i}", "logprob": float(lp[i]), "bytes": None} for i in top]
            logprobs = {"content": [{"token": f"t{best}", "logprob": float(lp[best]), "bytes": None,
                                     "top_logprobs": alts}], "refusal": None}  # fmt: skip
        choice = {"index": 0, "message": {"role": "assistant", "content": f"t{best}"}, "logprobs": logprobs,
                  "finish_reason": "length"}  # fmt: skip
        usage = {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}
        return {"id": "chatcmpl-rank", "object": "chat.completion", "created": int(time.time()), "model": MODEL,
                "choices": [choice], "usage": usage}  # fmt: skip

    async def stream(self, req: GenRequest) -> AsyncIterator[dict[str, Any]]:
        raise NotImplementedError  # pragma: no cover - not used here


def client(gw: Any, account: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.base}/v1", api_key=gw.create_key(account), max_retries=0)


def ask(c: openai.OpenAI, prompt: str, **kw: Any) -> Any:
    return c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=1, **kw)


def steal_rank(c: openai.OpenAI, prompts: int = 12, block: int = 4) -> tuple[int, np.ndarray]:
    """The attack: for each prompt, bias the reference token 0 and `block` others by +100 so that they are
    the top-(block+1); their logprob differences are logit differences. Returns the estimated hidden size
    (singular values above 1e-6 of the largest) and the singular values."""
    rows = []
    for p in range(prompts):
        row = np.zeros(VOCAB - 1)
        for start in range(1, VOCAB, block):
            toks = list(range(start, min(start + block, VOCAB)))
            bias = {str(t): 100 for t in [0, *toks]}
            r = ask(c, f"prompt {p}", logprobs=True, top_logprobs=block + 1, logit_bias=bias)
            got = {a.token: a.logprob for a in r.choices[0].logprobs.content[0].top_logprobs}
            for t in toks:
                row[t - 1] = got[f"t{t}"] - got["t0"]
        rows.append(row)
    s = np.linalg.svd(np.asarray(rows), compute_uv=False)
    return int((s > 1e-6 * s[0]).sum()), s


# The attack tests measure the logit stage alone (policy off): on a slow machine the sweep lasts longer than
# online detection's interval, and the default policy would challenge it mid-way (that defence is tested by
# test_logit_persona.py and the detection tests below).
def test_with_the_combination_allowed_the_attack_recovers_the_hidden_size(gateway_factory: Any) -> None:
    gw = gateway_factory({"upstream": RankModel()}, logits__logit_bias_with_logprobs="allow", policy__enabled=False)
    rank, s = steal_rank(client(gw, "thief-open"))
    assert rank == HIDDEN, s


def test_by_default_logit_bias_with_logprobs_is_refused_and_audited(gateway_factory: Any) -> None:
    up = RankModel()
    gw = gateway_factory({"upstream": up})
    c = client(gw, "thief")
    with pytest.raises(openai.BadRequestError) as err:
        ask(c, "prompt 0", logprobs=True, top_logprobs=5, logit_bias={"0": 100, "1": 100})
    body = err.value.body
    assert isinstance(body, dict)
    assert (body.get("code"), body.get("param")) == ("logit_bias_with_logprobs", "logit_bias")
    assert up.bodies == []  # never reached the model
    assert ask(c, "prompt 0", logit_bias={"3": 100}).choices[0].message.content == "t3"  # bias alone: served
    rows = audit_rows(gw, "thief")
    assert sorted(r["status"] for r in rows) == [200, 400]
    refused = next(r for r in rows if r["status"] == 400)
    assert '"logit_bias"' in refused["request"]  # the attempt is on record for detection


def test_top_logprobs_is_lowered_and_honest_logprob_users_get_the_exact_answer(gateway_factory: Any) -> None:
    up = RankModel()
    gw = gateway_factory({"upstream": up})
    c = client(gw, "eval-harness")
    r = ask(c, "What is 2+2?", logprobs=True, top_logprobs=20)
    assert up.bodies[-1]["top_logprobs"] == 5 and len(r.choices[0].logprobs.content[0].top_logprobs) == 5
    r5 = ask(c, "What is 2+2?", logprobs=True, top_logprobs=5)
    z = up.logits("What is 2+2?")
    exact = z - np.log(np.exp(z - z.max()).sum()) - z.max()
    got = [(a.token, a.logprob) for a in r5.choices[0].logprobs.content[0].top_logprobs]
    assert got == [(f"t{i}", pytest.approx(float(exact[i]), abs=1e-9)) for i in np.argsort(-exact)[:5]]


def test_keyed_noise_hides_the_rank_and_does_not_average_away(gateway_factory: Any) -> None:
    gw = gateway_factory(
        {"upstream": RankModel()}, logits__logit_bias_with_logprobs="allow", logits__logprob_noise=0.5,
        policy__enabled=False,
    )  # fmt: skip
    c = client(gw, "thief-noisy")
    a = ask(c, "prompt 1", logprobs=True, top_logprobs=5)
    b = ask(c, "prompt 1", logprobs=True, top_logprobs=5)
    assert a.choices[0].logprobs.content[0].top_logprobs == b.choices[0].logprobs.content[0].top_logprobs
    rank, s = steal_rank(c)
    assert rank > HIDDEN and s[HIDDEN] > 0.05 * s[0], s  # no gap after the 4th singular value


@pytest.mark.parametrize(
    ("bias", "says"),
    [([1, 2], "must be an object"), ({"x": 1}, "token ids"), ({"1": 500}, "from -100 to 100")],
)
def test_a_malformed_logit_bias_is_a_400_that_names_it(gateway_factory: Any, bias: Any, says: str) -> None:
    gw = gateway_factory({"upstream": RankModel()})
    with pytest.raises(openai.BadRequestError) as err:
        ask(client(gw, "typo"), "hi", logit_bias=bias)
    assert says in str(err.value) and "logit_bias" in str(err.value)


def _rec(account: str, i: int, body: dict[str, Any], status: int = 200) -> Any:
    from distillshield.traffic import TrafficRecord

    return TrafficRecord(ts=1_772_409_600.0 + 30 * i, account_id=account, endpoint="/v1/chat/completions",
                         request={"model": MODEL, **body}, status=status, ip=f"10.0.{len(account)}.1",
                         user_agent="OpenAI/Python 1.99.1")  # fmt: skip


def test_detection_flags_a_logit_sweep_even_when_every_request_was_refused() -> None:
    """Audited attempts (the gateway's 400s) of the attack are known-technique evidence: extraction, with
    a reason that counts them. An app biasing one fixed set of tokens and an eval harness reading top-5
    logprobs are not that pattern."""
    from distillshield.detect.analyze import analyze_records

    msgs = lambda p: [{"role": "user", "content": p}]  # noqa: E731
    records = []
    for i in range(120):  # the attack: changing token blocks, logprobs, one output token
        bias = {str(t): 100 for t in (0, 1 + 4 * (i % 16), 2 + 4 * (i % 16), 3 + 4 * (i % 16))}
        body = {"messages": msgs(f"prompt {i // 16}"), "max_tokens": 1, "logprobs": True, "top_logprobs": 5,
                "logit_bias": bias}  # fmt: skip
        records.append(_rec("thief", i, body, status=400))
    for i in range(120):  # an app that bans two tokens and reads the confidence of its label
        body = {"messages": msgs(f"classify ticket {i}"), "max_tokens": 1, "logprobs": True, "top_logprobs": 2,
                "logit_bias": {"50256": -100, "198": -100}}  # fmt: skip
        records.append(_rec("router-app", i, body))
    for i in range(120):  # an evaluation harness: top-5 logprobs of one token, no bias
        body = {"messages": msgs(f"Question {i}: A, B, C or D?"), "max_tokens": 1, "logprobs": True,
                "top_logprobs": 5}  # fmt: skip
        records.append(_rec("eval-harness", i, body))
    records.sort(key=lambda r: r.ts)
    accounts = {a["account_id"]: a for a in analyze_records(records).report["accounts"]}
    thief = accounts["thief"]
    assert thief["verdict"] == "extraction", thief["reasons"]
    assert thief["reasons"][0]["signal"] == "logits" and "120 requests combined logit_bias over 16" in thief[
        "reasons"][0]["detail"]  # fmt: skip
    for honest in ("router-app", "eval-harness"):
        assert not any(r["signal"] == "logits" and r["score"] >= 0.5 for r in accounts[honest]["reasons"]), honest


def test_the_embedded_model_serves_logprobs_and_applies_logit_bias_before_them(local_gateway: Any) -> None:
    """The embedded model (llama.cpp) answers logprobs with OpenAI's semantics: top alternatives in order,
    the chosen token among them at temperature 0, completions' parallel lists; and a logit_bias (alone, as
    the gateway allows) changes what is sampled."""
    c = openai.OpenAI(base_url=f"{local_gateway.base}/v1", api_key=local_gateway.create_key("lp-user"), max_retries=0)
    model = local_gateway.state.upstream.models()[0]
    r = c.chat.completions.create(model=model, messages=[{"role": "user", "content": "Name a colour."}],
                                  max_tokens=3, temperature=0, logprobs=True, top_logprobs=3)  # fmt: skip
    content = r.choices[0].logprobs.content
    assert 1 <= len(content) <= 3 and "".join(e.token for e in content) == r.choices[0].message.content
    for e in content:
        alts = [a.logprob for a in e.top_logprobs]
        assert len(alts) == 3 and alts == sorted(alts, reverse=True) and alts[0] <= 0.0
        assert e.logprob == pytest.approx(alts[0])  # greedy: the chosen token is the most likely one
    comp = c.completions.create(model=model, prompt="The capital of France is", max_tokens=2, temperature=0,
                                logprobs=2)  # fmt: skip
    lp = comp.choices[0].logprobs
    assert "".join(lp.tokens) == comp.choices[0].text and len(lp.token_logprobs) == len(lp.top_logprobs) == 2
    forced = c.chat.completions.create(model=model, messages=[{"role": "user", "content": "Name a colour."}],
                                       max_tokens=1, temperature=0, logit_bias={"100": 100})  # fmt: skip
    from llama_cpp import Llama

    from distillshield.gateway.upstream.local import default_model_path

    vocab = Llama(model_path=str(default_model_path()), vocab_only=True, verbose=False)  # token 100's piece
    assert forced.choices[0].message.content == vocab.detokenize([100]).decode()


def test_a_stream_from_the_embedded_model_carries_the_logprobs_of_its_tokens(local_gateway: Any) -> None:
    c = openai.OpenAI(base_url=f"{local_gateway.base}/v1", api_key=local_gateway.create_key("lp-stream"), max_retries=0)
    model = local_gateway.state.upstream.models()[0]
    stream = c.chat.completions.create(model=model, messages=[{"role": "user", "content": "Say hi."}], max_tokens=4,
                                       temperature=0, logprobs=True, top_logprobs=2, stream=True)  # fmt: skip
    chunks = list(stream)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    entries = [e for ch in chunks if ch.choices and ch.choices[0].logprobs for e in ch.choices[0].logprobs.content]
    assert text and "".join(e.token for e in entries) == text and all(len(e.top_logprobs) == 2 for e in entries)
