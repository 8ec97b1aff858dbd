"""The watermark in the gateway: a per-account registry the policy can change at run time, and the
Extension that turns each request into a logits hook keyed by its account (or cluster).

The registry is the policy engine's handle (`state.watermark` once the extension has started):

    state.watermark.set("acct-42", "strong")        # switch on / strengthen for one account
    state.watermark.set("acct-42", "on", key_scope="cluster", cluster_id="c7")
    state.watermark.clear("acct-42")                 # back to the configured default
    state.watermark.mode_for("acct-42")              # "off" | "on" | "strong"

Only the embedded model honours logits hooks. For an OpenAI-compatible upstream the gateway cannot
touch logits; with `watermark.upstream_xargs` it forwards the key label in `vllm_xargs` so a vLLM
server running `distillshield.watermark.vllm` applies the same watermark there.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from distillshield.config import ConfigError
from distillshield.watermark.base import DEFAULT_TEMPERATURE, DEFAULT_TOP_P
from distillshield.watermark.keys import KeyRing, WatermarkKey, key_label
from distillshield.watermark.kgw import GreenListWatermark
from distillshield.watermark.schemes import keyring_from_settings, scheme_from_settings

if TYPE_CHECKING:
    from distillshield.config import Settings, WatermarkSettings
    from distillshield.gateway.upstream.base import GenRequest, LogitsHook
    from distillshield.store.database import KeyContext

log = logging.getLogger("distillshield.watermark")
MODES = ("off", "on", "strong")
XARG_KEY = "distillshield_wm_key"
XARG_MODE = "distillshield_wm_mode"
# llama-cpp-python's sampling defaults per endpoint, used when a request sets none (gumbel needs them).
_DEFAULT_TEMPERATURE = {"chat": 0.2, "completions": DEFAULT_TEMPERATURE}


@dataclass(frozen=True)
class AccountWatermark:
    """One account's setting: its mode and which key marks it."""

    mode: str
    key_scope: str = "account"
    cluster_id: str | None = None
    source: str = "default"  # default | policy
    updated_at: float = field(default_factory=time.time)


class WatermarkRegistry:
    """Watermark mode per account id, settable at run time; unset accounts get the default."""

    def __init__(self, default_mode: str = "off", key_scope: str = "account") -> None:
        self._check(default_mode, key_scope)
        self.default_mode = default_mode
        self.key_scope = key_scope
        self._accounts: dict[str, AccountWatermark] = {}
        self._lock = threading.Lock()
        self.applied = 0  # requests that got a watermark

    @staticmethod
    def _check(mode: str, key_scope: str) -> None:
        if mode not in MODES:
            raise ValueError(f"watermark mode must be one of {', '.join(MODES)}, got {mode!r}")
        if key_scope not in ("account", "cluster"):
            raise ValueError(f"key scope must be account or cluster, got {key_scope!r}")

    def set(
        self, account_id: str, mode: str, *, key_scope: str | None = None, cluster_id: str | None = None
    ) -> AccountWatermark:
        """Set one account's mode (and optionally key it by a cluster); takes effect on its next request."""
        scope = key_scope or ("cluster" if cluster_id else self.key_scope)
        self._check(mode, scope)
        entry = AccountWatermark(mode, scope, cluster_id, "policy")
        with self._lock:
            self._accounts[account_id] = entry
        return entry

    def clear(self, account_id: str) -> None:
        with self._lock:
            self._accounts.pop(account_id, None)

    def setting(self, account_id: str) -> AccountWatermark:
        entry = self._accounts.get(account_id)
        return entry if entry is not None else AccountWatermark(self.default_mode, self.key_scope, None, "default", 0.0)

    def mode_for(self, account_id: str) -> str:
        return self.setting(account_id).mode

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            accounts = {a: asdict(s) for a, s in self._accounts.items()}
        return {
            "default_mode": self.default_mode,
            "key_scope": self.key_scope,
            "applied": self.applied,
            "accounts": accounts,
        }


