"""Rate limits and quotas: the RateLimiter protocol (reserve / settle / release, or finish) and its back ends."""

from distillshield.config import LimitsSettings
from distillshield.gateway.limits.base import (
    LimitExceeded,
    RateLimiter,
    RateStatus,
    Reservation,
    Scope,
    Window,
    estimate_tokens,
)
from distillshield.gateway.limits.headers import anthropic_headers, openai_headers
from distillshield.gateway.limits.memory import MemoryRateLimiter


def build_limiter(settings: LimitsSettings) -> RateLimiter:
    """The RateLimiter the settings name (limits.backend)."""
    if settings.backend == "redis":
        from distillshield.gateway.limits.redis import RedisRateLimiter

        return RedisRateLimiter(
            settings.redis_url, lease_s=settings.redis_lease_s, fresh_policy=settings.redis_fresh_policy
        )
    return MemoryRateLimiter()


__all__ = [
    "LimitExceeded",
    "RateStatus",
    "Window",
    "anthropic_headers",
    "openai_headers",
    "MemoryRateLimiter",
    "build_limiter",
    "RateLimiter",
    "Reservation",
    "Scope",
    "estimate_tokens",
]
