"""The `Node`: one agent's protocol state, the same code on both hosts, with no sockets and no clock.

Adapters feed it `receive_datagram`, `handle_timer`, `command` and `handle(event)`, each with `now`,
a float of seconds; it answers with actions pulled by `pop_actions()`, and `get_timer()` says when it
next wants `handle_timer`. The node owns the dispatch of every input to the row of the current state's
table (`failover.protocol.states`) and the status; its view of the peer is `peer.PeerWatch`'s, of its
own host (claims and releases done, the VIP netlink reports, the self-check) `host.HostWatch`'s, the
machines' effects live in `swap`, `takeover` and `dryrun`, how a move starts in `moves`.
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any, assert_never

from failover import wire
from failover.protocol import actions as a
from failover.protocol import events as e
from failover.protocol.drain import Drain
from failover.protocol.dryrun import DryRuns
from failover.protocol.host import HostWatch
from failover.protocol.moves import Moves
from failover.protocol.peer import PeerWatch
from failover.protocol.results import Outcome
from failover.protocol.runs import (
    AnyRun,
    DrainedCopies,
    DryRun,
    Record,
    SourceRun,
    TakeoverRun,
    TargetRun,
)  # fmt: skip
from failover.protocol.setup import ANSWER_NEXT, NodeSetup
from failover.protocol.states import (
    DRAIN,
    DRAIN_WAIT,
    DRY_RUN,
    KEPT_HANDOFF,
    MACHINE_OF,
    RESEND_DRAINED,
    ROLLBACK,
    SWAP_SOURCE,
    SWAP_TARGET,
    TAKEOVER,
    DrainState,
    DryRunState,
    Input,
    State,
    row,
)
from failover.protocol.status import node_status
from failover.protocol.swap import MOVES, Rollback, SwapSource, SwapTarget, straggler_report
from failover.protocol.takeover import Takeover
from failover.protocol.timeouts import HEARTBEATS, seconds

# The standby answers the holder's heartbeats (Node._answer_heartbeat): when its own is due within this
# much of an interval (and its next is then due setup.ANSWER_NEXT intervals on, or more when idle).
ANSWER_WITHIN = 0.5
ANSWER_MIN_DEAD_AFTER = 3  # intervals of dead_after at least, for the standby to answer
# A timer handled this much later than asked is ordinary (poll()'s millisecond, a busy moment); past it,
# the host held this agent off the CPU, and its web server and clients' packets with it.
LATE_SLACK = 0.005

__all__ = ["Node", "Record"]

_RESULT_INPUTS: dict[type[Any], Input] = {
    e.BeforeReleaseDone: Input.BEFORE_RELEASE_DONE,
    e.HealthDone: Input.HEALTH_DONE,
    e.HandoffDone: Input.HANDOFF_DONE,
    e.ProbeDone: Input.PROBE_DONE,
    e.FenceDone: Input.FENCE_DONE,
    e.TrafficSeen: Input.TRAFFIC_SEEN,
    e.LoadMeasured: Input.LOAD_MEASURED,
    e.StragglersSeen: Input.STRAGGLERS_SEEN,
}


class Node(PeerWatch, HostWatch):
    """One agent's protocol state. Both hosts run the same code."""

    def __init__(
        self,
        setup: NodeSetup,
        *,
        holds: bool,
        held_epoch: int,
        epoch: int,
        now: float,
        held_before: bool = False,
    ) -> None:
        self.setup = setup
        self.timing = setup.timing
        self.holds = holds
        # This node has held the VIP, in this run or an earlier one (the agent keeps it in state.json):
        # only such a node may take back a VIP that nobody holds.
        self.held_before = held_before or holds
        self.held_epoch = held_epoch
        self.epoch = max(epoch, held_epoch)
        self.peer_epoch = 0
        self.peer_heartbeat: wire.Heartbeat | None = None
        self.peer_seen: float | None = None
        self.run: AnyRun | None = None
        self.last_outcome: Outcome | None = None
        self.last_takeover: dict[str, Any] | None = None
        self.rejected: Counter[str] = Counter()
        self.received: Counter[str] = Counter()
        self.sent: Counter[str] = Counter()
        self.ignored: Counter[str] = Counter()  # inputs no row takes, by reason
        self.moves: Counter[tuple[str, str]] = Counter()  # (move, outcome) -> how many, since start
        self.stragglers_total = 0
        self.self_check_fails = 0
        self.source = SwapSource(self)
        self.target = SwapTarget(self)
        self.takeover = Takeover(self)
        self.dry_runs = DryRuns(self)
        self.start = Moves(self)
        self.drainer = Drain(self)
        self._effects: dict[str, object] = {
            SWAP_SOURCE.name: self.source,
            SWAP_TARGET.name: self.target,
            ROLLBACK.name: Rollback(self),
            TAKEOVER.name: self.takeover,
            DRY_RUN.name: self.dry_runs,
            DRAIN.name: self.drainer,
            KEPT_HANDOFF.name: self.drainer,
            DRAIN_WAIT.name: self.drainer,
            RESEND_DRAINED.name: self.drainer,
        }
        self._actions: list[a.Action] = []
        self._seq = itertools.count(1)
        self._commands = itertools.count(1)
        self._nonces = itertools.count(1)
        self._transmits = 0  # how many messages went out with resending: an effect's is kept
        self._dry: dict[int, DryRun] = {}  # nonce -> dry run waiting for checks
        # Until the peer says which keys it accepts, sign with the oldest we have: mid-rotation the peer
        # may not have the new one yet. Its first heartbeat moves us to the newest key it accepts.
        self._signing_key = setup.keys[-1]
        self._named_keys: tuple[bytes, ...] = ()  # the keys _key_names names, in every heartbeat
        self._key_names = ""
        self._replay = wire.ReplayGuard()
        self._next_heartbeat = now
        self._announce_due: list[float] = []
        self._announce_round = 0
        self._settle_announced = -1.0
        self._takeover_not_before = now
        self._silence_reported = False
        self._nobody_since: float | None = None  # both up, neither holding the VIP, since then
        self._self_swap_not_before = now
        self._release_failed_at: float | None = None
        self.vip_removed_by_hand = False  # until someone holds the VIP again
        self._claims: dict[int, str] = {}  # epoch -> why, for the claims netlink has not answered yet
        self._releases: set[int] = set()  # epochs of the releases netlink has not answered yet
        self.held_off = 0.0  # seconds, in all, timers were handled later than asked, beyond LATE_SLACK
        self._timer_said: float | None = None  # get_timer()'s last answer, until handle_timer comes
        self._draining: int | None = None  # the release asked for after a StartDrain, until it is done
        if holds:
            # Whoever held the VIP before this start may not have announced it (killed mid-swap, or the
            # network changed meanwhile): the holder says so again, once, now.
            self._schedule_announce(now)

    # --- outputs ---------------------------------------------------------------------------------

    def pop_actions(self) -> list[a.Action]:
        actions, self._actions = self._actions, []
        return actions

    def get_timer(self) -> float:
        deadlines = [self._next_heartbeat]
        if self._may_take_over():
            deadlines.append(self.silence_deadline())
        if self._announce_due:
            deadlines.append(self._announce_due[0])
        if self.takeover.measure_due is not None:
            deadlines.append(self.takeover.measure_due)  # the next timing of the peer's kernel
        if self._nobody_since is not None and self._held_last():
            deadlines.append(max(self._nobody_since + self.recover_after, self._takeover_not_before))
        records: list[Record] = [*self._dry.values(), *self.drainer.records()]
        if self.run is not None:
            records.append(self.run)
        for record in records:
            deadlines += [t for t in (record.resend_at, record.deadline) if t is not None]
        due = min(deadlines)
        self._timer_said = due  # what handle_timer's lateness is measured from, without asking again
        return due

    # --- queries -----------------------------------------------------------------------------------

    def epoch_to_keep(self) -> int:
        """The epoch the agent keeps on disk, and must have kept before any claim with it: the node's own, or
        that of a takeover under way, which takes it only at its claim. Kept from the takeover's start, the
        write is done (off the event loop) by the time the claim needs it."""
        run = self.run
        if isinstance(run, TakeoverRun) and not row(run.state).finished:
            return max(self.epoch, run.epoch)
        return self.epoch

    def busy(self) -> bool:
        return self.run is not None and not row(self.run.state).finished

    def status(self, now: float) -> dict[str, Any]:
        return node_status(self, now)

    # --- inputs: operator, network, adapters, time ----------------------------------------------------

    def command(self, move: str, now: float, *, dry_run: bool = False) -> int:
        """Start a swap or unswap; Started, progress and the outcome come as actions tagged with the id.

        A dry run changes nothing (no run, no epoch, no VIP): it runs every check of the move on both
        nodes and answers with one Planned action.
        """
        cid = next(self._commands)
        if dry_run:
            self.start.dry_run(move, now, cid)
        else:
            self.start.command(move, now, cid)
        self._keep_cadence(now)
        return cid

    def receive_datagram(self, data: bytes, now: float) -> None:
        self._receive_datagram(data, now)
        self._keep_cadence(now)

    def _receive_datagram(self, data: bytes, now: float) -> None:
        try:
            env = wire.decode(data, self.setup.keys)
        except wire.WireError as err:
            self._reject(err.reason)
            return
        if env.cluster != self.setup.cluster:
            self._reject("cluster")
            return
        if env.sender != self.setup.peer:
            self._reject("sender")
            return
        verdict = self._replay.check(env)
        if verdict == wire.LATE:
            # Overtaken on the way: the peer spoke, so it is alive, but what it said is out of date.
            self.peer_seen = now
            self.received["late"] += 1
            self.offer(Input.PEER_SPOKE, None, now)
            return
        if verdict == wire.REPLAY:
            self._reject("replay")
            return
        self.peer_seen = now
        self.offer(Input.PEER_SPOKE, None, now)  # a suspicion of its silence ends before the message acts
        msg = env.message
        self.received[msg.kind] += 1
        run = self.run
        if isinstance(msg, wire.Heartbeat):
            self._on_heartbeat(msg, now)
            self._answer_heartbeat(now)
        elif isinstance(msg, wire.Drained):
            self.drainer.peer_drained(msg, now)
        elif isinstance(msg, wire.SwapRequest):
            self.start.on_swap_request(msg, now)
        elif isinstance(msg, wire.CheckRequest):
            self.dry_runs.on_check_request(msg, env.boot)
        elif isinstance(msg, wire.CheckResult):
            dry = self._dry.get(msg.nonce)
            if dry is None:
                self.ignored["other-dry-run"] += 1
            else:
                self.dispatch(dry, Input.CHECK_RESULT, msg, now)
        elif isinstance(msg, wire.Prepare) and not (isinstance(run, TargetRun) and run.epoch == msg.epoch):
            self.start.on_prepare(msg, now)
        elif run is None or msg.epoch != run.epoch:
            self.ignored["other-epoch"] += 1
            if isinstance(msg, wire.Released):
                # A Released for a swap we know nothing of (we restarted in the middle of it): answer with
                # what netlink says, so the source neither reclaims a VIP we hold nor waits for one we never
                # took.
                if self.holds:
                    self.send(wire.Claimed(epoch=msg.epoch, turnaround_ms=0.0, claim_ms=0.0, restarted=True))
                else:
                    self.send(wire.ClaimFailed(epoch=msg.epoch, reason="no swap of that epoch here"))
        else:
            self.dispatch(run, Input(msg.kind), msg, now)

    def handle(self, event: e.Event, now: float) -> None:
        """An adapter's answer to an action, or what it saw on the host."""
        self._handle(event, now)
        self._keep_cadence(now)

    def _handle(self, event: e.Event, now: float) -> None:
        match event:
            case e.ClaimDone():
                self._claim_done(event, now)
            case e.ReleaseDone():
                self._release_done(event, now)
            case e.HostCheckDone():
                if event.action.peer_boot is not None:
                    self.dry_runs.answer_peer(event)
                elif (dry := self._dry.get(event.action.nonce)) is not None:
                    self.dispatch(dry, Input.HOST_CHECK_DONE, event, now)
            case e.SelfCheckDone():
                self._self_check_done(event, now)
            case e.VipObserved():
                self._observe_vip(event.held, now)
            case e.ConnectionsCounted():
                drain = self.drainer.run
                if drain is None or drain.epoch != event.epoch or drain.state is DrainState.DRAINED:
                    self.ignored["other-epoch"] += 1
                else:
                    self.dispatch(drain, Input.CONNECTIONS_COUNTED, event, now)
            case e.PeerMeasured():
                self.takeover.measured(event)
            case (
                e.LoadMeasured()
                | e.BeforeReleaseDone()
                | e.HealthDone()
                | e.HandoffDone()
                | e.ProbeDone()
                | e.FenceDone()
                | e.TrafficSeen()
                | e.StragglersSeen()
            ):
                self._to_run(event.epoch, _RESULT_INPUTS[type(event)], event, now)
            case _:
                assert_never(event)

    def handle_timer(self, now: float) -> None:
        self._handle_timer(now)
        self._keep_cadence(now)

    def _handle_timer(self, now: float) -> None:
        said, self._timer_said = self._timer_said, None
        if said is not None:  # the adapter waits for get_timer()'s answer, and is woken when it moves
            self.held_off += max(0.0, now - said - LATE_SLACK)
        if now >= self._next_heartbeat:
            self._send_heartbeat(now, self._heartbeat_gap(now))
        self._announce_if_due(now)
        self.takeover.measure_if_due(now)
        for record in self.drainer.records():
            self._deadline(record, now)
        for dry in list(self._dry.values()):
            if dry.resend_at is not None and now >= dry.resend_at and dry.request is not None:
                self.send(dry.request)
                dry.resend_at = now + self.timing.retransmit
            self._deadline(dry, now)
        if self._may_take_over() and now >= self.silence_deadline():
            self._holder_silent(now)
        self._recover_if_nobody_holds(now)
        run = self.run
        if run is None:
            return
        if run.resend_at is not None and now >= run.resend_at and run.outbox is not None:
            self.send(run.outbox)
            run.resend_at = now + self.timing.retransmit
        self._deadline(run, now)

    def _names_of_keys(self) -> str:
        keys = self.setup.keys
        if keys is not self._named_keys:
            self._named_keys, self._key_names = keys, ",".join(wire.key_fingerprint(k) for k in keys)
        return self._key_names

    # --- the tables at work ------------------------------------------------------------------------

    def dispatch(self, record: Record, inp: Input, event: object, now: float) -> None:
        """Carry out the row of (record's state, input), or count the input as out of state."""
        machine = MACHINE_OF[type(record.state)]
        transition = machine.rows[record.state].on.get(inp)
        if transition is None:
            self.ignored["out-of-state"] += 1
            return
        transmits = self._transmits
        effect = getattr(self._effects[machine.name], transition.effect)
        nxt: State | None = effect(record, event, now)
        nxt = transition.next[0] if nxt is None else nxt
        assert nxt in transition.next, f"{machine.name}: {record.state} + {inp} -> {nxt}: not in the table"
        self._enter(record, nxt, now, transmitted=self._transmits != transmits)

    def offer(self, inp: Input, event: object, now: float) -> None:
        """An input only some states listen to (another move starts, the peer speaks): not counted."""
        run = self.run
        if run is not None and inp in row(run.state).on:
            self.dispatch(run, inp, event, now)

    def begin(self, run: AnyRun, state: State, now: float) -> None:
        self.run = run
        run.state = state  # type: ignore[assignment]  # each run's first state is of its own machine
        self._arm(run, state, now, transmitted=True)

    def begin_record(self, record: Record, state: State, now: float) -> None:
        """A record that is not the move (a drain) starts in `state`."""
        record.state = state
        self._arm(record, state, now, transmitted=True)

    def enter_record(self, record: Record, state: State, now: float) -> None:
        self._enter(record, state, now, transmitted=False)

    def begin_dry_run(self, dry: DryRun, state: DryRunState, now: float) -> None:
        if state is DryRunState.CHECKING:
            self._dry[dry.nonce] = dry
            self._arm(dry, state, now, transmitted=True)

    def _enter(self, record: Record, state: State, now: float, *, transmitted: bool) -> None:
        if state == record.state:
            return  # a state's timeout runs from when it was entered
        record.state = state
        self._arm(record, state, now, transmitted=transmitted)
        if isinstance(record, DryRun) and row(state).terminal:
            del self._dry[record.nonce]

    def _arm(self, record: Record, state: State, now: float, *, transmitted: bool) -> None:
        r = row(state)
        if r.timeout in HEARTBEATS:
            assert isinstance(record, DrainedCopies)
            record.deadline, record.beats_left = None, HEARTBEATS[r.timeout]
        else:
            record.deadline = None if r.timeout is None else now + seconds(r.timeout, self.setup, record, now)
        if r.terminal or not transmitted:
            record.resend_at = None  # what the last state resent was answered, or no longer matters

    def _deadline(self, record: Record, now: float) -> None:
        if record.deadline is not None and now >= record.deadline:
            record.deadline = None
            self.dispatch(record, Input.DEADLINE, None, now)

    def _send_heartbeat(self, now: float, next_in: float) -> None:
        self.send(
            wire.Heartbeat(
                epoch=self.epoch,
                holds_vip=self.holds,
                held_epoch=self.held_epoch,
                digest=self.setup.digest,
                healthy=self.healthy(),
                keys=self._names_of_keys(),
                every_ms=round(next_in * 1000, 3),
            )
        )
        self._next_heartbeat = now + next_in
        for record in self.drainer.records():
            self._heartbeat_sent(record, now)

    def _answers_heartbeats(self, now: float) -> bool:
        """The standby of a holder it hears answers the holder's heartbeats (`_answer_heartbeat`), unless
        dead_after is under ANSWER_MIN_DEAD_AFTER intervals: then a lost heartbeat of the holder's and a
        lost answer would let the holder judge the standby dead."""
        if self.timing.dead_after < ANSWER_MIN_DEAD_AFTER * self.timing.heartbeat_interval - 1e-9:
            return False
        return not self.holds and self.peer_holds() and self.peer_alive(now)

    def _answer_heartbeat(self, now: float) -> None:
        """The standby answers the holder's heartbeat when its own is due within ANSWER_WITHIN of an
        interval: sent early, never late. Its next is then due ANSWER_NEXT intervals on (after one on its
        own timer too; an idle standby's, _standby_beats() - 1 intervals more), so the holder's heartbeat
        that is due just before comes first and is answered again: from any phase the two lock in a few
        intervals. The standby then wakes only for the holder's heartbeats, not for a timer of its own
        too, and an idle agent's CPU is mostly its wake-ups. The holder keeps its own timer, so the
        heartbeats by whose silence the standby judges a takeover keep their cadence whatever is lost;
        the standby's own are at most _heartbeat_gap() apart, that far only when one of the holder's
        was lost."""
        if not self._answers_heartbeats(now):
            return
        if self._next_heartbeat - now <= ANSWER_WITHIN * self.timing.heartbeat_interval:
            self._send_heartbeat(now, self._heartbeat_gap(now))

    def _heartbeat_gap(self, now: float) -> float:
        """Seconds from a heartbeat of ours to the next: an interval; a standby that answers the holder's
        sends its next ANSWER_NEXT intervals on, the answer to the holder's beat before that; an idle one
        whose holder judges by every_ms, _standby_beats() - 1 intervals more."""
        interval = self.timing.heartbeat_interval
        if not self._answers_heartbeats(now):
            return interval
        return interval * (self._standby_beats() - 1 + ANSWER_NEXT)

    def _standby_beats(self) -> int:
        """One heartbeat of ours in this many of the holder's: more than one only for an idle standby
        (no move, no drain: their messages ride on heartbeats, and the peer's view of us must be fresh
        then) whose holder sends every_ms, and so judges us by ours."""
        hb = self.peer_heartbeat
        if hb is None or hb.every_ms <= 0 or self.busy():
            return 1
        if any(not row(record.state).terminal for record in self.drainer.records()):
            return 1  # a drain, a kept handoff, Drained's copies: under way (ended ones stay listed)
        return self.timing.standby_beats

    def _keep_cadence(self, now: float) -> None:
        """A standby no longer idle (a move, a drain, a silent or releasing holder) heartbeats every
        interval again from now on, not after the long gap its last heartbeat announced."""
        short = ANSWER_NEXT * self.timing.heartbeat_interval + 1e-9  # the longest gap of a standby not idle
        if self._next_heartbeat - now > short and self._heartbeat_gap(now) <= short:
            self._next_heartbeat = now

    def _heartbeat_sent(self, record: Record, now: float) -> None:
        """A heartbeat went out: to the rows that listen for it, and to a timeout counted in heartbeats."""
        if Input.HEARTBEAT_SENT in row(record.state).on:
            self.dispatch(record, Input.HEARTBEAT_SENT, None, now)
        if isinstance(record, DrainedCopies) and record.beats_left > 0:
            record.beats_left -= 1
            if record.beats_left == 0:
                self.dispatch(record, Input.DEADLINE, None, now)

    def _to_run(self, epoch: int, inp: Input, event: object, now: float) -> None:
        run = self.run
        if run is None or run.epoch != epoch:
            self.ignored["other-epoch"] += 1
            return
        self.dispatch(run, inp, event, now)

    # --- what the machines call ------------------------------------------------------------------------

    def emit(self, action: a.Action) -> None:
        self._actions.append(action)

    def send(self, msg: wire.Message) -> None:
        env = wire.Envelope(
            cluster=self.setup.cluster,
            sender=self.setup.name,
            boot=self.setup.boot,
            seq=next(self._seq),
            message=msg,
        )
        self.sent[msg.kind] += 1
        self._actions.append(a.Send(wire.encode(env, self._signing_key)))

    def transmit(self, run: AnyRun, msg: wire.Message, now: float) -> None:
        """Send now and keep resending until the state moves on."""
        run.outbox = msg
        self.send(msg)
        run.resend_at = now + self.timing.retransmit
        self._transmits += 1

    def retransmit(self, run: AnyRun, now: float) -> None:
        """Resend the last message again from now on."""
        run.resend_at = now
        self._transmits += 1

    def step(self, run: AnyRun, step: str, now: float) -> None:
        elapsed = run.elapsed_ms(now)
        run.steps.append((step, elapsed))
        if run.command is not None:
            self._actions.append(a.Progress(run.command, step, elapsed, {"epoch": run.epoch}))

    def next_nonce(self) -> int:
        return next(self._nonces)

    def hold_off_takeover(self, until: float) -> None:
        self._takeover_not_before = until

    def claim_vip(self, epoch: int, why: str) -> None:
        self._claims[epoch] = why
        self._actions.append(a.Claim(epoch, why))

    def release_vip(self, epoch: int, why: str) -> None:
        if self.setup.drain > 0:
            # On lo first: the VIP leaves the interface, but packets already on their way are served.
            self._draining = epoch
            self._actions.append(a.StartDrain(epoch))
        self._releases.add(epoch)
        self._actions.append(a.Release(epoch, why))

    def end_drain(self, how: str, now: float) -> None:
        """The copy on lo goes now, whether its release is done or not."""
        if self._draining is not None:
            self._actions.append(a.EndDrain(self._draining))
            self._draining = None
        self.drainer.end_now(how, now)

    def finish(
        self,
        run: AnyRun,
        *,
        ok: bool,
        reason: str,
        now: float,
        unserved_ms: float | None = None,
        rolled_back: bool = False,
        holder: str | None = "",
        confirmed: bool | None = None,
        confirm_ms: float | None = None,
        evidence: dict[str, Any] | None = None,
    ) -> None:
        """The move's outcome: reported once, whatever its state does afterwards."""
        me = self.setup.name
        self.moves[run.move, "ok" if ok else "rolled_back" if rolled_back else "failed"] += 1
        if isinstance(run, TargetRun) and run.watching:
            run.watching = False
            self._actions.append(a.Unwatch(run.epoch))
        if run.handoff:
            run.handoff = False
            self._actions.append(a.EndHandoff(run.epoch, after=0.0))
        if isinstance(run, SourceRun) and run.canaries_sent:
            run.canaries_sent = False
            self._actions.append(a.StopCanary(run.epoch))
        if isinstance(run, SourceRun) and run.straggler_until is not None:
            run.straggler_until = None
            self._actions.append(a.UnwatchStragglers(run.epoch))
        if confirmed is None and self.setup.confirm != "none" and run.move in MOVES:
            confirmed = False
        if holder == "":
            holder = me if self.holds else (self.setup.peer if ok or self.peer_holds() else None)
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
            stragglers=straggler_report(run) if ok and isinstance(run, SourceRun) else (),
            drain=self.drainer.expect(run, ok=ok, rolled_back=rolled_back, now=now),
            handoff_error=run.handoff_error or None,
        )
        self.last_outcome = outcome
        self._actions.append(a.Notice("move-finished", outcome.to_json()))
        hook = "rolled_back" if rolled_back else "confirmed" if ok and confirmed else None
        if hook is not None and holder == me:
            self._actions.append(a.RunHooks(hook, run.epoch, run.move, run.source, run.target, reason))
        if run.command is not None:
            self._actions.append(a.Finished(run.command, outcome))
