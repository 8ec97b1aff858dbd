"""Request-side degradation, applied before the rate-limit reservation and the upstream call.

Dropping `logprobs`, `top_logprobs` and `logit_bias` removes the levers that leak most per request
(the output projection of production models was recovered through them, threat-model.md). Capping
`max_tokens` and `n` bounds what one request can harvest; it runs before `RateLimiter.reserve`
because the reservation is computed from max_tokens and n.
"""

from __future__ import annotations

from distillshield.gateway.upstream.base import GenRequest

LOGPROB_FIELDS = ("logprobs", "top_logprobs", "logit_bias")


def cap_request(
    gen: GenRequest, *, drop_logprobs: bool = True, max_tokens: int | None = None, n: int | None = None
) -> list[str]:
    """Degrade `gen` in place (its body is the gateway's own copy); returns the fields changed."""
    body = gen.body
    changed = []
    if drop_logprobs:
        for k in LOGPROB_FIELDS:
            if k in body:
                del body[k]
                changed.append(k)
    if max_tokens is not None and gen.max_tokens > max_tokens:
        gen.max_tokens = max_tokens
        for k in ("max_tokens", "max_completion_tokens"):
            if isinstance(body.get(k), int):
                body[k] = min(body[k], max_tokens)
        changed.append("max_tokens")
    if n is not None:
        asked = body.get("n")
        if isinstance(asked, int) and asked > n:
            # completions with a list of prompts generate n per prompt: keep that factor
            gen.n = gen.n // asked * n
            body["n"] = n
            changed.append("n")
    return changed
