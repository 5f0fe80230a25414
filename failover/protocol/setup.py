"""What a node is told at start: who it is, its peer, its keys and every timer, as plain numbers."""

from __future__ import annotations

from dataclasses import dataclass, field

from failover.protocol.window import ProbeWindow

# A standby that answers the holder's heartbeats (Node._answer_heartbeat) sends its next this many
# intervals on: the holder's next heartbeat, one interval on, comes first and is answered.
ANSWER_NEXT = 1.25
# An idle standby of a holder it hears sends its heartbeats about this often, in whole intervals, not every
# interval: nothing waits for them but the holder's judgement of its liveness, which follows the gap each
# heartbeat announces (Heartbeat.every_ms). The holder keeps its own cadence: by its silence the standby
# judges a takeover. Each heartbeat costs both agents CPU (the sender encodes and signs it, the receiver
# wakes, checks and decodes it): at 10 ms intervals the standby sends one in five.
STANDBY_CADENCE = 0.05  # seconds


@dataclass(frozen=True)
class Timing:
    heartbeat_interval: float = 0.05
    dead_after: float = 0.25
    step_timeout: float = 1.0
    announce_schedule: tuple[float, ...] = (0.0, 0.2, 1.1, 2.3)

    @property
    def retransmit(self) -> float:
        # Swap messages are resent faster than heartbeats: a lost datagram should cost milliseconds.
        return min(0.02, self.heartbeat_interval)

    @property
    def standby_beats(self) -> int:
        """An idle standby sends one heartbeat in this many of the holder's."""
        return max(1, round(STANDBY_CADENCE / self.heartbeat_interval))

    @property
    def longest_standby_gap(self) -> float:
        """Seconds at most between two heartbeats of an idle standby, a holder's heartbeat lost between."""
        return self.heartbeat_interval * (self.standby_beats - 1 + ANSWER_NEXT)


@dataclass(frozen=True)
class NodeSetup:
    cluster: str
    name: str
    peer: str
    home: bool  # this node is the VIP's home (unswap target)
    digest: str  # hex digest of the cluster file
    # Every key verifies; we sign with the newest one the peer accepts (the oldest until it says).
    keys: tuple[bytes, ...]
    timing: Timing
    boot: int  # orders this run's messages after any earlier run's
    automatic: bool = True  # take over by itself when the holder goes silent
    fence: bool = False  # run the fence hook (Fence action) before a takeover claims
    self_check_fails: int = 3  # own health failures in a row that make the holder hand over
    takeover_retry: float = 1.0  # after a takeover was refused (probe answered, fence failed)
    on_vip_lost: str = "report"  # the VIP removed behind our back: "report" it, or "reclaim" it
    confirm: str = "none"  # "traffic" | "canary" | "none": how the new holder proves clients arrived
    confirm_requests: int = 3
    confirm_within: float = 10.0
    drain: float = 0.0  # seconds this node keeps serving in-flight connections after it releases, at least
    drain_max: float = 0.0  # seconds after the release at which the drain ends, connections or not
    drain_off: str = ""  # why this node does not drain, when drain is 0
    straggler_window: float = 0.0  # seconds the old holder watches for clients still sending to it
    before_release: float = 0.0  # budget in seconds for the holder's before_release hooks (0: none)
    host_check_budget: float = 1.0  # seconds a node's host checks may take (its health check's timeout)
    probe_budget: float = 1.0  # seconds the adapter's probe may take (count x interval + wait)
    # The configured probe (probe.count, interval_ms, wait_ms): a takeover's window never exceeds it.
    probe_window: ProbeWindow = field(default_factory=lambda: ProbeWindow(3, 0.02, 0.06))
    measure_every: float = 0.0  # seconds between two timings of the peer's kernel (0: never, fixed window)
    fence_budget: float = 5.0  # seconds the fence program may take
    vip: str = "the VIP"  # the address, as operators read it in a reason
