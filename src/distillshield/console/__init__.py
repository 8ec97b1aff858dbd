"""The analyst console: the web UI the gateway serves at /console (see docs/console.md)."""

from distillshield.console.app import build_console

__all__ = ["build_console"]
