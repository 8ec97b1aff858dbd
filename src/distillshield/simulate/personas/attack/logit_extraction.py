"""Logit extraction: the published attack on a model's output layer, as a persona (Carlini et al. 2024).

"Stealing Part of a Production Language Model" (Carlini et al., ICML 2024) recovered the exact hidden
size of production models from `logit_bias` combined with logprobs. For each of P prompts and each block
of `top_logprobs - 1` tokens out of T chosen ones, one query biases a reference token and the block by
+100 and asks for one output token with the top `top_logprobs` logprobs: the biased tokens are then the
top ones, and their logprob differences to the reference are logit differences (the softmax normaliser
cancels). The (P x T) matrix of differences has rank at most the hidden size; the largest drop in its
singular values says where.

This module is the attack, once: the query plan (`AttackPlan`), reading the answers into the difference
matrix (`LogitReadout`) and the recovery (`recover`). The persona sends the plan as traffic: offline as
records (the logit-sweep signal, detect/signals/logits.py, scores them), and live through a gateway on
this machine, where its `LogitReadout` reads what the gateway served and reports what it recovered
(simulate/live.py). `benchmarks/logit_extraction.py` runs the same plan with the official SDK.

Signature: every request is a chat request for one output token at temperature 0 with logprobs and
`top_logprobs` at the maximum (20) and a `logit_bias` of +100 on one reference token and a block of 19
others; the blocks cycle through a fixed token set, prompt after prompt; short synthetic prompts;
scripted pacing until the plan is spent.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
from pydantic import Field, model_validator

from distillshield.simulate import netid, timing
from distillshield.simulate.personas.base import CHAT, Account, IdFactory, Knobs, Persona, Req

BIAS = 100  # the largest bias the API accepts: the biased tokens outrank every other one
_WORDS = ("the", "a", "river", "seven", "blue", "why", "engine", "music", "cold", "tomorrow", "paper",
          "light", "quiet", "number", "bridge", "fast", "garden", "stone", "ask", "market", "code")  # fmt: skip


def attack_prompts(n: int, seed: int = 11) -> list[str]:
    """Short, varied prompts: the attack needs many different hidden states, not meaningful text."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(_WORDS, size=int(rng.integers(2, 6)))) + f" {i}" for i in range(n)]


def plan_problem(tokens: int, top_logprobs: int, vocab: int, lowest_token: int) -> str | None:
    """What is wrong with a plan of these sizes, or None."""
    if tokens < top_logprobs:
        return (
            f"tokens ({tokens}) must be at least top_logprobs ({top_logprobs}): the reference token is told apart "
            "as the one every block returns, so the plan needs two blocks or more"
        )
    if vocab - lowest_token <= tokens:
        return f"vocab - lowest_token ({vocab - lowest_token}) must exceed tokens ({tokens})"
    return None


@dataclass(frozen=True)
class AttackPlan:
    """Which prompts, which tokens, and the request bodies (without `model`) that read them."""

    prompts: tuple[str, ...]
    reference: int
    tokens: tuple[int, ...]
    top_logprobs: int = 20

    @classmethod
    def make(
        cls,
        prompts: int,
        tokens: int,
        *,
        top_logprobs: int = 20,
        vocab: int = 49_152,
        lowest_token: int = 1000,
        prompt_seed: int = 11,
        token_seed: int = 5,
    ) -> AttackPlan:
        """`prompts` prompts and `tokens` token ids (plus a reference) drawn from [lowest_token, vocab)."""
        problem = plan_problem(tokens, top_logprobs, vocab, lowest_token)
        if problem:
            raise ValueError(problem)
        rng = np.random.default_rng(token_seed)
        drawn = rng.choice(np.arange(lowest_token, vocab), size=tokens + 1, replace=False)
        return cls(tuple(attack_prompts(prompts, prompt_seed)), int(drawn[0]), tuple(int(t) for t in drawn[1:]),
                   top_logprobs)  # fmt: skip

    @property
    def blocks(self) -> list[tuple[int, ...]]:
        """The token blocks, `top_logprobs - 1` tokens each (the reference takes the last place)."""
        size = self.top_logprobs - 1
        return [self.tokens[i : i + size] for i in range(0, len(self.tokens), size)]

    def __len__(self) -> int:
        return len(self.prompts) * len(self.blocks)

    def queries(self) -> Iterator[dict[str, Any]]:
        """Every query's body (chat completions, no `model`), prompt after prompt, block after block."""
        blocks = self.blocks
        for prompt in self.prompts:
            for block in blocks:
                yield {
                    "messages": [{"role": "user", "content": prompt}],
                    "max_tokens": 1,
                    "temperature": 0,
                    "logprobs": True,
                    "top_logprobs": self.top_logprobs,
                    "logit_bias": {str(t): BIAS for t in (self.reference, *block)},
                }


