"""Extension points of the gateway, declared in one place.

A feature that lives beside the hot path (online detection, watermarking, policy) plugs in here
instead of editing the request path:

- `Extension`: started after the store and upstream, stopped before the audit log drains. It gets the
  AppState and may set the gateway's hooks:
    - `gateway.logits_hook_factory(ctx, gen) -> LogitsHook | None`: generation-time hook per caller;
    - `gateway.observers`: callables given each finished audit row (a dict) right after the response.
      They run on the event loop, so they must be cheap (update a sketch, enqueue work), never block.
    - `state.risk` (contracts.RiskBoard): detection publishes each account's latest verdict
      there; the policy stage reads it per request.
    - `state.intel` (contracts.IntelWatch): imported threat-intelligence indicators (intel/live.py); the
      policy stage matches each request against them before it decides.
- `ExtensionFactory`: `factory(settings) -> Extension | None` (None: switched off by its settings). The
  factories are handed to `build_app`; the standard set (watermark, detection) is
  `distillshield.extensions.standard_extensions()`, outside the gateway, which imports none of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from distillshield.config import Settings


class Extension(Protocol):
    name: str

    async def start(self, state: Any) -> None: ...

    async def stop(self) -> None: ...


ExtensionFactory = Callable[["Settings"], "Extension | None"]
