"""Shared CLI plumbing: settings, the store, async runs, JSON/Rich output, one-line errors."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from distillshield.config import Settings, load_settings
from distillshield.store import Store

T = TypeVar("T")
console = Console()
err_console = Console(stderr=True)
_config_path: str | None = None


class CliError(Exception):
    """A user error: printed as one line, exit code 2."""


def set_config_path(path: str | None) -> None:
    global _config_path
    _config_path = path


def settings() -> Settings:
    return load_settings(_config_path)


def run(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    return asyncio.run(fn(*args))


async def open_store(s: Settings | None = None) -> Store:
    store = Store((s or settings()).store.url)
    await store.init()
    return store


def with_store(fn: Callable[[Store], Awaitable[T]]) -> T:
    """Open the configured store, run `fn(store)`, close it."""

    async def go() -> T:
        store = await open_store()
        try:
            return await fn(store)
        finally:
            await store.close()

    return asyncio.run(go())


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    )


def fmt_ts(ts: float | None) -> str:
    if ts is None:
        return "-"
    import datetime as dt

    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
