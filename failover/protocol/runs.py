"""What a node remembers about the move it takes part in: one record per role.

A run's `state` is a member of its machine's table (`failover.protocol.states`); `deadline` is set
from that state's row whenever the state changes. Everything else is what the effects need to word
the outcome and to answer a duplicate datagram.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from failover import wire
from failover.protocol.results import Check
from failover.protocol.states import (
    DrainedCopyState,
    DrainState,
    DrainWaitState,
    DryRunState,
    HandoffState,
    MoveState,
    TakeoverState,
)


@dataclass
class Run:
    epoch: int
    move: str  # "swap", "unswap"; "takeover" or "reclaim" for a TakeoverRun
    source: str
    target: str
    started: float
    command: int | None  # the operator's command this run reports to, if any
    steps: list[tuple[str, float]] = field(default_factory=list)
    deadline: float | None = None
    outbox: wire.Message | None = None  # resent every retransmit interval while resend_at is set
    resend_at: float | None = None
    # The answer we gave to each kind of question, sent again when a duplicate of it arrives.
    replies: dict[str, wire.Message] = field(default_factory=dict)
    handoff: bool = False  # a Handoff is in place and no EndHandoff has been asked for yet
    handoff_error: str = ""  # the new holder's handoff could not be put in place: why

    def elapsed_ms(self, now: float) -> float:
        return (now - self.started) * 1000.0


@dataclass
class SourceRun(Run):
    """The holder's side of a swap or unswap, and its reclaim when the move fails."""

    state: MoveState = field(kw_only=True)
    probed: bool = False  # the target was probed once already: a second silence decides
    unknown_probes: int = 0  # probes that could not tell whether anyone holds the VIP
    # Timing pieces for the unserved window, measured on each side with its own clock.
    release_started: float | None = None
    release_ms: float | None = None
    released_sent: float | None = None
    unserved_ms: float | None = None
    straggler_until: float | None = None  # watching for stragglers until then
    claimed_seen: float | None = None  # when we learnt of the claim: later frames are stragglers
    stragglers: dict[str, dict[str, Any]] = field(default_factory=dict)  # mac -> ip, told, last_seen
    done: dict[str, Any] | None = None  # the finished move's figures, waiting for the straggler window
    rollback_reason: str = ""  # why we reclaim, once we do
    rollback_started: float | None = None
    load_measured: bool = False  # our log was read for the rate (it may still not have told it)
    rate: float | None = None  # requests per second to the VIP before the move, as our log tells
    peer_drain: float = 0.0  # seconds the target drains after its hand-back release (from HandBack)
    peer_drain_max: float = 0.0
    canary: bool = False  # the proof comes from our marked requests (confirm.mode canary, or too quiet)
    canaries_sent: bool = False  # Canary emitted: StopCanary when the run ends
    evidence: dict[str, Any] | None = None  # the target's proof facts, from its HandBack

    @property
    def role(self) -> str:
        return "source"

    @property
    def claim_epoch(self) -> int:
        return self.epoch + 1  # a reclaim claims with the next epoch: it outranks the failed move's


@dataclass
class TargetRun(Run):
    """The standby's side of a swap or unswap, and its hand-back when clients do not show up."""

    state: MoveState = field(kw_only=True)
    peer_drain: float = 0.0  # seconds the source keeps serving in-flight connections after releasing
    peer_drain_max: float = 0.0  # and at the latest this long after it, waiting for them to end
    handoff_pending: bool = False  # waiting for HandoffDone before we may say we are ready
    health: tuple[bool, str] | None = None  # the health check's answer, once in
    watching: bool = False  # following the access log
    released_received: float | None = None
    claimed_at: float | None = None
    source_rate: float | None = None  # the source's requests per second before the move
    canary: bool = False  # only the source's canary requests count
    proof_deadline: float = 0.0  # seconds from the claim to a proof, else hand back
    proof_why: str = ""  # how that deadline was chosen, in words
    proof_extended: float = 0.0  # seconds added to it: the time this host was held off the CPU meanwhile
    held_off_counted: float = 0.0  # the node's `held_off` already given back (at the claim, then added)
    unparsed: int = 0  # log lines since the claim that did not parse
    # The latest running count of the proof (TrafficSeen): requests, first clients, how the destination
    # was known ("" until the log had a line).
    counted: int = 0
    counted_clients: tuple[str, ...] = ()
    destination: str = ""

    @property
    def role(self) -> str:
        return "target"

    @property
    def claim_epoch(self) -> int:
        return self.epoch


