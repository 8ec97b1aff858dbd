"""Live mode: send simulated traffic to a running gateway on this machine, and record what it served.

Every simulated account becomes a real account with a real key (through the admin API); requests go
out with real concurrency (aiohttp, one connection pool), the account's user agent and its simulated
client IP in X-Forwarded-For (the gateway uses it only when `server.trust_forwarded_for` is on).
Multi-turn conversations are replayed as conversations: a turn waits for the previous one and carries
the answers the gateway really served in place of the offline stand-ins. Each record is written with
what happened: status, latency, the served text, finish reason and token usage. Attack personas that act
on the answers (logit_extraction reads the returned logprobs into a logit-difference matrix) observe their
own requests' answers and report what they got in the run's stats (`LiveStats.attacks`).

Loopback only: a target that is not 127.0.0.0/8, ::1 or localhost is refused before anything is sent
(this is a load and attack generator; it must not be pointed at someone else's API).
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from distillshield.simulate.personas import PERSONAS, LiveObserver

ANTHROPIC_VERSION = "2023-06-01"


class LiveError(Exception):
    """Live mode cannot run (target refused, gateway unreachable, admin token rejected)."""


def check_loopback(url: str) -> str:
    """The gateway's base URL (scheme://host:port, no /v1) if `url` points at this machine; else LiveError."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LiveError(
            f"--target must be an http:// URL of a gateway on this machine, e.g. http://127.0.0.1:8787 (got '{url}')"
        )
    host = parts.hostname
    loopback = host == "localhost"
    if not loopback:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False  # a DNS name other than localhost could resolve anywhere: refuse it
    if not loopback:
        raise LiveError(
            f"refusing to send simulated traffic to '{host}': live mode only targets a gateway on this machine "
            "(127.0.0.1, ::1 or localhost). Run the simulator on the gateway's host instead."
        )
    try:
        port = parts.port
    except ValueError:
        raise LiveError(f"--target has an invalid port: '{url}'") from None
    netloc = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{netloc}{f':{port}' if port else ''}"


@dataclass
class LiveOptions:
    target: str
    admin_token: str
    concurrency: int = 16
    speed: float | None = None  # simulated seconds per real second; None = as fast as concurrency allows
    limit: int | None = None  # send only the first N records
    max_tokens: int | None = None  # cap max_tokens (the embedded model makes ~150 tokens/s)
    model: str | None = None  # send every request to this model
    timeout_s: float = 300.0


@dataclass
class LiveStats:
    sent: int = 0
    served: int = 0
    errors: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    accounts_created: int = 0
    completion_tokens: int = 0
    models: dict[str, str] = field(default_factory=dict)  # simulated name -> name sent
    elapsed_s: float = 0.0
    # account id -> what its attack persona got ({"persona": ..., "summary": ..., ...}); see LiveObserver
    attacks: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["elapsed_s"] = round(self.elapsed_s, 3)
        d["requests_per_s"] = round(self.sent / self.elapsed_s, 1) if self.elapsed_s > 0 else 0.0
        return d


@dataclass
class _Key:
    key: str
    key_id: str


class _Conversation:
    """The served answers of one conversation so far, and the future of its latest turn."""

    __slots__ = ("latest", "texts")

    def __init__(self) -> None:
        self.latest: asyncio.Future[None] | None = None
        self.texts: list[str | None] = []


@dataclass
class _Turn:
    conv: _Conversation
    slot: int  # index of this turn's answer in conv.texts
    done: asyncio.Future[None]
    wait_for: asyncio.Future[None] | None


