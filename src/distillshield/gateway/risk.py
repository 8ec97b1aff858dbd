"""The risk board: the latest detection verdict per account, shared by detection and policy.

Detection writes it (the online extension as it rescores, or a batch report loaded through the
admin API); the policy stage reads it on every request, so reads are dictionary lookups. One board
per gateway process.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

VERDICTS = ("benign", "suspicious", "extraction")
_SEVERITY = {v: i for i, v in enumerate(VERDICTS)}


@dataclass(frozen=True)
class AccountRisk:
    account_id: str
    risk: float
    verdict: str
    cluster_id: str | None = None
    signals: dict[str, float] = field(default_factory=dict)  # signal name -> score in 0..1
    reasons: tuple[dict[str, Any], ...] = ()  # {"signal", "score", "detail"}
    source: str = "online"  # online | report
    updated_at: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return {
            "account_id": self.account_id,
            "risk": self.risk,
            "verdict": self.verdict,
            "cluster_id": self.cluster_id,
            "signals": dict(self.signals),
            "reasons": list(self.reasons),
            "source": self.source,
            "updated_at": self.updated_at,
        }


class RiskBoard:
    def __init__(self) -> None:
        self._accounts: dict[str, AccountRisk] = {}
        self._clusters: dict[str, set[str]] = {}

    def get(self, account_id: str) -> AccountRisk | None:
        return self._accounts.get(account_id)

    def update(self, risk: AccountRisk) -> None:
        if risk.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}, got {risk.verdict!r}")
        old = self._accounts.get(risk.account_id)
        if old is not None and old.cluster_id and old.cluster_id != risk.cluster_id:
            self._clusters.get(old.cluster_id, set()).discard(risk.account_id)
        self._accounts[risk.account_id] = risk
        if risk.cluster_id:
            self._clusters.setdefault(risk.cluster_id, set()).add(risk.account_id)

    def update_many(self, risks: Iterable[AccountRisk], *, keep_stronger_reports: bool = False) -> int:
        """Set many verdicts; returns how many were set. With `keep_stronger_reports` (the online
        detector's writes) a verdict loaded from a report (batch analysis, an analyst) is not replaced
        by a milder one: the online detector sees only what this process served since it started, so
        it must not silently undo a report's evidence. A newer report or a review decision does."""
        n = 0
        for r in risks:
            if keep_stronger_reports:
                old = self._accounts.get(r.account_id)
                if old is not None and old.source != "online" and _SEVERITY[old.verdict] > _SEVERITY[r.verdict]:
                    continue
            self.update(r)
            n += 1
        return n

    def cluster_members(self, cluster_id: str) -> set[str]:
        return set(self._clusters.get(cluster_id, ()))

    def cluster_size(self, cluster_id: str) -> int:
        """Members of a cluster without copying them (the policy reads it per request)."""
        return len(self._clusters.get(cluster_id, ()))

    def all(self) -> list[AccountRisk]:
        return list(self._accounts.values())


def risks_from_report(report: dict[str, Any], source: str = "report") -> list[AccountRisk]:
    """AccountRisk entries from an analyser report ({"accounts": [...]}); raises ValueError naming the bad field."""
    accounts = report.get("accounts")
    if not isinstance(accounts, list):
        raise ValueError("report.accounts must be an array")
    out = []
    for i, a in enumerate(accounts):
        if not isinstance(a, dict) or not isinstance(a.get("account_id"), str):
            raise ValueError(f"report.accounts[{i}].account_id must be a string")
        risk = a.get("risk")
        if isinstance(risk, bool) or not isinstance(risk, (int, float)) or not 0 <= risk <= 1:
            raise ValueError(f"report.accounts[{i}].risk must be a number in 0..1")
        if a.get("verdict") not in VERDICTS:
            raise ValueError(f"report.accounts[{i}].verdict must be one of {', '.join(VERDICTS)}")
        reasons = tuple(r for r in (a.get("reasons") or []) if isinstance(r, dict))
        signals = {
            str(r["signal"]): float(r["score"])
            for r in reasons
            if "signal" in r and isinstance(r.get("score"), (int, float))
        }
        out.append(
            AccountRisk(a["account_id"], float(risk), a["verdict"], a.get("cluster_id"), signals, reasons, source)
        )
    return out
