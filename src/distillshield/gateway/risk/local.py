"""The in-process risk board: one per gateway process (the embedded default).

Detection writes it (the online extension as it rescores, or a batch report loaded through the admin API);
the policy stage reads it on every request, so reads are dictionary lookups. The shared board (redis.py)
keeps one of these as its local copy.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from distillshield.contracts import VERDICT_RANK, VERDICTS, AccountRisk

_SEVERITY = VERDICT_RANK


class LocalRiskBoard:
    """The in-process RiskBoard (contracts.RiskBoard): one per gateway process."""

    def __init__(self) -> None:
        self._accounts: dict[str, AccountRisk] = {}
        self._clusters: dict[str, set[str]] = {}

    async def start(self) -> None:
        """Nothing to start: the board is this process's memory."""

    async def stop(self) -> None:
        """Nothing to stop."""

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
            if keep_stronger_reports and self.outranked(r):
                continue
            self.update(r)
            n += 1
        return n

    def outranked(self, risk: AccountRisk) -> bool:
        """True when the board holds a stronger verdict from a report for this account than `risk`."""
        old = self._accounts.get(risk.account_id)
        return old is not None and old.source != "online" and _SEVERITY[old.verdict] > _SEVERITY[risk.verdict]

    def cluster_members(self, cluster_id: str) -> set[str]:
        return set(self._clusters.get(cluster_id, ()))

    def cluster_size(self, cluster_id: str) -> int:
        """Members of a cluster without copying them (the policy reads it per request)."""
        return len(self._clusters.get(cluster_id, ()))

    def all(self) -> list[AccountRisk]:
        return list(self._accounts.values())


def risks_from_report(report: dict[str, Any], source: str = "report") -> list[AccountRisk]:
    """AccountRisk entries from an analyser report ({"accounts": [...]}); raises ValueError naming the bad field.

    What is accepted can be stored and answered: ids fit the review queue's columns (64 characters, no NUL, which
    PostgreSQL refuses) and reasons are finite JSON (no NaN or Infinity, which no JSON answer can carry)."""
    accounts = report.get("accounts")
    if not isinstance(accounts, list):
        raise ValueError("report.accounts must be an array")
    out = []
    for i, a in enumerate(accounts):
        where = f"report.accounts[{i}]"
        if not isinstance(a, dict) or not _is_id(a.get("account_id")):
            raise ValueError(f"{where}.account_id must be a string of 1-64 characters without NUL")
        risk = a.get("risk")
        if isinstance(risk, bool) or not isinstance(risk, (int, float)) or not 0 <= risk <= 1:
            raise ValueError(f"{where}.risk must be a number in 0..1")
        if a.get("verdict") not in VERDICTS:
            raise ValueError(f"{where}.verdict must be one of {', '.join(VERDICTS)}")
        cluster_id = a.get("cluster_id") or None
        if cluster_id is not None and not _is_id(cluster_id):
            raise ValueError(f"{where}.cluster_id must be null or a string of 1-64 characters without NUL")
        reasons = a.get("reasons") or []
        if not isinstance(reasons, list) or not all(isinstance(r, dict) for r in reasons):
            raise ValueError(f"{where}.reasons must be an array of objects")
        for j, r in enumerate(reasons):
            score = r.get("score")
            if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
                raise ValueError(f"{where}.reasons[{j}].score must be a number")
        try:
            json.dumps(reasons, allow_nan=False)
            signals = {
                str(r["signal"]): float(r["score"]) for r in reasons if "signal" in r and r.get("score") is not None
            }
        except (ValueError, OverflowError):
            raise ValueError(f"{where}.reasons must hold finite numbers only (no NaN, Infinity or 1e400)") from None
        out.append(AccountRisk(a["account_id"], float(risk), a["verdict"], cluster_id, signals, tuple(reasons), source))
    return out


def _is_id(value: Any) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= 64 and "\x00" not in value