class LiveReplay:
    """One live run: accounts and keys, model mapping, dispatch, conversations, ordered output."""

    def __init__(self, opts: LiveOptions, out: IO[bytes], on_progress: Callable[[dict[str, Any]], None] | None) -> None:
        self.opts = opts
        self.base = check_loopback(opts.target)
        self.out = out
        self.on_progress = on_progress
        self.stats = LiveStats()
        self.keys: dict[str, asyncio.Task[_Key]] = {}
        self.admin_lock = asyncio.Lock()
        self.served_models: list[str] | None = None
        self.models_lock = asyncio.Lock()
        self.convs: dict[str, _Conversation] = {}
        self.results: dict[int, dict[str, Any] | None] = {}
        self.failure: BaseException | None = None  # the first error that stops the run
        self.next_to_write = 0
        self.session: aiohttp.ClientSession | None = None
        self.clock_shift: float | None = None  # real time minus the simulated time of the run's first request
        self.observers: dict[str, tuple[str, LiveObserver]] = {}  # account id -> (persona, its observer)

    # -- set-up -----------------------------------------------------------------------------------------

    async def _admin(self, method: str, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        assert self.session is not None
        async with self.session.request(
            method,
            f"{self.base}/admin{path}",
            json=body,
            headers={"authorization": f"Bearer {self.opts.admin_token}"},
        ) as resp:
            data = await resp.json(content_type=None)
            if resp.status in (401, 403):
                detail = data.get("detail") if isinstance(data, dict) else data
                raise LiveError(f"the gateway's admin API refused the admin token ({resp.status}: {detail})")
            return resp.status, data

    def _created_at(self, simulated: Any) -> float | None:
        """The account's simulated creation time moved onto the real clock like the run's first request (the
        waves in which a campaign's accounts were created keep their spacing, so the gateway's log carries them
        as a real deployment's would: detect/cohort.py); never later than now."""
        if not isinstance(simulated, (int, float)) or self.clock_shift is None:
            return None
        return min(float(simulated) + self.clock_shift, time.time())

    async def _create_key(self, rec: dict[str, Any]) -> _Key:
        meta = rec.get("label_meta") or {}
        tier, verification = meta.get("tier", "standard"), meta.get("verification", "none")
        # One admin call at a time: accounts of a new org created concurrently would race on the org row.
        async with self.admin_lock:
            status, data = await self._admin(
                "POST",
                "/accounts",
                {
                    "id": rec["account_id"],
                    "org_id": rec.get("org_id") or "default",
                    "tier": tier,
                    "verification": verification,
                    "created_at": self._created_at(meta.get("account_created_at")),
                },
            )
            if status == 201:
                self.stats.accounts_created += 1
            elif status != 409:  # 409: it exists already (a re-run against the same gateway)
                raise LiveError(f"could not create account {rec['account_id']}: {status} {data}")
            status, data = await self._admin("POST", "/keys", {"account_id": rec["account_id"]})
            if status != 201:
                raise LiveError(f"could not create a key for account {rec['account_id']}: {status} {data}")
        return _Key(data["key"], data["id"])

    async def _map_model(self, name: str, key: _Key) -> str:
        if self.opts.model:
            return self.opts.model
        async with self.models_lock:
            if self.served_models is None:
                assert self.session is not None
                async with self.session.get(
                    f"{self.base}/v1/models", headers={"authorization": f"Bearer {key.key}"}
                ) as r:
                    data = await r.json(content_type=None) if r.status == 200 else {}
                models = data.get("data") if isinstance(data, dict) else None
                # No list (an old gateway, an error): send the simulated names unchanged.
                self.served_models = [m["id"] for m in models or () if isinstance(m, dict) and "id" in m]
            served = self.served_models
            if name in served or not served:
                return name
            mapped = self.stats.models.get(name)
            if mapped is None:
                # Simulated names map onto the served ones in order of first appearance.
                mapped = served[len(self.stats.models) % len(served)]
                self.stats.models[name] = mapped
            return mapped

    # -- one request ------------------------------------------------------------------------------------

    def _prepare(self, body: dict[str, Any], model: str, texts: list[str | None]) -> dict[str, Any]:
        body = dict(body)
        body["model"] = model
        cap = self.opts.max_tokens
        if cap is not None:
            for k in ("max_tokens", "max_completion_tokens"):
                if k in body and isinstance(body[k], int) and body[k] > cap:
                    body[k] = cap
            if "max_tokens" not in body and "max_completion_tokens" not in body:
                body["max_tokens"] = cap
        if texts and isinstance(body.get("messages"), list):
            # Replace the offline stand-in answers with what the gateway served, aligned from the end.
            msgs = [dict(m) for m in body["messages"]]
            slots = [
                i for i, m in enumerate(msgs) if m.get("role") == "assistant" and isinstance(m.get("content"), str)
            ]
            for i, text in zip(reversed(slots), reversed(texts), strict=False):
                if text is not None:
                    msgs[i]["content"] = text
            body["messages"] = msgs
        return body

    async def _send(self, idx: int, rec: dict[str, Any], turn: _Turn | None, sem: asyncio.Semaphore) -> None:
        out: dict[str, Any] | None = dict(rec)
        text: str | None = None
        try:
            key = await self.keys[rec["account_id"]]
            if turn is not None and turn.wait_for is not None:
                await turn.wait_for
            body = rec["request"]
            model = await self._map_model(str(body.get("model", "")), key)
            earlier = turn.conv.texts[: turn.slot] if turn is not None and turn.wait_for is not None else []
            sent = self._prepare(body, model, earlier)
            assert out is not None
            text = await self._post(out, rec, key, sent)
            sim = dict(rec.get("sim") or {})
            sim["sim_ts"] = rec["ts"]
            if model != body.get("model"):
                sim["sim_model"] = body.get("model")
            out["sim"] = sim
            out["request"] = sent
            out["key_id"] = key.key_id
            if "account_created_at" in out:  # as the gateway holds it (_created_at)
                out["account_created_at"] = self._created_at(out["account_created_at"])
        except Exception as exc:  # noqa: BLE001 - remembered and re-raised by run(), which stops dispatching
            out = None  # never sent: nothing to record
            if self.failure is None:
                self.failure = exc
        finally:
            if turn is not None:
                turn.conv.texts[turn.slot] = text
                if not turn.done.done():
                    turn.done.set_result(None)
            sem.release()
            self.results[idx] = out
            self._flush()

    def _observer(self, rec: dict[str, Any]) -> LiveObserver | None:
        """The observer of this record's account, when its persona has one (made on first use)."""
        acct = rec["account_id"]
        if acct not in self.observers:
            persona = str((rec.get("label_meta") or {}).get("persona") or "")
            cls = PERSONAS.get(persona)
            if cls is None or cls.live_observer is None:
                return None
            self.observers[acct] = (persona, cls.live_observer())
        return self.observers[acct][1]

    async def _post(self, out: dict[str, Any], rec: dict[str, Any], key: _Key, body: dict[str, Any]) -> str | None:
        text, answer = await self._exchange(out, rec, key, body)
        observer = self._observer(rec)
        if observer is not None:
            observer.observe(body, out.get("status"), answer, out.get("error"))
        return text

    async def _exchange(
        self, out: dict[str, Any], rec: dict[str, Any], key: _Key, body: dict[str, Any]
    ) -> tuple[str | None, Any]:
        """Send one request and record what happened in `out`; returns the served text and the parsed
        JSON answer (None for streams and for answers that are not JSON)."""
        assert self.session is not None
        endpoint = rec["endpoint"]
        headers = {"content-type": "application/json"}
        if endpoint == "/v1/messages":
            headers["x-api-key"] = key.key
            headers["anthropic-version"] = ANTHROPIC_VERSION
        else:
            headers["authorization"] = f"Bearer {key.key}"
        if rec.get("user_agent"):
            headers["user-agent"] = rec["user_agent"]
        if rec.get("ip"):
            headers["x-forwarded-for"] = rec["ip"]
        out["ts"] = round(time.time(), 3)
        t0 = time.perf_counter()
        self.stats.sent += 1
        try:
            async with self.session.post(f"{self.base}{endpoint}", data=orjson.dumps(body), headers=headers) as resp:
                status = resp.status
                answer: Any = None
                if status >= 400:
                    raw = await resp.read()
                    out["error"] = _error_message(raw)
                    answer = _loads(raw)
                    text = None
                elif body.get("stream"):
                    text = await self._read_stream(resp, endpoint, out)
                else:
                    answer = _loads(await resp.read())
                    text = _read_json(answer, endpoint, out)
        except (aiohttp.ClientError, TimeoutError) as exc:
            out["error"] = f"client error: {exc.__class__.__name__}: {exc}"
            out["latency_ms"] = round((time.perf_counter() - t0) * 1000, 3)
            self.stats.errors += 1
            self._count("client_error")
            return None, None
        out["status"] = status
        out["latency_ms"] = round((time.perf_counter() - t0) * 1000, 3)
        self._count(str(status))
        if status >= 400 or "error" in out:
            self.stats.errors += 1
        else:
            self.stats.served += 1
            usage = (out.get("response") or {}).get("usage") or {}
            self.stats.completion_tokens += int(usage.get("completion_tokens") or 0)
        return text, answer

    async def _read_stream(self, resp: aiohttp.ClientResponse, endpoint: str, out: dict[str, Any]) -> str:
        parts: list[str] = []
        finish: str | None = None
        usage: dict[str, int] = {}
        buf = b""
        async for chunk in resp.content.iter_any():
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]" or not data:
                    continue
                try:
                    ev = orjson.loads(data)
                except orjson.JSONDecodeError:
                    continue
                if not isinstance(ev, dict):
                    continue
                if ("error" in ev and endpoint != "/v1/messages") or ev.get("type") == "error":
                    err = ev.get("error")
                    out["error"] = err.get("message") if isinstance(err, dict) else str(err)
                    continue
                if endpoint == "/v1/messages":
                    kind = ev.get("type")
                    if kind == "content_block_delta":
                        parts.append((ev.get("delta") or {}).get("text") or "")
                    elif kind == "message_start":
                        u = (ev.get("message") or {}).get("usage") or {}
                        usage["prompt_tokens"] = int(u.get("input_tokens") or 0)
                    elif kind == "message_delta":
                        finish = (ev.get("delta") or {}).get("stop_reason") or finish
                        usage["completion_tokens"] = int((ev.get("usage") or {}).get("output_tokens") or 0)
                    continue
                for c in ev.get("choices") or ():
                    piece = (
                        (c.get("delta") or {}).get("content") if endpoint == "/v1/chat/completions" else c.get("text")
                    )
                    if piece:
                        parts.append(piece)
                    finish = c.get("finish_reason") or finish
                if ev.get("usage"):
                    u = ev["usage"]
                    usage = {
                        "prompt_tokens": int(u.get("prompt_tokens") or 0),
                        "completion_tokens": int(u.get("completion_tokens") or 0),
                    }
        text = "".join(parts)
        out["response"] = {"text": text, "finish_reason": finish, **({"usage": usage} if usage else {})}
        return text

    def _count(self, key: str) -> None:
        self.stats.by_status[key] = self.stats.by_status.get(key, 0) + 1

    def _flush(self) -> None:
        """Write finished records in dispatch (simulated time) order; unsent ones (None) are skipped."""
        while self.next_to_write in self.results:
            rec = self.results.pop(self.next_to_write)
            self.next_to_write += 1
            if rec is None:
                continue
            self.out.write(orjson.dumps(rec, option=orjson.OPT_APPEND_NEWLINE))
            if self.on_progress is not None:
                self.on_progress(rec)

    # -- the run ----------------------------------------------------------------------------------------

    async def run(self, records: Iterator[dict[str, Any]]) -> LiveStats:
        opts = self.opts
        t_start = time.perf_counter()
        timeout = aiohttp.ClientTimeout(total=opts.timeout_s, sock_connect=10)
        connector = aiohttp.TCPConnector(limit=opts.concurrency + 2)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            self.session = session
            try:
                async with session.get(f"{self.base}/healthz") as r:
                    if r.status != 200:
                        raise LiveError(f"the gateway at {self.base} is not healthy (/healthz answered {r.status})")
            except aiohttp.ClientError as exc:
                raise LiveError(
                    f"no gateway answers at {self.base} ({exc.__class__.__name__}); start one with "
                    "`distillshield serve`"
                ) from None
            sem = asyncio.Semaphore(opts.concurrency)
            tasks: set[asyncio.Task[None]] = set()
            sim_t0: float | None = None
            real_t0 = time.monotonic()
            for idx, rec in enumerate(records):
                if (opts.limit is not None and idx >= opts.limit) or self.failure is not None:
                    break
                if self.clock_shift is None:
                    self.clock_shift = time.time() - float(rec["ts"])
                if opts.speed:
                    sim_t0 = rec["ts"] if sim_t0 is None else sim_t0
                    delay = real_t0 + (rec["ts"] - sim_t0) / opts.speed - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                await sem.acquire()
                acct = rec["account_id"]
                if acct not in self.keys:
                    self.keys[acct] = asyncio.create_task(self._create_key(rec))
                task = asyncio.create_task(self._send(idx, rec, self._chain(rec), sem))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks)
            for t in self.keys.values():  # retrieve every key task's outcome (no "never retrieved" noise)
                if t.done() and not t.cancelled() and t.exception() is not None and self.failure is None:
                    self.failure = t.exception()
            self.stats.elapsed_s = time.perf_counter() - t_start
            self.stats.attacks = {
                acct: {"persona": name, **obs.report()} for acct, (name, obs) in self.observers.items()
            }
            if self.failure is not None:
                raise self.failure
        return self.stats

    def _chain(self, rec: dict[str, Any]) -> _Turn | None:
        """This request's place in its conversation (None for requests outside one).

        A turn that carries earlier assistant answers waits for the conversation's previous turn and
        gets the answers the gateway served; its own answer fills its slot, reserved at dispatch so
        slots stay in conversation order whatever order responses arrive in.
        """
        cid = (rec.get("sim") or {}).get("conversation_id")
        msgs = rec["request"].get("messages")
        if not cid or not isinstance(msgs, list):
            return None
        conv = self.convs.get(cid)
        if conv is None:
            conv = self.convs[cid] = _Conversation()
        continues = any(isinstance(m, dict) and m.get("role") == "assistant" for m in msgs)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        turn = _Turn(conv, len(conv.texts), done, conv.latest if continues else None)
        conv.texts.append(None)
        conv.latest = done
        return turn


