"""Following one access-log path across rotation: the complete lines appended since the last poll, parsed.

Reader: our own stat()+pread() poll rather than watchdog, pygtail or inotify_simple. The agent already wakes
on a timer, so one poll is two or three syscalls on a regular file, which never blocks; a library would add a
dependency, a thread (watchdog) or an offset file meant for resuming across runs (pygtail), and inotify needs
its watch re-armed across rotation and does not see writes made on NFS. Polling the path's inode also gives
rotation detection for free: rename+create and delete+recreate drain the old descriptor before switching,
copytruncate shows as a size below our offset or as changed bytes just before it.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Final

from failover.accesslog.lines import LogEntry, LogFormat

_READ_CHUNK: Final = 64 * 1024
_DEFAULT_POLL_BYTES: Final = 1024 * 1024
# Enough to cover the whole last line of a typical log, so a copytruncated log refilled past our offset
# between two polls still shows as changed bytes.
_TAIL_BYTES: Final = 256


@dataclass(slots=True)
class FollowerStats:
    """What a `LogFollower` has seen since it was made."""

    lines: int = 0  # complete lines handed to the format (parsed or not)
    unparsed: int = 0  # of those, lines the format did not match (or whose server field is not an address)
    truncated_lines: int = 0  # lines longer than max_line_bytes, skipped whole
    rotations: int = 0  # switches to a different file at the path (rename+create, delete+recreate)
    truncations: int = 0  # restarts from offset 0 of the same file (copytruncate)
    bytes_read: int = 0
    errors: int = 0  # I/O errors; the latest poll's is in LogFollower.last_error


@dataclass(slots=True)
class _Source:
    """One open log file and where we are in it."""

    fd: int
    ident: tuple[int, int]  # (st_dev, st_ino)
    offset: int = 0
    pending: bytearray = field(default_factory=bytearray)  # the incomplete last line, at most max_line_bytes
    skipping: bool = False  # inside a line we drop: too long, or begun before start_at_end()
    tail: bytes = b""  # the bytes just before offset


class LogFollower:
    """Follows one access-log path across rotation; `poll()` returns the entries appended since last time.

    Without `start_at_end()`, the first `poll()` reads the file from its beginning. Not thread-safe: one
    caller at a time (the agent's loop, or one `asyncio.to_thread` call at a time). I/O trouble never raises:
    it is counted in `stats.errors` and described in `last_error` (None when the latest poll had none).

    Known limits, shared by every path-polling reader: lines written between the last poll and a copytruncate
    live only in the copy; if the log is rotated twice between two polls, the middle file is never seen.
    """

    def __init__(
        self,
        path: Path,
        fmt: LogFormat,
        *,
        max_line_bytes: int = 16384,
        max_bytes_per_poll: int = _DEFAULT_POLL_BYTES,
    ) -> None:
        if max_line_bytes < 1 or max_bytes_per_poll < 1:
            raise ValueError("max_line_bytes and max_bytes_per_poll must be positive")
        self.path = path
        self.fmt = fmt
        self.max_line_bytes = max_line_bytes
        self.max_bytes_per_poll = max_bytes_per_poll
        self.stats = FollowerStats()
        self.last_error: str | None = None
        # The latest poll stopped at max_bytes_per_poll: more is waiting, poll again soon.
        self.behind = False
        self._current: _Source | None = None
        # The file the path named before a rotation: read until the writer has moved to the new one.
        self._retired: _Source | None = None
        # Where start_at_end() put the start, for a file it could stat but not yet open: (dev, ino, size).
        self._start_mark: tuple[int, int, int] | None = None
        # start_at_end() could not even stat the path: start the first file we open at its end.
        self._start_blind = False
        self._closed = False

    # -- public --

    def start_at_end(self) -> None:
        """Count only what is appended from now on; a missing file is fine (all of it will count)."""
        self._drop_sources()
        self._closed = False
        self.last_error = None
        self._start_mark = None
        self._start_blind = False
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return
        except OSError as exc:
            self._error("stat", exc)
            self._start_blind = True
            return
        self._start_mark = (st.st_dev, st.st_ino, st.st_size)
        self._current = self._open()

    def poll(self) -> list[LogEntry]:
        """Entries for the complete lines appended since the last call; reads at most max_bytes_per_poll
        (then `behind` is true), so a caller on an event loop can bound what one call costs."""
        self.behind = False
        if self._closed:
            return []
        self.last_error = None
        read_before = self.stats.bytes_read
        lines: list[bytes] = []
        budget = self.max_bytes_per_poll
        if self._retired is not None:
            budget = self._read_retired(budget, lines)
        if budget > 0 and self._current is None:
            self._current = self._open()
        current = self._current
        if budget > 0 and current is not None:
            self._notice_truncation(current)
            budget, at_eof = self._read(current, budget, lines)
            if at_eof and self._path_replaced(current):
                self.stats.rotations += 1
                if self._retired is not None:
                    self._finish(self._retired, lines)
                self._retired = current
                self._current = self._open()
                # Whatever the writer appended to the old file between our last read and the stat above.
                budget = self._read_retired(budget, lines)
                if budget > 0 and self._current is not None:
                    self._read(self._current, budget, lines)
        self.behind = self.stats.bytes_read - read_before >= self.max_bytes_per_poll
        return self._parse(lines)

    def close(self) -> None:
        """Release the open files; `poll()` returns nothing until `start_at_end()` is called again."""
        self._drop_sources()
        self._closed = True

    def __enter__(self) -> LogFollower:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- files --

    def _open(self) -> _Source | None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._error("open", exc)
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                os.close(fd)
                self.stats.errors += 1
                self.last_error = f"open {self.path}: not a regular file"
                return None
            offset = 0
            mark = self._start_mark
            if mark is not None and (st.st_dev, st.st_ino) == mark[:2]:
                offset = mark[2]
            elif self._start_blind:
                offset = st.st_size
            if offset > st.st_size:  # truncated since start_at_end(): all there is now is new
                offset = 0
            source = _Source(fd=fd, ident=(st.st_dev, st.st_ino), offset=offset)
            if offset:
                size = min(offset, _TAIL_BYTES)
                source.tail = os.pread(fd, size, offset - size)
                source.skipping = not source.tail.endswith(b"\n")
        except OSError as exc:
            os.close(fd)
            self._error("open", exc)
            return None
        self._start_mark = None
        self._start_blind = False
        return source

    def _path_replaced(self, current: _Source) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False  # renamed or deleted, nothing new yet: keep draining the descriptor we hold
        except OSError as exc:
            self._error("stat", exc)
            return False
        return (st.st_dev, st.st_ino) != current.ident

    def _notice_truncation(self, source: _Source) -> None:
        if source.offset == 0:
            return
        try:
            if os.fstat(source.fd).st_size >= source.offset:
                size = len(source.tail)
                if not size or os.pread(source.fd, size, source.offset - size) == source.tail:
                    return
        except OSError as exc:
            self._error("stat", exc)
            return
        self.stats.truncations += 1
        source.offset = 0
        source.pending.clear()
        source.skipping = False
        source.tail = b""

    def _read_retired(self, budget: int, lines: list[bytes]) -> int:
        retired = self._retired
        assert retired is not None
        # Checked before draining: once the writer has put anything in the new file it never writes the old
        # one again, so a drain that reaches the end after this point has everything.
        writer_moved = self._current is not None and self._current.offset > 0
        budget, at_eof = self._read(retired, budget, lines)
        if at_eof and writer_moved:
            self._finish(retired, lines)
            self._retired = None
        return budget

    def _read(self, source: _Source, budget: int, lines: list[bytes]) -> tuple[int, bool]:
        """Reads from `source` until end of file or budget; returns (budget left, reached end of file)."""
        while budget > 0:
            try:
                data = os.pread(source.fd, min(_READ_CHUNK, budget), source.offset)
            except OSError as exc:
                self._error("read", exc)
                return budget, False
            if not data:
                return budget, True
            source.offset += len(data)
            budget -= len(data)
            self.stats.bytes_read += len(data)
            source.tail = (source.tail + data[-_TAIL_BYTES:])[-_TAIL_BYTES:]
            self._split(source, data, lines)
        return budget, False

    def _split(self, source: _Source, data: bytes, lines: list[bytes]) -> None:
        # NUL runs are what a copytruncate leaves when the writer lacks O_APPEND; they are never log text.
        if b"\0" in data:
            data = data.replace(b"\0", b"")
        *complete, rest = data.split(b"\n")
        for piece in complete:
            if source.skipping:
                source.skipping = False
            elif len(source.pending) + len(piece) > self.max_line_bytes:
                self.stats.truncated_lines += 1
            else:
                lines.append(bytes(source.pending) + piece if source.pending else piece)
            source.pending.clear()
        if source.skipping:
            return
        if len(source.pending) + len(rest) > self.max_line_bytes:
            self.stats.truncated_lines += 1
            source.pending.clear()
            source.skipping = True
        else:
            source.pending += rest

    def _finish(self, source: _Source, lines: list[bytes]) -> None:
        # The writer is done with this file: an unterminated last line is all of that line there will be.
        if source.pending and not source.skipping:
            lines.append(bytes(source.pending))
        self._close_fd(source)

    def _drop_sources(self) -> None:
        for source in (self._retired, self._current):
            if source is not None:
                self._close_fd(source)
        self._retired = None
        self._current = None

    def _close_fd(self, source: _Source) -> None:
        try:
            os.close(source.fd)
        except OSError as exc:
            self._error("close", exc)

    def _error(self, action: str, exc: OSError) -> None:
        self.stats.errors += 1
        self.last_error = f"{action} {self.path}: {exc.strerror or exc}"

    def _parse(self, lines: list[bytes]) -> list[LogEntry]:
        entries: list[LogEntry] = []
        for raw in lines:
            self.stats.lines += 1
            entry = self.fmt.parse(raw.decode("utf-8", errors="replace").rstrip("\r"))
            # A server field that is not an address is a log that stopped parsing too; `proof` rejects it.
            if entry is None or (self.fmt.destination_known and entry.server is None):
                self.stats.unparsed += 1
            if entry is not None:
                entries.append(entry)
        return entries
