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
- `EXTENSIONS`: the factories the app builds, each `factory(settings) -> Extension | None`.
  Register a new one by adding one line to `extension_factories()`.
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


def extension_factories() -> list[ExtensionFactory]:
    """Every extension the gateway knows, in start order (imported lazily: the hot path stays light)."""
    from distillshield.detect.online import detection_extension
    from distillshield.watermark.gateway import watermark_extension

    return [watermark_extension, detection_extension]
