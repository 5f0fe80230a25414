"""How busy the site is: requests per second in the last seconds of this holder's access log.

The source of a swap reads it just before the move, so the new holder knows how soon real clients
should show up in its own log (the proof deadline). Reads only the tail of the file; what does not
count as proof (the nodes' own addresses, loopback, our own health checks) does not count here either.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from datetime import datetime
from pathlib import Path
from typing import Final

from failover.accesslog import LogEntry, LogFormat, proof

WINDOW_S: Final = 5.0  # seconds of log that tell the rate
TAIL_BYTES: Final = 256 * 1024  # the window at a few hundred requests a second; read and parsed in ms
MIN_SPAN_S: Final = 1.0  # a shorter log is counted over this long; its time stamps have one-second steps


def recent_rate(
    path: Path, log_format: LogFormat, vip: str, exclude: Collection[str], now: datetime
) -> tuple[float | None, str]:
    """(requests per second over the last WINDOW_S, how it was read); None when the log cannot tell."""
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            start = max(0, size - TAIL_BYTES)
            data = os.pread(f.fileno(), TAIL_BYTES, start)
    except OSError as err:
        return None, f"{path}: {err.strerror or err}"
    if not data.strip():
        # Known, not unknown: nobody was served since the log began (a quiet site, or one just rotated).
        return 0.0, f"{path}: empty, no request since it began"
    lines = data.decode("utf-8", "replace").splitlines()
    if start > 0 and lines:
        lines = lines[1:]  # the first line of the tail is cut
    entries = [e for e in (log_format.parse(line) for line in lines) if e is not None and e.time is not None]
    recent = [e for e in entries if _age(e, now) <= WINDOW_S]
    if not entries:
        return None, f"{path}: no parsable lines in its last {len(data)} bytes"
    oldest = max(_age(e, now) for e in entries)
    span = min(WINDOW_S, oldest)
    counted = proof(recent, vip=vip, exclude=exclude, destination_known=log_format.destination_known).counted
    if span < MIN_SPAN_S:
        # A log begun (or rotated) under a second ago: what it holds over a whole second. Never more than
        # the true rate, so the new holder waits at least as long as it should (or, quiet, asks canaries).
        return counted / MIN_SPAN_S, f"{counted} requests in {path}, begun {span:.1f} s ago: counted over 1 s"
    return counted / span, f"{counted} requests in the last {span:.1f} s of {path}"


def _age(entry: LogEntry, now: datetime) -> float:
    assert entry.time is not None
    return (now - entry.time).total_seconds()
