"""The watermark inside a vLLM server, for deployments where the gateway forwards over HTTP and
cannot touch logits.

The gateway (with `watermark.upstream_xargs: true`) adds the account's key *label*, never key
material, to each request's `vllm_xargs` (vLLM copies it into `SamplingParams.extra_args`):

    {"vllm_xargs": {"distillshield_wm_key": "account:alice", "distillshield_wm_mode": "on"}}

The vLLM server derives the key from the same secret (DISTILLSHIELD_WATERMARK__SECRET in its
environment, plus the other `watermark` settings) and biases that request's logits exactly as the
embedded model's hook does, so `distillshield watermark detect` works on either's outputs.

Two shapes, both over torch tensors:

- `WatermarkLogitsProcessor`: vLLM's batch-level (V1) processor class. Load it with
  `vllm serve MODEL --logits-processors distillshield.watermark.vllm:WatermarkLogitsProcessor`
  or `LLM(model, logits_processors=[WatermarkLogitsProcessor])`. It keeps one row per request and
  computes every watermarked row's green list in one batched pass on the GPU.
- `RequestWatermarkProcessor`: the per-request callable `(prompt_ids, output_ids, logits) -> logits`
  (vLLM's `AdapterLogitsProcessor` / older `SamplingParams.logits_processors`); `.output_only()`
  gives the `(token_ids, logits) -> logits` form.

Limits (also in docs/watermark.md): KGW only (the Gumbel scheme replaces sampling and is not
ported); vLLM rejects custom logits processors under speculative decoding; vLLM marks this API as
still changing (written against the V1 `LogitsProcessor`/`BatchUpdate` interface of vLLM
0.10-0.11; newer "model runner V2" releases use a different row-based interface); not run on a
GPU or against a real vLLM in this repository's tests, which drive it with a fake torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from distillshield.watermark.gateway import XARG_KEY, XARG_MODE
from distillshield.watermark.keys import KeyRing, WatermarkKey, context_seed, token_table
from distillshield.watermark.kgw import GreenListWatermark

try:  # subclass vLLM's base when it is installed, so vLLM's loader accepts the class
    from vllm.v1.sample.logits_processor import LogitsProcessor as _VLLMBase  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - vLLM is not a dependency
    _VLLMBase = object

_M32 = 0xFFFFFFFF
_F1 = 0x85EBCA6B
_F2 = 0xC2B2AE35


def _fmix32_int64(torch: Any, x: Any) -> Any:
    """murmur3 fmix32 on an int64 tensor holding uint32 values (torch lacks full uint32 maths).

    int64 products wrap modulo 2**64, so masking with 0xFFFFFFFF leaves the exact low 32 bits:
    the same values as keys.fmix32 on uint32 numpy arrays.
    """
    x = x ^ (x >> 16)
    x = (x * _F1) & _M32
    x = x ^ (x >> 13)
    x = (x * _F2) & _M32
    return x ^ (x >> 16)


class _Watermark:
    """Settings, keys and per-device tables shared by both processor shapes."""

    def __init__(
        self, keys: KeyRing, scheme: GreenListWatermark, strong_delta: float, torch: Any | None, device: Any
    ) -> None:
        self.keys = keys
        self.scheme = scheme
        self.strong_delta = strong_delta
        self.torch = torch if torch is not None else importlib.import_module("torch")
        self.device = device
        self._tables: dict[tuple[WatermarkKey, int], Any] = {}

    @classmethod
    def from_settings(cls, torch: Any | None = None, device: Any = None) -> _Watermark:
        from distillshield.config import load_settings
        from distillshield.watermark.schemes import keyring_from_settings

        cfg = load_settings().watermark
        if cfg.scheme != "kgw":
            raise ValueError("the vLLM processor implements the kgw scheme only; set watermark.scheme: kgw")
        scheme = GreenListWatermark(cfg.gamma, cfg.delta, cfg.width())
        return cls(keyring_from_settings(cfg), scheme, cfg.strong_delta, torch, device)

    def delta(self, mode: str) -> float:
        return self.strong_delta if mode == "strong" else self.scheme.delta

    def table(self, key: WatermarkKey, vocab: int, device: Any) -> Any:
        t = self._tables.get((key, vocab))
        if t is None:
            if len(self._tables) > 1024:  # bounded: one entry per active account key
                self._tables.clear()
            host = token_table(key, vocab).astype(np.int64)
            t = self._tables[(key, vocab)] = self.torch.as_tensor(host, device=device)
        return t

    def seed(self, key: WatermarkKey, prompt_ids: Sequence[int] | None, output_ids: Sequence[int]) -> int | None:
        h = self.scheme.context_width
        ctx = list(output_ids[-h:])
        if len(ctx) < h and prompt_ids:
            ctx = list(prompt_ids[-(h - len(ctx)) :]) + ctx
        return context_seed(key, ctx) if len(ctx) == h else None

    def bias_rows(
        self, logits: Any, rows: list[int], keys: list[WatermarkKey], seeds: list[int], deltas: list[float]
    ) -> Any:
        """Add each row's delta to its green list; one batched pass for all rows."""
        torch = self.torch
        vocab = logits.shape[-1]
        tables = torch.stack([self.table(k, vocab, logits.device) for k in keys])  # (B, V)
        s = torch.as_tensor(np.asarray(seeds, dtype=np.int64), device=logits.device).unsqueeze(1)
        green = _fmix32_int64(torch, tables ^ s) < self.scheme.threshold
        d = torch.as_tensor(np.asarray(deltas, dtype=np.float32), device=logits.device).unsqueeze(1)
        idx = torch.as_tensor(np.asarray(rows, dtype=np.int64), device=logits.device)
        logits[idx] += d.to(logits.dtype) * green.to(logits.dtype)
        return logits


