"""The vLLM logits processor, driven with a fake torch (numpy-backed tensors): no vLLM, no GPU here.

The fake implements only what the processor uses (as_tensor, stack, unsqueeze, to, integer and
comparison operators, in-place indexed add), so these tests pin the maths and vLLM's batch
bookkeeping (added/removed/moved rows); docs/watermark.md says what was not run for real.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np
import pytest

from distillshield.watermark.keys import KeyRing
from distillshield.watermark.kgw import GreenListWatermark
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


class Move(Enum):
    SWAP = 0
    UNIDIRECTIONAL = 1


@dataclass
class Params:
    extra_args: dict[str, Any] | None = None


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
    monkeypatch.setenv("DISTILLSHIELD_WATERMARK__SCHEME", "gumbel")
    with pytest.raises(ValueError, match="kgw"):
        _Watermark.from_settings(torch=FakeTorch())
