"""An unplanned move: the effects of the takeover table.

A standby that hears nothing from the holder for `dead_after` probes the segment for the VIP; any
answer means no takeover. Only silence (and the fence program, if configured) lets it claim. The same
machine reclaims a VIP removed from the holder behind the agent's back (`on_vip_lost: reclaim`), and
recovers a VIP that neither node holds while both are up (a kill between release and claim, a release
that timed out but took effect): the node that held it last claims it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from failover import wire
from failover.protocol import actions as a
from failover.protocol import events as e
from failover.protocol.runs import TakeoverRun
from failover.protocol.states import TakeoverState

if TYPE_CHECKING:
    from failover.protocol.node import Node

K = TakeoverState


class Takeover:
    def __init__(self, node: Node) -> None:
        self.node = node

    def start(self, move: str, why: str, first_step: str, now: float) -> TakeoverRun:
        """Probe, fence if configured, claim: a silent holder ("takeover"), a lost VIP ("reclaim"), or a VIP
        on nobody ("recover")."""
        node = self.node
        epoch = max(node.epoch, node.peer_epoch) + 1
        run = TakeoverRun(
            epoch=epoch,
            move=move,
            source=node.setup.peer,
            target=node.setup.name,
            started=now,
            command=None,
            state=K.PROBING,
            why=why,
        )
        node.step(run, first_step, now)
        # The network is the witness: nobody may answer for the VIP before we claim it.
        node.emit(a.Probe(epoch))
        return run

    def probed(self, run: TakeoverRun, event: e.ProbeDone, now: float) -> TakeoverState:
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
        node.step(run, "probe-silent", now)
        if node.setup.fence:
            node.emit(a.Fence(run.epoch))
            return K.FENCING
        return self._claim(run)

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
            "probe": "answered by " + ", ".join(probe) if probe else "silent" if ok else None,
            "fence": fence,
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
