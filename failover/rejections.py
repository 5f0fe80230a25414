"""What the agent says about datagrams it rejects: counted by reason, logged at most once an interval.

A flood of rejected datagrams must cost the loop neither a log line each nor a burst of disk writes, and
an operator must still learn it happens: one `datagrams-rejected` line per interval at most, with the
counts since the previous line. Time is an argument; no clock is read here.
"""

from __future__ import annotations

from collections import Counter
from typing import Protocol

LOG_INTERVAL = 10.0  # seconds between two lines about rejected datagrams, at most


class _Logger(Protocol):
    def warning(self, event: str, **kw: object) -> object: ...


class RejectionLog:
    def __init__(self, log: _Logger, interval: float = LOG_INTERVAL) -> None:
        self._log = log
        self._interval = interval
        self._pending: Counter[str] = Counter()
        self._next_line = float("-inf")
        self.dropped: Counter[str] = Counter()  # rejected before the core saw them (by the agent)

    def drop(self, reason: str, now: float) -> None:
        """A datagram the agent itself refused (the core never saw it)."""
        self.dropped[reason] += 1
        self.note(reason, now)

    def note(self, reason: str, now: float) -> None:
        """A rejected datagram, whoever rejected it: logged now, or summed into the next line."""
        self._pending[reason] += 1
        if now >= self._next_line:
            self._log.warning("datagrams-rejected", by_reason=dict(self._pending),
                              next_line_in_s=self._interval)
            self._pending.clear()
            self._next_line = now + self._interval
