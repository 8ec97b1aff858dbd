"""The analyser's report, read and checked: what the evaluator scores.

Format (defined by the analyser; the evaluator accepts exactly this)::

    {"accounts": [{"account_id": str, "risk": 0..1, "verdict": "benign"|"suspicious"|"extraction",
                   "cluster_id": str|null, "reasons": [{"signal", "score", "detail"}],
                   "first_flag_ts": float|null,        # optional: when the account was first flagged
                   "first_flag_index": int|null}],     # optional: at which of its requests (0-based)
     "clusters": [{"cluster_id", "accounts": [...], "risk", "reasons": [...]}],
     "summary": {...}}

Errors name the file and the field (`report.json: accounts[3] (account_id 'a7').risk: ...`) so the
producer can be fixed; they are `ReportError`, which the CLI turns into a one-line error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from distillshield.contracts import Verdict


class ReportError(ValueError):
    """The report is not in the analyser format, or does not fit the traffic; the message names the field."""


class Reason(BaseModel):
    model_config = ConfigDict(extra="allow")

    signal: str
    score: float | None = None
    detail: Any = None


class AccountVerdict(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    account_id: str = Field(..., min_length=1)
    risk: float = Field(..., ge=0.0, le=1.0)
    verdict: Verdict
    cluster_id: str | None = None
    reasons: list[Reason] = Field(default_factory=list)
    first_flag_ts: float | None = Field(None, ge=0.0)
    first_flag_index: int | None = Field(None, ge=0)


class ClusterVerdict(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    cluster_id: str = Field(..., min_length=1)
    accounts: list[str]
    risk: float | None = Field(None, ge=0.0, le=1.0)
    reasons: list[Reason] = Field(default_factory=list)


class AnalyserReport(BaseModel):
    model_config = ConfigDict(extra="allow")

    accounts: list[AccountVerdict]
    clusters: list[ClusterVerdict] = Field(default_factory=list)
    summary: dict[str, Any] = Field(default_factory=dict)


def _where(loc: tuple[int | str, ...], obj: Any) -> str:
    """`accounts[3] (account_id 'a7').risk` from pydantic's ('accounts', 3, 'risk')."""
    out = ""
    node = obj
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            if isinstance(node, dict) and isinstance(node.get("account_id"), str):
                out += f" (account_id {node['account_id']!r})"
        else:
            out += f".{part}" if out else str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return out or "report"


def parse_report(obj: Any, source: str = "report") -> AnalyserReport:
    """Validate a decoded report; raises ReportError naming the first bad fields."""
    if not isinstance(obj, dict):
        raise ReportError(f"{source}: expected a JSON object with 'accounts', got {type(obj).__name__}")
    try:
        report = AnalyserReport.model_validate(obj)
    except ValidationError as exc:
        parts = []
        for e in exc.errors()[:3]:
            got = "" if e["type"] == "missing" else f" (got {e.get('input')!r:.60})"
            parts.append(f"{_where(e['loc'], obj)}: {e['msg']}{got}")
        raise ReportError(f"{source}: not in the analyser report format: " + "; ".join(parts)) from None
    seen: dict[str, int] = {}
    for i, a in enumerate(report.accounts):
        if a.account_id in seen:
            raise ReportError(f"{source}: accounts[{i}].account_id {a.account_id!r} appears twice "
                              f"(first at accounts[{seen[a.account_id]}])")  # fmt: skip
        seen[a.account_id] = i
    return report


def load_report(path: str | Path) -> AnalyserReport:
    """Read and validate a report file; ReportError for a missing file, bad JSON or a bad field."""
    p = Path(path)
    if not p.is_file():
        raise ReportError(f"report {p} does not exist or is not a file")
    try:
        obj = orjson.loads(p.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise ReportError(f"{p}: not valid JSON ({exc})") from None
    return parse_report(obj, str(p))


@dataclass
class Verdicts:
    """A validated report indexed for the join with the traffic."""

    source: str
    by_account: dict[str, AccountVerdict]
    cluster_of: dict[str, str]  # account -> the analyser's cluster (from accounts[].cluster_id and clusters[])
    members: dict[str, list[str]]  # analyser cluster -> its accounts
    summary: dict[str, Any]

    @classmethod
    def from_report(cls, report: AnalyserReport, source: str = "report") -> Verdicts:
        by_account = {a.account_id: a for a in report.accounts}
        cluster_of: dict[str, str] = {}
        for a in report.accounts:
            if a.cluster_id is not None:
                cluster_of[a.account_id] = a.cluster_id
        for i, c in enumerate(report.clusters):
            for member in c.accounts:
                prior = cluster_of.get(member)
                if prior is not None and prior != c.cluster_id:
                    raise ReportError(f"{source}: clusters[{i}] ({c.cluster_id!r}).accounts lists {member!r}, "
                                      f"already in cluster {prior!r}; an account belongs to one cluster")  # fmt: skip
                cluster_of[member] = c.cluster_id
        members: dict[str, list[str]] = {}
        for acc, cid in cluster_of.items():
            members.setdefault(cid, []).append(acc)
        return cls(source, by_account, cluster_of, members, report.summary)

    def referenced_accounts(self) -> set[str]:
        return set(self.by_account) | set(self.cluster_of)

    def flag_indexes(self) -> dict[str, int]:
        """Accounts whose first flag is given only as an index: the traffic pass resolves it to a time."""
        return {a.account_id: a.first_flag_index for a in self.by_account.values()
                if a.first_flag_index is not None and a.first_flag_ts is None}  # fmt: skip

    def gives_flag_times(self) -> bool:
        """True for an online report: some account has a first_flag_ts / first_flag_index field (even null,
        which says "never flagged"); a batch report has neither field anywhere."""
        return any(a.model_fields_set & {"first_flag_ts", "first_flag_index"} for a in self.by_account.values())
