"""The journal: one JSON line per swap, unswap and takeover, appended durably, read back by `history`.

Owns the file format and its durability: each entry is written with one `write` on an O_APPEND file
and fsynced (the directory too, when the file was created), so an entry a caller was told about
survives a crash or a SIGKILL. A torn last line (power loss mid-write) is skipped when reading, and
ended before the next entry is appended, so it never swallows that entry. `Writer` appends from a
worker thread, in order, so a slow disk never holds up the agent's event loop. `write_file_durably` is
the one way a small state file is replaced (temporary file, fsync, rename, fsync of the directory).
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

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
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line  # end the torn line first: it stays unreadable, this entry does not
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            _fsync_dir(path.parent)
    except OSError as err:
        raise JournalError(f"{path}: cannot append: {err.strerror or err}") from None
    return record


def _fsync_dir(path: Path) -> None:
    dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_file_durably(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a crash at any point leaves the old content or the new one,
    and the new one once this returns. Raises OSError."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class Writer:
    """Appends entries from a worker thread, one after another in the order given; for the event loop.

    `append` returns at once; `flushed()` waits until every entry given so far is on disk (or failed,
    which `on_error` is told of).
    """

    def __init__(self, path: Path, on_error: Callable[[JournalError], None]) -> None:
        self.path = path
        self._on_error = on_error
        self._tail: asyncio.Task[None] | None = None

    def append(self, entry: dict[str, Any]) -> None:
        import asyncio  # here: the CLI reads the journal and must start fast

        previous = self._tail

        async def write() -> None:
            if previous is not None:
                await asyncio.wait([previous])
            try:
                await asyncio.to_thread(append, self.path, entry)
            except JournalError as err:
                self._on_error(err)
            except Exception as err:  # an entry that cannot be written (a bug): told, never a lost task
                self._on_error(JournalError(f"{self.path}: cannot append: {type(err).__name__}: {err}"))

        self._tail = asyncio.get_running_loop().create_task(write())

    async def flushed(self) -> None:
        import asyncio

        if self._tail is not None:
            await asyncio.wait([self._tail])


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


def _entries_from_end(path: Path) -> Iterator[dict[str, Any]]:
    """The journal's entries, newest first, read as they are asked for; none when there is no journal
    yet, JournalError when it cannot be read."""
    try:
        for raw in _lines_from_end(path):
            if not raw.strip():
                continue
            try:
                entry = json.loads(raw)
            except ValueError:
                continue  # a line torn by a crash mid-write
            if isinstance(entry, dict):
                yield entry
    except FileNotFoundError:
        return
    except OSError as err:
        raise JournalError(f"{path}: cannot read: {err.strerror or err}") from None


def read(path: Path, last: int | None = None) -> list[dict[str, Any]]:
    """The newest `last` entries (all when None), oldest first; [] when there is no journal yet."""
    entries = list(itertools.islice(_entries_from_end(path), last))
    entries.reverse()
    return entries


def came_from(path: Path, holder: str, *, within: int = 200) -> dict[str, Any] | None:
    """The newest journalled move or takeover that brought the VIP to `holder`, if any, among the newest
    `within` entries. Read from the end and only as far as the answer: an unswap asks before it starts,
    and parsing the whole 200 (~1 KB each) took 5-7 ms here where the newest entry is most often it."""
    for entry in itertools.islice(_entries_from_end(path), within):
        if entry.get("ok") and entry.get("holder") == holder:
            return entry
    return None
