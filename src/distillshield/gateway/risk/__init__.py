"""The risk board: the latest detection verdict per account, shared by detection and policy.

- local.py: `LocalRiskBoard`, in one process (the embedded default);
- redis.py: `RedisRiskBoard`, one board for every gateway replica, read from a local copy that Redis
  Streams keep current (`risk.backend: redis`).

The protocol (contracts.RiskBoard) and AccountRisk are declared in contracts.py.
"""

from __future__ import annotations

from distillshield.config import RiskSettings
from distillshield.contracts import RiskBoard
from distillshield.gateway.risk.local import LocalRiskBoard, risks_from_report

__all__ = ["LocalRiskBoard", "build_risk_board", "risks_from_report"]


def build_risk_board(settings: RiskSettings, limits_redis_url: str) -> RiskBoard:
    """The board the settings ask for; the Redis board uses the limiter's Redis unless given its own URL."""
    if settings.backend == "redis":
        from distillshield.gateway.risk.redis import RedisRiskBoard

        return RedisRiskBoard(settings.redis_url or limits_redis_url, namespace=settings.namespace)
    return LocalRiskBoard()
