"""Rate-limit headers in each API's own convention, from a RateStatus (the tightest scope's windows).

OpenAI (https://platform.openai.com/docs/guides/rate-limits, "Rate limits in headers"):
  x-ratelimit-limit-requests, x-ratelimit-remaining-requests, x-ratelimit-reset-requests, and the same three
  for tokens; a reset is the time until the window is back to its initial state, written as a Go duration
  ("20ms", "1s", "8.64s", "6m0s").
Anthropic (https://docs.anthropic.com/en/api/rate-limits, "Response headers"):
  anthropic-ratelimit-requests-limit, -requests-remaining, -requests-reset, and the same three for tokens; a
  reset is the moment the window is fully replenished, as an RFC 3339 UTC timestamp.

Resets are rounded up (to the millisecond, or to the second for a timestamp): a client that waits for them
is never early. retry-after on a 429 comes from LimitExceeded.headers().
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from distillshield.gateway.limits.base import RateStatus, Window


def go_duration(seconds: float) -> str:
    """`seconds` (rounded up to the millisecond) as OpenAI writes a reset: Go's time.Duration format."""
    ms = math.ceil(round(seconds * 1000.0, 3))
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest // 1000}" if rest % 1000 == 0 else f"{rest / 1000:.3f}".rstrip("0")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def rfc3339(timestamp: float) -> str:
    """A Unix time (rounded up to the second) as an RFC 3339 UTC timestamp, e.g. 2026-12-02T10:15:00Z."""
    return datetime.fromtimestamp(math.ceil(round(timestamp, 6)), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def openai_headers(rate: RateStatus | None) -> dict[str, str]:
    """x-ratelimit-{limit,remaining,reset}-{requests,tokens} for the windows that have a limit."""
    h: dict[str, str] = {}
    if rate is None:
        return h
    for name, w in (("requests", rate.requests), ("tokens", rate.tokens)):
        if w is not None:
            h[f"x-ratelimit-limit-{name}"] = str(w.limit)
            h[f"x-ratelimit-remaining-{name}"] = str(w.remaining)
            h[f"x-ratelimit-reset-{name}"] = go_duration(w.reset_s)
    return h


def anthropic_headers(rate: RateStatus | None) -> dict[str, str]:
    """anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset} for the windows that have a limit."""
    h: dict[str, str] = {}
    if rate is None:
        return h
    windows: tuple[tuple[str, Window | None], ...] = (("requests", rate.requests), ("tokens", rate.tokens))
    for name, w in windows:
        if w is not None:
            h[f"anthropic-ratelimit-{name}-limit"] = str(w.limit)
            h[f"anthropic-ratelimit-{name}-remaining"] = str(w.remaining)
            h[f"anthropic-ratelimit-{name}-reset"] = rfc3339(rate.at + w.reset_s)
    return h
