"""One streaming pass from traffic records to compact observations, the unit every signal consumes.

An `Obs` is what detection keeps of one request: a few numbers, interned strings and hashes (its
template frames, its near-duplicate signature when sampled), never the response and only for sampled
requests the prompt text (to embed it). The same extraction runs in batch analysis and in the gateway's
background task, so both see identical observations.

Labels (`label`, `label_meta`) are never read here: detection must work on unlabelled traffic.
"""

from __future__ import annotations

import functools
import ipaddress
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import IO, Any

import numpy as np

from distillshield.detect import text as T
from distillshield.detect.content import CONTENT_CHARS
from distillshield.traffic import LineError, TrafficRecord, iter_parsed

# `Obs.endpoint`: kept for analysts and tools, read by no signal and not a feature of the trained model
# (detect/train.py builds its vectors from the signals' features), so a new endpoint can have its own code.
ENDPOINT_CODES = {
    "/v1/chat/completions": 0, "/v1/completions": 1, "/v1/messages": 2, "/v1/responses": 3, "/v1/embeddings": 4,
}  # fmt: skip
RESPONSES_LOGPROBS = "message.output_text.logprobs"  # the `include` entry that asks a Responses body for logprobs
COT_BATCH = 2048  # requests classified together: the classifier is vectorised per batch


def sampled(index: int) -> bool:
    """Which of an account's requests (0-based, in arrival order) are embedded and MinHashed.

    Dense at first, so that evidence exists early (detection delay), then sparser, so the cost stays
    linear in volume with a small constant: at most 32 + n/8 (up to 512) + n/64 requests of n.
    """
    return index < 32 or (index < 512 and index % 8 == 0) or index % 64 == 0


def content_sampled(index: int) -> bool:
    """Which requests the content encoder sees: the first 64 (a window's worth, so that an account of a
    hundred requests is judged on most of them), every 8th up to 256, then every 64th."""
    return index < 64 or (index < 256 and index % 8 == 0) or index % 64 == 0


def embedded(index: int) -> bool:
    """Which requests are embedded (a sparser subset of `sampled`): sentence encoders cost far more per
    prompt than everything else together, so an account contributes about 12 + 12 + n/256 prompts."""
    return index < 12 or (index < 192 and index % 16 == 0) or index % 256 == 0


@functools.lru_cache(maxsize=1 << 16)  # an account's requests come from a few addresses: parse each once
def ip_prefix(ip: str | None) -> str:
    """/24 for IPv4, /48 for IPv6: proxy pools and NATs share a range more often than an address. A loopback
    or unspecified address says nothing about who sent the request (the client runs on the gateway's own
    host: a demo, a sidecar, a test harness), so it is no address at all here, and sharing it is not
    evidence of coordination."""
    if not ip:
        return ""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if addr.is_loopback or addr.is_unspecified:
        return ""
    if addr.version == 4:
        return ".".join(ip.split(".")[:3]) + ".0/24"
    return str(ipaddress.ip_network(f"{ip}/48", strict=False))


def _end_user_id(req: dict[str, Any]) -> str:
    """The request's end-user id (OpenAI `user`, Anthropic `metadata.user_id`), "" when there is none."""
    user = req.get("user")
    if not isinstance(user, str):
        meta = req.get("metadata")
        user = meta.get("user_id") if isinstance(meta, dict) else None
    return user if isinstance(user, str) else ""


def _label(v: Any) -> str:
    """A short label from a request field: its text when it is a string or a number, else "" (a logged
    request may carry anything there, up to values nested hundreds of levels deep that str() cannot print)."""
    if isinstance(v, str):
        return v[:80]
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return str(v)[:80]
    return ""


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


