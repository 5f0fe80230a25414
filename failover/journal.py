"""The journal: one JSON line per swap, unswap and takeover, appended durably, read back by `history`.

Owns the file format and its durability: each entry is written with one `write` on an O_APPEND file
and fsynced (the directory too, when the file was created), so an entry a caller was told about
survives a crash or a SIGKILL. A torn last line (power loss mid-write) is skipped when reading.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TAIL_CHUNK = 64 * 1024


class JournalError(Exception):
    """The journal could not be written or read; the message is one line."""


def append(path: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """Write `entry` (with `at`, wall-clock seconds, added) as one line; returns what was written."""
    record = {"at": round(time.time(), 3), **entry}
    line = json.dumps(record, separators=(",", ":"), sort_keys=False, default=str).encode() + b"\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        created = not path.exists()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    except OSError as err:
        raise JournalError(f"{path}: cannot append: {err.strerror or err}") from None
    return record


def _lines_from_end(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        pos = f.seek(0, os.SEEK_END)
        rest = b""
        while pos > 0:
            size = min(TAIL_CHUNK, pos)
            pos -= size
            f.seek(pos)
            chunk = f.read(size) + rest
            lines = chunk.split(b"\n")
            rest = lines[0]
            yield from reversed(lines[1:])
        yield rest


def read(path: Path, last: int | None = None) -> list[dict[str, Any]]:
    """The newest `last` entries (all when None), oldest first; [] when there is no journal yet."""
    entries: list[dict[str, Any]] = []
    try:
        for raw in _lines_from_end(path):
            if last is not None and len(entries) >= last:
                break
            if not raw.strip():
                continue
            try:
                entry = json.loads(raw)
            except ValueError:
                continue  # a line torn by a crash mid-write
            if isinstance(entry, dict):
                entries.append(entry)
    except FileNotFoundError:
        return []
    except OSError as err:
        raise JournalError(f"{path}: cannot read: {err.strerror or err}") from None
    entries.reverse()
    return entries


def came_from(path: Path, holder: str) -> dict[str, Any] | None:
    """The newest journalled move or takeover that brought the VIP to `holder`, if any."""
    for entry in reversed(read(path, last=200)):
        if entry.get("ok") and entry.get("holder") == holder:
            found: dict[str, Any] = entry
            return found
    return None