def _loads(raw: bytes) -> Any:
    """The parsed JSON body, or None when it is not JSON."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def _error_message(raw: bytes) -> str:
    data = _loads(raw)
    if data is None:
        return raw[:300].decode("utf-8", "replace")
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        return str(err.get("message") or err)
    return str(data)[:300]


def _read_json(data: Any, endpoint: str, out: dict[str, Any]) -> str:
    if not isinstance(data, dict):
        out["error"] = "the gateway answered with invalid JSON"
        return ""
    if endpoint == "/v1/messages":
        text = "".join(b.get("text", "") for b in data.get("content") or () if isinstance(b, dict))
        u = data.get("usage") or {}
        usage = {
            "prompt_tokens": int(u.get("input_tokens") or 0),
            "completion_tokens": int(u.get("output_tokens") or 0),
        }
        out["response"] = {"text": text, "finish_reason": data.get("stop_reason"), "usage": usage}
        return text
    texts, finish = [], None
    for c in data.get("choices") or ():
        texts.append(
            ((c.get("message") or {}).get("content") if endpoint == "/v1/chat/completions" else c.get("text")) or ""
        )
        finish = finish or c.get("finish_reason")
    u = data.get("usage") or {}
    usage = {
        "prompt_tokens": int(u.get("prompt_tokens") or 0),
        "completion_tokens": int(u.get("completion_tokens") or 0),
    }
    text = "\n".join(texts)
    out["response"] = {"text": text, "finish_reason": finish, "usage": usage}
    return text


async def replay(
    records: Iterator[dict[str, Any]],
    opts: LiveOptions,
    out: IO[bytes],
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> LiveStats:
    """Send `records` (simulator output, in time order) to the gateway and write what it served to `out`."""
    return await LiveReplay(opts, out, on_progress).run(records)
