"""An unplanned move: the effects of the takeover table.

A standby that hears nothing from the holder for `dead_after` takes over only after probing the segment
for the VIP and for the holder's own address, for as long as the holder's kernel was measured to need
(`window`); any answer for the VIP means no takeover. The probe runs ahead of dead_after (`lead`): the
takeover starts *suspecting* when the silence is dead_after less the probe's window, and claims once
the verdict is silent and the silence has lasted dead_after, with nothing at all heard from the holder
since its last datagram; a holder that speaks before dead_after clears the suspicion, and its probe
is stopped. The holder's host answering for its own address but nobody for
the VIP means its agent is down and its host up: no takeover either (see `probed`). Only silence for
both (and the fence program, if configured) lets it claim. The same machine reclaims a VIP removed
from the holder behind the agent's back (`on_vip_lost: reclaim`), and recovers a VIP that neither node
holds while both are up (a kill between release and claim, a release that timed out but took effect):
the node that held it last claims it. It also keeps the peer kernel's round trips (`measure_if_due`,
`measured`) that size the takeover's window.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from failover import wire
from failover.protocol import actions as a
from failover.protocol import events as e
from failover.protocol.runs import TakeoverRun
from failover.protocol.states import TakeoverState
from failover.protocol.window import STARTUP_EVERY, AnswerTimes, ProbeWindow

if TYPE_CHECKING:
    from failover.protocol.node import Node

K = TakeoverState

# How much earlier than its window's span a silent holder's probe starts: the adapter's own overshoot (it
# sends and listens on the event loop, which wakes at millisecond steps: ~2.7 ms over an 8.3 ms window in
# the lab). A verdict that comes sooner waits in takeover-waiting for dead_after, at most this long.
VERDICT_SLACK = 0.002


class Takeover:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.answer_times = AnswerTimes(node.setup.probe_window)
        # When the next MeasurePeer is due; None: measuring is off and every probe has the configured window.
        self.measure_due: float | None = 0.0 if node.setup.measure_every > 0 else None
        self.host_up_reported = False  # "agent down, host up" journalled once until the peer speaks again
        self._window: ProbeWindow | None = None  # the window of the probe under way
        self._host: str | None = None  # what that probe said of the holder's host
        self._asked_host = False
        self._serial = 0  # the Probe.serial of the probe under way
        self._verdict_in = True  # that probe has answered

    # --- the peer's kernel, timed while it is up ---------------------------------------------------

    def measure_if_due(self, now: float) -> None:
        if self.measure_due is None or now < self.measure_due:
            return
        every = self.node.setup.measure_every
        # A few quick ones at start, so a crash soon after it already meets a measured window.
        self.measure_due = now + (every if self.answer_times.enough else min(every, STARTUP_EVERY))
        self.node.emit(a.MeasurePeer(self.answer_times.configured.wait))

    def measured(self, event: e.PeerMeasured) -> None:
        self.answer_times.add(event.rtt)

    def window_status(self) -> dict[str, object] | None:
        return None if self.measure_due is None else self.answer_times.status()

    def window(self) -> ProbeWindow:
        """The window a silent holder's probe gets now: as measured, or the configured one when measuring is
        off."""
        node = self.node
        return node.setup.probe_window if self.measure_due is None else self.answer_times.window()

    def lead(self) -> float:
        """How long before dead_after a silent holder's probe starts, so that its verdict is in when the
        silence has lasted dead_after: its window and the adapter's slack. Never more than dead_after less
        two heartbeat intervals: a probe waits until one heartbeat is missed for a whole interval (at one
        interval of silence the next one is merely due); what the lead cannot cover runs after dead_after,
        as a probe always did. At 10 ms heartbeats and dead_after 30 ms: 10 ms, from 20 ms of silence."""
        timing = self.node.timing
        most = timing.dead_after - 2 * timing.heartbeat_interval
        return max(0.0, min(self.window().span + VERDICT_SLACK, most))

    def start(self, move: str, why: str, first_step: str, now: float) -> TakeoverRun:
        """Probe, fence if configured, claim: a silent holder ("takeover"), a lost VIP ("reclaim"), or a VIP
        on nobody ("recover"). A takeover that starts before the holder has been silent for dead_after
        suspects: its probe runs meanwhile, and it claims no sooner than dead_after."""
        node = self.node
        epoch = max(node.epoch, node.peer_epoch) + 1
        takeover = move == "takeover"
        heard = node.peer_seen if takeover else None
        early = heard is not None and now < heard + node.timing.dead_after
        run = TakeoverRun(
            epoch=epoch,
            move=move,
            source=node.setup.peer,
            target=node.setup.name,
            started=now,
            command=None,
            state=K.SUSPECTING if early else K.PROBING,
            why=why,
            heard=heard,
        )
        node.step(run, first_step, now)
        # The network is the witness: nobody may answer for the VIP before we claim it.
        self._host = None
        self._asked_host = takeover
        self._serial = node.next_nonce()
        self._verdict_in = False
        if self._asked_host:
            # Asking for the silent holder's own address too (host or agent down), for as long as its
            # kernel was measured to need: the configured window when measuring is off.
            measuring = self.measure_due is not None
            self._window = self.window()
            window = self._window if measuring else None
            node.emit(a.Probe(epoch, window, peer_host=True, serial=self._serial))
        else:
            # A reclaim or a recovery: the peer is up, and whoever may hold the VIP was never timed.
            self._window = None
            node.emit(a.Probe(epoch, serial=self._serial))
        return run

    # --- suspecting: the probe in the last stretch of dead_after ------------------------------------------

    def probed_early(self, run: TakeoverRun, event: e.ProbeDone, now: float) -> TakeoverState:
        """The verdict before dead_after: an answer refuses as ever; silence waits for dead_after."""
        if not self._ours(event):
            return run.state
        refused = self._refusal(run, event, now)
        if refused is not None:
            return refused
        self.node.step(run, "probe-silent", now)
        self._host = "down"
        return K.WAITING

    def holder_silent(self, run: TakeoverRun, _: None, now: float) -> TakeoverState:
        """Silent for dead_after with the verdict still to come: probing, as a takeover always was."""
        if self._spoke_since(run):
            return self._cleared(run, now)
        self._silent(run, now)
        return K.PROBING

    def silent_for_dead_after(self, run: TakeoverRun, _: None, now: float) -> TakeoverState:
        """The probe heard nobody, and now the holder has been silent for dead_after: fence or claim."""
        if self._spoke_since(run):
            return self._cleared(run, now)
        self._silent(run, now)
        return self._fence_or_claim(run)

    def suspicion_cleared(self, run: TakeoverRun, _: None, now: float) -> TakeoverState:
        return self._cleared(run, now)

    def _cleared(self, run: TakeoverRun, now: float) -> TakeoverState:
        """The holder spoke before it was silent for dead_after: no takeover was due, nothing is held off.
        Its probe, if still under way, is stopped: a later takeover's probe must not wait behind it."""
        node = self.node
        assert run.heard is not None
        if not self._verdict_in:
            self._verdict_in = True
            node.emit(a.StopProbe(self._serial))
        spoke = node.peer_seen if node.peer_seen is not None else now
        node.emit(
            a.Notice(
                "suspicion-cleared",
                {
                    "epoch": run.epoch,
                    "peer": node.setup.peer,
                    "silent_ms": round((spoke - run.heard) * 1000, 1),
                    "steps": [{"step": s, "ms": round(ms, 3)} for s, ms in run.steps],
                },
            )
        )
        return K.CLEARED

    def _silent(self, run: TakeoverRun, now: float) -> None:
        assert run.heard is not None
        self.node.step(run, "holder-silent", now)
        run.why = f"{self.node.setup.peer} silent for {(now - run.heard) * 1000:.0f} ms"

    def _spoke_since(self, run: TakeoverRun) -> bool:
        """The holder sent anything (a heartbeat, a late one, a swap message) since its takeover began."""
        seen = self.node.peer_seen
        return run.heard is not None and seen is not None and seen > run.heard

    def _ours(self, event: e.ProbeDone) -> bool:
        """The verdict of this takeover's own probe, not of one an earlier, cleared suspicion left behind."""
        if event.serial == self._serial:
            self._verdict_in = True
            return True
        self.node.ignored["other-probe"] += 1
        return False

    # --- probing, and the verdict -----------------------------------------------------------------------

    def probed(self, run: TakeoverRun, event: e.ProbeDone, now: float) -> TakeoverState:
        if not self._ours(event):
            return run.state
        refused = self._refusal(run, event, now)
        if refused is not None:
            return refused
        node = self.node
        node.step(run, "probe-silent", now)
        if self._asked_host:
            self._host = "down"  # asked, and silent for its own address too
        if self._spoke_since(run):
            return self._finish(run, False, f"{node.setup.peer} was heard again: no takeover", now)
        return self._fence_or_claim(run)

    def _fence_or_claim(self, run: TakeoverRun) -> TakeoverState:
        node = self.node
        if node.setup.fence:
            node.emit(a.Fence(run.epoch))
            return K.FENCING
        return self._claim(run)

    def _refusal(self, run: TakeoverRun, event: e.ProbeDone, now: float) -> TakeoverState | None:
        """Any answer for the VIP, a probe that cannot tell, or the holder's host up: no claim."""
        node = self.node
        if event.answered_by:
            node.step(run, "probe-answered", now)
            answered = ", ".join(event.answered_by)
            reason = f"{answered} still answers for the VIP: not claiming"
            return self._finish(run, False, reason, now, probe=list(event.answered_by))
        if event.unknown:
            node.step(run, "probe-unknown", now)
            reason = f"the probe could not tell whether anyone holds the VIP ({event.unknown}): not claiming"
            return self._finish(run, False, reason, now, probe=[f"unknown: {event.unknown}"])
        if event.host_answered_by:
            # The holder's kernel answers for its own address and nobody for the VIP: its agent is down,
            # its host up. The VIP may well still be there: an agent killed or stopped leaves it in place
            # (on purpose: a restart must not cause an outage), and its answer for the VIP may be the one
            # frame lost, or kept back by arp_ignore / a filter while clients still reach it. Claiming
            # would make two holders with nobody on the other side to settle it, so: no claim, said in the
            # status and journal, and asked again after takeover_retry. Once the host goes down as well,
            # the next probe is silent for both and the takeover goes ahead; once the agent is back, its
            # heartbeats say where the VIP is.
            node.step(run, "probe-host-up", now)
            hosts = ", ".join(event.host_answered_by)
            reason = (
                f"agent down, host up: {node.setup.peer}'s host answers for its own address ({hosts}) but "
                f"nobody for {node.setup.vip}; it may still hold it: not claiming"
            )
            if not self.host_up_reported:
                self.host_up_reported = True
                detail = {"at": now, "epoch": run.epoch, "peer": node.setup.peer, "reason": reason}
                node.emit(a.Notice("agent-down-host-up", {**detail, "host_answered_by": hosts}))
            self._host = "up"
            return self._finish(run, False, reason, now)
        return None

    def probe_timed_out(self, run: TakeoverRun, _: None, now: float) -> TakeoverState:
        return self._finish(run, False, "the probe did not finish in time: not claiming", now)

    def peer_heard(self, run: TakeoverRun, hb: wire.Heartbeat, now: float) -> TakeoverState:
        """A silent holder that speaks again ends a takeover; a reclaim ends only if the peer has the VIP."""
        peer = self.node.setup.peer
        if run.move == "takeover":
            return self._finish(run, False, f"{peer} was heard again: no takeover", now)
        if hb.holds_vip:
            return self._finish(run, False, f"{peer} holds the VIP: not reclaiming", now)
        return run.state  # a reclaim or recovery goes on: the peer speaks but does not hold the VIP

    def fenced(self, run: TakeoverRun, event: e.FenceDone, now: float) -> TakeoverState:
        if not event.ok:
            self.node.step(run, "fence-failed", now)
            reason = f"fence hook failed: {event.detail}: not claiming"
            return self._finish(run, False, reason, now, fence=event.detail)
        self.node.step(run, "fenced", now)
        run.fence_detail = event.detail
        return self._claim(run)

    def fence_timed_out(self, run: TakeoverRun, _: None, now: float) -> TakeoverState:
        self.node.step(run, "fence-failed", now)
        reason = "fence hook did not answer in time: not claiming"
        return self._finish(run, False, reason, now, fence="no answer")

    def claimed(self, run: TakeoverRun, event: e.ClaimDone, now: float) -> TakeoverState:
        if event.ok:
            self.node.step(run, "claimed", now)
            return self._finish(run, True, f"took over from silent {self.node.setup.peer}", now)
        return self._finish(run, False, f"claim failed: {event.error}", now)

    def _claim(self, run: TakeoverRun) -> TakeoverState:
        node = self.node
        node.epoch = max(node.epoch, run.epoch)
        node.claim_vip(run.epoch, "takeover")
        return K.CLAIMING

    def _finish(
        self,
        run: TakeoverRun,
        ok: bool,
        reason: str,
        now: float,
        *,
        probe: list[str] | None = None,
        fence: str | None = None,
    ) -> TakeoverState:
        node = self.node
        node.moves["takeover", "ok" if ok else "refused"] += 1
        if fence is None:
            default = "ok" if ok and node.setup.fence else "none"
            fence = run.fence_detail if run.fence_detail is not None else default
        node.last_takeover = {
            "ok": ok,
            "at": now,
            "epoch": run.epoch,
            "reason": f"{run.why}; {reason}",
            "probe": "answered by " + ", ".join(probe)
            if probe
            else "host up, VIP silent"
            if self._host == "up"
            else "silent"
            if ok
            else None,
            "fence": fence,
            # The holder's host, by its own address: "up", "down" (silent too), None (not asked).
            "holder_host": self._host,
            "probe_window": None if self._window is None else self._window.to_json(),
            "duration_ms": round(run.elapsed_ms(now), 3),
            "steps": [{"step": s, "ms": round(ms, 3)} for s, ms in run.steps],
        }
        node.emit(a.Notice("takeover" if ok else "takeover-refused", dict(node.last_takeover)))
        if ok:
            node.emit(
                a.RunHooks(
                    "takeover",
                    run.epoch,
                    "takeover",  # also for a reclaim or a recovery, as hooks have always seen it
                    source=run.source,
                    target=run.target,
                    reason=node.last_takeover["reason"],
                )
            )
        else:
            node.hold_off_takeover(now + node.setup.takeover_retry)
        return K.DONE if ok else K.FAILED
