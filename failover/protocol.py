"""The failover protocol core: one `Node` for both hosts, with no sockets, no clock and no netlink.

Adapters feed it events (`receive_datagram`, `handle_timer`, `command`, and the results of the actions
it asked for) together with `now`, a float of seconds; it answers with actions pulled by
`pop_actions()`: datagrams to send, the VIP to claim or release, announcements, health checks, probes,
and progress for the operator. `get_timer()` says when it next wants `handle_timer`.

A swap, seen from the two sides (E is the swap's epoch):

    source (holds the VIP)                 target
    Prepare(E) ------------------------->  check own health
               <-------------------------  Prepared(E)          (or Refused)
    release VIP, Released(E) ----------->  claim VIP, announce
               <-------------------------  Claimed(E)           (or ClaimFailed -> source reclaims)
    Done(E) ---------------------------->

Safety: the source releases before the target claims, so the VIP is never on two hosts. The target
claims only if Released arrives within `step_timeout` of its Prepared; the source reclaims on its own
only after `step_timeout` without an answer *and* a probe in which nobody answered for the VIP. If both
hosts ever hold the VIP anyway (a partition, a manual mistake), heartbeats settle it: the newer holding
epoch keeps it, the home node wins a tie.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from failover import wire

MOVES = ("swap", "unswap")
STRAGGLER_GRACE = 0.1  # seconds: frames sent before a client could have heard the announcement


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


@dataclass(frozen=True)
class NodeSetup:
    cluster: str
    name: str
    peer: str
    home: bool  # this node is the VIP's home (unswap target)
    digest: str  # hex digest of the cluster file
    keys: tuple[bytes, ...]  # first signs, all verify (key rotation)
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
    drain: float = 0.0  # seconds this node keeps serving in-flight connections after it releases
    straggler_window: float = 0.0  # seconds the old holder watches for clients still sending to it
    before_release: float = 0.0  # budget in seconds for the holder's before_release hooks (0: none)
    host_check_budget: float = 1.0  # seconds a node's dry-run checks may take (its health check's timeout)


# --- actions (outputs) -------------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    data: bytes


@dataclass(frozen=True)
class Claim:
    epoch: int
    why: str  # "swap", "rollback"


@dataclass(frozen=True)
class Release:
    epoch: int
    why: str  # "swap", "settle"


@dataclass(frozen=True)
class Announce:
    round: int


@dataclass(frozen=True)
class CheckHealth:
    epoch: int


@dataclass(frozen=True)
class BeforeRelease:
    """Run the operator's before_release hooks now, before anything changed; answer before_release_done."""

    epoch: int
    move: str
    target: str


@dataclass(frozen=True)
class Probe:
    epoch: int


@dataclass(frozen=True)
class Fence:
    epoch: int


@dataclass(frozen=True)
class Handoff:
    """Pass segments of connections we do not own to the draining old holder (before we claim)."""

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
    """Send a few marked HTTP requests to the VIP (quiet hours: no real clients to wait for)."""

    epoch: int


@dataclass(frozen=True)
class HostCheck:
    """Run this host's preflight checks for a dry run as `role`; read-only. Answer host_check_done."""

    nonce: int
    role: str  # "source" (key, sysctls, holds the VIP) or "target" (also health, access log, not holding)
    peer_boot: int | None = None  # the peer asked (its boot); None: our own dry run


OK, WARN, FAIL = "ok", "warn", "FAIL"


@dataclass(frozen=True)
class Check:
    """One preflight check of a dry run, judged on one node."""

    node: str
    check: str
    level: str  # ok, warn (passes, worth knowing) or FAIL
    detail: str
    fix: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "check": self.check,
            "level": self.level,
            "detail": self.detail,
            "fix": self.fix,
        }


@dataclass(frozen=True)
class Plan:
    """What a swap or unswap would do now, and whether every check passes. Nothing was changed."""

    ok: bool
    move: str
    source: str
    target: str
    reason: str  # the first failed check, "" when all pass
    checks: tuple[Check, ...]
    steps: tuple[tuple[str, str], ...]  # (step, what happens in it), in order
    duration_ms: float

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": True,
            "ok": self.ok,
            "move": self.move,
            "source": self.source,
            "target": self.target,
            "reason": self.reason,
            "checks": [c.to_json() for c in self.checks],
            "plan": [{"step": step, "what": what} for step, what in self.steps],
            "duration_ms": round(self.duration_ms, 3),
        }


@dataclass(frozen=True)
class Planned:
    command: int
    plan: Plan


@dataclass(frozen=True)
class Progress:
    command: int
    step: str
    elapsed_ms: float
    detail: dict[str, Any]


@dataclass(frozen=True)
class Outcome:
    ok: bool
    move: str
    epoch: int
    source: str
    target: str
    reason: str
    duration_ms: float
    unserved_ms: float | None
    rolled_back: bool
    steps: tuple[tuple[str, float], ...]
    holder: str | None  # who holds the VIP when the move ended, as far as this node knows
    confirmed: bool | None = None  # None: confirmation is off
    confirm_ms: float | None = None  # from the claim to the request that confirmed the move
    evidence: dict[str, Any] | None = None  # requests counted, first clients
    stragglers: tuple[dict[str, Any], ...] = ()  # {ip, mac, moved}

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "move": self.move,
            "epoch": self.epoch,
            "source": self.source,
            "target": self.target,
            "reason": self.reason,
            "duration_ms": round(self.duration_ms, 3),
            "unserved_ms": None if self.unserved_ms is None else round(self.unserved_ms, 3),
            "rolled_back": self.rolled_back,
            "steps": [{"step": s, "ms": round(ms, 3)} for s, ms in self.steps],
            "holder": self.holder,
            "confirmed": self.confirmed,
            "confirm_ms": None if self.confirm_ms is None else round(self.confirm_ms, 3),
            "evidence": self.evidence,
            "stragglers": list(self.stragglers),
        }


@dataclass(frozen=True)
class Finished:
    command: int
    outcome: Outcome


@dataclass(frozen=True)
class Notice:
    """Something an operator may want in the log."""

    event: str
    detail: dict[str, Any]


Action = (
    Send
    | Claim
    | Release
    | Announce
    | CheckHealth
    | BeforeRelease
    | Probe
    | Fence
    | Handoff
    | EndHandoff
    | WatchStragglers
    | UnwatchStragglers
    | Tell
    | Watch
    | Unwatch
    | Canary
    | HostCheck
    | Progress
    | Finished
    | Planned
    | Notice
)


# --- a swap in progress ---------------------------------------------------------------------------


@dataclass
class _Run:
    epoch: int
    move: str
    role: str  # "source" or "target"
    source: str
    target: str
    state: str
    started: float
    command: int | None
    steps: list[tuple[str, float]] = field(default_factory=list)
    deadline: float | None = None
    outbox: wire.Message | None = None  # resent every retransmit interval while resend_at is set
    resend_at: float | None = None
    replies: dict[str, wire.Message] = field(default_factory=dict)  # answer to a duplicate of each kind
    finished: bool = False
    probed: bool = False
    # Timing pieces for the unserved window, measured on each side with its own clock.
    release_started: float | None = None
    release_ms: float | None = None
    released_sent: float | None = None
    released_received: float | None = None
    claim_started: float | None = None
    claimed_at: float | None = None
    unserved_ms: float | None = None
    watching: bool = False
    peer_drain: float = 0.0
    handoff: bool = False  # a Handoff is in place and no EndHandoff has been asked for yet
    straggler_until: float | None = None  # watching for stragglers until then (source)
    claimed_seen: float | None = None  # when the source learnt of the claim: later frames are stragglers
    stragglers: dict[str, dict[str, Any]] = field(default_factory=dict)  # mac -> ip, told, last_seen
    done_kwargs: dict[str, Any] | None = None  # a finished move waiting for the straggler window

    def elapsed_ms(self, now: float) -> float:
        return (now - self.started) * 1000.0