@dataclass
class TakeoverRun(Run):
    """A standby's takeover of a silent holder ("takeover"), or a holder's reclaim of a lost VIP."""

    state: TakeoverState = field(kw_only=True)
    why: str = ""  # what started it: the holder's silence, or the VIP gone
    fence_detail: str | None = None  # the fence program's answer, once it passed
    # A silent holder's takeover: when the holder was last heard as it began. Its probe counts only if the
    # holder stays silent from then to the claim; any datagram from it moves `peer_seen` past this.
    heard: float | None = None

    @property
    def role(self) -> str:
        return "standby"

    @property
    def claim_epoch(self) -> int:
        return self.epoch


AnyRun = SourceRun | TargetRun | TakeoverRun


@dataclass
class DryRun:
    """A dry run: the checks of a move, run for real on both nodes; no run, no epoch, nothing changed."""

    command: int
    nonce: int
    move: str
    source: str
    target: str
    started: float
    checks: list[Check]  # this node's view: peer alive, digests, holder...
    state: DryRunState = DryRunState.CHECKING
    deadline: float | None = None
    host: dict[str, list[Check]] = field(default_factory=dict)  # node -> its host checks
    waiting_local: bool = False
    waiting_peer: bool = False
    request: wire.CheckRequest | None = None
    resend_at: float | None = None


@dataclass
class DrainRun:
    """The old holder's drain after one release: how long, and what the kernel counts still open."""

    epoch: int
    move: str
    released_at: float
    state: DrainState = DrainState.SERVING
    deadline: float | None = None
    resend_at: float | None = None  # never set: a drain resends nothing, but every record has one
    open: int | None = None  # connections to the VIP at the last count; None: not counted (yet)
    oldest_s: float = 0.0
    closing: int = 0  # of `open`: closed by the server, waiting only for the client's FIN
    error: str = ""  # why the last count failed
    reported: bool = False  # the operator heard it is over (only `closing` ones left); the drain goes on


@dataclass
class KeptHandoff:
    """The new holder's handoff for the move of `epoch`, kept after its claim for the old holder's drain."""

    epoch: int
    drain_max: float  # the old holder's drain_max_ms, in seconds: the bound of its drain
    state: HandoffState = HandoffState.KEPT
    deadline: float | None = None
    resend_at: float | None = None  # never set, as for a drain


@dataclass
class DrainWait:
    """A command whose move ended before the drain that follows it: it is told the drain's report."""

    command: int
    epoch: int
    drain_max: float  # the draining node's drain_max_ms, in seconds
    state: DrainWaitState = DrainWaitState.WAITING
    deadline: float | None = None
    resend_at: float | None = None  # never set, as for a drain


@dataclass
class DrainedCopies:
    """The old holder's last Drained, sent again with the next heartbeats."""

    message: wire.Drained
    state: DrainedCopyState = DrainedCopyState.RESENDING
    deadline: float | None = None  # never set: this row's timeout is counted in heartbeats
    beats_left: int = 0  # heartbeats still to carry a copy
    resend_at: float | None = None  # never set: the heartbeats carry the copies


DrainRecord = DrainRun | KeptHandoff | DrainWait | DrainedCopies  # the records of the drain's machines
Record = AnyRun | DryRun | DrainRecord  # anything whose state is a row of a table
