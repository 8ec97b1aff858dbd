"""The logit stage: what a request may learn about the model's output layer, for every account.

"Stealing Part of a Production Language Model" (Carlini et al., ICML 2024) recovered the embedding
projection of production models, and the exact hidden size of others, from `logit_bias` combined with
logprobs: biasing a chosen set of tokens into the returned top-k reads their logits relative to a
reference token, a few thousand queries per output dimension. Finlayson et al. (2024) showed that full
logit vectors of a few thousand prompts reveal the hidden size through the softmax bottleneck. Providers
answered by refusing the combination and limiting `top_logprobs`. This stage does the same for every
account, by settings (`logits`), after the policy stage (a degraded account's logprobs are gone by then)
and before the rate limiter:

- `logit_bias` is validated (token ids as keys, biases in [-100, 100], at most `max_logit_bias_tokens`);
- `logit_bias` together with logprobs is refused with a 400 that says why (`logit_bias_with_logprobs`);
- `top_logprobs` (chat) and the legacy `logprobs` count (completions) are lowered to `max_top_logprobs`;
- optionally, every returned logprob gets Gaussian noise keyed by the request (`logprob_noise`,
  `noise_key`): the same request gets the same noise, so repeating it does not average the noise away.

Honest users of logprobs (evaluation harnesses reading the top-5 alternatives, calibration) are unaffected
by the defaults. Detection sees the attempts too (detect/signals/logits.py): a refused request is still an
audited one.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from typing import Any

import orjson

from distillshield.config import LogitSettings
from distillshield.gateway.errors import ApiError
from distillshield.gateway.upstream.base import GenRequest

MAX_BIAS = 100.0


def asks_logprobs(gen: GenRequest) -> bool:
    """Does the request ask for logprobs (chat: logprobs true or top_logprobs; completions: logprobs n)?"""
    body = gen.body
    if gen.api == "chat":
        return body.get("logprobs") is True or bool(body.get("top_logprobs"))
    lp = body.get("logprobs")
    return lp is not None and lp is not False


def _validate_bias(bias: Any, limit: int) -> None:
    if not isinstance(bias, dict):
        raise ApiError(400, "'logit_bias' must be an object mapping token ids to biases", param="logit_bias")
    if len(bias) > limit:
        raise ApiError(400, f"'logit_bias' may name at most {limit} tokens, got {len(bias)}", param="logit_bias")
    for k, v in bias.items():
        if not (isinstance(k, str) and k.isdigit()):
            raise ApiError(400, f"'logit_bias' keys must be token ids (digits), got {k[:40]!r}", param="logit_bias")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not -MAX_BIAS <= v <= MAX_BIAS:
            raise ApiError(
                400, f"'logit_bias[{k}]' must be a number from -100 to 100, got {str(v)[:40]}", param="logit_bias"
            )


class LogitGuard:
    """Applies `LogitSettings` to each generation request (in place) before it goes anywhere."""

    def __init__(self, cfg: LogitSettings) -> None:
        self.cfg = cfg
        key = cfg.noise_key.encode() if cfg.noise_key else secrets.token_bytes(32)
        self._noise_key = hashlib.blake2b(key, digest_size=32).digest()

    def apply(self, gen: GenRequest) -> None:
        """Refuse (ApiError 400) or lower, in place, what the settings say."""
        body = gen.body
        if "logit_bias" in body and body["logit_bias"] is not None:
            _validate_bias(body["logit_bias"], self.cfg.max_logit_bias_tokens)
            if self.cfg.logit_bias_with_logprobs == "refuse" and asks_logprobs(gen):
                raise ApiError(
                    400,
                    "'logit_bias' cannot be combined with logprobs here: together they expose the model's output "
                    "layer (Carlini et al., 2024). Send one or the other.",
                    code="logit_bias_with_logprobs",
                    param="logit_bias",
                )
        cap = self.cfg.max_top_logprobs
        field = "top_logprobs" if gen.api == "chat" else "logprobs"
        asked = body.get(field)
        if isinstance(asked, int) and not isinstance(asked, bool) and asked > cap:
            body[field] = cap

    @property
    def noise(self) -> float:
        return self.cfg.logprob_noise

    def noise_seed(self, gen: GenRequest) -> bytes:
        """What keys the noise of this request: the secret and the request body (the same request, the
        same noise)."""
        digest = hashlib.blake2b(self._noise_key, digest_size=32)
        digest.update(orjson.dumps(gen.body, option=orjson.OPT_SORT_KEYS, default=str))
        return digest.digest()


def keyed_gauss(seed: bytes, index: int, sigma: float) -> float:
    """A standard-normal draw times sigma, fixed by (seed, index): Box-Muller on two keyed uniforms.
    Hand-written: the noise must be a pure function of the request and the position in the answer, which a
    process-wide random generator is not."""
    h = hashlib.blake2b(seed + index.to_bytes(8, "little"), digest_size=16).digest()
    u1 = (int.from_bytes(h[:8], "little") + 1) / (2**64 + 1)
    u2 = int.from_bytes(h[8:], "little") / 2**64
    return sigma * math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)