def _request_spec(extra_args: dict[str, Any] | None) -> tuple[str, str] | None:
    """(key label, mode) from a request's extra_args, or None when it asks for no watermark."""
    if not extra_args or XARG_KEY not in extra_args:
        return None
    label = extra_args[XARG_KEY]
    mode = extra_args.get(XARG_MODE, "on")
    if not isinstance(label, str) or not label.startswith(("account:", "cluster:")):
        raise ValueError(f"{XARG_KEY} must be 'account:ID' or 'cluster:ID', got {label!r}")
    if mode not in ("on", "strong", "off"):
        raise ValueError(f"{XARG_MODE} must be on, strong or off, got {mode!r}")
    return None if mode == "off" else (label, mode)


class RequestWatermarkProcessor:
    """Per-request callable over one request's 1-D logits tensor."""

    def __init__(self, wm: _Watermark, key: WatermarkKey, delta: float) -> None:
        self.wm = wm
        self.key = key
        self.delta = delta

    def __call__(self, prompt_ids: Sequence[int] | None, output_ids: Sequence[int], logits: Any) -> Any:
        seed = self.wm.seed(self.key, prompt_ids, output_ids)
        if seed is None:
            return logits
        out = self.wm.bias_rows(logits.unsqueeze(0), [0], [self.key], [seed], [self.delta])
        return out[0]

    def output_only(self) -> Any:
        """The `(token_ids, logits) -> logits` form (no prompt: the first h output tokens go unmarked)."""
        return lambda token_ids, logits: self(None, token_ids, logits)


class WatermarkLogitsProcessor(_VLLMBase):  # type: ignore[misc, valid-type]
    """vLLM V1 batch-level logits processor: watermarks the rows whose request carries our xargs."""

    def __init__(
        self, vllm_config: Any = None, device: Any = None, is_pin_memory: bool = False, *, _wm: Any = None
    ) -> None:
        self.wm: _Watermark = _wm or _Watermark.from_settings(device=device)
        self.device = device
        # row index -> (key, delta, prompt ids, live output-ids list owned by vLLM)
        self.rows: dict[int, tuple[WatermarkKey, float, Sequence[int] | None, Sequence[int]]] = {}

    @classmethod
    def validate_params(cls, params: Any) -> None:
        _request_spec(getattr(params, "extra_args", None))

    def is_argmax_invariant(self) -> bool:
        return False  # the bias changes which token is most likely: apply under greedy decoding too

    def update_state(self, batch_update: Any) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.rows.pop(index, None)
        for added in batch_update.added:
            index, params = added[0], added[1]
            prompt, output = (added[2], added[3]) if len(added) >= 4 else (None, added[2])
            spec = _request_spec(getattr(params, "extra_args", None))
            if spec is None:
                self.rows.pop(index, None)
                continue
            label, mode = spec
            self.rows[index] = (self.wm.keys.key(label), self.wm.delta(mode), prompt, output)
        for a, b, direction in batch_update.moved:
            ra, rb = self.rows.pop(a, None), self.rows.pop(b, None)
            if ra is not None:
                self.rows[b] = ra
            if rb is not None and "SWAP" in str(getattr(direction, "name", direction)).upper():
                self.rows[a] = rb

    def apply(self, logits: Any) -> Any:
        if not self.rows:
            return logits
        rows, keys, seeds, deltas = [], [], [], []
        for index, (key, delta, prompt, output) in self.rows.items():
            seed = self.wm.seed(key, prompt, output)
            if seed is not None and index < logits.shape[0]:
                rows.append(index)
                keys.append(key)
                seeds.append(seed)
                deltas.append(delta)
        if not rows:
            return logits
        return self.wm.bias_rows(logits, rows, keys, seeds, deltas)


def request_processor(
    extra_args: dict[str, Any] | None, wm: _Watermark | None = None
) -> RequestWatermarkProcessor | None:
    """A per-request processor for a request's extra_args (for AdapterLogitsProcessor subclasses)."""
    spec = _request_spec(extra_args)
    if spec is None:
        return None
    wm = wm or _Watermark.from_settings()
    label, mode = spec
    return RequestWatermarkProcessor(wm, wm.keys.key(label), wm.delta(mode))
