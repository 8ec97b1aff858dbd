"""The vLLM logits processor, driven with a fake torch (numpy-backed tensors): no vLLM, no GPU here.

The fake implements only what the processor uses (as_tensor, stack, unsqueeze, to, amax, count_nonzero,
topk, tolist, integer and comparison operators, indexed add and assignment), so these tests pin the maths
(KGW's bias and the keyed samplers' choice, each against the embedded model's hook) and vLLM's batch
bookkeeping (added/removed/moved rows); docs/watermark.md says what was not run for real.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np
import pytest

from distillshield.watermark.gumbel import SUPPRESS, GumbelWatermark
from distillshield.watermark.keys import KeyRing
from distillshield.watermark.kgw import GreenListWatermark
from distillshield.watermark.tournament import TournamentWatermark
from distillshield.watermark.vllm import (
    RequestWatermarkProcessor,
    WatermarkLogitsProcessor,
    _Watermark,
    request_processor,
)

SECRET = "vllm-test-secret-0123456789abcdef"
V = 4096


class FakeTensor(np.ndarray):
    device = "fake:0"

    def to(self, dtype: Any) -> FakeTensor:
        return self.astype(dtype).view(FakeTensor)

    def unsqueeze(self, dim: int) -> FakeTensor:
        return np.expand_dims(self, dim).view(FakeTensor)


class FakeTorch:
    int64 = np.int64

    @staticmethod
    def as_tensor(a: Any, device: Any = None) -> FakeTensor:
        return np.asarray(a).view(FakeTensor)

    @staticmethod
    def stack(ts: list[Any]) -> FakeTensor:
        return np.stack(ts).view(FakeTensor)

    @staticmethod
    def amax(a: Any, dim: int, keepdim: bool = False) -> FakeTensor:
        return np.asarray(np.amax(a, axis=dim, keepdims=keepdim)).view(FakeTensor)

    @staticmethod
    def count_nonzero(a: Any, dim: int) -> FakeTensor:
        return np.asarray(np.count_nonzero(a, axis=dim)).view(FakeTensor)

    @staticmethod
    def topk(a: Any, k: int, dim: int = -1) -> tuple[FakeTensor, FakeTensor]:
        assert dim == -1
        order = np.argsort(-np.asarray(a), axis=-1, kind="stable")[..., :k]
        return np.take_along_axis(np.asarray(a), order, axis=-1).view(FakeTensor), order.view(FakeTensor)


class Move(Enum):
    SWAP = 0
    UNIDIRECTIONAL = 1


@dataclass
class Params:  # vLLM's SamplingParams, the fields the processor reads
    extra_args: dict[str, Any] | None = None
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int | None = None


@dataclass
class Update:
    batch_size: int
    removed: list[int] = field(default_factory=list)
    added: list[tuple] = field(default_factory=list)
    moved: list[tuple] = field(default_factory=list)


def wm(delta: float = 2.0) -> _Watermark:
    return _Watermark(KeyRing(SECRET), GreenListWatermark(0.25, delta, 1), 4.0, FakeTorch(), None)


def xargs(account: str, mode: str = "on") -> Params:
    return Params({"distillshield_wm_key": f"account:{account}", "distillshield_wm_mode": mode})


def expected_bias(account: str, last_token: int, delta: float) -> np.ndarray:
    ref = GreenListWatermark(0.25, delta, 1)
    return ref.green_mask(KeyRing(SECRET).account(account), [last_token], V).astype(np.float32) * delta


def logits(rows: int) -> FakeTensor:
    return np.zeros((rows, V), np.float32).view(FakeTensor)


def test_batch_processor_marks_only_requests_that_ask_and_matches_the_embedded_hook() -> None:
    p = WatermarkLogitsProcessor(_wm=wm())
    out_a, out_c = [11, 12], [99]
    p.update_state(
        Update(
            3,
            added=[
                (0, xargs("alice"), [1, 2], out_a),
                (1, Params(), [5], []),
                (2, xargs("carol", "strong"), [7], out_c),
            ],
        )
    )
    got = np.asarray(p.apply(logits(3)))
    assert np.array_equal(got[0], expected_bias("alice", 12, 2.0))
    assert not got[1].any()
    assert np.array_equal(got[2], expected_bias("carol", 99, 4.0))
    out_a.append(13)  # vLLM appends to the live list; the next step uses the new last token
    assert np.array_equal(np.asarray(p.apply(logits(3)))[0], expected_bias("alice", 13, 2.0))


def test_first_token_takes_its_context_from_the_prompt() -> None:
    p = WatermarkLogitsProcessor(_wm=wm())
    p.update_state(Update(1, added=[(0, xargs("alice"), [3, 4, 5], [])]))
    assert np.array_equal(np.asarray(p.apply(logits(1)))[0], expected_bias("alice", 5, 2.0))


def test_removed_and_moved_rows_follow_their_requests() -> None:
    p = WatermarkLogitsProcessor(_wm=wm())
    p.update_state(Update(2, added=[(0, xargs("alice"), [1], [8]), (1, xargs("bob"), [1], [9])]))
    p.update_state(Update(2, moved=[(0, 1, Move.SWAP)]))
    got = np.asarray(p.apply(logits(2)))
    assert np.array_equal(got[0], expected_bias("bob", 9, 2.0))
    assert np.array_equal(got[1], expected_bias("alice", 8, 2.0))
    p.update_state(Update(1, removed=[1], moved=[(0, 1, Move.UNIDIRECTIONAL)]))
    got = np.asarray(p.apply(logits(2)))
    assert not got[0].any() and np.array_equal(got[1], expected_bias("bob", 9, 2.0))
    p.update_state(Update(0, removed=[1]))
    assert not np.asarray(p.apply(logits(2))).any() and p.rows == {}
    assert p.is_argmax_invariant() is False


def test_per_request_callables_over_one_row() -> None:
    proc = request_processor({"distillshield_wm_key": "account:alice"}, wm())
    assert isinstance(proc, RequestWatermarkProcessor)
    row = np.zeros(V, np.float32).view(FakeTensor)
    assert np.array_equal(np.asarray(proc([1, 2], [6], row)), expected_bias("alice", 6, 2.0))
    two_arg = proc.output_only()
    assert not np.asarray(two_arg([], np.zeros(V, np.float32).view(FakeTensor))).any()  # no context yet
    assert np.array_equal(
        np.asarray(two_arg([4], np.zeros(V, np.float32).view(FakeTensor))), expected_bias("alice", 4, 2.0)
    )
    assert request_processor(None, wm()) is None
    assert request_processor({"distillshield_wm_key": "account:a", "distillshield_wm_mode": "off"}, wm()) is None


def test_bad_request_arguments_are_rejected_by_name() -> None:
    with pytest.raises(ValueError, match="distillshield_wm_key"):
        WatermarkLogitsProcessor.validate_params(Params({"distillshield_wm_key": "alice"}))
    with pytest.raises(ValueError, match="distillshield_wm_mode"):
        WatermarkLogitsProcessor.validate_params(
            Params({"distillshield_wm_key": "account:a", "distillshield_wm_mode": "x"})
        )
    WatermarkLogitsProcessor.validate_params(Params(None))


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISTILLSHIELD_WATERMARK__SECRET", SECRET)
    monkeypatch.setenv("DISTILLSHIELD_WATERMARK__DELTA", "3.0")
    monkeypatch.setenv("DISTILLSHIELD_WATERMARK__SCHEME", "kgw")  # the default is the tournament
    w = _Watermark.from_settings(torch=FakeTorch())
    assert w.scheme.delta == 3.0 and w.keys.account("alice").k0 == KeyRing(SECRET).account("alice").k0
    monkeypatch.delenv("DISTILLSHIELD_WATERMARK__SCHEME")
    w = _Watermark.from_settings(torch=FakeTorch())  # the default: the tournament, at its own width
    assert isinstance(w.scheme, TournamentWatermark) and (w.scheme.context_width, w.scheme.layers) == (8, 8)


# -- the keyed samplers (tournament, the default; gumbel) ---------------------------------------------------


def sampled(scheme: GumbelWatermark | TournamentWatermark) -> _Watermark:
    return _Watermark(KeyRing(SECRET), scheme, 4.0, FakeTorch(), None)


def step_logits(rng: np.random.Generator) -> np.ndarray:
    return (rng.standard_normal(V) * 2.5).astype(np.float32)  # no ties; dozens of tokens within reach


@pytest.mark.parametrize("scheme", [TournamentWatermark(2, 8), GumbelWatermark(2)], ids=repr)
def test_keyed_sampler_rows_choose_what_the_embedded_hook_chooses(
    scheme: GumbelWatermark | TournamentWatermark,
) -> None:
    """Step by step, a marked vLLM row leaves exactly the token the embedded model's hook picks (same key,
    logits, sampling settings and seed) and suppresses the rest; the opening and the other rows stay as
    they came."""
    sampling = {"temperature": 0.7, "top_k": 40, "top_p": 0.95, "min_p": 0.05, "seed": 7}
    p = WatermarkLogitsProcessor(_wm=sampled(scheme))
    prompt, answer = [3, 1, 4, 1, 5], []
    p.update_state(Update(2, added=[(0, Params(xargs("alice").extra_args, **sampling), prompt, answer),
                                    (1, Params(), [9], [])]))  # fmt: skip
    embedded = scheme.processor(KeyRing(SECRET).account("alice"), **sampling)
    rng = np.random.default_rng(1)
    marked = 0
    for step in range(60):
        row = step_logits(rng)
        other = step_logits(rng)
        want = embedded(np.asarray(prompt + answer), row.copy())
        batch = np.stack([row, other]).view(FakeTensor)
        got = np.asarray(p.apply(batch))
        assert np.array_equal(got[0], want), f"step {step}"
        assert np.array_equal(got[1], other)  # a request without our xargs
        if step < scheme.context_width:
            assert np.array_equal(got[0], row)  # the answer's first h tokens are left to vLLM's sampler
        elif np.count_nonzero(got[0] > SUPPRESS) == 1:
            marked += 1
        answer.append(int(np.argmax(got[0])))  # vLLM appends the sampled token to the live list
    assert marked == embedded.steps > 50
    assert p.rows[0].sampler is not None and p.rows[0].sampler.steps == embedded.steps


@pytest.mark.parametrize("scheme", [TournamentWatermark(2, 8), GumbelWatermark(2)], ids=repr)
def test_a_batch_of_marked_rows_chooses_row_by_row_what_the_embedded_hook_chooses(
    scheme: GumbelWatermark | TournamentWatermark,
) -> None:
    """The keyed choice is made for the whole batch at once (numpy over padded rows): each row still leaves
    exactly its own embedded hook's token, whatever the other rows hold. The rows differ in key, seed,
    sampling settings and spread of logits, so their candidate lists differ in length (from one candidate up),
    and one row's top_k is below the batch's top-k width."""
    settings = [
        {"temperature": 0.7, "top_k": 40, "top_p": 0.95, "min_p": 0.05, "seed": 7},
        {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "seed": 8},
        {"temperature": 0.5, "top_k": 3, "top_p": 0.9, "min_p": 0.1, "seed": 9},
        {"temperature": 1.3, "top_k": 50, "top_p": 0.99, "min_p": 0.01, "seed": 10},
        {"temperature": 0.8, "top_k": 40, "top_p": 0.8, "min_p": 0.2, "seed": 11},
    ]
    scale = [1.0, 0.25, 2.0, 0.5, 6.0]  # flat rows keep many candidates, peaked ones one or two
    p = WatermarkLogitsProcessor(_wm=sampled(scheme))
    prompts = [[3, 1, 4, i] for i in range(len(settings))]
    answers: list[list[int]] = [[] for _ in settings]
    p.update_state(Update(len(settings), added=[
        (i, Params(xargs(f"user{i}").extra_args, **kw), prompts[i], answers[i]) for i, kw in enumerate(settings)
    ]))  # fmt: skip
    hooks = [scheme.processor(KeyRing(SECRET).account(f"user{i}"), **kw) for i, kw in enumerate(settings)]
    rng = np.random.default_rng(4)
    sizes = set()
    for step in range(40):
        rows = np.stack([step_logits(rng) * np.float32(k) for k in scale])
        got = np.asarray(p.apply(rows.copy().view(FakeTensor)))
        for i, hook in enumerate(hooks):
            want = hook(np.asarray(prompts[i] + answers[i]), rows[i].copy())
            assert np.array_equal(got[i], want), f"step {step}, row {i}"
            answers[i].append(int(np.argmax(got[i])))
            if step >= scheme.context_width:
                sizes.add(hook.candidates(rows[i]).size)
    assert min(sizes) == 1 and max(sizes) > 10, sizes  # the batch held rows of very different widths
    assert all(h.steps > 30 for h in hooks)


def test_tournament_text_from_vllm_rows_is_detected_under_its_account_key_only() -> None:
    scheme = TournamentWatermark(4, 8)
    p = WatermarkLogitsProcessor(_wm=sampled(scheme))
    answer: list[int] = []
    p.update_state(Update(1, added=[(0, Params(xargs("alice").extra_args, top_k=40, seed=3), [1, 2], answer)]))
    rng = np.random.default_rng(2)
    for _ in range(200):
        out = np.asarray(p.apply(step_logits(rng)[None, :].view(FakeTensor)))[0]
        choices = np.flatnonzero(out > SUPPRESS)
        answer.append(int(choices[0]) if choices.size == 1 else int(rng.choice(np.argsort(-out)[:40])))
    keys = KeyRing(SECRET)
    own = scheme.detect(keys.account("alice"), answer)
    assert own.z >= 4.0 and own.detected
    for other in ("bob", "carol", "dave"):
        assert not scheme.detect(keys.account(other), answer).detected


def test_keyed_samplers_leave_greedy_rows_repeated_contexts_and_the_opening_alone() -> None:
    scheme = TournamentWatermark(2, 8)
    p = WatermarkLogitsProcessor(_wm=sampled(scheme))
    greedy_out, out = [1, 2, 3], [1, 2]
    p.update_state(Update(2, added=[(0, Params(xargs("alice").extra_args, temperature=0.0), [5], greedy_out),
                                    (1, Params(xargs("bob").extra_args, seed=1), [5], out)]))  # fmt: skip
    rng = np.random.default_rng(3)
    rows = np.stack([step_logits(rng), step_logits(rng)])
    got = np.asarray(p.apply(rows.copy().view(FakeTensor)))
    assert np.array_equal(got[0], rows[0])  # temperature 0: vLLM's argmax, unmarked
    assert np.count_nonzero(got[1] > SUPPRESS) == 1  # context (1, 2): marked
    out.extend([7, 1, 2])  # context (1, 2) again
    got = np.asarray(p.apply(rows.copy().view(FakeTensor)))
    assert np.array_equal(got[1], rows[1]) and p.rows[1].sampler is not None and p.rows[1].sampler.skipped == 1
    p.update_state(Update(1, added=[(1, Params(xargs("bob").extra_args), [5], [4])]))  # a new request, 1 token
    assert np.array_equal(np.asarray(p.apply(rows.copy().view(FakeTensor)))[1], rows[1])  # its opening


def test_per_request_callable_serves_the_keyed_samplers() -> None:
    scheme = TournamentWatermark(2, 8)
    proc = request_processor({"distillshield_wm_key": "account:alice"}, sampled(scheme), Params(top_k=40, seed=5))
    assert proc is not None
    embedded = scheme.processor(KeyRing(SECRET).account("alice"), temperature=1.0, top_k=40, top_p=1.0,
                                min_p=0.0, seed=5)  # fmt: skip
    rng = np.random.default_rng(4)
    answer: list[int] = []
    for _ in range(12):
        row = step_logits(rng)
        want = embedded(np.asarray([8] + answer), row.copy())
        got = np.asarray(proc([8], list(answer), row.copy().view(FakeTensor)))
        assert np.array_equal(got, want)
        answer.append(int(np.argmax(got)))
    assert embedded.steps == 10
