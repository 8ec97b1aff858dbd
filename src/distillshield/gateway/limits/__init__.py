"""Rate limits and quotas: the RateLimiter protocol (reserve / settle / release) and its back ends."""

from distillshield.gateway.limits.base import (
    LimitExceeded,
    RateLimiter,
    Reservation,
    Scope,
    estimate_tokens,
)
from distillshield.gateway.limits.memory import MemoryRateLimiter

__all__ = ["LimitExceeded", "MemoryRateLimiter", "RateLimiter", "Reservation", "Scope", "estimate_tokens"]
