"""The watermark inside a vLLM server, for deployments where the gateway forwards over HTTP and
cannot touch logits.

The gateway (with `watermark.upstream_xargs: true`) adds the account's key *label*, never key
material, to each request's `vllm_xargs` (vLLM copies it into `SamplingParams.extra_args`):

    {"vllm_xargs": {"distillshield_wm_key": "account:alice", "distillshield_wm_mode": "on"}}

The vLLM server derives the key from the same secret (DISTILLSHIELD_WATERMARK__SECRET in its
environment, plus the other `watermark` settings) and biases that request's logits exactly as the
embedded model's hook does, so `distillshield watermark detect` works on either's outputs.

Every scheme of the embedded model is served, with the same keys and the same rules:

- `kgw` adds the green-list bias to the logits: one batched pass on the GPU for every marked row.
- `tournament` (the default) and `gumbel` replace the sampler's draw: per marked row, the candidates are
  the tokens the embedded sampler would keep (the request's own top_k, top_p, min_p and temperature, in
  llama.cpp's order: watermark/gumbel.py `truncated`), pre-selected on the GPU with one batched top-k and
  brought to the host (at most top_k values per row, and only the tokens within 15 logits of the
  likeliest; never the vocabulary); the keyed choice among them is the embedded hook's (its
  `GumbelProcessor.answer_context` and `candidates`, then `choose_rows`: the same choice made for every
  marked row of the batch in one numpy pass, equal bit for bit to the hook's one-row loop), and every other
  logit of the row is suppressed so that vLLM's sampler then takes the chosen token. The answer's first
  h tokens, greedy requests and repeated contexts are left to vLLM's sampler, as in the embedded hook.
  A request's `seed` seeds the tournament's own draw (a seeded request stays reproducible).

Two shapes, both over torch tensors:

- `WatermarkLogitsProcessor`: vLLM's batch-level (V1) processor class. Load it with
  `vllm serve MODEL --logits-processors distillshield.watermark.vllm:WatermarkLogitsProcessor`
  or `LLM(model, logits_processors=[WatermarkLogitsProcessor])`. It keeps one row per request.
- `RequestWatermarkProcessor`: the per-request callable `(prompt_ids, output_ids, logits) -> logits`
  (vLLM's `AdapterLogitsProcessor` / older `SamplingParams.logits_processors`); `.output_only()`
  gives the `(token_ids, logits) -> logits` form.

Limits (also in docs/watermark.md): vLLM rejects custom logits processors under speculative decoding;
vLLM marks this API as still changing (written against the V1 `LogitsProcessor`/`BatchUpdate`
interface of vLLM 0.10-0.11; newer "model runner V2" releases use a different row-based interface); the
sampling schemes cost one device-to-host copy of the candidates per step (two small synchronisations);
not run on a GPU or against a real vLLM in this repository's tests, which drive it with a fake torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from distillshield.watermark.gateway import XARG_KEY, XARG_MODE
from distillshield.watermark.gumbel import PREFILTER, SUPPRESS, GumbelProcessor
from distillshield.watermark.keys import KeyRing, WatermarkKey, context_seed, token_table
from distillshield.watermark.kgw import GreenListWatermark
from distillshield.watermark.schemes import Scheme

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


@dataclass(frozen=True)
class Sampling:
    """The sampling settings of one vLLM request that the keyed samplers need (vLLM's `SamplingParams`
    fields of the same names; its defaults: no top-k, no top-p, no min-p, temperature 1)."""

    temperature: float = 1.0
    top_k: int = 0  # 0 or -1: off
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int | None = None

    @classmethod
    def of(cls, params: Any) -> Sampling:
        """From a vLLM `SamplingParams` (read by name: the fields are vLLM's, across its versions)."""
        if params is None:
            return cls()
        d = cls()
        seed = getattr(params, "seed", None)
        return cls(
            temperature=float(getattr(params, "temperature", d.temperature)),
            top_k=int(getattr(params, "top_k", d.top_k) or 0),
            top_p=float(getattr(params, "top_p", d.top_p)),
            min_p=float(getattr(params, "min_p", d.min_p) or 0.0),
            seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
        )


@dataclass
class _Row:
    """One request's watermark state: its key, its KGW bias or its keyed sampler, and vLLM's live token
    lists (vLLM appends to `output` in place)."""

    key: WatermarkKey
    delta: float
    prompt: Sequence[int] | None
    output: Sequence[int]
    sampler: GumbelProcessor | None  # gumbel and tournament: the embedded hook's per-request object


class _Watermark:
    """Settings, keys and per-device tables shared by both processor shapes."""

    def __init__(self, keys: KeyRing, scheme: Scheme, strong_delta: float, torch: Any | None, device: Any) -> None:
        self.keys = keys
        self.scheme = scheme
        self.strong_delta = strong_delta
        self.torch = torch if torch is not None else importlib.import_module("torch")
        self.device = device
        self._tables: dict[tuple[WatermarkKey, int], Any] = {}

    @classmethod
    def from_settings(cls, torch: Any | None = None, device: Any = None) -> _Watermark:
        from distillshield.config import load_settings
        from distillshield.watermark.schemes import keyring_from_settings, scheme_from_settings

        cfg = load_settings().watermark
        return cls(keyring_from_settings(cfg), scheme_from_settings(cfg), cfg.strong_delta, torch, device)

    def row(self, label: str, mode: str, prompt: Sequence[int] | None, output: Sequence[int], params: Any) -> _Row:
        """A request's state. KGW: the mode's bias. The keyed samplers mark `strong` as `on` (as in the
        embedded model: a distortion-free sampler has no strength to raise)."""
        key = self.keys.key(label)
        if isinstance(self.scheme, GreenListWatermark):
            delta = self.strong_delta if mode == "strong" else self.scheme.delta
            return _Row(key, delta, prompt, output, None)
        s = Sampling.of(params)
        sampler = self.scheme.processor(key, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                                        min_p=s.min_p, seed=s.seed)  # fmt: skip
        return _Row(key, 0.0, prompt, output, sampler)

    def table(self, key: WatermarkKey, vocab: int, device: Any) -> Any:
        t = self._tables.get((key, vocab))
        if t is None:
            if len(self._tables) > 1024:  # bounded: one entry per active account key
                self._tables.clear()
            host = token_table(key, vocab).astype(np.int64)
            t = self._tables[(key, vocab)] = self.torch.as_tensor(host, device=device)
        return t

    def seed(self, key: WatermarkKey, prompt_ids: Sequence[int] | None, output_ids: Sequence[int]) -> int | None:
        """KGW's green-list seed for the next token (its context may reach into the prompt)."""
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
        assert isinstance(self.scheme, GreenListWatermark)
        vocab = logits.shape[-1]
        tables = torch.stack([self.table(k, vocab, logits.device) for k in keys])  # (B, V)
        s = torch.as_tensor(np.asarray(seeds, dtype=np.int64), device=logits.device).unsqueeze(1)
        green = _fmix32_int64(torch, tables ^ s) < self.scheme.threshold
        d = torch.as_tensor(np.asarray(deltas, dtype=np.float32), device=logits.device).unsqueeze(1)
        idx = torch.as_tensor(np.asarray(rows, dtype=np.int64), device=logits.device)
        logits[idx] += d.to(logits.dtype) * green.to(logits.dtype)
        return logits

    def choose_rows(
        self, logits: Any, rows: list[int], samplers: list[GumbelProcessor], contexts: list[tuple[int, ...]]
    ) -> Any:
        """Each row's keyed choice (gumbel, tournament), every other logit of the row suppressed.

        On the device: one batched top-k of the rows, as wide as the widest row's candidates can be (the
        tokens within PREFILTER of the row's maximum, at most its top_k). On the host: the embedded hook's
        own candidate rule over those values, row by row, then its keyed choice for every row at once
        (`choose_rows`, numpy over the batch), so a row chooses what the embedded model would with the same
        logits."""
        torch = self.torch
        vocab = int(logits.shape[-1])
        idx = torch.as_tensor(np.asarray(rows, dtype=np.int64), device=logits.device)
        sub = logits[idx]
        top = torch.amax(sub, dim=-1, keepdim=True)
        near = torch.count_nonzero(sub >= top - PREFILTER, dim=-1).tolist()
        width = max(min(n, s.top_k) if s.top_k > 0 else n for n, s in zip(near, samplers, strict=True))
        values, ids = torch.topk(sub, width, dim=-1)
        top_values = np.asarray(values.tolist(), np.float32)  # the logits' own values, as the embedded hook sees them
        top_ids = np.asarray(ids.tolist(), np.int64)
        winners, kept = type(samplers[0]).choose_rows(samplers, contexts, top_ids, top_values, vocab)  # one scheme
        win = torch.as_tensor(winners, device=logits.device)
        keep = torch.as_tensor(kept, device=logits.device).to(logits.dtype)
        logits[idx] = SUPPRESS
        logits[idx, win] = keep
        return logits

    def apply(self, logits: Any, rows: dict[int, _Row]) -> Any:
        """Watermark the listed rows of a (batch, vocab) logits tensor."""
        biased: list[tuple[int, WatermarkKey, int, float]] = []
        chosen: list[tuple[int, GumbelProcessor, tuple[int, ...]]] = []
        for index, r in rows.items():
            if index >= logits.shape[0]:
                continue
            if r.sampler is None:
                seed = self.seed(r.key, r.prompt, r.output)
                if seed is not None:
                    biased.append((index, r.key, seed, r.delta))
            else:
                ctx = r.sampler.answer_context(r.output)
                if ctx is not None:
                    chosen.append((index, r.sampler, ctx))
        if biased:
            rows_, keys, seeds, deltas = (list(c) for c in zip(*biased, strict=True))
            logits = self.bias_rows(logits, rows_, keys, seeds, deltas)
        if chosen:
            rows_, samplers, contexts = (list(c) for c in zip(*chosen, strict=True))
            logits = self.choose_rows(logits, rows_, samplers, contexts)
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

    def __init__(self, wm: _Watermark, row: _Row) -> None:
        self.wm = wm
        self.state = row

    def __call__(self, prompt_ids: Sequence[int] | None, output_ids: Sequence[int], logits: Any) -> Any:
        self.state.prompt, self.state.output = prompt_ids, output_ids
        return self.wm.apply(logits.unsqueeze(0), {0: self.state})[0]

    def output_only(self) -> Any:
        """The `(token_ids, logits) -> logits` form (no prompt: KGW leaves the first h output tokens unmarked,
        as the keyed samplers always do)."""
        return lambda token_ids, logits: self(None, token_ids, logits)


class WatermarkLogitsProcessor(_VLLMBase):  # type: ignore[misc, valid-type]
    """vLLM V1 batch-level logits processor: watermarks the rows whose request carries our xargs."""

    def __init__(
        self, vllm_config: Any = None, device: Any = None, is_pin_memory: bool = False, *, _wm: Any = None
    ) -> None:
        self.wm: _Watermark = _wm or _Watermark.from_settings(device=device)
        self.device = device
        self.rows: dict[int, _Row] = {}  # batch row index -> its request's state

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
            self.rows[index] = self.wm.row(spec[0], spec[1], prompt, output, params)
        for a, b, direction in batch_update.moved:
            ra, rb = self.rows.pop(a, None), self.rows.pop(b, None)
            if ra is not None:
                self.rows[b] = ra
            if rb is not None and "SWAP" in str(getattr(direction, "name", direction)).upper():
                self.rows[a] = rb

    def apply(self, logits: Any) -> Any:
        if not self.rows:
            return logits
        return self.wm.apply(logits, self.rows)


def request_processor(
    extra_args: dict[str, Any] | None, wm: _Watermark | None = None, params: Any = None
) -> RequestWatermarkProcessor | None:
    """A per-request processor for a request's extra_args (for AdapterLogitsProcessor subclasses); `params`,
    the request's SamplingParams, gives the keyed samplers its temperature, top_k, top_p, min_p and seed."""
    spec = _request_spec(extra_args)
    if spec is None:
        return None
    wm = wm or _Watermark.from_settings()
    return RequestWatermarkProcessor(wm, wm.row(spec[0], spec[1], None, [], params))