@dataclass(slots=True)
class Obs:
    """One request as detection sees it."""

    ts: float
    account: str
    endpoint: int
    model: str
    org: str
    ip24: str
    ua: str
    user_chars: int
    user_turns: int
    turns: int
    system_hash: int
    skel_hash: int
    raw_hash: int  # the exact prompt (same text sent again, by this or another account)
    head: int  # opening-frame hash (0 = no frame)
    tail: int  # closing-frame hash
    max_tokens: float | None
    temperature: float | None
    n: int
    logprobs: bool
    logit_bias: bool
    tools: bool
    status: int
    completion_tokens: int
    end_user: int = 0  # hash of the request's end-user field (OpenAI `user`, Anthropic metadata.user_id)
    end_user_id: str = ""  # that field as sent (its first 80 characters), for reasons an analyst can act on
    bias_set: int = 0  # hash of the sorted token ids of logit_bias (0: none)
    account_created: float = 0.0  # when the account was created (the record's account_created_at); 0: unknown
    cot: float = -1.0  # CoT-elicitation classifier probability; -1 = not classified (not sampled)
    rubric: float = -1.0  # rubric/grading classifier probability; -1 = not classified
    index: int = 0  # the account's request number, 0-based, in arrival order
    line: int = 0  # line number in the source file (orders equal timestamps as the file did)
    text: str | None = None  # prompt text (its start), sampled requests only: examples and embeddings
    embed: bool = False  # this request's text is to be embedded
    minhash: np.ndarray | None = None  # near-duplicate signature, sampled requests only
    clf_text: str | None = None  # classifier input, dropped once classified
    emb: np.ndarray | None = None  # sentence embedding of `text`, filled in before the engine sees it
    ctext: str | None = None  # content-encoder input (sampled requests), dropped once encoded
    cvec: np.ndarray | None = None  # content vector (float16, detect/content.py), sampled requests only

    def __reduce__(self) -> tuple[type[Obs], tuple[Any, ...]]:
        # Pickled as one tuple of its fields: extraction workers send every observation to the parent, and a
        # slotted dataclass otherwise pickles a state dict per object (a quarter slower both ways).
        return (Obs, tuple(getattr(self, f) for f in OBS_FIELDS))


OBS_FIELDS = tuple(f.name for f in fields(Obs))  # in the order Obs() takes them


def content_text(text: str) -> str | None:
    """What the content encoder reads: the prompt's start, or None for a prompt with no word in it (an
    empty or image-only turn says nothing about content, and its zero vector would look far from all)."""
    text = text[:CONTENT_CHARS]
    return text if T.has_word(text) else None


def classifier_text(user: str, system: str) -> str:
    """What the CoT/rubric classifier reads: instructions sit at the start and end of a prompt (and in the
    system prompt); the middle is payload, and reading it would only cost time."""
    head = user[:300]
    tail = user[-200:] if len(user) > 500 else user[300:]
    return f"{system[:200]} \n {head} {tail}".strip()


