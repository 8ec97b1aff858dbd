"""Model back ends behind one protocol: the embedded local model and any OpenAI-compatible server."""

from __future__ import annotations

from distillshield.config import Settings
from distillshield.gateway.upstream.base import GenRequest, Upstream


def build_upstream(settings: Settings) -> Upstream:
    """The upstream the settings name (upstream.kind)."""
    if settings.upstream.kind == "http":
        from distillshield.gateway.upstream.http import HttpUpstream

        return HttpUpstream(settings.upstream.http)
    from distillshield.gateway.upstream.local import LocalUpstream

    return LocalUpstream(settings.upstream.local)


__all__ = ["GenRequest", "Upstream", "build_upstream"]
