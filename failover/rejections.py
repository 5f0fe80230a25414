"""What the agent says about datagrams it rejects: counted by reason, logged at most once an interval.

A flood of rejected datagrams must cost the loop neither a log line each nor a burst of disk writes, and
an operator must still learn it happens: one `datagrams-rejected` line per interval at most, with the
counts since the previous line. Time is an argument; no clock is read here.
"""

from __future__ import annotations

import threading
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
        # The heartbeat thread drops, the event loop notes what the core rejected: one count each.
        self._lock = threading.Lock()

    def drop(self, reason: str, now: float) -> None:
        """A datagram the agent itself refused (the core never saw it)."""
        with self._lock:
            self.dropped[reason] += 1
        self.note(reason, now)

    def dropped_counts(self) -> dict[str, int]:
        """What the agent itself refused so far, by reason (a copy: the heartbeat thread adds to it)."""
        with self._lock:
            return dict(self.dropped)

    def note(self, reason: str, now: float) -> None:
        """A rejected datagram, whoever rejected it: logged now, or summed into the next line."""
        with self._lock:
            self._pending[reason] += 1
            if now < self._next_line:
                return
            by_reason = dict(self._pending)
            self._pending.clear()
            self._next_line = now + self._interval
        self._log.warning("datagrams-rejected", by_reason=by_reason, next_line_in_s=self._interval)