class Extractor:
    """Records -> observations. Keeps per-account request counters (for sampling) and interned strings."""

    def __init__(
        self,
        classify: Callable[[list[str]], tuple[np.ndarray, np.ndarray]] | None,
        minhasher: Callable[[list[bytes]], np.ndarray] | None,
        content: Callable[[list[str]], np.ndarray] | None = None,
    ) -> None:
        self.classify = classify
        self.minhasher = minhasher
        self.content = content  # the content encoder (detect/content.py); None switches content off
        self.counts: dict[str, int] = {}
        self._pending: list[Obs] = []
        self._system_hash: dict[str, int] = {}  # system prompts repeat: skeletonise each once

    def _obs(self, rec: TrafficRecord) -> Obs:
        req = rec.request
        user, system, user_turns, turns = T.request_texts(rec.endpoint, req)
        skel = T.skeleton(user)
        toks = T.words(skel)
        head, tail = T.frames(toks)
        index = self.counts.get(rec.account_id, 0)
        self.counts[rec.account_id] = index + 1
        is_sampled = sampled(index)
        resp = rec.response
        usage = resp.usage if resp is not None else None
        lp = req.get("logprobs")
        n = req.get("n", 1)
        mt = _num(req.get("max_tokens", req.get("max_completion_tokens", req.get("max_output_tokens"))))
        include = req.get("include")
        lp_include = isinstance(include, list) and RESPONSES_LOGPROBS in include
        end_user = _end_user_id(req)
        bias = req.get("logit_bias")
        bias_keys = sorted(str(k) for k in bias) if isinstance(bias, dict) else []
        ob = Obs(
            ts=rec.ts,
            account=sys.intern(rec.account_id),
            endpoint=ENDPOINT_CODES.get(rec.endpoint, 0),
            model=sys.intern(_label(req.get("model"))),
            org=sys.intern(rec.org_id or ""),
            ip24=sys.intern(ip_prefix(rec.ip)),
            ua=sys.intern((rec.user_agent or "")[:120]),
            user_chars=len(user),
            user_turns=user_turns,
            turns=turns,
            system_hash=self._system(system),
            skel_hash=T.stable_hash(skel) if skel else 0,
            raw_hash=T.stable_hash(user[:4000]) if user else 0,
            head=head,
            tail=tail,
            max_tokens=mt,
            temperature=_num(req.get("temperature")),
            n=n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1,
            logprobs=bool(lp) or bool(req.get("top_logprobs")) or lp_include,
            logit_bias=bool(req.get("logit_bias")),
            tools=bool(req.get("tools") or req.get("functions")),
            status=rec.status or 200,
            completion_tokens=usage.completion_tokens if usage is not None else 0,
            end_user=T.stable_hash(end_user) if end_user else 0,
            end_user_id=sys.intern(end_user[:80]),
            bias_set=T.stable_hash(",".join(bias_keys)) if bias_keys else 0,
            account_created=float(rec.account_created_at or 0.0),
            index=index,
            text=user[:200] if embedded(index) else (user[:90] if is_sampled else None),
            embed=embedded(index),
            clf_text=classifier_text(user, system) if is_sampled else None,
            ctext=content_text(user or system) if self.content is not None and content_sampled(index) else None,
        )
        if is_sampled and self.minhasher is not None and toks:
            ob.minhash = self.minhasher(T.shingles(toks))
        return ob

    def _system(self, system: str) -> int:
        if not system:
            return 0
        h = self._system_hash.get(system)
        if h is None:
            h = T.stable_hash(T.skeleton(system))
            if len(self._system_hash) < 50_000:
                self._system_hash[system] = h
        return h

    def _flush(self) -> list[Obs]:
        batch, self._pending = self._pending, []
        # Only sampled requests are classified: an account's rates are estimated from its sample, which
        # cuts the classifier's cost (the largest of extraction) by about five.
        todo = [o for o in batch if o.clf_text is not None]
        if self.classify is not None and todo:
            cot, rubric = self.classify([o.clf_text or "" for o in todo])
            for o, c, r in zip(todo, cot, rubric, strict=True):
                o.cot = float(c)
                o.rubric = float(r)
        for o in batch:
            o.clf_text = None
        ctodo = [o for o in batch if o.ctext is not None]
        if self.content is not None and ctodo:
            vecs = self.content([o.ctext or "" for o in ctodo]).astype(np.float16)
            for o, v in zip(ctodo, vecs, strict=True):
                o.cvec = v
                o.ctext = None
        return batch

    def feed(self, rec: TrafficRecord, line: int = 0) -> list[Obs]:
        """Add one record; returns a classified batch when one is complete (else an empty list)."""
        ob = self._obs(rec)
        ob.line = line
        self._pending.append(ob)
        return self._flush() if len(self._pending) >= COT_BATCH else []

    def finish(self) -> list[Obs]:
        return self._flush()

    def extract(self, records: Iterable[TrafficRecord]) -> Iterator[Obs]:
        for rec in records:
            yield from self.feed(rec)
        yield from self.finish()


def strip_ground_truth(rec: TrafficRecord) -> TrafficRecord:
    """The record without `label`, `label_meta` or any unknown top-level field (a simulator's per-record
    truth, for one, travels as an extra field): detection sees only what a gateway would have seen."""
    rec.label = None
    rec.label_meta = None
    if rec.__pydantic_extra__:
        rec.__pydantic_extra__.clear()
    return rec


class LineErrors:
    """Malformed lines: every one counted, the first `keep` kept with their numbers for the report."""

    def __init__(self, keep: int = 1000) -> None:
        self.keep = keep
        self.count = 0
        self.kept: list[LineError] = []

    def add(self, err: LineError) -> None:
        self.count += 1
        if len(self.kept) < self.keep:
            self.kept.append(err)


def read_records(
    source: str | Path | IO[bytes],
    errors: LineErrors,
    on_line: Callable[[int], None] | None = None,
) -> Iterator[TrafficRecord]:
    """Valid records of a traffic file (JSONL or Parquet) or JSONL stream; malformed lines go to `errors`
    and are skipped.

    Ground truth is dropped here, at the edge, so nothing downstream can read it (strip_ground_truth).
    """
    for i, rec in iter_parsed(source):
        if on_line is not None and i % 4096 == 0:
            on_line(i)
        if isinstance(rec, LineError):
            errors.add(rec)
            continue
        yield strip_ground_truth(rec)