@dataclass(frozen=True)
class Recovery:
    """What the singular values of a logit-difference matrix say about the hidden size."""

    estimate: int  # where the log singular values drop most (1-based: s[estimate] > s[estimate + 1])
    drop_decades: float  # that drop, in decades
    shape: tuple[int, int]
    singular_values: np.ndarray

    def ratio_at(self, k: int) -> float | None:
        """s[k] / s[k + 1] (1-based), or None when the matrix has too few singular values."""
        s = self.singular_values
        if not 1 <= k < len(s):
            return None
        return float(s[k - 1] / max(s[k], 1e-300))

    @property
    def ratio(self) -> float:
        """s[estimate] / s[estimate + 1]: how sharp the step is (about 1 when there is none)."""
        r = self.ratio_at(self.estimate)
        assert r is not None  # estimate < len(singular_values) by construction
        return r


def recover(matrix: np.ndarray) -> Recovery:
    """The estimated hidden size of a (prompts x tokens) logit-difference matrix: where its log singular
    values drop most, ignoring the last five (the smallest ones of a full-rank block drop too). Columns
    with a missing value (NaN) are left out first. ValueError when fewer than 3 rows or columns remain."""
    m = matrix[:, ~np.isnan(matrix).any(axis=0)]
    if min(m.shape) < 3:
        raise ValueError(f"a {m.shape[0]} x {m.shape[1]} matrix is too small to show a rank")
    s = np.linalg.svd(m, compute_uv=False)
    logs = np.log10(np.maximum(s, 1e-30))
    upto = max(len(s) - 5, 2)
    gaps = logs[: upto - 1] - logs[1:upto]
    k = int(np.argmax(gaps)) + 1
    return Recovery(k, round(float(gaps[k - 1]), 2), (int(m.shape[0]), int(m.shape[1])), s)