class Watermarker:
    """Settings + key ring + scheme: picks the key and builds the hook for one caller."""

    def __init__(
        self, cfg: WatermarkSettings, registry: WatermarkRegistry | None = None, *, create: bool = False
    ) -> None:
        """`create`: write watermark.secret_file when it is absent (the gateway's start)."""
        self.cfg = cfg
        self.scheme = scheme_from_settings(cfg)
        self.keys: KeyRing = keyring_from_settings(cfg, create=create)
        self.registry = registry or WatermarkRegistry(cfg.mode, cfg.key_scope)

    def key_for(self, account_id: str, cluster_id: str | None = None) -> WatermarkKey:
        """The key that marks this account's outputs now (its cluster's, under cluster scope)."""
        s = self.registry.setting(account_id)
        cluster = s.cluster_id or cluster_id
        if s.key_scope == "cluster" and cluster:
            return self.keys.key(key_label("cluster", cluster))
        return self.keys.key(key_label("account", account_id))

    def delta_for(self, mode: str) -> float:
        return self.cfg.strong_delta if mode == "strong" else self.cfg.delta

    def hook(self, account_id: str, gen: GenRequest, cluster_id: str | None = None) -> LogitsHook | None:
        mode = self.registry.mode_for(account_id)
        if mode == "off":
            return None
        key = self.key_for(account_id, cluster_id)
        if isinstance(self.scheme, GreenListWatermark):
            hook: LogitsHook = self.scheme.processor(key, delta=self.delta_for(mode))
        else:
            body = gen.body
            temperature = body.get("temperature")
            if temperature is None:
                temperature = _DEFAULT_TEMPERATURE.get(gen.api, DEFAULT_TEMPERATURE)
            if float(temperature) <= 0.0:
                return None  # greedy decoding leaves no randomness to key; nothing to mark
            top_p = body.get("top_p")
            # A request's seed seeds the keyed sampler's own draws too, so a seeded request is as reproducible
            # watermarked as it is plain (the tournament draws; Gumbel-max needs no randomness). A negative
            # seed (llama.cpp's -1: "random") or one that is not an integer draws fresh.
            seed = body.get("seed")
            hook = self.scheme.processor(
                key,
                temperature=float(temperature),
                top_p=DEFAULT_TOP_P if top_p is None else top_p,
                seed=seed if isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0 else None,
            )
        self.registry.applied += 1
        return hook

    def upstream_xargs(self, account_id: str, cluster_id: str | None = None) -> dict[str, str] | None:
        """The vllm_xargs that ask a vLLM server running our processor to watermark this request."""
        mode = self.registry.mode_for(account_id)
        if mode == "off":
            return None
        return {XARG_KEY: self.key_for(account_id, cluster_id).label, XARG_MODE: mode}


class WatermarkExtension:
    """Plugs the Watermarker into the gateway (gateway/extensions.py) and exposes the registry."""

    name = "watermark"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        try:
            self.watermarker = Watermarker(settings.watermark, create=True)
        except ValueError as exc:  # the secret file cannot be made or read: the gateway does not start
            raise ConfigError(str(exc)) from None
        self.registry = self.watermarker.registry
        self._state: Any = None
        self._previous: Any = None

    async def start(self, state: Any) -> None:
        self._state = state
        gw = state.gateway
        self._previous = gw.logits_hook_factory
        gw.logits_hook_factory = self._factory
        state.watermark = self.registry  # the policy engine's handle
        log.info(
            "watermark: scheme=%s default mode=%s key scope=%s (secret not logged)",
            self.watermarker.scheme.name,
            self.registry.default_mode,
            self.registry.key_scope,
        )

    async def stop(self) -> None:
        if self._state is not None and self._state.gateway.logits_hook_factory == self._factory:
            self._state.gateway.logits_hook_factory = self._previous

    def _cluster_of(self, account_id: str) -> str | None:
        entry = self._state.risk.get(account_id)  # AppState.risk: the risk board (contracts.RiskBoard)
        return entry.cluster_id if entry is not None else None

    def _factory(self, ctx: KeyContext, gen: GenRequest) -> LogitsHook | None:
        account_id = ctx.account.id
        s = self.registry.setting(account_id)
        cluster = self._cluster_of(account_id) if s.key_scope == "cluster" and not s.cluster_id else None
        if self._state.upstream.name == "http":  # Upstream.name
            self._forward(account_id, cluster, gen)
            ours = None
        else:
            ours = self.watermarker.hook(account_id, gen, cluster)
        theirs = self._previous(ctx, gen) if self._previous is not None else None
        if ours is None or theirs is None:
            return ours or theirs
        return lambda ids, scores: ours(ids, theirs(ids, scores))

    def _forward(self, account_id: str, cluster: str | None, gen: GenRequest) -> None:
        xargs = gen.body.get("vllm_xargs")
        if isinstance(xargs, dict):  # a client must not choose or disable its own watermark
            for k in (XARG_KEY, XARG_MODE):
                xargs.pop(k, None)
        if not self.settings.watermark.upstream_xargs:
            return
        ours = self.watermarker.upstream_xargs(account_id, cluster)
        if ours:
            gen.body["vllm_xargs"] = {**(xargs if isinstance(xargs, dict) else {}), **ours}
            self.registry.applied += 1


def watermark_extension(settings: Settings) -> WatermarkExtension | None:
    """Extension factory: on whenever a secret is configured, inline or as a file (the policy may switch
    accounts on even when the default mode is off); None without one."""
    cfg = settings.watermark
    if not cfg.keyed:
        if cfg.mode != "off":  # on by default: say once, at start, that nothing will be marked
            log.warning(
                "watermark: mode %s, but no secret is configured (watermark.secret_file, watermark.secret or "
                "DISTILLSHIELD_WATERMARK__SECRET): outputs are NOT watermarked and cannot be traced to accounts",
                cfg.mode,
            )
        return None
    return WatermarkExtension(settings)
