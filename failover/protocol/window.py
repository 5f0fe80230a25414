"""How long a takeover probe listens: the configured window, shrunk to what the holder's kernel needs.

While both hosts are up, each node now and then asks the peer's kernel for the peer's *own* address
(an ARP request, an IPv6 neighbour solicitation) and the adapter reports the round trip here
(`PeerMeasured`). A live kernel answers that from its softirq in well under a millisecond on a LAN,
and it answers an RFC 5227 probe for an address it holds by the same path, so the round trips tell how
long silence after a probe has to last before it means "nobody there". The window keeps the shape the
operator configured (`probe.count` probes `probe.interval_ms` apart, `probe.wait_ms` of listening) and
is scaled down by one factor so that the listening after the last probe is still `ANSWER_MULTIPLE`
times the slowest answer the sample allows (median plus spread), never below `FLOOR`, and never longer
than configured. With too few samples, it is the configured window.

Pure: no clock, no sockets; the node says when a measurement is due and hands in its results.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass
from typing import Any

# A few times the answer time: one probe's answer may meet a busy moment the sample did not see.
ANSWER_MULTIPLE = 3.0
# The floor: the sample is a handful of frames every few seconds, and what it cannot see is a burst of
# scheduling delay on a shared host. The holder answers from softirq, which under load runs in
# ksoftirqd, an ordinary thread; on this machine kind (2 cores shared by several people, EEVDF with a
# base slice of ~1.5 ms for 2 CPUs) a woken thread can wait behind a few others' slices, and the
# standby's own probe thread, the veth hop and the holder's reply queue each add such a wait. Three
# slices is ~4.5 ms; 5 ms keeps a holder that is merely slow for a moment from looking dead. The price
# is paid inside dead_after: a takeover's probe runs ahead of it (`Takeover.lead`), so at 10 ms
# heartbeats and 30 ms dead_after the window (8.3 ms) is over by the time the silence has lasted 30 ms.
FLOOR = 0.005
SAMPLE_SIZE = 8  # the newest round trips kept: at one every few seconds, the last ~quarter minute
MIN_SAMPLES = 3  # fewer: the spread means nothing yet, so the configured window
STARTUP_EVERY = 0.1  # seconds between measurements until there are MIN_SAMPLES: three frames at start


@dataclass(frozen=True)
class ProbeWindow:
    """A probe's timing: `count` frames `interval` seconds apart, then `wait` seconds of listening."""

    count: int
    interval: float
    wait: float

    @property
    def span(self) -> float:
        """From the first frame to the end of listening."""
        return (max(self.count, 1) - 1) * self.interval + self.wait

    def scaled(self, factor: float) -> ProbeWindow:
        return ProbeWindow(self.count, self.interval * factor, self.wait * factor)

    def to_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "interval_ms": round(self.interval * 1000, 3),
            "wait_ms": round(self.wait * 1000, 3),
            "span_ms": round(self.span * 1000, 3),
        }


class AnswerTimes:
    """The peer kernel's last few round trips, and the probe window they allow.

    A measurement that got no answer within the configured listening time counts as an answer that
    took all of it: a peer that answers only sometimes (loss, a busy host) gets the configured window,
    not a window sized by its lucky answers.
    """

    def __init__(self, configured: ProbeWindow) -> None:
        self.configured = configured
        self._sample: deque[float] = deque(maxlen=SAMPLE_SIZE)
        self.measured = 0  # measurements reported since start
        self.unanswered = 0  # of which got no answer
        # window() of the sample as it is: asked at every look at the timer (each heartbeat a standby hears),
        # and a new figure comes only every probe.measure_every_ms.
        self._window: ProbeWindow | None = None

    def add(self, rtt: float | None) -> None:
        self._window = None
        self.measured += 1
        if rtt is None or rtt >= self.configured.wait:
            self.unanswered += 1 if rtt is None else 0
            self._sample.append(self.configured.wait)
        else:
            self._sample.append(max(rtt, 0.0))

    @property
    def enough(self) -> bool:
        return len(self._sample) >= MIN_SAMPLES

    def rtt(self) -> float | None:
        return statistics.median(self._sample) if self._sample else None

    def spread(self) -> float | None:
        return max(self._sample) - min(self._sample) if self._sample else None

    def window(self) -> ProbeWindow:
        """The takeover probe's window now."""
        if self._window is None:
            self._window = self._window_of_sample()
        return self._window

    def _window_of_sample(self) -> ProbeWindow:
        rtt, spread = self.rtt(), self.spread()
        wait = self.configured.wait
        if not self.enough or rtt is None or spread is None or wait <= 0:
            return self.configured
        needed = max(FLOOR, ANSWER_MULTIPLE * (rtt + spread))
        return self.configured.scaled(min(1.0, needed / wait))

    def status(self) -> dict[str, Any]:
        rtt, spread = self.rtt(), self.spread()
        return {
            "samples": len(self._sample),
            "measured": self.measured,
            "unanswered": self.unanswered,
            "rtt_ms": None if rtt is None else round(rtt * 1000, 3),
            "spread_ms": None if spread is None else round(spread * 1000, 3),
            "window": self.window().to_json(),
            "configured": self.configured.to_json(),
        }