class LogitReadout:
    """Reads the gateway's answers to the attack's queries into the logit-difference matrix, and says
    what the attack got (the persona's live observer, simulate/live.py).

    It needs no tokenizer: the API names the returned tokens by their text (`bytes`), not their ids, so
    a column is (token block, returned token) and the reference is the one token every block returns."""

    def __init__(self) -> None:
        self.queries = 0
        self.answered = 0
        self.errors = 0
        self.first_error: str | None = None
        self.first_error_at: int | None = None
        # prompt -> token block (its biased ids) -> returned token -> logprob
        self._reads: dict[str, dict[tuple[int, ...], dict[bytes, float]]] = {}

    def observe(self, request: dict[str, Any], status: int | None, answer: Any, error: str | None) -> None:
        """One query and what came back: `status` None when no HTTP answer came (`error` says why),
        `answer` the parsed JSON body (None when it was not JSON)."""
        self.queries += 1
        if status is None or status >= 400 or error is not None:
            self._error(status, answer, error)
            return
        biased = request.get("logit_bias") or {}
        try:
            entries = answer["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
            got = [(_piece(e), float(e["logprob"])) for e in entries]
        except (KeyError, IndexError, TypeError, ValueError):
            self._error(status, answer, "the answer carries no top_logprobs")
            return
        if len(got) < len(biased):  # the gateway lowered top_logprobs below the block: it no longer fits
            self._error(status, answer, f"only {len(got)} logprobs returned for {len(biased)} biased tokens")
            return
        top = sorted(got, key=lambda pl: -pl[1])[: len(biased)]  # the biased ones outrank every other token
        counts: dict[bytes, int] = {}
        for piece, _ in top:
            counts[piece] = counts.get(piece, 0) + 1
        block = tuple(sorted(int(t) for t in biased))
        prompt = str(request["messages"][-1]["content"])
        # Two tokens with the same text cannot be told apart: leave both out.
        self._reads.setdefault(prompt, {})[block] = {p: lp for p, lp in top if counts[p] == 1}
        self.answered += 1

    def _error(self, status: int | None, answer: Any, error: str | None) -> None:
        self.errors += 1
        if self.first_error is None:
            err = answer.get("error") if isinstance(answer, dict) else None
            code = err.get("code") if isinstance(err, dict) else None
            head = " ".join(str(x) for x in (status, code) if x)
            self.first_error = f"{head}: {error}" if head else str(error)
            self.first_error_at = self.queries

    def matrix(self) -> np.ndarray:
        """The (prompts x tokens) logit differences read so far; prompts with a block missing are left
        out, tokens missing for a prompt are NaN. ValueError when the reference cannot be told apart."""
        blocks = sorted({b for reads in self._reads.values() for b in reads})
        if len(blocks) < 2:
            raise ValueError(f"{len(blocks)} token block(s) answered; telling the reference apart needs two")
        common = set.intersection(*(set(r) for reads in self._reads.values() for r in reads.values()))
        if len(common) != 1:
            raise ValueError(f"{len(common)} tokens came back in every block; the reference should be the only one")
        (ref,) = common
        rows = [reads for reads in self._reads.values() if len(reads) == len(blocks)]
        if not rows:
            raise ValueError("no prompt had every token block answered")
        columns = [(b, p) for b in blocks for p in sorted({p for reads in rows for p in reads[b]} - {ref})]
        return np.array([[reads[b].get(p, np.nan) - reads[b][ref] for b, p in columns] for reads in rows])

    def report(self) -> dict[str, Any]:
        """Queries spent, answers, the first error, and what was recovered (or why nothing was)."""
        out: dict[str, Any] = {
            "queries": self.queries,
            "answered": self.answered,
            "errors": self.errors,
            "first_error": self.first_error,
            "first_error_at": self.first_error_at,
            "estimated_hidden_size": None,
            "singular_value_ratio": None,
            "drop_decades": None,
            "matrix": None,
            "failure": None,
        }
        try:
            rec = recover(self.matrix())
        except ValueError as exc:
            out["failure"] = f"nothing recovered: {self.first_error or exc}"
            at = f" (the first error at query {self.first_error_at:,})" if self.first_error_at else ""
            out["summary"] = f"{self.queries:,} queries, {self.answered:,} answered{at}; {out['failure']}"
            return out
        out.update(estimated_hidden_size=rec.estimate, singular_value_ratio=round(rec.ratio, 3),
                   drop_decades=rec.drop_decades, matrix=list(rec.shape))  # fmt: skip
        out["summary"] = (
            f"{self.queries:,} queries, {self.answered:,} answered; estimated hidden size {rec.estimate} "
            f"(s{rec.estimate}/s{rec.estimate + 1} = {rec.ratio:.3g}, a drop of {rec.drop_decades} decades, "
            f"{rec.shape[0]} x {rec.shape[1]} matrix)"
        )
        return out


def _piece(entry: dict[str, Any]) -> bytes:
    """A returned token's identity: its bytes when the API gives them, else its text."""
    raw = entry.get("bytes")
    return bytes(raw) if raw is not None else str(entry["token"]).encode()


# -- the persona ------------------------------------------------------------------------------------------


class LogitExtractionKnobs(Knobs):
    requests_per_day: float = Field(
        5000.0, gt=0, description="queries per account per day (the account stops when its plan is spent)"
    )
    prompts: int = Field(640, ge=3, description="prompts: rows of the difference matrix (more than the hidden size)")
    tokens: int = Field(640, ge=3, description="tokens read per prompt: columns (more than the hidden size)")
    top_logprobs: int = Field(20, ge=2, le=20, description="top_logprobs asked; each query reads this minus one tokens")
    vocab: int = Field(49_152, ge=4, description="token ids are drawn below this (SmolLM2-135M's vocabulary)")
    lowest_token: int = Field(1000, ge=0, description="...and from this id up (past special and byte tokens)")

    @model_validator(mode="after")
    def _plan_fits(self) -> Self:
        problem = plan_problem(self.tokens, self.top_logprobs, self.vocab, self.lowest_token)
        if problem:
            raise ValueError(problem)
        return self


class LogitExtraction(Persona):
    name = "logit_extraction"
    kind = "attack"
    split = "dev"
    Knobs = LogitExtractionKnobs
    signature = "every request: one output token, top_logprobs 20, logit_bias +100 on a reference and 19 cycling tokens"
    tiers = (("pro", 0.5), ("standard", 0.5))
    verifications = (("email", 0.8), ("phone", 0.2))
    apis = (("openai", 1.0),)
    rpm_fill = 0.9
    activity_sigma = 0.1
    account_age_days = (1.0, 30.0)
    live_observer = LogitReadout

    def account_ips(self, rng: np.random.Generator) -> list[str]:
        return [netid.cloud_ip(rng)]

    def account_user_agent(self, rng: np.random.Generator, api: str) -> str:
        return netid.user_agent(rng, "openai-python")

    def after_accounts(self, accounts: list[Account], rng: np.random.Generator, ids: IdFactory) -> None:
        self.one_campaign(accounts, ids)

    def plan(self, account: Account) -> AttackPlan:
        """This account's plan: its own prompts and tokens."""
        k = self.k
        assert isinstance(k, LogitExtractionKnobs)
        seeds = np.random.default_rng([account.seed, 0x1061]).integers(0, 2**32, size=2)
        return AttackPlan.make(
            k.prompts,
            k.tokens,
            top_logprobs=k.top_logprobs,
            vocab=k.vocab,
            lowest_token=k.lowest_token,
            prompt_seed=int(seeds[0]),
            token_seed=int(seeds[1]),
        )

    def expected_total(self, account: Account) -> float:
        return min(super().expected_total(account), float(self._plan_size()))

    def expected_total_mean(self) -> float:
        return min(super().expected_total_mean(), float(self._plan_size()))

    def _plan_size(self) -> int:
        k = self.k
        assert isinstance(k, LogitExtractionKnobs)
        return k.prompts * -(-k.tokens // (k.top_logprobs - 1))

    def requests(self, account: Account) -> Iterator[Req]:
        ctx = self.ctx
        # At the account's rate until the plan is spent (or the scenario ends).
        times = timing.spaced_times(account.np, ctx.start, ctx.end, Persona.expected_total(self, account),
                                    self.min_gap()).tolist()  # fmt: skip
        model = ctx.models.primary
        for t, query in zip(times, self.plan(account).queries(), strict=False):
            sim = {"end_user": None, "harvest": True, "capability": "logits", "source": "logit-extraction"}
            yield (t, CHAT, {"model": model, **query}, account.ips[0], account.user_agent, sim)
