"""Build the configured scheme and key ring from settings (one place, used by gateway, CLI, vLLM)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, TypeGuard

from distillshield.watermark.gumbel import GumbelWatermark
from distillshield.watermark.keys import KeyRing, secret_from_file
from distillshield.watermark.kgw import GreenListWatermark
from distillshield.watermark.tournament import LAYERS, TournamentWatermark

if TYPE_CHECKING:
    from distillshield.config import WatermarkSettings

Scheme = GreenListWatermark | GumbelWatermark | TournamentWatermark


def build_scheme(
    name: str, gamma: float = 0.25, delta: float = 2.0, context_width: int = 1, layers: int = LAYERS
) -> Scheme:
    if name == "kgw":
        return GreenListWatermark(gamma, delta, context_width)
    if name == "gumbel":
        return GumbelWatermark(context_width)
    if name == "tournament":
        return TournamentWatermark(context_width, layers)
    raise ValueError(f"unknown watermark scheme {name!r}; choose kgw, gumbel or tournament")


def supports_weights(scheme: Scheme) -> TypeGuard[TournamentWatermark]:
    """Whether the scheme has an entropy-weighted test (watermark/weights.py): the tournament's count of
    keyed bits does; KGW and Gumbel-max keep their unweighted tests."""
    return isinstance(scheme, TournamentWatermark)


def require_weights(scheme: Scheme) -> TournamentWatermark:
    """The scheme, as one with an entropy-weighted test; ValueError naming it when it has none."""
    if not supports_weights(scheme):
        raise ValueError(f"the {scheme.name} scheme has no entropy-weighted test (the tournament has)")
    return scheme


def scheme_from_settings(cfg: WatermarkSettings) -> Scheme:
    return build_scheme(cfg.scheme, cfg.gamma, cfg.delta, cfg.width(), cfg.tournament_layers)


def keyring_from_settings(cfg: WatermarkSettings, *, create: bool = False) -> KeyRing:
    """The key ring, or ValueError naming the setting when no secret is configured or its file cannot be read.
    `create`: write the secret file when it is absent (the gateway's start; detection never creates one)."""
    if cfg.secret is not None:
        return KeyRing(cfg.secret.get_secret_value())
    if cfg.secret_file is None:
        raise ValueError(
            "no watermark secret is configured: set watermark.secret_file or watermark.secret in the config, or "
            "DISTILLSHIELD_WATERMARK__SECRET in the environment"
        )
    return KeyRing(secret_from_file(Path(cfg.secret_file), create=create))
