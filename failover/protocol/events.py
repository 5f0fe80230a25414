"""What the adapters tell the core: the result of an action, or something seen on the host.

Each is a small frozen dataclass handed to `Node.handle(event, now)`, the one entry point for them
(datagrams, timers and operator commands have their own: `receive_datagram`, `handle_timer`,
`command`).
"""

from __future__ import annotations

from dataclasses import dataclass

from failover.protocol.actions import HostCheck
from failover.protocol.results import Check


@dataclass(frozen=True)
class BeforeReleaseDone:
    """Answers BeforeRelease: every hook exited 0 (ok), or the first failure."""

    epoch: int
    ok: bool
    detail: str


@dataclass(frozen=True)
class LoadMeasured:
    """Answers MeasureLoad: requests per second that would count as proof, over the last seconds (None:
    the log could not tell)."""

    epoch: int
    per_second: float | None
    detail: str = ""


@dataclass(frozen=True)
class HealthDone:
    """Answers CheckHealth: is this node's own service healthy."""

    epoch: int
    ok: bool
    detail: str


@dataclass(frozen=True)
class HandoffDone:
    """Answers Handoff: the rule that passes segments to the draining old holder is in place (ok) or not."""

    epoch: int
    ok: bool
    error: str = ""


@dataclass(frozen=True)
class ReleaseDone:
    """Answers Release: the VIP is gone from this host (ok) or not."""

    epoch: int
    ok: bool
    error: str = ""


@dataclass(frozen=True)
class ClaimDone:
    """Answers Claim: the VIP is on this host (ok) or not."""

    epoch: int
    ok: bool
    error: str = ""


@dataclass(frozen=True)
class ProbeDone:
    """Answers Probe: the MACs that answered for the VIP; empty, and nothing unknown: nobody holds it."""

    epoch: int
    answered_by: tuple[str, ...]
    unknown: str = ""  # why the probe may have missed an answer (frames dropped, an error): not silence
    # With Probe.peer_host: the MACs that answered for (or spoke from) the peer's own address.
    host_answered_by: tuple[str, ...] = ()
    serial: int = 0  # Probe.serial, said back


@dataclass(frozen=True)
class PeerMeasured:
    """Answers MeasurePeer: seconds from the request to the peer kernel's answer; None: no answer."""

    rtt: float | None
    detail: str = ""


@dataclass(frozen=True)
class FenceDone:
    """Answers Fence: the program exited 0 (ok) or not, or timed out."""

    epoch: int
    ok: bool
    detail: str


@dataclass(frozen=True)
class TrafficSeen:
    """The running count of requests in the access log since Watch (canary or real)."""

    epoch: int
    requests: int
    clients: tuple[str, ...]
    how: str = ""  # how the destination was known: "log field" (server address), "client address"
    unparsed: int = 0  # lines since Watch that did not parse: a log that stops parsing is not silence


@dataclass(frozen=True)
class StragglersSeen:
    """Frames still reaching the old holder for the VIP: (mac, ip, last seen) per sender."""

    epoch: int
    seen: tuple[tuple[str, str, float], ...]


@dataclass(frozen=True)
class HostCheckDone:
    """Answers HostCheck: this host's findings, for our dry run or the peer's."""

    action: HostCheck
    findings: tuple[Check, ...]


@dataclass(frozen=True)
class ConnectionsCounted:
    """While a drain copy of the VIP is on lo: this host's TCP connections to the VIP, as the kernel lists
    them (`open` None: they could not be counted, `error` says why)."""

    epoch: int
    open: int | None
    oldest_s: float = 0.0  # how long the oldest of them has been open, as far as the counting saw
    error: str = ""
    closing: int = 0  # of `open`: closed by the server a while ago, waiting only for the client's FIN


@dataclass(frozen=True)
class SelfCheckDone:
    """The periodic check of this node's own health_url."""

    ok: bool
    detail: str


@dataclass(frozen=True)
class VipObserved:
    """What netlink says about the VIP on this host; it wins over what the core believed."""

    held: bool


Event = (
    LoadMeasured
    | BeforeReleaseDone
    | HealthDone
    | HandoffDone
    | ReleaseDone
    | ClaimDone
    | ProbeDone
    | PeerMeasured
    | FenceDone
    | TrafficSeen
    | StragglersSeen
    | HostCheckDone
    | ConnectionsCounted
    | SelfCheckDone
    | VipObserved
)
