"""How busy the site is: requests per second in the last seconds of this holder's access log.

The source of a swap reads it just before the move, so the new holder knows how soon real clients
should show up in its own log (the proof deadline). Reads only the tail of the file; what does not
count as proof (the nodes' own addresses, loopback, our own health checks) does not count here either.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator
from datetime import datetime
from pathlib import Path
from typing import Final

from failover.accesslog import LogEntry, LogFormat, proof

WINDOW_S: Final = 5.0  # seconds of log that tell the rate, at most
TAIL_BYTES: Final = 256 * 1024  # read at most this much of the log's end
MIN_SPAN_S: Final = 1.0  # a shorter log is counted over this long; its time stamps have one-second steps
# Enough to tell the rate: this many requests over at least this long, and reading stops (a busy site's
# 5 s are thousands of lines, ~10 us each to parse: 20-30 ms on the source's way to its release).
ENOUGH_REQUESTS: Final = 100
ENOUGH_SPAN_S: Final = 3.0
# Lines are in the order they were written, not always in time order (Apache's %t is the request's
# start: a slow one is logged after newer ones). Reading stops only after this many in a row are past
# the span; one past it is skipped.
PAST_IN_A_ROW: Final = 16
CHUNK: Final = 32 * 1024  # read backwards this much at a time
_BATCH: Final = 64  # entries counted together (`proof` has a cost per call)


def recent_rate(
    path: Path, log_format: LogFormat, vip: str, exclude: Collection[str], now: datetime
) -> tuple[float | None, str]:
    """(requests per second over the last WINDOW_S, how it was read); None when the log cannot tell.

    The log is read from its end backwards, line by line. The span is WINDOW_S, or shorter once
    ENOUGH_REQUESTS have counted over at least ENOUGH_SPAN_S: then it begins at the whole second of the
    log's time stamps reached then, and no request of that second is left out, so the rate is never more
    than the true one over the span. Reading stops after PAST_IN_A_ROW lines in a row past the span.
    """
    try:
        with path.open("rb") as f:
            return _rate(f.fileno(), path, log_format, vip, exclude, now)
    except OSError as err:
        return None, f"{path}: {err.strerror or err}"


def _rate(
    fd: int, path: Path, log_format: LogFormat, vip: str, exclude: Collection[str], now: datetime
) -> tuple[float | None, str]:
    size = os.fstat(fd).st_size
    counted, oldest, parsed, full, past, any_text = 0, 0.0, 0, False, 0, False
    start_at: datetime | None = None  # the time stamp the span begins at, once enough counted
    batch: list[LogEntry] = []
    # Read as it is parsed: at 200 requests a second the span is met in the last ~70 KiB of the tail.
    for raw in _lines_backwards(fd, size):
        entry = log_format.parse(raw.decode("utf-8", "replace"))
        if entry is None or entry.time is None:
            any_text = any_text or bool(raw.strip())
            continue
        parsed += 1
        age = _age(entry, now)
        if age > WINDOW_S or (start_at is not None and entry.time < start_at):
            full = full or age > WINDOW_S
            past += 1
            if past >= PAST_IN_A_ROW:
                break
            continue
        past = 0
        oldest = max(oldest, age)
        batch.append(entry)
        if len(batch) < _BATCH:
            continue
        counted += _counted(batch, vip, exclude, log_format)
        batch = []
        if start_at is None and counted >= ENOUGH_REQUESTS and age >= ENOUGH_SPAN_S:
            start_at = entry.time
    if batch:
        counted += _counted(batch, vip, exclude, log_format)
    if not parsed:
        # Nothing parsed, so every line was read: no line with a character in it is a blank log, unless a
        # line longer than the tail was cut away.
        if not any_text and not os.pread(fd, TAIL_BYTES, max(0, size - TAIL_BYTES)).strip():
            # Known, not unknown: nobody was served since the log began (a quiet site, or one just rotated).
            return 0.0, f"{path}: empty, no request since it began"
        return None, f"{path}: no parsable lines in its last {min(TAIL_BYTES, size)} bytes"
    span = oldest if start_at is not None or not full else WINDOW_S
    if span < MIN_SPAN_S:
        # A log begun (or rotated) under a second ago: what it holds over a whole second. Never more than
        # the true rate, so the new holder waits at least as long as it should (or, quiet, asks canaries).
        return counted / MIN_SPAN_S, f"{counted} requests in {path}, begun {span:.1f} s ago: counted over 1 s"
    return counted / span, f"{counted} requests in the last {span:.1f} s of {path}"


def _counted(entries: list[LogEntry], vip: str, exclude: Collection[str], log_format: LogFormat) -> int:
    return proof(entries, vip=vip, exclude=exclude, destination_known=log_format.destination_known).counted


def _lines_backwards(fd: int, size: int) -> Iterator[bytes]:
    """The lines of the file's last TAIL_BYTES, newest first, without their line ends; a line the tail
    cuts (the first, when the file is longer) is left out."""
    end = size
    floor = max(0, size - TAIL_BYTES)
    rest = b""  # the start of a line whose beginning is in the next chunk back
    while end > floor:
        start = max(floor, end - CHUNK)
        data = os.pread(fd, end - start, start) + rest
        end = start
        pieces = data.split(b"\n")
        rest = pieces[0]
        for piece in reversed(pieces[1:]):
            if piece:
                yield piece.rstrip(b"\r")
    if floor == 0 and rest:
        yield rest.rstrip(b"\r")  # the file's first line, whole


def _age(entry: LogEntry, now: datetime) -> float:
    assert entry.time is not None
    return (now - entry.time).total_seconds()
