"""Gathering the evidence about one account or cluster: whom it covers, their traffic, and the
summaries the report shows (volume, timing, shared infrastructure, representative prompts)."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distillshield.traffic import embedding_texts, responses_messages


class EvidenceError(ValueError):
    """The bundle cannot be built or checked; the message names the file, field or row."""


@dataclass
class Subject:
    """What the bundle is about: an account, or a cluster and its accounts, with the analyser's findings."""

    kind: str  # account | cluster
    id: str
    accounts: list[str]
    findings: list[dict[str, Any]] = field(default_factory=list)  # the report's account entries
    cluster: dict[str, Any] | None = None  # the report's cluster entry


def load_report(path: Path) -> dict[str, Any]:
    """The analyser report (REPORT.json: accounts[], clusters[], summary)."""
    if not path.is_file():
        raise EvidenceError(f"report {path} does not exist or is not a file")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EvidenceError(f"report {path} is not valid JSON: {exc}") from None
    if not isinstance(report, dict) or not isinstance(report.get("accounts", []), list):
        raise EvidenceError(f"report {path}: expected an object with an 'accounts' array")
    for i, a in enumerate(report.get("accounts", [])):
        if not isinstance(a, dict) or not isinstance(a.get("account_id"), str):
            raise EvidenceError(f"report {path}: accounts[{i}].account_id must be a string")
    for i, c in enumerate(report.get("clusters", []) or []):
        if (
            not isinstance(c, dict)
            or not isinstance(c.get("cluster_id"), str)
            or not isinstance(c.get("accounts"), list)
        ):
            raise EvidenceError(f"report {path}: clusters[{i}] needs cluster_id and accounts")
    return report


def resolve_subject(target: str, report: dict[str, Any] | None) -> Subject:
    """An account id or a cluster id of the report; without a report, an account id."""
    if report is None:
        return Subject("account", target, [target])
    by_account = {a["account_id"]: a for a in report.get("accounts", [])}
    for c in report.get("clusters", []) or []:
        if c["cluster_id"] == target:
            members = [str(a) for a in c["accounts"]]
            return Subject("cluster", target, members, [by_account[a] for a in members if a in by_account], c)
    if target in by_account:
        entry = by_account[target]
        cluster = None
        if entry.get("cluster_id"):
            cluster = next(
                (c for c in report.get("clusters", []) or [] if c["cluster_id"] == entry["cluster_id"]), None
            )
        return Subject("account", target, [target], [entry], cluster)
    raise EvidenceError(f"{target!r} is neither an account nor a cluster in the report")


def prompt_text(request: Any) -> str:
    """The user's prompt in a request body (JSON string or dict): the last user message (of `messages`, or of
    a Responses body's `input`), an embeddings body's input texts, or `prompt`."""
    body = request
    if isinstance(request, str):
        try:
            body = json.loads(request)
        except json.JSONDecodeError:
            return request
    if not isinstance(body, dict):
        return ""
    msgs = body.get("messages")
    if msgs is None and "input" in body:
        texts = embedding_texts(body)  # an embeddings body: its input texts; a Responses body: none here
        if texts and not isinstance(body["input"], str):
            return "\n".join(texts)
        msgs = responses_messages(body)
    if isinstance(msgs, list):
        for m in reversed(msgs):
            if isinstance(m, dict) and m.get("role") == "user":
                c = m.get("content")
                if isinstance(c, list):
                    return "\n".join(p.get("text", "") for p in c if isinstance(p, dict))
                return str(c or "")
    p = body.get("prompt")
    return p if isinstance(p, str) else ""


_DIGITS = re.compile(r"\d+")
_SPACE = re.compile(r"\s+")


def template_of(prompt: str, width: int = 48) -> str:
    """A prompt's template key: its start, lower-cased, numbers and whitespace normalised (templated
    campaigns share their instructions and vary the payload)."""
    return _SPACE.sub(" ", _DIGITS.sub("#", prompt.lower())).strip()[:width]


def summarise(rows: list[dict[str, Any]], accounts: list[str]) -> dict[str, Any]:
    """Per-account volume and timing, shared IPs and user agents."""
    per: dict[str, dict[str, Any]] = {}
    ips: dict[str, set[str]] = defaultdict(set)
    agents: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        a = r["account_id"]
        s = per.setdefault(
            a, {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "first_ts": r["ts"], "last_ts": r["ts"],
                "errors": 0, "endpoints": Counter(), "models": Counter()},
        )  # fmt: skip
        s["requests"] += 1
        s["prompt_tokens"] += r.get("prompt_tokens") or 0
        s["completion_tokens"] += r.get("completion_tokens") or 0
        s["first_ts"] = min(s["first_ts"], r["ts"])
        s["last_ts"] = max(s["last_ts"], r["ts"])
        s["errors"] += 1 if (r.get("status") or 200) >= 400 else 0
        s["endpoints"][r.get("endpoint") or "-"] += 1
        s["models"][r.get("model") or "-"] += 1
        if r.get("ip"):
            ips[r["ip"]].add(a)
        if r.get("user_agent"):
            agents[r["user_agent"]].add(a)
    for s in per.values():
        s["endpoints"] = dict(s["endpoints"].most_common())
        s["models"] = dict(s["models"].most_common())
    shared_ips = {ip: sorted(acc) for ip, acc in ips.items() if len(acc) > 1}
    shared_agents = {ua: sorted(acc) for ua, acc in agents.items() if len(acc) > 1}
    return {
        "accounts": {a: per.get(a) for a in accounts},
        "requests": len(rows),
        "accounts_with_traffic": sum(1 for a in accounts if a in per),
        "first_ts": min((r["ts"] for r in rows), default=None),
        "last_ts": max((r["ts"] for r in rows), default=None),
        "ips": {ip: sorted(acc) for ip, acc in ips.items()},
        "shared_ips": shared_ips,
        "shared_user_agents": shared_agents,
    }


def representative_prompts(rows: list[dict[str, Any]], limit: int = 8) -> list[dict[str, Any]]:
    """The most repeated prompt templates, each with its count, accounts and one cited example row."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        p = prompt_text(r.get("request"))
        if p.strip():
            groups[template_of(p)].append(r)
    ranked = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:limit]
    out = []
    for template, members in ranked:
        ex = members[0]
        out.append({
            "template": template,
            "count": len(members),
            "share": round(len(members) / max(1, len(rows)), 4),
            "accounts": sorted({m["account_id"] for m in members}),
            "example": prompt_text(ex.get("request"))[:600],
            "example_response": (ex.get("response_text") or "")[:400],
            "seq": ex.get("seq"),
        })  # fmt: skip
    return out


def template_overlap(rows: list[dict[str, Any]]) -> dict[tuple[str, str], float]:
    """Jaccard overlap of prompt-template sets between accounts (the graph's account-account edges)."""
    sets: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        p = prompt_text(r.get("request"))
        if p.strip():
            sets[r["account_id"]].add(template_of(p))
    accs = sorted(sets)[:200]  # pairwise: bounded for very large clusters
    out = {}
    for i, a in enumerate(accs):
        for b in accs[i + 1 :]:
            inter = len(sets[a] & sets[b])
            if inter:
                out[(a, b)] = inter / len(sets[a] | sets[b])
    return out


def cite(rows: Iterable[dict[str, Any]], seqs: Iterable[int | None]) -> list[dict[str, Any]]:
    want = {s for s in seqs if s is not None}
    return [r for r in rows if r.get("seq") in want]
