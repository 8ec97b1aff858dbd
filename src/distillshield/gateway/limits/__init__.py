"""Rate limits and quotas: the RateLimiter protocol (reserve / settle / release, or finish) and its back ends."""

from distillshield.config import LimitsSettings
from distillshield.gateway.limits.base import (
    LimitExceeded,
    RateLimiter,
    Reservation,
    Scope,
    estimate_tokens,
)
from distillshield.gateway.limits.memory import MemoryRateLimiter


def build_limiter(settings: LimitsSettings) -> RateLimiter:
    """The RateLimiter the settings name (limits.backend)."""
    if settings.backend == "redis":
        from distillshield.gateway.limits.redis import RedisRateLimiter

        return RedisRateLimiter(settings.redis_url)
    return MemoryRateLimiter()


__all__ = [
    "LimitExceeded",
    "MemoryRateLimiter",
    "build_limiter",
    "RateLimiter",
    "Reservation",
    "Scope",
    "estimate_tokens",
]
