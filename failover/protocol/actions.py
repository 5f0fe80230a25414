"""What the core asks the adapters to do: one small frozen dataclass per action.

The agent and `tests/nodepair.py` carry out every one of them with `match` + `assert_never`, so an
action nobody handles fails type checking. Actions that need an answer name the event that answers
them (`failover.protocol.events`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from failover.protocol.results import Outcome, Plan
from failover.protocol.window import ProbeWindow


@dataclass(frozen=True)
class Send:
    data: bytes


@dataclass(frozen=True)
class Claim:
    """Add the VIP to the interface; answer ClaimDone."""

    epoch: int
    why: str  # "swap", "rollback", "takeover", "reclaim"


@dataclass(frozen=True)
class Release:
    """Remove the VIP from the interface; answer ReleaseDone. A StartDrain for it comes first."""

    epoch: int
    why: str  # "swap", "hand-back", "settle"


@dataclass(frozen=True)
class StartDrain:
    """Keep the VIP ARP-silent on `lo` before it leaves the interface: packets in flight are still served.

    Until EndDrain, count this host's connections to the VIP every little while and answer each count
    with ConnectionsCounted: the drain ends when they have.
    """

    epoch: int


@dataclass(frozen=True)
class EndDrain:
    """Remove the ARP-silent copy of the VIP from `lo`, now."""

    epoch: int


@dataclass(frozen=True)
class MeasureLoad:
    """Read how many requests to the VIP this holder served lately; answer LoadMeasured."""

    epoch: int


@dataclass(frozen=True)
class Announce:
    round: int


@dataclass(frozen=True)
class CheckHealth:
    """GET this node's own health_url; answer HealthDone."""

    epoch: int


@dataclass(frozen=True)
class BeforeRelease:
    """Run the operator's before_release hooks now, before anything changed; answer BeforeReleaseDone."""

    epoch: int
    move: str
    target: str


@dataclass(frozen=True)
class RunHooks:
    """Run the operator's hooks of `event` on this node, after those of earlier events; no answer."""

    event: str  # "after_claim", "confirmed", "rolled_back", "takeover", "drain"
    epoch: int
    move: str
    source: str | None = None
    target: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Probe:
    """Ask the segment who answers for the VIP (RFC 5227 probe); answer ProbeDone."""

    epoch: int
    window: ProbeWindow | None = None  # None: the configured window
    peer_host: bool = False  # also ask who has the peer's own address: is its host up (host_answered_by)
    serial: int = 0  # which probe this is: its ProbeDone says it back (a takeover takes only its own)


@dataclass(frozen=True)
class StopProbe:
    """The probe `serial` is no longer wanted (its takeover was cleared): stop it, answer nothing."""

    serial: int


@dataclass(frozen=True)
class MeasurePeer:
    """Time one ARP request (IPv6: NS) for the peer's own address; answer PeerMeasured.

    Wait at most `timeout` seconds for the answer: a later one would not shrink any window."""

    timeout: float


@dataclass(frozen=True)
class Fence:
    """Run the fence program before a takeover claims; answer FenceDone."""

    epoch: int


@dataclass(frozen=True)
class Handoff:
    """Pass segments of connections we do not own to the draining old holder; answer HandoffDone."""

    epoch: int


@dataclass(frozen=True)
class EndHandoff:
    epoch: int
    after: float  # seconds from now


@dataclass(frozen=True)
class WatchStragglers:
    epoch: int


@dataclass(frozen=True)
class UnwatchStragglers:
    epoch: int


@dataclass(frozen=True)
class Tell:
    """A targeted ARP request / NS to one straggler: the VIP is at our MAC now."""

    ip: str
    mac: str


@dataclass(frozen=True)
class Watch:
    """Start following the access log now: requests after this moment may confirm the move."""

    epoch: int
    canary: bool  # count only the source's canary requests for this epoch


@dataclass(frozen=True)
class Unwatch:
    epoch: int


@dataclass(frozen=True)
class Canary:
    """Send marked HTTP requests to the VIP (quiet hours: no real clients to wait for), a few at once and
    then more on fresh connections until `within` seconds have passed or StopCanary comes: one lost SYN or
    a log truncated under the first few must not fail the move."""

    epoch: int
    within: float


@dataclass(frozen=True)
class StopCanary:
    """The move the canaries were for is over: send no more."""

    epoch: int


@dataclass(frozen=True)
class HostCheck:
    """Run this host's preflight checks for a dry run as `role`; read-only. Answer HostCheckDone."""

    nonce: int
    role: str  # "source" (key, sysctls, holds the VIP) or "target" (also health, access log, not holding)
    peer_boot: int | None = None  # the peer asked (its boot); None: our own dry run


@dataclass(frozen=True)
class Started:
    """An operator's command became a move of this epoch (or was refused as this epoch, at once)."""

    command: int
    epoch: int


@dataclass(frozen=True)
class Progress:
    command: int
    step: str
    elapsed_ms: float
    detail: dict[str, Any]


@dataclass(frozen=True)
class Finished:
    command: int
    outcome: Outcome


@dataclass(frozen=True)
class DrainReported:
    """The drain that followed a command's move is over (or its report never came): `report` says how."""

    command: int
    epoch: int
    report: dict[str, Any]


@dataclass(frozen=True)
class Planned:
    command: int
    plan: Plan


@dataclass(frozen=True)
class Notice:
    """Something an operator may want in the log (the agent journals moves and takeovers from these)."""

    event: str
    detail: dict[str, Any]


Action = (
    Send
    | Claim
    | Release
    | StartDrain
    | EndDrain
    | MeasureLoad
    | Announce
    | CheckHealth
    | BeforeRelease
    | RunHooks
    | Probe
    | StopProbe
    | MeasurePeer
    | Fence
    | Handoff
    | EndHandoff
    | DrainReported
    | WatchStragglers
    | UnwatchStragglers
    | Tell
    | Watch
    | Unwatch
    | Canary
    | StopCanary
    | HostCheck
    | Started
    | Progress
    | Finished
    | Planned
    | Notice
)
