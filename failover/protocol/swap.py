"""A swap or unswap: the effects of the swap-source, swap-target and rollback tables, and how a move starts.

    source (holds the VIP)                 target
    Prepare(E) ------------------------->  check own health (handoff in place first)
               <-------------------------  Prepared(E)          (or Refused)
    drain, release VIP, Released(E) ---->  claim VIP, announce
               <-------------------------  Claimed(E)           (or ClaimFailed -> source reclaims)
    Done(E) ---------------------------->  wait for clients in the access log
               <-------------------------  Confirmed(E)         (or HandBack -> source reclaims)

Each effect is named by a row of `failover.protocol.states` and returns the state it leads to (None:
the row's first). The source releases before the target claims, so the VIP is never on two hosts; the
target claims only within `step_timeout` of its Prepared; the source reclaims on its own only after a
probe in which nobody answered for the VIP.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from failover import wire
from failover.protocol import actions as a
from failover.protocol import events as e
from failover.protocol.runs import AnyRun, Run, SourceRun, TargetRun
from failover.protocol.states import MoveState, RollbackState, SourceState, TargetState

if TYPE_CHECKING:
    from failover.protocol.node import Node

MOVES = ("swap", "unswap")
STRAGGLER_GRACE = 0.1  # seconds: frames sent before a client could have heard the announcement
UNKNOWN_PROBES = 3  # probes in a row that cannot tell before a rollback gives up on reclaiming
# The proof's deadline: clients must hear the announcement, connect, and their line reach the log.
PROOF_FLOOR = 0.3  # seconds, at the busiest site
EXPECTED_ARRIVALS = 20  # mean inter-arrival times of the source's rate: missing them all is no accident
CANARY_PROOF = 1.0  # seconds for the source's marked requests to cross and be logged
CANARY_GAP = 0.05  # seconds between the first confirm.requests canaries
CANARY_RETRY_GAP = 0.1  # then between the retries, until the proof window ends or the move does
MIN_EXTENSION = 0.001  # seconds: a proof deadline is not put off for less


def expected_arrivals(requests: int) -> int:
    return max(EXPECTED_ARRIVALS, 5 * requests)


def quiet(rate: float, requests: int, within: float) -> bool:
    """Too quiet to judge by clients: the deadline the rate calls for would pass confirm.within_s."""
    return rate * within < expected_arrivals(requests)


def proof_deadline(
    confirm_within: float, requests: int, source: str, rate: float | None, canary: bool
) -> tuple[float, str]:
    """Seconds the new holder waits for proof after its claim, and why that long."""
    if canary:
        return min(confirm_within, CANARY_PROOF), f"canary requests from {source}"
    if rate is None:
        return confirm_within, f"{source}'s request rate was not known: confirm.within_s"
    n = expected_arrivals(requests)
    expected = n / rate
    deadline = min(confirm_within, max(PROOF_FLOOR, expected))
    why = f"{source} served {rate:.0f} req/s before the move: {n} arrivals take {expected * 1000:.0f} ms"
    if deadline == PROOF_FLOOR:
        why += f", at least {PROOF_FLOOR * 1000:.0f} ms"
    return deadline, why


PROOF_CLIENTS = 10  # the first clients a proof names


def target_evidence(run: TargetRun, vip: str) -> dict[str, Any]:
    """The proof's facts as the new holder knows them: what counted, from whom, addressed to what, how
    that was known, and the deadline it set itself and why."""
    return {
        "requests": run.counted,
        "clients": list(run.counted_clients[:PROOF_CLIENTS]),
        "to": vip,
        "destination": run.destination or None,
        "canary": run.canary,
        "deadline_ms": round((run.proof_deadline + run.proof_extended) * 1000, 1),
        "deadline_why": run.proof_why + (
            f"; {run.proof_extended * 1000:.0f} ms more: this host was held off the CPU that long meanwhile"
            if run.proof_extended else ""
        ),
    }


def proof_fields(evidence: dict[str, Any]) -> dict[str, Any]:
    """`target_evidence` as the fields Confirmed and HandBack carry it to the source."""
    return {
        "requests": evidence["requests"],
        "clients": ",".join(evidence["clients"]),
        "destination": evidence["destination"] or "",
        "canary": evidence["canary"],
        "deadline_ms": evidence["deadline_ms"],
        "deadline_why": evidence["deadline_why"],
    }


def source_evidence(msg: wire.Confirmed | wire.HandBack, vip: str) -> dict[str, Any]:
    """The target's proof facts in the source's outcome: the target's own keys, None for what a peer that
    predates them did not send."""
    known = bool(msg.deadline_why)
    return {
        "requests": msg.requests,
        "clients": [c for c in msg.clients.split(",") if c],
        "to": vip,
        "destination": msg.destination or None,
        "canary": msg.canary if known else None,
        "deadline_ms": msg.deadline_ms if known else None,
        "deadline_why": msg.deadline_why or None,
    }


S, T, R = SourceState, TargetState, RollbackState


class _Answers:
    """What every swap state may do with a duplicate: answer it again, acknowledge it."""

    def __init__(self, node: Node) -> None:
        self.node = node

    @property
    def me(self) -> str:
        return self.node.setup.name

    @property
    def peer(self) -> str:
        return self.node.setup.peer

    @property
    def step_ms(self) -> str:
        return f"{self.node.timing.step_timeout * 1000:.0f} ms"

    def answer_again(self, run: Run, msg: wire.Message, now: float) -> None:
        reply = run.replies.get(msg.kind)
        if reply is not None:
            self.node.send(reply)

    def acknowledge(self, run: Run, msg: wire.Message, now: float) -> None:
        self.node.send(wire.Ack(epoch=run.epoch, of=msg.kind))

    def acknowledged(self, run: Run, msg: wire.Message, now: float) -> MoveState:
        return T.ACKNOWLEDGED

    def unacknowledged(self, run: Run, _: None, now: float) -> MoveState:
        return T.UNACKNOWLEDGED

    def note_stragglers(self, run: SourceRun, event: e.StragglersSeen, now: float) -> None:
        """Frames still reaching us for the VIP after the claim: ask the new holder to tell each sender."""
        if run.claimed_seen is None or run.straggler_until is None:
            return
        grace = run.claimed_seen + STRAGGLER_GRACE  # frames already on their way at the claim do not count
        new = False
        for mac, ip, last_seen in event.seen:
            if last_seen < grace:
                continue
            known = run.stragglers.setdefault(mac, {"ip": ip, "told": None, "last_seen": last_seen})
            known["last_seen"] = max(known["last_seen"], last_seen)
            if known["told"] is None:
                known["told"] = now
                self.node.stragglers_total += 1
                new = True
        if new:
            entries = ",".join(f"{v['ip']}={mac}" for mac, v in run.stragglers.items())
            self.node.emit(a.Notice("stragglers", {"epoch": run.epoch, "entries": entries}))
            self.node.send(wire.TellStragglers(epoch=run.epoch, entries=entries))

    def reclaim(self, run: SourceRun, reason: str, now: float) -> MoveState:
        """The move failed with the VIP perhaps on nobody: take it back (a new epoch outranks the move's)."""
        node = self.node
        run.rollback_reason = reason
        if run.rollback_started is None:  # begun earlier when a handoff to the target came first
            run.rollback_started = now
        node.send(wire.Abort(epoch=run.epoch, reason=reason))  # a target still in its ready window stops
        node.epoch = max(node.epoch, run.claim_epoch)
        node.claim_vip(run.claim_epoch, "rollback")
        return R.RECLAIMING


class SwapSource(_Answers):
    """Effects of the swap-source table: the holder hands the VIP to its peer."""

    def start(self, run: SourceRun, now: float) -> MoveState:
        """The before_release hooks, if any, run before the target is even asked: nothing changed yet."""
        if self.node.setup.confirm == "traffic":
            # Read while the target gets ready: its proof deadline follows how busy the site is.
            self.node.emit(a.MeasureLoad(run.epoch))
        run.canary = self.node.setup.confirm == "canary"
        if self.node.setup.before_release <= 0:
            return self.prepare(run, now)
        self.node.emit(a.BeforeRelease(run.epoch, run.move, run.target))
        return S.BEFORE_RELEASE

    def prepare(self, run: SourceRun, now: float) -> MoveState:
        setup = self.node.setup
        drain_ms = setup.drain * 1000
        prepare = wire.Prepare(
            epoch=run.epoch, move=run.move, digest=setup.digest, drain_ms=drain_ms,
            drain_max_ms=setup.drain_max * 1000 if drain_ms else 0.0,
        )
        self.node.transmit(run, prepare, now)
        return S.PREPARING

    def hooks_done(self, run: SourceRun, event: e.BeforeReleaseDone, now: float) -> MoveState:
        if event.ok:
            self.node.step(run, "before-release-hooks", now)
            return self.prepare(run, now)
        return self._hooks_failed(run, event.detail, now)

    def hooks_timed_out(self, run: SourceRun, _: None, now: float) -> MoveState:
        return self._hooks_failed(run, "hooks did not finish in time", now)

    def _hooks_failed(self, run: SourceRun, detail: str, now: float) -> MoveState:
        self.node.step(run, "before-release-failed", now)
        reason = f"before_release hook failed on {self.me}: {detail[:500]}; nothing changed"
        self.node.send(wire.Refused(epoch=run.epoch, reason=reason))  # a target that asked stops waiting
        self.node.finish(run, ok=False, reason=reason, now=now)
        return S.FAILED

    def load_measured(self, run: SourceRun, event: e.LoadMeasured, now: float) -> None:
        run.load_measured = True
        run.rate = event.per_second
        setup = self.node.setup
        if run.rate is not None and quiet(run.rate, setup.confirm_requests, setup.confirm_within):
            run.canary = True
            detail = {"epoch": run.epoch, "rate": round(run.rate, 3), "detail": event.detail}
            self.node.emit(a.Notice("too-quiet-canary", detail))

    def release(self, run: SourceRun, msg: wire.Prepared, now: float) -> MoveState:
        self.node.step(run, "target-ready", now)
        run.handoff_error = msg.handoff_error
        if self.node.setup.confirm == "traffic" and not run.load_measured:
            # The target's deadline needs our rate: still holding the VIP, we wait for it a moment.
            return S.MEASURING
        return self._release(run, now)

    def release_measured(self, run: SourceRun, event: e.LoadMeasured, now: float) -> MoveState:
        self.load_measured(run, event, now)
        return self._release(run, now)

    def release_unmeasured(self, run: SourceRun, _: None, now: float) -> MoveState:
        self.node.emit(a.Notice("load-not-measured", {"epoch": run.epoch}))
        return self._release(run, now)

    def _release(self, run: SourceRun, now: float) -> MoveState:
        run.release_started = now
        self.node.release_vip(run.epoch, "swap")
        return S.RELEASING

    def refused(self, run: AnyRun, msg: wire.Refused, now: float) -> None:
        self.node.finish(run, ok=False, reason=f"{self.peer} refused: {msg.reason}", now=now)

    def prepare_timed_out(self, run: SourceRun, _: None, now: float) -> None:
        self.node.send(wire.Abort(epoch=run.epoch, reason="prepare timed out"))
        reason = f"{self.peer} did not get ready within {self.step_ms}; nothing changed"
        self.node.finish(run, ok=False, reason=reason, now=now)

    def released(self, run: SourceRun, event: e.ReleaseDone, now: float) -> MoveState:
        node = self.node
        if not event.ok:
            node.send(wire.Abort(epoch=run.epoch, reason=f"release failed: {event.error}"))
            node.finish(run, ok=False, reason=f"release failed on {self.me}: {event.error}", now=now)
            return S.FAILED
        assert run.release_started is not None
        run.release_ms = (now - run.release_started) * 1000.0
        node.step(run, "released", now)
        run.released_sent = now
        released = wire.Released(
            epoch=run.epoch,
            release_ms=run.release_ms,
            rate=run.rate or 0.0,
            rate_known=run.rate is not None,
            canary=run.canary,
        )
        run.replies["prepared"] = released
        node.transmit(run, released, now)
        if node.setup.straggler_window > 0:
            # After Released is out: opening the watch must not delay the target's claim.
            run.straggler_until = now + node.setup.straggler_window
            node.emit(a.WatchStragglers(run.epoch))
        return S.HANDED_OVER

    def target_claimed(self, run: SourceRun, msg: wire.Claimed, now: float) -> MoveState:
        node = self.node
        done = wire.Done(epoch=run.epoch)
        node.step(run, "target-claimed", now)
        node.send(done)
        if msg.restarted:
            reason = f"{self.peer} restarted during the swap and holds the VIP; the move was not confirmed"
            node.finish(run, ok=False, now=now, holder=self.peer, reason=reason)
            return S.FAILED
        run.claimed_seen = now
        unserved = None
        if run.released_sent is not None and run.release_ms is not None:
            # Split the round trip: half of (our wait minus the target's turnaround) is one way.
            one_way = max(0.0, ((now - run.released_sent) * 1000.0 - msg.turnaround_ms) / 2.0)
            unserved = run.release_ms + one_way + msg.claim_ms
        run.replies["claimed"] = done
        if node.setup.confirm == "none":
            return self._finish_ok(run, now, unserved_ms=unserved)
        run.unserved_ms = unserved
        run.probed = True  # a silent target after this: one probe decides
        if run.canary:
            # The drain copy of the VIP would answer our own canaries here: it goes first.
            node.end_drain("ended for canaries", now)
            run.canaries_sent = True
            setup = node.setup
            within, _ = proof_deadline(setup.confirm_within, setup.confirm_requests, run.source, None, True)
            node.emit(a.Canary(run.epoch, within=within))
        return S.AWAITING_CONFIRMATION

    def target_claim_failed(self, run: SourceRun, msg: wire.ClaimFailed, now: float) -> MoveState:
        self.node.step(run, "target-claim-failed", now)
        return self.reclaim(run, f"{self.peer} could not claim the VIP: {msg.reason}", now)

    def probe_target(self, run: SourceRun, _: None, now: float) -> None:
        # Asking for the peer's own address too: its MAC among the VIP's answers names the holder.
        self.node.emit(a.Probe(run.epoch, peer_host=True))

    def target_probed(self, run: SourceRun, event: e.ProbeDone, now: float) -> MoveState:
        node = self.node
        if event.unknown and not event.answered_by:
            # Not silence: maybe the target holds the VIP and its answer was lost. Ask again, a few times.
            node.step(run, "probe-unknown", now)
            run.unknown_probes += 1
            if run.unknown_probes >= UNKNOWN_PROBES:
                reason = (
                    f"{self.peer} did not confirm the claim, and {run.unknown_probes} probes could not tell "
                    f"whether anyone holds the VIP ({event.unknown}): not reclaiming"
                )
                node.finish(run, ok=False, now=now, holder=None, reason=reason)
                return S.FAILED
            node.retransmit(run, now)
            return S.HANDED_OVER
        if not event.answered_by:
            node.step(run, "probe-silent", now)
            return self.reclaim(run, f"{self.peer} did not confirm the claim within {self.step_ms}", now)
        node.step(run, "probe-answered", now)
        if run.probed:
            reason = (
                f"{self.peer} did not confirm the claim, but {', '.join(event.answered_by)} "
                "answers for the VIP: not reclaiming"
            )
            # Its heartbeats say so once its agent is back; before that, its kernel does: the MAC that
            # answers for the peer's own address also answers for the VIP.
            peer_kernel = set(event.answered_by) & set(event.host_answered_by)
            holder = self.peer if node.peer_holds() or peer_kernel else None
            node.finish(run, ok=False, now=now, holder=holder, reason=reason)
            return S.FAILED
        # Someone holds the VIP: most likely the target, whose answer was lost. Wait once more.
        run.probed = True
        node.retransmit(run, now)
        return S.HANDED_OVER

    def probe_timed_out(self, run: SourceRun, _: None, now: float) -> MoveState:
        # No answer from the probe is no proof that nobody holds the VIP: never reclaim on it.
        return self.target_probed(run, e.ProbeDone(run.epoch, (), "the probe did not finish in time"), now)

    def confirmed(self, run: SourceRun, msg: wire.Confirmed, now: float) -> MoveState:
        self.acknowledge(run, msg, now)
        self.node.step(run, "confirmed", now)
        evidence = source_evidence(msg, self.node.setup.vip)
        figures = {"unserved_ms": run.unserved_ms, "confirm_ms": msg.confirm_ms, "evidence": evidence}
        return self._finish_ok(run, now, confirmed=True, **figures)

    def handed_back(self, run: SourceRun, msg: wire.HandBack, now: float) -> MoveState:
        self.acknowledge(run, msg, now)
        self.node.step(run, "target-handed-back", now)
        run.evidence = source_evidence(msg, self.node.setup.vip)
        run.peer_drain, run.peer_drain_max = msg.drain_ms / 1000, msg.drain_max_ms / 1000
        if run.peer_drain <= 0:
            return self.reclaim(run, msg.reason, now)
        # The target drains what clients began on it: pass their segments back to it before we claim,
        # or our kernel answers them with a reset.
        run.rollback_reason, run.rollback_started = msg.reason, now
        self.node.drainer.place_handoff(run, now)
        return R.HANDING_OFF

    def confirmation_timed_out(self, run: SourceRun, _: None, now: float) -> None:
        self.node.step(run, "confirmation-timeout", now)
        self.probe_target(run, None, now)

    def stragglers_collected(self, run: SourceRun, _: object, now: float) -> None:
        self.node.finish(run, ok=True, reason="", now=now, **(run.done or {}))

    def _finish_ok(self, run: SourceRun, now: float, **figures: Any) -> MoveState:
        """Done, unless the straggler window is still open: then done when it closes."""
        if run.straggler_until is not None and now < run.straggler_until:
            run.done = figures
            return S.COLLECTING_STRAGGLERS
        self.node.finish(run, ok=True, reason="", now=now, **figures)
        return S.DONE


class SwapTarget(_Answers):
    """Effects of the swap-target table: the standby gets ready, claims, and waits for clients."""

    def check(self, run: TargetRun, now: float) -> MoveState:
        node = self.node
        node.step(run, "prepare-received", now)
        if run.peer_drain > 0:
            # In place before we say we are ready, so before we claim.
            node.drainer.place_handoff(run, now)
            run.handoff_pending = True
        node.emit(a.CheckHealth(run.epoch))
        return T.CHECKING

    def prepare_received(self, run: TargetRun, msg: wire.Prepare, now: float) -> MoveState:
        run.peer_drain, run.peer_drain_max = msg.drain_ms / 1000, msg.drain_max_ms / 1000
        return self.check(run, now)

    def refused(self, run: AnyRun, msg: wire.Refused, now: float) -> None:
        self.node.finish(run, ok=False, reason=f"{self.peer} refused: {msg.reason}", now=now)

    def aborted(self, run: TargetRun, msg: wire.Abort, now: float) -> None:
        self.node.finish(run, ok=False, reason=f"{self.peer} aborted: {msg.reason}", now=now)

    def request_timed_out(self, run: TargetRun, _: None, now: float) -> None:
        reason = f"{self.peer} did not start the swap within {self.step_ms}"
        self.node.finish(run, ok=False, reason=reason, now=now)

    def health_checked(self, run: TargetRun, event: e.HealthDone, now: float) -> MoveState:
        if not event.ok:
            return self._not_ready(run, f"{self.me} is not healthy: {event.detail}", now)
        run.health = (event.ok, event.detail)
        return self._ready_when_all_in(run, now)

    def handoff_placed(self, run: TargetRun, event: e.HandoffDone, now: float) -> MoveState:
        run.handoff_pending = False
        if not event.ok:
            # The swap goes on without it; the outcome says what that costs.
            run.handoff, run.handoff_error = False, event.error or "could not be put in place"
        return self._ready_when_all_in(run, now)

    def health_timed_out(self, run: TargetRun, _: None, now: float) -> MoveState:
        what = "the health check" if run.health is None else "the connection handoff"
        return self._not_ready(run, f"{self.me} is not ready: {what} did not finish in time", now)

    def _ready_when_all_in(self, run: TargetRun, now: float) -> MoveState:
        if run.health is None or run.handoff_pending:
            return T.CHECKING
        self.node.step(run, "healthy", now)
        prepared = wire.Prepared(epoch=run.epoch, handoff_error=run.handoff_error)
        run.replies["prepare"] = prepared
        self.node.transmit(run, prepared, now)
        return T.READY

    def _not_ready(self, run: TargetRun, reason: str, now: float) -> MoveState:
        refused = wire.Refused(epoch=run.epoch, reason=reason)
        run.replies["prepare"] = refused
        self.node.send(refused)
        self.node.finish(run, ok=False, reason=reason, now=now)
        return T.FAILED

    def claim(self, run: TargetRun, msg: wire.Released, now: float) -> None:
        self.node.step(run, "source-released", now)
        run.released_received = now
        run.source_rate = msg.rate if msg.rate_known else None
        run.canary = msg.canary
        self.node.claim_vip(run.epoch, "swap")

    def release_timed_out(self, run: TargetRun, _: None, now: float) -> None:
        reason = f"{self.peer} did not release the VIP within {self.step_ms}"
        self.node.finish(run, ok=False, reason=reason, now=now)
        # The source may have released and be about to roll back on its own: give it the time to,
        # rather than race it with a takeover probe of our own.
        self.node.hold_off_takeover(now + 2 * self.node.timing.step_timeout)

    def claimed(self, run: TargetRun, event: e.ClaimDone, now: float) -> MoveState:
        node = self.node
        if not event.ok:
            failed = wire.ClaimFailed(epoch=run.epoch, reason=event.error)
            run.replies["released"] = failed
            node.send(failed)
            reason = f"claim failed on {self.me}: {event.error}; rolling back to {run.source}"
            node.finish(run, ok=False, now=now, holder=None, reason=reason)
            return T.FAILED
        node.step(run, "claimed", now)
        if run.handoff:
            # The source drains from its release, a moment before our claim, until its connections end.
            node.drainer.keep_handoff(run, run.peer_drain_max, now)
        assert run.released_received is not None
        claim_ms = (now - run.released_received) * 1000.0
        claimed = wire.Claimed(epoch=run.epoch, turnaround_ms=claim_ms, claim_ms=claim_ms)
        run.replies["released"] = claimed
        run.claimed_at = now
        run.held_off_counted = node.held_off
        node.transmit(run, claimed, now)
        if node.setup.confirm == "none":
            node.finish(run, ok=True, reason="", now=now)
            return T.CLAIMED
        # From the claim on: only what is logged after it can prove that clients followed the VIP.
        run.watching = True
        node.emit(a.Watch(run.epoch, canary=run.canary))
        setup = node.setup
        run.proof_deadline, run.proof_why = proof_deadline(
            setup.confirm_within, setup.confirm_requests, run.source, run.source_rate, run.canary
        )
        return T.CONFIRMING

    def source_knows(self, run: TargetRun, msg: wire.Done, now: float) -> None:
        run.resend_at = None  # the source has our Claimed; now we wait for clients

    def traffic_seen(self, run: TargetRun, event: e.TrafficSeen, now: float) -> MoveState:
        node = self.node
        run.unparsed = event.unparsed
        run.counted, run.counted_clients, run.destination = event.requests, event.clients, event.how
        if event.requests < node.setup.confirm_requests:
            return T.CONFIRMING
        assert run.claimed_at is not None
        confirm_ms = (now - run.claimed_at) * 1000.0
        node.step(run, "confirmed", now)
        evidence = target_evidence(run, node.setup.vip)
        confirmed = wire.Confirmed(epoch=run.epoch, confirm_ms=confirm_ms, **proof_fields(evidence))
        run.replies["released"] = confirmed
        node.transmit(run, confirmed, now)
        node.finish(
            run, ok=True, reason="", now=now, confirmed=True, confirm_ms=confirm_ms, evidence=evidence
        )
        return T.CONFIRMED

    def proof_due(self, run: TargetRun, _: None, now: float) -> MoveState:
        """The proof's deadline. Time this host was held off the CPU meanwhile is time its web server
        did not log and its clients (in a lab, on the same CPUs) did not send: given back before handing
        back, up to half a step past the deadline (the source waits the deadline and a step) and never
        past confirm.within_s."""
        node = self.node
        assert run.claimed_at is not None
        longest = min(node.setup.confirm_within, run.proof_deadline + node.timing.step_timeout / 2)
        latest = run.claimed_at + longest
        extra = min(node.held_off - run.held_off_counted, latest - now)
        if extra >= MIN_EXTENSION:
            run.held_off_counted += extra
            run.deadline = now + extra  # the same state: its own timer, set here, runs on
            run.proof_extended = run.deadline - run.claimed_at - run.proof_deadline
            node.emit(a.Notice("proof-extended", {"epoch": run.epoch, "ms": round(extra * 1000, 1)}))
            return T.CONFIRMING
        self.hand_back(run, None, now)
        return R.HANDING_BACK

    def hand_back(self, run: TargetRun, _: None, now: float) -> None:
        """Not confirmed in time: release first, then tell the source to take the VIP back."""
        self.node.step(run, "not-confirmed", now)
        self.node.release_vip(run.epoch, "hand-back")

    def tell_stragglers(self, run: TargetRun, msg: wire.TellStragglers, now: float) -> None:
        for entry in msg.entries.split(","):
            ip, _, mac = entry.partition("=")
            if ip and mac:
                self.node.emit(a.Tell(ip, mac))

    def answer_late_release(self, run: TargetRun, msg: wire.Released, now: float) -> None:
        reply = run.replies.get(msg.kind)
        # Expired or refused, it never claimed: the source must not wait for a claim.
        self.node.send(reply or wire.ClaimFailed(epoch=run.epoch, reason="the ready window had expired"))


class Rollback(_Answers):
    """Effects of the rollback table: the target hands the VIP back, the source reclaims it."""

    def reclaim_with_handoff(self, run: SourceRun, _: object, now: float) -> MoveState:
        return self.reclaim(run, run.rollback_reason, now)

    def released_back(self, run: TargetRun, event: e.ReleaseDone, now: float) -> MoveState:
        what = "canary request" if run.canary else "client request"
        evidence = target_evidence(run, self.node.setup.vip)
        reason = (
            f"no {what} to {self.node.setup.vip} reached {self.me} in {evidence['deadline_ms']:.0f} ms"
            f" ({evidence['deadline_why']})"
        )
        if run.unparsed:
            reason += f"; {run.unparsed} access-log lines since the claim did not parse"
        if not event.ok:
            # We still hold it and it works as far as we know: keep it rather than leave nobody.
            reason += f", and releasing failed: {event.error}; the VIP stays on {self.me}"
            self.node.finish(run, ok=False, now=now, confirmed=False, reason=reason, evidence=evidence)
            return T.FAILED
        setup = self.node.setup
        hand_back = wire.HandBack(
            epoch=run.epoch, reason=reason, drain_ms=setup.drain * 1000,
            drain_max_ms=setup.drain_max * 1000 if setup.drain else 0.0, **proof_fields(evidence),
        )
        run.replies["released"] = hand_back
        self.node.transmit(run, hand_back, now)
        self.node.finish(
            run,
            ok=False,
            now=now,
            rolled_back=True,
            confirmed=False,
            holder=run.source,
            reason=f"{reason}; rolled back to {run.source}",
            evidence=evidence,
        )
        return R.HANDED_BACK

    def reclaimed(self, run: SourceRun, event: e.ClaimDone, now: float) -> MoveState:
        node = self.node
        if event.ok:
            node.step(run, "reclaimed", now)
            if run.handoff:
                # The target drains from its hand-back release, a moment before this, until its
                # connections end.
                node.drainer.keep_handoff(run, run.peer_drain_max, now)
            took = "" if run.rollback_started is None else f" in {(now - run.rollback_started) * 1000:.0f} ms"
            reason = f"{run.rollback_reason}; rolled back to {self.me}{took}"
            node.finish(run, ok=False, rolled_back=True, now=now, reason=reason, evidence=run.evidence)
            return S.FAILED
        # Nobody may hold the VIP now: try again each step timeout rather than give up on it.
        node.step(run, "reclaim-failed", now)
        node.emit(a.Notice("reclaim-failed", {"epoch": event.epoch, "error": event.error}))
        return R.RECLAIM_RETRY

    def reclaim_again(self, run: SourceRun, _: None, now: float) -> MoveState:
        node = self.node
        if node.peer_holds() and node.peer_alive(now):
            reason = f"reclaiming failed; {self.peer} holds the VIP"
            node.finish(run, ok=False, now=now, holder=self.peer, reason=reason)
            return S.FAILED
        node.claim_vip(run.claim_epoch, "rollback")
        return R.RECLAIMING


def straggler_report(run: SourceRun) -> tuple[dict[str, Any], ...]:
    # Moved: nothing more from that MAC once the new holder had a moment to tell it.
    return tuple(
        {"ip": v["ip"], "mac": mac, "moved": v["last_seen"] < v["told"] + STRAGGLER_GRACE}
        for mac, v in run.stragglers.items()
    )
