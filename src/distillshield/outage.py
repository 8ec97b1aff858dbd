"""One log line per outage, not one per retry.

Background loops that retry against a dependency (the policy's review-book upkeep, the audit spool's drain)
would otherwise write an error, often with a traceback, every tick for as long as the dependency is away.
`Outage` logs the first failure (with its traceback at debug level only), counts the rest, and logs once
when the dependency answers again.
"""

from __future__ import annotations

import logging


class Outage:
    def __init__(self, logger: logging.Logger, what: str) -> None:
        self.log = logger
        self.what = what
        self.failures = 0  # consecutive failures of the current outage (0: none)

    @property
    def ongoing(self) -> bool:
        return self.failures > 0

    def failed(self, exc: BaseException, retry_s: float) -> None:
        """Record a failed attempt; only the first of an outage is logged (as an error)."""
        self.failures += 1
        if self.failures == 1:
            self.log.error(
                "%s failed: %s: %s; retrying every %.1f s, logged again when it recovers",
                self.what,
                type(exc).__name__,
                str(exc).splitlines()[0][:300] if str(exc) else "",
                retry_s,
            )
            self.log.debug("%s failure", self.what, exc_info=exc)

    def succeeded(self) -> None:
        """Record a successful attempt; logs the end of an outage."""
        if self.failures:
            self.log.warning("%s recovered after %d failed attempts", self.what, self.failures)
            self.failures = 0
