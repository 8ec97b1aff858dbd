"""Shared CLI plumbing: settings, the store, async runs, JSON/Rich output, one-line errors."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Column

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


def require_existing_store(url: str) -> None:
    """CliError when `url` names an SQLite file that does not exist."""
    prefix = "sqlite+aiosqlite:///"
    if url.startswith(prefix) and ":memory:" not in url:
        path = Path(url[len(prefix) :].split("?")[0])
        if not path.is_file():
            raise CliError(
                f"no audit log here: the SQLite file {path} does not exist (run where the gateway runs, "
                "pass -c CONFIG, or set store.url)"
            )


async def open_store(s: Settings | None = None) -> Store:
    store = Store((s or settings()).store.url)
    await store.init()
    return store


def with_store(fn: Callable[[Store], Awaitable[T]], *, existing: bool = False) -> T:
    """Open the configured store, run `fn(store)`, close it.

    `existing`: the command reads a log that must already be there (verify, export, evidence); an SQLite
    file that does not exist is then an error that says so, instead of a new empty log that reads as
    "intact: 0 rows".
    """
    if existing:
        require_existing_store(settings().store.url)

    async def go() -> T:
        store = await open_store()
        try:
            return await fn(store)
        finally:
            await store.close()

    return asyncio.run(go())


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def id_column(header: str, ids: Iterable[str | None]) -> Column:
    """A table column of ids (accounts, clusters, review items): never cut or wrapped, however narrow the
    terminal, so an id can be copied whole into the next command; the other columns wrap instead."""
    width = max((len(i) for i in ids if i), default=0)
    return Column(header, no_wrap=True, min_width=max(width, len(header)))


def progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    )


class PhaseProgress:
    """A `progress(phase, done, total)` callback for long work in named phases: one bar per phase,
    added the first time the phase reports."""

    def __init__(self, bar: Progress) -> None:
        self.bar = bar
        self.tasks: dict[str, TaskID] = {}

    def __call__(self, phase: str, done: int, total: int | None) -> None:
        if phase not in self.tasks:
            self.tasks[phase] = self.bar.add_task(phase, total=total)
        self.bar.update(self.tasks[phase], completed=done, total=total)


def fmt_ts(ts: float | None) -> str:
    if ts is None:
        return "-"
    import datetime as dt

    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
