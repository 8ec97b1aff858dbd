"""A durable local spool for audit rows the database cannot take right now.

When the store is unreachable, the audit writer appends each batch here instead of holding it in memory:
a process killed during a database outage then loses nothing it had spooled, and the rows reach the
database, in order and exactly once, when it is back (or at the next start).

The format is one file per batch (`batch-<seq>.jsonl`, one JSON row per line), written to a temporary
name, fsync'd, renamed into place and the directory fsync'd: a batch is either entirely in the spool or
not at all, never torn. Hand-written rather than a queue library: what is needed is exactly "fsync'd
before acknowledged, replayed in order, bounded", which a few file operations give without a broker.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

_BATCH = re.compile(r"^batch-(\d{12})\.jsonl$")


def _size(path: Path) -> int | None:
    """The file's size, or None when it is gone (drained between the listing and the stat)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


class SpoolError(Exception):
    """The spool cannot take this batch (full, or the disk refused it); the message says which."""


@dataclass(frozen=True)
class SpooledBatch:
    path: Path
    rows: list[dict[str, Any]]


class Spool:
    """Append-only batches in `directory`, at most `max_bytes` in all (created on first use)."""

    def __init__(self, directory: str | Path, max_bytes: int = 1 << 30) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self._next: int | None = None
        self._bytes: int | None = None
        self._count = 0  # batches in the spool (kept current, so asking costs no directory listing)

    def _files(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.iterdir() if _BATCH.match(p.name))

    def _scan(self) -> None:
        if self._next is None or self._bytes is None:
            files = self._files()
            self._next = int(_BATCH.match(files[-1].name).group(1)) + 1 if files else 1  # type: ignore[union-attr]
            sizes = [_size(p) for p in files]  # another process (a replica draining it) may remove files meanwhile
            self._bytes = sum(n for n in sizes if n is not None)
            self._count = sum(n is not None for n in sizes)

    @property
    def bytes(self) -> int:
        self._scan()
        assert self._bytes is not None
        return self._bytes

    def __len__(self) -> int:
        self._scan()
        return self._count

    def append(self, rows: Sequence[Mapping[str, Any]]) -> Path:
        """Write one batch durably (fsync'd file and directory) and return its path."""
        self._scan()
        assert self._next is not None and self._bytes is not None
        data = b"".join(orjson.dumps(dict(r), default=str) + b"\n" for r in rows)
        if self._bytes + len(data) > self.max_bytes:
            raise SpoolError(f"the audit spool in {self.directory} is full ({self._bytes} of {self.max_bytes} bytes)")
        path = self.directory / f"batch-{self._next:012d}.jsonl"
        tmp = path.with_suffix(".tmp")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise SpoolError(f"cannot write the audit spool in {self.directory}: {exc.strerror or exc}") from exc
        self._next += 1
        self._bytes += len(data)
        self._count += 1
        return path

    def batches(self, max_rows: int | None = None) -> list[SpooledBatch]:
        """The spooled batches, oldest first: every one, or the oldest ones up to the first that brings
        their rows to `max_rows`."""
        out, n = [], 0
        for p in self._files():
            rows = [orjson.loads(line) for line in p.read_bytes().splitlines() if line.strip()]
            out.append(SpooledBatch(p, rows))
            n += len(rows)
            if max_rows is not None and n >= max_rows:
                break
        return out

    def remove(self, batch: SpooledBatch) -> None:
        """Drop a batch once the database holds its rows."""
        if not batch.path.exists():
            return
        size = batch.path.stat().st_size
        batch.path.unlink()
        if self._bytes is not None:
            self._bytes = max(0, self._bytes - size)
            self._count = max(0, self._count - 1)