@dataclass
class _DryRun:
    """A dry run: the checks of a move, run for real on both nodes; no run, no epoch, nothing changed."""

    command: int
    nonce: int
    move: str
    source: str
    target: str
    started: float
    deadline: float
    checks: list[Check]  # this node's view: peer alive, digests, holder...
    host: dict[str, list[Check]] = field(default_factory=dict)  # node -> its host checks
    waiting_local: bool = False
    waiting_peer: bool = False
    request: wire.CheckRequest | None = None
    resend_at: float | None = None


def _nested(counts: Counter[tuple[str, str]]) -> dict[str, dict[str, int]]:
    nested: dict[str, dict[str, int]] = {}
    for (outer, inner), n in sorted(counts.items()):
        nested.setdefault(outer, {})[inner] = n
    return nested


class Node:
    """One agent's protocol state. Both hosts run the same code."""

    def __init__(self, setup: NodeSetup, *, holds: bool, held_epoch: int, epoch: int, now: float) -> None:
        self.setup = setup
        self.timing = setup.timing
        self.holds = holds
        self.held_epoch = held_epoch
        self.epoch = max(epoch, held_epoch)
        self.peer_epoch = 0
        self.peer_heartbeat: wire.Heartbeat | None = None
        self.peer_seen: float | None = None
        self.run: _Run | None = None
        self.last_outcome: Outcome | None = None
        self.rejected: Counter[str] = Counter()
        self.received: Counter[str] = Counter()
        self.sent: Counter[str] = Counter()
        self._actions: list[Action] = []
        self._seq = itertools.count(1)
        # Until the peer says which keys it accepts, sign with the oldest we have: mid-rotation the peer
        # may not have the new one yet. Its first heartbeat moves us to the newest key it accepts.
        self._signing_key = setup.keys[-1]
        self._commands = itertools.count(1)
        self._replay = wire.ReplayGuard()
        self._next_heartbeat = now
        self._announce_due: list[float] = []
        self._announce_round = 0
        self._settle_announced = -1.0
        self.last_takeover: dict[str, Any] | None = None
        self._takeover_not_before = now
        self._silence_reported = False
        self.self_check_fails = 0
        self._self_swap_not_before = now
        self.moves: Counter[tuple[str, str]] = Counter()  # (move, outcome) -> how many, since start
        self.stragglers_total = 0
        self._dry_runs: dict[int, _DryRun] = {}  # nonce -> dry run waiting for checks
        self._nonces = itertools.count(1)
        # (peer boot, nonce) -> our answer to the peer's dry run (None: checks still running), the last few
        self._check_answers: dict[tuple[int, int], wire.CheckResult | None] = {}
        if holds:
            # Whoever held the VIP before this start may not have announced it (killed mid-swap, or the
            # network changed meanwhile): the holder says so again, once, now.
            self._schedule_announce(now)

    # --- outputs ---------------------------------------------------------------------------------

    def pop_actions(self) -> list[Action]:
        actions, self._actions = self._actions, []
        return actions

    def get_timer(self) -> float:
        deadlines = [self._next_heartbeat]
        if self._may_take_over():
            assert self.peer_seen is not None
            # Just past dead_after: alive means "heard within dead_after", inclusive.
            deadlines.append(max(self.peer_seen + self.timing.dead_after + 0.001, self._takeover_not_before))
        if self._announce_due:
            deadlines.append(self._announce_due[0])
        run = self.run
        if run is not None:
            if run.resend_at is not None:
                deadlines.append(run.resend_at)
            if run.deadline is not None:
                deadlines.append(run.deadline)
        for dry in self._dry_runs.values():
            deadlines.append(dry.deadline)
            if dry.resend_at is not None:
                deadlines.append(dry.resend_at)
        return min(deadlines)

    # --- queries -----------------------------------------------------------------------------------

    def peer_alive(self, now: float) -> bool:
        return self.peer_seen is not None and now - self.peer_seen <= self.timing.dead_after

    def peer_holds(self) -> bool:
        return self.peer_heartbeat is not None and self.peer_heartbeat.holds_vip

    def busy(self) -> bool:
        return self.run is not None and not self.run.finished

    def status(self, now: float) -> dict[str, Any]:
        hb = self.peer_heartbeat
        run = self.run
        return {
            "node": self.setup.name,
            "holds_vip": self.holds,
            "held_epoch": self.held_epoch,
            "epoch": self.epoch,
            "peer": {
                "name": self.setup.peer,
                "alive": self.peer_alive(now),
                "heartbeat_age_ms": None
                if self.peer_seen is None
                else round((now - self.peer_seen) * 1000, 1),
                "holds_vip": None if hb is None else hb.holds_vip,
                "held_epoch": None if hb is None else hb.held_epoch,
                "digest": None if hb is None else hb.digest,
            },
            "digest": self.setup.digest,
            "digests_equal": None if hb is None else hb.digest == self.setup.digest,
            "swap_in_progress": None
            if run is None or run.finished
            else {
                "epoch": run.epoch,
                "move": run.move,
                "role": run.role,
                "state": run.state,
            },
            "last_move": None if self.last_outcome is None else self.last_outcome.to_json(),
            "last_takeover": self.last_takeover,
            "self_check": {"fails_in_a_row": self.self_check_fails, "healthy": self.healthy()},
            "rejected": dict(self.rejected),
            "received": dict(self.received),
            "sent": dict(self.sent),
            "moves": _nested(self.moves),
            "stragglers_seen": self.stragglers_total,
        }

    # --- events: operator ----------------------------------------------------------------------------

    def command(self, move: str, now: float, *, dry_run: bool = False) -> int:
        """Start a swap or unswap; progress and the outcome come as actions tagged with the returned id.

        A dry run changes nothing (no run, no epoch, no VIP): it runs every check of the move on both
        nodes and answers with one Planned action.
        """
        cid = next(self._commands)
        if dry_run:
            self._start_dry_run(move, now, cid)
        else:
            self._start_move(move, now, cid)
        return cid

    def _source_target(self, now: float) -> tuple[str, str]:
        me, peer = self.setup.name, self.setup.peer
        if self.holds:
            return me, peer
        if self.peer_holds() and self.peer_alive(now):
            return peer, me
        return "", ""

    def _close_straggler_window(self, now: float) -> None:
        """A new move cuts the last one's straggler window short: report it with what was seen so far."""
        run = self.run
        if run is not None and run.state == "collecting-stragglers":
            self._finish(run, ok=True, reason="", now=now, **(run.done_kwargs or {}))

    def _start_move(self, move: str, now: float, cid: int | None) -> None:
        self._close_straggler_window(now)
        me = self.setup.name
        source, target = self._source_target(now)
        reason = self._refusal(move, source, target, now)
        epoch = max(self.epoch, self.peer_epoch) + 1
        if reason:
            self._finish_refused(cid, move, epoch, source, target, reason, now)
            return
        self.epoch = epoch
        run = _Run(
            epoch=epoch,
            move=move,
            role="source" if source == me else "target",
            source=source,
            target=target,
            state="",
            started=now,
            command=cid,
        )
        self.run = run
        self._step(run, "preflight", now)
        if run.role == "source":
            self._before_release(run, now)
        else:
            run.state = "requested"
            self._transmit(run, wire.SwapRequest(epoch=epoch, move=move), now)
            # The holder may run its before_release hooks before it prepares (same file on both hosts).
            run.deadline = now + self.timing.step_timeout + self.setup.before_release

    def _refusal(self, move: str, source: str, target: str, now: float) -> str:
        return next((problem for _, problem, _ in self._preflight(move, source, target, now) if problem), "")

    def _preflight(self, move: str, source: str, target: str, now: float) -> list[tuple[str, str, str]]:
        """Every rule a move must pass on this node, in order: (check, problem, detail when it passes)."""
        me, peer = self.setup.name, self.setup.peer
        if move not in MOVES:
            return [("move", f"unknown move {move!r}", "")]
        rows: list[tuple[str, str, str]] = []
        run = self.run
        busy = f"a {run.move} is already in progress (epoch {run.epoch})" if run and self.busy() else ""
        rows.append(("no move in progress", busy, "none"))
        alive = ""
        if self.peer_seen is None:
            alive = f"peer {peer} has not been heard from; is its agent running?"
        elif not self.peer_alive(now):
            silent_ms = (now - self.peer_seen) * 1000
            alive = f"peer {peer} is not answering heartbeats (last heard {silent_ms:.0f} ms ago)"
        heard = "" if self.peer_seen is None else f"{peer} heard {(now - self.peer_seen) * 1000:.0f} ms ago"
        rows.append(("peer alive", alive, heard))
        hb = self.peer_heartbeat
        differ = ""
        if hb is not None and hb.digest != self.setup.digest:
            differ = (
                f"cluster files differ between {me} ({self.setup.digest[:12]}) and {peer} "
                f"({hb.digest[:12]}); copy the same file to both hosts"
            )
        same = f"{self.setup.digest[:12]} on both" if hb is not None else "the peer's is not known yet"
        rows.append(("cluster files equal", differ, same))
        both = f"both {me} and {peer} hold the VIP; wait for them to settle"
        rows.append(("one holder", both if self.holds and self.peer_holds() else "", "yes"))
        rows.append(("holder known", "" if source else "no node holds the VIP", f"{source} holds the VIP"))
        if move == "unswap":
            home = me if self.setup.home else peer
            already = f"the VIP is already on its home node {home}" if source == home else ""
            rows.append(("target is home", already, f"{target} is home"))
        return rows

    def _finish_refused(
        self, cid: int | None, move: str, epoch: int, source: str, target: str, reason: str, now: float
    ) -> None:
        holder = self.setup.name if self.holds else (self.setup.peer if self.peer_holds() else None)
        outcome = Outcome(
            ok=False,
            move=move,
            epoch=epoch,
            source=source,
            target=target,
            reason=reason,
            duration_ms=0.0,
            unserved_ms=None,
            rolled_back=False,
            steps=(),
            holder=holder,
        )
        self.last_outcome = outcome
        self.moves[move, "refused"] += 1
        self._actions.append(Notice("move-refused", outcome.to_json()))
        if cid is not None:
            self._actions.append(Finished(cid, outcome))

    # --- events: the network -------------------------------------------------------------------------

    def receive_datagram(self, data: bytes, now: float) -> None:
        try:
            env = wire.decode(data, self.setup.keys)
        except wire.WireError as err:
            self._reject(err.reason, now)
            return
        if env.cluster != self.setup.cluster:
            self._reject("cluster", now)
            return
        if env.sender != self.setup.peer:
            self._reject("sender", now)
            return
        if not self._replay.accept(env):
            self._reject("replay", now)
            return
        self.peer_seen = now
        msg = env.message
        self.received[msg.kind] += 1
        if isinstance(msg, wire.Heartbeat):
            self._on_heartbeat(msg, now)
            return
        run = self.run
        if isinstance(msg, wire.SwapRequest):
            self._on_swap_request(msg, now)
        elif isinstance(msg, wire.CheckRequest):
            self._on_check_request(msg, env.boot)
        elif isinstance(msg, wire.CheckResult):
            self._on_check_result(msg, now)
        elif isinstance(msg, wire.Prepare):
            self._on_prepare(msg, now)
        elif run is None or msg.epoch != run.epoch:
            # A Released for a swap we know nothing of (we restarted in the middle of it): answer with what
            # netlink says, so the source neither reclaims a VIP we hold nor waits for one we never took.
            if isinstance(msg, wire.Released):
                if self.holds:
                    self._send(wire.Claimed(epoch=msg.epoch, turnaround_ms=0.0, claim_ms=0.0, restarted=True))
                else:
                    self._send(wire.ClaimFailed(epoch=msg.epoch, reason="no swap of that epoch here"))
            return
        elif isinstance(msg, wire.Prepared):
            self._on_prepared(run, now)
        elif isinstance(msg, wire.Refused):
            self._on_refused(run, msg, now)
        elif isinstance(msg, wire.Released):
            self._on_released(run, msg, now)
        elif isinstance(msg, wire.Claimed):
            self._on_claimed(run, msg, now)
        elif isinstance(msg, wire.ClaimFailed):
            self._on_claim_failed(run, msg, now)
        elif isinstance(msg, wire.Abort):
            self._on_abort(run, msg, now)
        elif isinstance(msg, wire.Done) and run.role == "target":
            if run.state == "claimed":
                run.state, run.resend_at, run.deadline = "acknowledged", None, None
            elif run.state == "confirming":
                run.resend_at = None  # the source knows we claimed; now we wait for clients
        elif isinstance(msg, wire.TellStragglers):
            if run.role == "target":
                for entry in msg.entries.split(","):
                    ip, _, mac = entry.partition("=")
                    if ip and mac:
                        self._actions.append(Tell(ip, mac))
        elif isinstance(msg, wire.Confirmed):
            self._on_confirmed(run, msg, now)
        elif isinstance(msg, wire.HandBack):
            self._on_hand_back(run, msg, now)
        elif isinstance(msg, wire.Ack) and run.role == "target" and run.state in ("confirmed", "handed-back"):
            run.state, run.resend_at, run.deadline = "acknowledged", None, None

    def _reject(self, reason: str, now: float) -> None:
        self.rejected[reason] += 1
        self._actions.append(Notice("datagram-rejected", {"reason": reason}))

    def _on_heartbeat(self, hb: wire.Heartbeat, now: float) -> None:
        self.peer_heartbeat = hb
        if hb.keys:
            # Sign with our newest key the peer accepts: during a rotation, host by host, both keep
            # talking; once both have the new key first, both use it.
            accepted = set(hb.keys.split(","))
            usable = [k for k in self.setup.keys if wire.key_fingerprint(k) in accepted]
            if usable and usable[0] != self._signing_key:
                self._signing_key = usable[0]
                self._actions.append(Notice("signing-key", {"key": wire.key_fingerprint(usable[0])}))
        self.peer_epoch = max(self.peer_epoch, hb.epoch)
        self._silence_reported = False
        run = self.run
        if run is not None and run.state in ("takeover-probing", "takeover-fencing"):
            # A silent holder that speaks again ends a takeover; a reclaim ends only if the peer has the VIP.
            if run.move == "takeover":
                self._finish_takeover(run, False, f"{self.setup.peer} was heard again: no takeover", now)
            elif hb.holds_vip:
                self._finish_takeover(run, False, f"{self.setup.peer} holds the VIP: not reclaiming", now)
        if not (self.holds and hb.holds_vip) or self._changing_vip():
            return
        # Both hold the VIP: the newer holding epoch keeps it, the home node wins a tie.
        mine = (self.held_epoch, self.setup.home)
        theirs = (hb.held_epoch, not self.setup.home)
        if theirs > mine:
            self._actions.append(
                Notice("settle", {"keeps": self.setup.peer, "mine": mine[0], "theirs": theirs[0]})
            )
            self._actions.append(Release(self.held_epoch, "settle"))
        elif now - self._settle_announced >= self.timing.dead_after:
            # The peer will release; re-announce so clients that followed it come back.
            self._settle_announced = now
            self._schedule_announce(now)

    def _changing_vip(self) -> bool:
        run = self.run
        changing = ("releasing", "claiming", "reclaiming", "takeover-claiming", "handing-back")
        return run is not None and run.state in changing

    # source side

    def _on_swap_request(self, msg: wire.SwapRequest, now: float) -> None:
        run = self.run
        if run is not None and run.epoch == msg.epoch:
            return  # a duplicate; our Prepare is being resent on its own
        self._close_straggler_window(now)
        reason = ""
        if self.busy():
            reason = "a swap is already in progress"
        elif msg.epoch <= self.epoch:
            reason = f"stale epoch {msg.epoch} (current {self.epoch})"
        elif not self.holds:
            reason = f"{self.setup.name} does not hold the VIP"
        else:
            reason = self._refusal(msg.move, self.setup.name, self.setup.peer, now)
        if reason:
            self._send(wire.Refused(epoch=msg.epoch, reason=reason))
            return
        self.epoch = msg.epoch
        run = _Run(
            epoch=msg.epoch,
            move=msg.move,
            role="source",
            source=self.setup.name,
            target=self.setup.peer,
            state="",
            started=now,
            command=None,
        )
        self.run = run
        self._before_release(run, now)

    def _before_release(self, run: _Run, now: float) -> None:
        """The before_release hooks, if any, run before the target is even asked: nothing changed yet."""
        if self.setup.before_release <= 0:
            self._start_prepare(run, now)
            return
        run.state = "before-release"
        run.deadline = now + self.setup.before_release + self.timing.step_timeout
        self._actions.append(BeforeRelease(run.epoch, run.move, run.target))

    def before_release_done(self, epoch: int, ok: bool, detail: str, now: float) -> None:
        """The adapter's answer to BeforeRelease: every hook exited 0 (ok), or the first failure."""
        run = self.run
        if run is None or run.epoch != epoch or run.state != "before-release":
            return
        if ok:
            self._step(run, "before-release-hooks", now)
            self._start_prepare(run, now)
            return
        self._step(run, "before-release-failed", now)
        reason = f"before_release hook failed on {self.setup.name}: {detail[:500]}; nothing changed"
        self._send(wire.Refused(epoch=epoch, reason=reason))  # a target that asked stops waiting
        self._finish(run, ok=False, reason=reason, now=now)

    def _start_prepare(self, run: _Run, now: float) -> None:
        run.state = "preparing"
        run.deadline = now + self.timing.step_timeout
        self._transmit(
            run,
            wire.Prepare(
                epoch=run.epoch, move=run.move, digest=self.setup.digest, drain_ms=self.setup.drain * 1000
            ),
            now,
        )

    def _on_prepared(self, run: _Run, now: float) -> None:
        if run.role != "source":
            return
        if run.state == "preparing":
            self._step(run, "target-ready", now)
            run.state = "releasing"
            run.resend_at = run.deadline = None
            run.release_started = now
            self._actions.append(Release(run.epoch, "swap"))
        elif "prepared" in run.replies:
            self._send(run.replies["prepared"])

    def _on_refused(self, run: _Run, msg: wire.Refused, now: float) -> None:
        if run.state in ("preparing", "requested"):
            self._finish(run, ok=False, reason=f"{self.setup.peer} refused: {msg.reason}", now=now)

    def release_done(self, epoch: int, ok: bool, error: str, now: float) -> None:
        """The adapter's answer to Release: the VIP is gone from this host (ok) or not."""
        run = self.run
        if run is not None and run.epoch == epoch and run.state == "handing-back":
            self._handed_back(run, ok, error, now)
            return
        swap = run is not None and run.epoch == epoch and run.state == "releasing"
        if ok:
            self._set_holds(False, now)
        if not swap:
            if ok:
                self._actions.append(Notice("released", {"epoch": epoch}))
            return
        assert run is not None
        if not ok:
            self._send(wire.Abort(epoch=epoch, reason=f"release failed: {error}"))
            self._finish(run, ok=False, reason=f"release failed on {self.setup.name}: {error}", now=now)
            return
        assert run.release_started is not None
        run.release_ms = (now - run.release_started) * 1000.0
        self._step(run, "released", now)
        run.state = "handed-over"
        run.released_sent = now
        run.deadline = now + self.timing.step_timeout
        released = wire.Released(epoch=epoch, release_ms=run.release_ms)
        run.replies["prepared"] = released
        self._transmit(run, released, now)
        if self.setup.straggler_window > 0:
            # After Released is out: opening the watch must not delay the target's claim.
            run.straggler_until = now + self.setup.straggler_window
            self._actions.append(WatchStragglers(epoch))

    def _handed_back(self, run: _Run, ok: bool, error: str, now: float) -> None:
        within = f"{self.setup.confirm_within:g} s"
        what = "no canary request" if self.setup.confirm == "canary" else "no client request"
        if not ok:
            # We still hold it and it works as far as we know: keep it rather than leave nobody.
            self._finish(
                run,
                ok=False,
                now=now,
                confirmed=False,
                reason=f"{what} reached {self.setup.name} within {within}, and releasing failed: "
                f"{error}; the VIP stays on {self.setup.name}",
            )
            return
        reason = f"{what} reached {self.setup.name} within {within}"
        hand_back = wire.HandBack(epoch=run.epoch, reason=reason)
        run.replies["released"] = hand_back
        self._transmit(run, hand_back, now)
        run.deadline = now + self.timing.step_timeout
        self._finish(
            run,
            ok=False,
            now=now,
            rolled_back=True,
            confirmed=False,
            holder=run.source,
            keep_state="handed-back",
            reason=f"{reason}; rolled back to {run.source}",
        )

    def _on_claimed(self, run: _Run, msg: wire.Claimed, now: float) -> None:
        if run.role != "source":
            return
        done = wire.Done(epoch=run.epoch)
        if run.state in ("handed-over", "probing") and msg.restarted:
            self._step(run, "target-claimed", now)
            self._send(done)
            self._finish(
                run,
                ok=False,
                now=now,
                holder=self.setup.peer,
                reason=f"{self.setup.peer} restarted during the swap and holds the VIP; "
                "the move was not confirmed",
            )
            return
        if run.state in ("handed-over", "probing"):
            self._step(run, "target-claimed", now)
            run.claimed_seen = now
            unserved = None
            if run.released_sent is not None and run.release_ms is not None:
                # Split the round trip: half of (our wait minus the target's turnaround) is one way.
                one_way = max(0.0, ((now - run.released_sent) * 1000.0 - msg.turnaround_ms) / 2.0)
                unserved = run.release_ms + one_way + msg.claim_ms
            run.replies["claimed"] = done
            self._send(done)
            if self.setup.confirm == "none":
                self._finish_source_ok(run, now, unserved_ms=unserved)
                return
            run.unserved_ms = unserved
            run.state = "awaiting-confirmation"
            run.resend_at = None
            run.probed = True  # a silent target after this: one probe decides
            run.deadline = now + self.setup.confirm_within + self.timing.step_timeout
            if self.setup.confirm == "canary":
                self._actions.append(Canary(run.epoch))
        elif "claimed" in run.replies:
            self._send(run.replies["claimed"])

    def _on_claim_failed(self, run: _Run, msg: wire.ClaimFailed, now: float) -> None:
        if run.role == "source" and run.state in ("handed-over", "probing"):
            self._step(run, "target-claim-failed", now)
            self._reclaim(run, f"{self.setup.peer} could not claim the VIP: {msg.reason}", now)

    def probe_done(self, epoch: int, answered_by: list[str], now: float) -> None:
        """The adapter's answer to Probe: the MACs that answered for the VIP (empty: nobody holds it)."""
        run = self.run
        if run is not None and run.epoch == epoch and run.state == "takeover-probing":
            self._takeover_probed(run, answered_by, now)
            return
        if run is None or run.epoch != epoch or run.state != "probing":
            return
        if not answered_by:
            self._step(run, "probe-silent", now)
            self._reclaim(
                run,
                f"{self.setup.peer} did not confirm the claim within "
                f"{self.timing.step_timeout * 1000:.0f} ms",
                now,
            )
            return
        self._step(run, "probe-answered", now)
        if run.probed:
            self._finish(
                run,
                ok=False,
                now=now,
                holder=None,
                reason=f"{self.setup.peer} did not confirm the claim, but {', '.join(answered_by)} "
                "answers for the VIP: not reclaiming",
            )
            return
        # Someone holds the VIP: most likely the target, whose answer was lost. Wait once more.
        run.probed = True
        run.state = "handed-over"
        run.deadline = now + self.timing.step_timeout
        run.resend_at = now

    def _reclaim(self, run: _Run, reason: str, now: float) -> None:
        run.state = "reclaiming"
        run.resend_at = run.deadline = None
        abort = wire.Abort(epoch=run.epoch, reason=reason)
        run.replies["rollback-reason"] = abort
        self._send(abort)  # a target still waiting in its ready window stops waiting
        self.epoch = max(self.epoch, run.epoch + 1)
        self._actions.append(Claim(run.epoch + 1, "rollback"))

    def _on_confirmed(self, run: _Run, msg: wire.Confirmed, now: float) -> None:
        if run.role != "source":
            return
        ack = wire.Ack(epoch=run.epoch, of=msg.kind)
        self._send(ack)
        if run.state not in ("awaiting-confirmation", "probing"):
            return
        self._step(run, "confirmed", now)
        evidence = {"requests": msg.requests, "clients": [c for c in msg.clients.split(",") if c]}
        self._finish_source_ok(
            run,
            now,
            unserved_ms=run.unserved_ms,
            confirmed=True,
            confirm_ms=msg.confirm_ms,
            evidence=evidence,
        )

    def _finish_source_ok(self, run: _Run, now: float, **kwargs: Any) -> None:
        """Done, unless the straggler window is still open: then done when it closes."""
        if run.straggler_until is not None and now < run.straggler_until:
            run.state = "collecting-stragglers"
            run.done_kwargs = kwargs
            run.resend_at = None
            run.deadline = run.straggler_until
            return
        self._finish(run, ok=True, reason="", now=now, **kwargs)

    def stragglers_seen(self, epoch: int, seen: list[tuple[str, str, float]], now: float) -> None:
        """The adapter's view of frames still reaching us for the VIP: (mac, ip, last seen) per sender."""
        run = self.run
        if run is None or run.epoch != epoch or run.role != "source" or run.claimed_seen is None:
            return
        if run.finished or run.straggler_until is None:
            return
        grace = run.claimed_seen + STRAGGLER_GRACE  # frames already on their way at the claim do not count
        new = False
        for mac, ip, last_seen in seen:
            if last_seen < grace:
                continue
            known = run.stragglers.setdefault(mac, {"ip": ip, "told": None, "last_seen": last_seen})
            known["last_seen"] = max(known["last_seen"], last_seen)
            if known["told"] is None:
                known["told"] = now
                self.stragglers_total += 1
                new = True
        if new:
            entries = ",".join(f"{v['ip']}={mac}" for mac, v in run.stragglers.items())
            self._actions.append(Notice("stragglers", {"epoch": epoch, "entries": entries}))
            self._send(wire.TellStragglers(epoch=epoch, entries=entries))

    def _straggler_report(self, run: _Run) -> tuple[dict[str, Any], ...]:
        # Moved: nothing more from that MAC once the new holder had a moment to tell it.
        return tuple(
            {"ip": v["ip"], "mac": mac, "moved": v["last_seen"] < v["told"] + STRAGGLER_GRACE}
            for mac, v in run.stragglers.items()
        )

    def _on_hand_back(self, run: _Run, msg: wire.HandBack, now: float) -> None:
        if run.role != "source":
            return
        self._send(wire.Ack(epoch=run.epoch, of=msg.kind))
        if run.state not in ("awaiting-confirmation", "probing"):
            return
        self._step(run, "target-handed-back", now)
        self._reclaim(run, msg.reason, now)

    # target side

    def traffic_seen(self, epoch: int, requests: int, clients: list[str], now: float) -> None:
        """The adapter's running count of requests in the access log since Watch (canary or real)."""
        run = self.run
        if run is None or run.epoch != epoch or run.state != "confirming":
            return
        if requests < self.setup.confirm_requests:
            return
        assert run.claimed_at is not None
        confirm_ms = (now - run.claimed_at) * 1000.0
        self._step(run, "confirmed", now)
        confirmed = wire.Confirmed(
            epoch=epoch, requests=requests, clients=",".join(clients[:10]), confirm_ms=confirm_ms
        )
        run.replies["released"] = confirmed
        self._transmit(run, confirmed, now)
        run.deadline = now + self.timing.step_timeout
        self._finish(
            run,
            ok=True,
            reason="",
            now=now,
            keep_state="confirmed",
            confirmed=True,
            confirm_ms=confirm_ms,
            evidence={"requests": requests, "clients": clients[:10]},
        )

    def _hand_back(self, run: _Run, now: float) -> None:
        """Not confirmed in time: release first, then tell the source to take the VIP back."""
        self._step(run, "not-confirmed", now)
        run.state = "handing-back"
        run.resend_at = None
        self._actions.append(Release(run.epoch, "hand-back"))

    def _on_prepare(self, msg: wire.Prepare, now: float) -> None:
        if self.run is not None and self.run.epoch != msg.epoch:
            self._close_straggler_window(now)
        run = self.run
        if run is not None and run.epoch == msg.epoch and run.role == "target":
            if run.state == "requested":
                run.peer_drain = msg.drain_ms / 1000
                self._start_health(run, now)
            elif "prepare" in run.replies:
                self._send(run.replies["prepare"])
            return
        reason = ""
        if self.busy():
            reason = "a swap is already in progress"
        elif msg.epoch <= self.epoch:
            reason = f"stale epoch {msg.epoch} (current {self.epoch})"
        elif msg.digest != self.setup.digest:
            reason = f"cluster files differ ({self.setup.name} has {self.setup.digest[:12]})"
        elif self.holds:
            reason = f"{self.setup.name} already holds the VIP"
        if reason:
            self._send(wire.Refused(epoch=msg.epoch, reason=reason))
            return
        self.epoch = msg.epoch
        run = _Run(
            epoch=msg.epoch,
            move=msg.move,
            role="target",
            source=self.setup.peer,
            target=self.setup.name,
            state="",
            started=now,
            command=None,
            peer_drain=msg.drain_ms / 1000,
        )
        self.run = run
        self._start_health(run, now)

    def _start_health(self, run: _Run, now: float) -> None:
        self._step(run, "prepare-received", now)
        run.state = "checking"
        run.resend_at = run.deadline = None
        if run.peer_drain > 0:
            # In place before we claim: the adapter finishes it before it reports the health check.
            run.handoff = True
            self._actions.append(Handoff(run.epoch))
        self._actions.append(CheckHealth(run.epoch))
        if self.setup.confirm != "none":
            # From now on: requests logged after this point may prove the move.
            run.watching = True
            self._actions.append(Watch(run.epoch, canary=self.setup.confirm == "canary"))

    def health_done(self, epoch: int, ok: bool, detail: str, now: float) -> None:
        """The adapter's answer to CheckHealth: is this node's own service healthy."""
        run = self.run
        if run is None or run.epoch != epoch or run.state != "checking":
            return
        if not ok:
            refused = wire.Refused(epoch=epoch, reason=f"{self.setup.name} is not healthy: {detail}")
            run.replies["prepare"] = refused
            self._send(refused)
            self._finish(run, ok=False, reason=refused.reason, now=now)
            return
        self._step(run, "healthy", now)
        run.state = "ready"
        run.deadline = now + self.timing.step_timeout
        prepared = wire.Prepared(epoch=epoch)
        run.replies["prepare"] = prepared
        self._transmit(run, prepared, now)

    def _on_released(self, run: _Run, msg: wire.Released, now: float) -> None:
        if run.role != "target":
            return
        if run.state == "ready":
            self._step(run, "source-released", now)
            run.state = "claiming"
            run.resend_at = run.deadline = None
            run.released_received = run.claim_started = now
            self._actions.append(Claim(run.epoch, "swap"))
        elif "released" in run.replies:
            self._send(run.replies["released"])
        elif run.finished:  # expired or refused: it never claimed
            self._send(wire.ClaimFailed(epoch=run.epoch, reason="the ready window had expired"))

    def claim_done(self, epoch: int, ok: bool, error: str, now: float) -> None:
        """The adapter's answer to Claim: the VIP is on this host (ok) or not."""
        if ok:
            self._set_holds(True, now)
            self.held_epoch = max(self.held_epoch, epoch)
            self.epoch = max(self.epoch, epoch)
            self._schedule_announce(now)
        run = self.run
        if run is None:
            return
        if run.state == "takeover-claiming" and run.epoch == epoch:
            if ok:
                self._step(run, "claimed", now)
                self._finish_takeover(run, True, f"took over from silent {self.setup.peer}", now)
            else:
                self._finish_takeover(run, False, f"claim failed: {error}", now)
            return
        if run.state == "claiming" and run.epoch == epoch:
            assert run.claim_started is not None and run.released_received is not None
            if not ok:
                failed = wire.ClaimFailed(epoch=epoch, reason=error)
                run.replies["released"] = failed
                self._send(failed)
                self._finish(
                    run,
                    ok=False,
                    now=now,
                    holder=None,
                    reason=f"claim failed on {self.setup.name}: {error}; rolling back to {run.source}",
                )
                return
            self._step(run, "claimed", now)
            if run.handoff:
                # The source drains for peer_drain after its release, a moment before our claim.
                run.handoff = False
                self._actions.append(EndHandoff(epoch, after=run.peer_drain * 0.8))
            claim_ms = (now - run.claim_started) * 1000.0
            claimed = wire.Claimed(
                epoch=epoch, turnaround_ms=(now - run.released_received) * 1000.0, claim_ms=claim_ms
            )
            run.replies["released"] = claimed
            run.claimed_at = now
            self._transmit(run, claimed, now)
            if self.setup.confirm == "none":
                run.deadline = now + self.timing.step_timeout
                self._finish(run, ok=True, reason="", now=now, keep_state="claimed")
            else:
                run.state = "confirming"
                run.deadline = now + self.setup.confirm_within
        elif run.state == "reclaiming" and run.epoch + 1 == epoch:
            abort = run.replies["rollback-reason"]
            assert isinstance(abort, wire.Abort)
            if ok:
                self._step(run, "reclaimed", now)
                self._finish(
                    run,
                    ok=False,
                    rolled_back=True,
                    now=now,
                    reason=f"{abort.reason}; rolled back to {self.setup.name}",
                )
            else:
                # Nobody may hold the VIP now: try again each step timeout rather than give up on it.
                self._step(run, "reclaim-failed", now)
                self._actions.append(Notice("reclaim-failed", {"epoch": epoch, "error": error}))
                run.state = "reclaim-retry"
                run.deadline = now + self.timing.step_timeout

    def _on_abort(self, run: _Run, msg: wire.Abort, now: float) -> None:
        if run.role == "target" and run.state in ("requested", "checking", "ready"):
            self._finish(run, ok=False, reason=f"{self.setup.peer} aborted: {msg.reason}", now=now)

    # --- dry run: every check of a move, for real, and nothing changed -----------------------------------

    def _start_dry_run(self, move: str, now: float, cid: int) -> None:
        me = self.setup.name
        source, target = self._source_target(now)
        checks = [
            Check(me, name, FAIL if problem else OK, problem or detail)
            for name, problem, detail in self._preflight(move, source, target, now)
        ]
        dry = _DryRun(
            command=cid,
            nonce=next(self._nonces),
            move=move,
            source=source,
            target=target,
            started=now,
            deadline=now + self.timing.step_timeout + self.setup.host_check_budget,
            checks=checks,
        )
        self._dry_runs[dry.nonce] = dry
        if move in MOVES and source:
            # Roles are known: each node checks its own host for the part it would play.
            role = "source" if source == me else "target"
            dry.waiting_local = True
            self._actions.append(HostCheck(dry.nonce, role))
            if self.peer_alive(now):
                dry.waiting_peer = True
                peer_role = "target" if role == "source" else "source"
                dry.request = wire.CheckRequest(epoch=0, nonce=dry.nonce, move=move, role=peer_role)
                self._send(dry.request)
                dry.resend_at = now + self.timing.retransmit
        self._dry_run_progress(dry, now)

    def host_check_done(self, action: HostCheck, findings: list[Check], now: float) -> None:
        """The adapter's answer to HostCheck: this host's findings, for our dry run or the peer's."""
        if action.peer_boot is not None:
            key = (action.peer_boot, action.nonce)
            if key not in self._check_answers:
                return
            rows = [(c.level, c.check, c.detail, c.fix) for c in findings]
            ok = all(c.level != FAIL for c in findings)
            result = wire.CheckResult(epoch=0, nonce=action.nonce, ok=ok, findings=wire.pack_findings(rows))
            self._check_answers[key] = result
            self._send(result)
            return
        dry = self._dry_runs.get(action.nonce)
        if dry is None or not dry.waiting_local:
            return
        dry.waiting_local = False
        dry.host[self.setup.name] = list(findings)
        self._dry_run_progress(dry, now)

    def _on_check_request(self, msg: wire.CheckRequest, peer_boot: int) -> None:
        key = (peer_boot, msg.nonce)
        if key in self._check_answers:
            answer = self._check_answers[key]
            if answer is not None:
                self._send(answer)  # our answer was lost; while the checks run, the answer is on its way
            return
        if msg.move not in MOVES or msg.role not in ("source", "target"):
            return
        self._check_answers[key] = None
        while len(self._check_answers) > 16:
            del self._check_answers[next(iter(self._check_answers))]
        self._actions.append(HostCheck(msg.nonce, msg.role, peer_boot=peer_boot))

    def _on_check_result(self, msg: wire.CheckResult, now: float) -> None:
        dry = self._dry_runs.get(msg.nonce)
        if dry is None or not dry.waiting_peer:
            return
        peer = self.setup.peer
        dry.waiting_peer = False
        dry.resend_at = None
        found = [
            Check(peer, check, level, detail, fix)
            for level, check, detail, fix in wire.unpack_findings(msg.findings)
        ]
        if not msg.ok and all(c.level != FAIL for c in found):
            found.append(Check(peer, "checks", FAIL, "a check failed (its text did not fit in the answer)"))
        dry.host[peer] = found
        self._dry_run_progress(dry, now)

    def _dry_run_timer(self, dry: _DryRun, now: float) -> None:
        if dry.resend_at is not None and now >= dry.resend_at and dry.request is not None:
            self._send(dry.request)
            dry.resend_at = now + self.timing.retransmit
        if now < dry.deadline:
            return
        within = f"within {(dry.deadline - dry.started) * 1000:.0f} ms"
        if dry.waiting_peer:
            dry.waiting_peer = False
            dry.resend_at = None
            peer = self.setup.peer
            dry.host[peer] = [Check(peer, "checks answered", FAIL, f"{peer} did not answer {within}")]
        if dry.waiting_local:
            dry.waiting_local = False
            me = self.setup.name
            dry.host[me] = [Check(me, "checks answered", FAIL, f"this host's checks did not finish {within}")]
        self._dry_run_progress(dry, now)

    def _dry_run_progress(self, dry: _DryRun, now: float) -> None:
        if dry.waiting_local or dry.waiting_peer:
            return
        del self._dry_runs[dry.nonce]
        checks = [*dry.checks, *dry.host.get(dry.source, ()), *dry.host.get(dry.target, ())]
        failed = [c for c in checks if c.level == FAIL]
        known = dry.move in MOVES and dry.source
        plan = Plan(
            ok=not failed,
            move=dry.move,
            source=dry.source,
            target=dry.target,
            reason="" if not failed else f"{failed[0].node}: {failed[0].check}: {failed[0].detail}",
            checks=tuple(checks),
            steps=self._plan_steps(dry.move, dry.source, dry.target) if known else (),
            duration_ms=(now - dry.started) * 1000.0,
        )
        self._actions.append(Notice("dry-run", plan.to_json()))
        self._actions.append(Planned(dry.command, plan))

    def _plan_steps(self, move: str, source: str, target: str) -> tuple[tuple[str, str], ...]:
        """What the move would do, step by step, with this node's settings (the same file on both)."""
        s, t = self.setup, self.timing
        step_ms = f"{t.step_timeout * 1000:.0f} ms"
        steps = [("preflight", "the checks above, run again when the move starts")]
        if s.before_release > 0:
            steps.append(
                (
                    "before-release",
                    f"{source} runs its before_release hooks; a failing one aborts "
                    "with nothing changed (a dry run does not run them)",
                )
            )
        ready = ["checks its health_url"]
        if s.confirm != "none":
            ready.append("starts following its access log")
        if s.drain > 0:
            ready.append(f"passes segments of connections it does not own to {source}")
        steps.append(
            (
                "prepare",
                f"{source} asks {target} to get ready: {target} {', '.join(ready)}; "
                f"answer within {step_ms}, else nothing changes",
            )
        )
        drain = (
            f", keeping it ARP-silent on lo for {s.drain * 1000:.0f} ms so packets in flight are served"
            if s.drain > 0
            else " (no drain)"
        )
        steps.append(("release", f"{source} removes the VIP from its interface{drain}"))
        steps.append(
            (
                "claim",
                f"{target} adds the VIP within {step_ms} of being ready; if it cannot, "
                f"{source} takes it back",
            )
        )
        schedule = ", ".join(f"{x * 1000:.0f}" for x in t.announce_schedule)
        steps.append(("announce", f"{target} sends gratuitous ARP / unsolicited NA at {schedule} ms"))
        within = f"{s.confirm_within:g} s"
        if s.confirm == "traffic":
            confirm = (
                f"traffic: {s.confirm_requests} client request(s) in {target}'s access log within "
                f"{within}, else {target} releases and {source} takes the VIP back"
            )
        elif s.confirm == "canary":
            confirm = (
                f"canary: {source} sends {s.confirm_requests} marked request(s) to the VIP; they must "
                f"reach {target}'s access log within {within}, else {source} takes the VIP back"
            )
        else:
            confirm = "none: the move is not proven (confirm.mode: none)"
        steps.append(("confirm", confirm))
        if s.straggler_window > 0:
            window = f"{s.straggler_window * 1000:.0f} ms"
            steps.append(
                (
                    "stragglers",
                    f"for {window} {source} watches for clients still sending to it; "
                    f"{target} tells each with an ARP request",
                )
            )
        else:
            steps.append(("stragglers", "not watched (confirm.straggler_window_ms: 0)"))
        steps.append(("done", f"the VIP on {target}" + (" (home)" if move == "unswap" else "")))
        return tuple(steps)

    # --- unplanned takeover -------------------------------------------------------------------------------

    def _may_take_over(self) -> bool:
        """Standing by while the peer holds the VIP: its silence would be a takeover question."""
        return (
            not self.holds
            and self.peer_holds()
            and self.peer_seen is not None
            and not self.busy()
            and not self._silence_reported  # automatic off: said once, until the peer is heard again
        )

    def _holder_silent(self, now: float) -> None:
        assert self.peer_seen is not None
        silent_ms = (now - self.peer_seen) * 1000
        peer = self.setup.peer
        if not self.setup.automatic:
            if not self._silence_reported:
                self._silence_reported = True
                self.last_takeover = {
                    "ok": False,
                    "at": now,
                    "peer_silent_ms": round(silent_ms, 1),
                    "reason": f"{peer} silent for {silent_ms:.0f} ms; automatic takeover is off",
                }
                self._actions.append(Notice("holder-silent", dict(self.last_takeover)))
            return
        self._start_takeover("takeover", f"{peer} silent for {silent_ms:.0f} ms", "holder-silent", now)

    def _start_takeover(self, move: str, why: str, first_step: str, now: float) -> None:
        """Probe, fence if configured, claim: for a silent holder ("takeover") or a lost VIP ("reclaim")."""
        epoch = max(self.epoch, self.peer_epoch) + 1
        run = _Run(
            epoch=epoch,
            move=move,
            role="standby",
            source=self.setup.peer,
            target=self.setup.name,
            state="takeover-probing",
            started=now,
            command=None,
        )
        run.replies["silent"] = wire.Abort(epoch=epoch, reason=why)
        self.run = run
        self._step(run, first_step, now)
        # The network is the witness: nobody may answer for the VIP before we claim it.
        self._actions.append(Probe(epoch))

    def _takeover_probed(self, run: _Run, answered_by: list[str], now: float) -> None:
        if answered_by:
            self._step(run, "probe-answered", now)
            self._finish_takeover(
                run,
                False,
                f"{', '.join(answered_by)} still answers for the VIP: not claiming",
                now,
                probe=answered_by,
            )
            return
        self._step(run, "probe-silent", now)
        if self.setup.fence:
            run.state = "takeover-fencing"
            self._actions.append(Fence(run.epoch))
            return
        self._takeover_claim(run)

    def fence_done(self, epoch: int, ok: bool, detail: str, now: float) -> None:
        """The adapter's answer to Fence: the hook exited 0 (ok) or not, or timed out."""
        run = self.run
        if run is None or run.epoch != epoch or run.state != "takeover-fencing":
            return
        if not ok:
            self._step(run, "fence-failed", now)
            self._finish_takeover(run, False, f"fence hook failed: {detail}: not claiming", now, fence=detail)
            return
        self._step(run, "fenced", now)
        run.replies["fence"] = wire.Abort(epoch=epoch, reason=detail)
        self._takeover_claim(run)

    def _takeover_claim(self, run: _Run) -> None:
        run.state = "takeover-claiming"
        self.epoch = max(self.epoch, run.epoch)
        self._actions.append(Claim(run.epoch, "takeover"))

    def _finish_takeover(
        self,
        run: _Run,
        ok: bool,
        reason: str,
        now: float,
        *,
        probe: list[str] | None = None,
        fence: str | None = None,
    ) -> None:
        run.finished = True
        run.state = "done" if ok else "failed"
        self.moves["takeover", "ok" if ok else "refused"] += 1
        silent = run.replies["silent"]
        assert isinstance(silent, wire.Abort)
        fenced = run.replies.get("fence")
        self.last_takeover = {
            "ok": ok,
            "at": now,
            "epoch": run.epoch,
            "reason": f"{silent.reason}; {reason}",
            "probe": "answered by " + ", ".join(probe) if probe else "silent" if ok else None,
            "fence": fence
            if fence
            else (
                fenced.reason
                if isinstance(fenced, wire.Abort)
                else "ok"
                if ok and self.setup.fence
                else "none"
            ),
            "duration_ms": round(run.elapsed_ms(now), 3),
            "steps": [{"step": s, "ms": round(ms, 3)} for s, ms in run.steps],
        }
        self._actions.append(Notice("takeover" if ok else "takeover-refused", dict(self.last_takeover)))
        if not ok:
            self._takeover_not_before = now + self.setup.takeover_retry

    # --- the holder's own health -------------------------------------------------------------------------

    def healthy(self) -> bool:
        return self.self_check_fails < self.setup.self_check_fails

    def self_check_done(self, ok: bool, detail: str, now: float) -> None:
        """The adapter's periodic check of this node's own health_url."""
        was_healthy = self.healthy()
        self.self_check_fails = 0 if ok else self.self_check_fails + 1
        if was_healthy != self.healthy():
            self._actions.append(Notice("self-check", {"healthy": self.healthy(), "detail": detail}))
            self._next_heartbeat = now  # the peer learns at once
        if self.healthy() or not self.holds or self.busy() or now < self._self_swap_not_before:
            return
        hb = self.peer_heartbeat
        if not (self.peer_alive(now) and hb is not None and hb.healthy):
            return
        # Our own service fails and the peer's does not: hand over with the normal coordinated swap.
        self._self_swap_not_before = now + max(5.0, 2 * self.timing.step_timeout)
        self._actions.append(
            Notice("self-check-handover", {"fails": self.self_check_fails, "detail": detail})
        )
        self._start_move("swap", now, None)

    # --- events: the host ------------------------------------------------------------------------------

    def observe_vip(self, held: bool, now: float) -> None:
        """What netlink says about the VIP on this host; it wins over what the core believed."""
        if held != self.holds and not self._changing_vip():
            self._actions.append(Notice("vip-changed-behind-our-back", {"held": held}))
            self._set_holds(held, now)
            if not held and self.setup.on_vip_lost == "reclaim" and not self.peer_holds() and not self.busy():
                # Policy: the VIP vanished from under us and nobody else has it: probe, then take it back.
                why = "the VIP was removed from this host behind the agent's back"
                self._start_takeover("reclaim", why, "vip-lost", now)

    # --- timers -------------------------------------------------------------------------------------------

    def handle_timer(self, now: float) -> None:
        if now >= self._next_heartbeat:
            self._send(
                wire.Heartbeat(
                    epoch=self.epoch,
                    holds_vip=self.holds,
                    held_epoch=self.held_epoch,
                    digest=self.setup.digest,
                    healthy=self.healthy(),
                    keys=",".join(wire.key_fingerprint(k) for k in self.setup.keys),
                )
            )
            self._next_heartbeat = now + self.timing.heartbeat_interval
        self._announce_if_due(now)
        for dry in list(self._dry_runs.values()):
            self._dry_run_timer(dry, now)
        if (
            self._may_take_over()
            and self.peer_seen is not None
            and now >= self._takeover_not_before
            and now - self.peer_seen > self.timing.dead_after
        ):
            self._holder_silent(now)
        run = self.run
        if run is None:
            return
        if run.resend_at is not None and now >= run.resend_at and run.outbox is not None:
            self._send(run.outbox)
            run.resend_at = now + self.timing.retransmit
        if run.deadline is not None and now >= run.deadline:
            run.deadline = None
            self._on_deadline(run, now)

    def _on_deadline(self, run: _Run, now: float) -> None:
        ms = f"{self.timing.step_timeout * 1000:.0f} ms"
        peer = self.setup.peer
        if run.state == "before-release":
            self.before_release_done(run.epoch, False, "hooks did not finish in time", now)
        elif run.state == "preparing":
            self._send(wire.Abort(epoch=run.epoch, reason="prepare timed out"))
            self._finish(
                run, ok=False, reason=f"{peer} did not get ready within {ms}; nothing changed", now=now
            )
        elif run.state == "requested":
            self._finish(run, ok=False, reason=f"{peer} did not start the swap within {ms}", now=now)
        elif run.state == "ready":
            self._finish(run, ok=False, reason=f"{peer} did not release the VIP within {ms}", now=now)
            # The source may have released and be about to roll back on its own: give it the time to,
            # rather than race it with a takeover probe of our own.
            self._takeover_not_before = now + 2 * self.timing.step_timeout
        elif run.state == "handed-over":
            run.state = "probing"
            run.resend_at = None
            self._actions.append(Probe(run.epoch))
        elif run.state == "claimed":
            run.state, run.resend_at = "unacknowledged", None
        elif run.state == "confirming":
            self._hand_back(run, now)
        elif run.state in ("confirmed", "handed-back"):
            run.state, run.resend_at = "unacknowledged", None
        elif run.state == "reclaim-retry":
            if self.peer_holds() and self.peer_alive(now):
                self._finish(
                    run,
                    ok=False,
                    now=now,
                    holder=self.setup.peer,
                    reason=f"reclaiming failed; {self.setup.peer} holds the VIP",
                )
            else:
                run.state = "reclaiming"
                self._actions.append(Claim(run.epoch + 1, "rollback"))
        elif run.state == "collecting-stragglers":
            self._finish(run, ok=True, reason="", now=now, **(run.done_kwargs or {}))
        elif run.state == "awaiting-confirmation":
            self._step(run, "confirmation-timeout", now)
            run.state = "probing"
            self._actions.append(Probe(run.epoch))

    # --- helpers --------------------------------------------------------------------------------------------

    def _set_holds(self, holds: bool, now: float) -> None:
        if holds != self.holds:
            self.holds = holds
            self._next_heartbeat = now  # the peer learns at once, not one interval later

    def _send(self, msg: wire.Message) -> None:
        env = wire.Envelope(
            cluster=self.setup.cluster,
            sender=self.setup.name,
            boot=self.setup.boot,
            seq=next(self._seq),
            message=msg,
        )
        self.sent[msg.kind] += 1
        self._actions.append(Send(wire.encode(env, self._signing_key)))

    def _transmit(self, run: _Run, msg: wire.Message, now: float) -> None:
        """Send now and keep resending until the state moves on."""
        run.outbox = msg
        self._send(msg)
        run.resend_at = now + self.timing.retransmit

    def _step(self, run: _Run, step: str, now: float) -> None:
        elapsed = run.elapsed_ms(now)
        run.steps.append((step, elapsed))
        if run.command is not None:
            self._actions.append(Progress(run.command, step, elapsed, {"epoch": run.epoch}))

    def _schedule_announce(self, now: float) -> None:
        self._announce_round = 0
        self._announce_due = [now + offset for offset in self.timing.announce_schedule]
        self._announce_if_due(now)  # the first round goes out at once, not a timer tick later

    def _announce_if_due(self, now: float) -> None:
        while self._announce_due and now >= self._announce_due[0]:
            self._announce_due.pop(0)
            if self.holds:
                self._actions.append(Announce(self._announce_round))
                self._announce_round += 1

    def _finish(
        self,
        run: _Run,
        *,
        ok: bool,
        reason: str,
        now: float,
        unserved_ms: float | None = None,
        rolled_back: bool = False,
        holder: str | None = "",
        keep_state: str = "done",
        confirmed: bool | None = None,
        confirm_ms: float | None = None,
        evidence: dict[str, Any] | None = None,
    ) -> None:
        if not run.finished:
            self.moves[run.move, "ok" if ok else "rolled_back" if rolled_back else "failed"] += 1
        run.finished = True
        run.state = keep_state if ok or keep_state == "handed-back" else "failed"
        if keep_state == "done" or (not ok and keep_state != "handed-back"):
            run.resend_at = run.deadline = None
        if run.watching:
            run.watching = False
            self._actions.append(Unwatch(run.epoch))
        if run.handoff:
            run.handoff = False
            self._actions.append(EndHandoff(run.epoch, after=0.0))
        if run.straggler_until is not None:
            run.straggler_until = None
            self._actions.append(UnwatchStragglers(run.epoch))
        if confirmed is None and self.setup.confirm != "none" and run.move in MOVES:
            confirmed = False
        if holder == "":
            holder = self.setup.name if self.holds else (self.setup.peer if ok or self.peer_holds() else None)
        outcome = Outcome(
            ok=ok,
            move=run.move,
            epoch=run.epoch,
            source=run.source,
            target=run.target,
            reason=reason,
            duration_ms=run.elapsed_ms(now),
            unserved_ms=unserved_ms,
            rolled_back=rolled_back,
            steps=tuple(run.steps),
            holder=holder,
            confirmed=confirmed,
            confirm_ms=confirm_ms,
            evidence=evidence,
            stragglers=self._straggler_report(run) if ok else (),
        )
        self.last_outcome = outcome
        self._actions.append(Notice("move-finished", outcome.to_json()))
        if run.command is not None:
            self._actions.append(Finished(run.command, outcome))
