"""This host, as netlink and the self-check tell the core: claims and releases done, the VIP seen, our health.

A part of `Node` (a mixin), as `peer.PeerWatch` is: what a node concludes from its own host. A claim or
release netlink carried out (or refused), the VIP appearing or vanishing behind the agent's back (and,
by policy, taking it back), the holder's own health check failing often enough to hand over.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from failover import wire
from failover.protocol import actions as a
from failover.protocol import events as e
from failover.protocol.states import DrainState, Input, row

if TYPE_CHECKING:
    from failover.protocol.drain import Drain
    from failover.protocol.moves import Moves
    from failover.protocol.node import Record
    from failover.protocol.runs import AnyRun
    from failover.protocol.setup import NodeSetup, Timing
    from failover.protocol.states import State
    from failover.protocol.takeover import Takeover


class HostWatch:
    """Claims, releases, the VIP as netlink sees it, the self-check; the rest of the node is `Node`'s."""

    # Kept by Node, read and written here.
    setup: NodeSetup
    timing: Timing
    holds: bool
    held_epoch: int
    held_before: bool
    epoch: int
    run: AnyRun | None
    ignored: Counter[str]
    self_check_fails: int
    peer_heartbeat: wire.Heartbeat | None
    vip_removed_by_hand: bool
    drainer: Drain
    takeover: Takeover
    start: Moves
    _actions: list[a.Action]
    _claims: dict[int, str]
    _releases: set[int]
    _draining: int | None
    _release_failed_at: float | None
    _self_swap_not_before: float
    _next_heartbeat: float

    if TYPE_CHECKING:

        def busy(self) -> bool: ...
        def peer_alive(self, now: float) -> bool: ...
        def peer_holds(self) -> bool: ...
        def begin(self, run: AnyRun, state: State, now: float) -> None: ...
        def dispatch(self, record: Record, inp: Input, event: object, now: float) -> None: ...
        def _schedule_announce(self, now: float) -> None: ...

    def healthy(self) -> bool:
        return self.self_check_fails < self.setup.self_check_fails

    def _claim_done(self, event: e.ClaimDone, now: float) -> None:
        why = self._claims.pop(event.epoch, "swap")
        if event.ok:
            self._set_holds(True, now)
            self.held_epoch = max(self.held_epoch, event.epoch)
            self.epoch = max(self.epoch, event.epoch)
            self._schedule_announce(now)
            # On the interface again: the copy on lo goes, and its connections go on from there.
            drain = self.drainer.run
            if drain is not None and drain.state is not DrainState.DRAINED:
                self.dispatch(drain, Input.CLAIM_DONE, event, now)
            elif self._draining is not None:
                self._actions.append(a.EndDrain(self._draining))
            self._draining = None
            # Before the hooks of whatever this claim brings (rolled_back, takeover).
            self._actions.append(a.RunHooks("after_claim", event.epoch, why))
        run = self.run
        if run is None or run.claim_epoch != event.epoch:
            self.ignored["other-epoch"] += 1
            return
        self.dispatch(run, Input.CLAIM_DONE, event, now)

    def _release_done(self, event: e.ReleaseDone, now: float) -> None:
        self._releases.discard(event.epoch)
        if event.ok:
            self._set_holds(False, now)
        else:
            self._release_failed_at = now  # netlink may still carry it out: then it is ours, not a hand's
        run = self.run
        if self._draining == event.epoch:
            self._draining = None
            if event.ok:
                self.drainer.start(event.epoch, run.move if run is not None else "settle", now)
            else:
                self._actions.append(a.EndDrain(event.epoch))  # the VIP stays here: nothing to drain
        if run is not None and run.epoch == event.epoch and Input.RELEASE_DONE in row(run.state).on:
            self.dispatch(run, Input.RELEASE_DONE, event, now)
        elif event.ok:
            self._actions.append(a.Notice("released", {"epoch": event.epoch}))

    def _observe_vip(self, held: bool, now: float) -> None:
        """What netlink says about the VIP on this host; it wins over what the core believed."""
        if held == self.holds or self._changing_vip():
            return
        failed_at = self._release_failed_at
        if not held and failed_at is not None and now - failed_at < 2 * self.timing.step_timeout:
            # Our own release that timed out took effect after all: nobody's hand, a VIP to take back.
            self._actions.append(a.Notice("release-took-effect", {"held": held}))
            self._set_holds(held, now)
            return
        self._actions.append(a.Notice("vip-changed-behind-our-back", {"held": held}))
        self._set_holds(held, now)
        # Removed by hand with on_vip_lost: report, it stays removed: the operator's word, not a fault.
        self.vip_removed_by_hand = not held and self.setup.on_vip_lost == "report"
        if not held and self.setup.on_vip_lost == "reclaim" and not self.peer_holds() and not self.busy():
            # Policy: the VIP vanished from under us and nobody else has it: probe, then take it back.
            why = "the VIP was removed from this host behind the agent's back"
            run = self.takeover.start("reclaim", why, "vip-lost", now)
            self.begin(run, run.state, now)

    def _self_check_done(self, event: e.SelfCheckDone, now: float) -> None:
        was_healthy = self.healthy()
        self.self_check_fails = 0 if event.ok else self.self_check_fails + 1
        if was_healthy != self.healthy():
            self._actions.append(a.Notice("self-check", {"healthy": self.healthy(), "detail": event.detail}))
            self._next_heartbeat = now  # the peer learns at once
        if self.healthy() or not self.holds or self.busy() or now < self._self_swap_not_before:
            return
        hb = self.peer_heartbeat
        if not (self.peer_alive(now) and hb is not None and hb.healthy):
            return
        # Our own service fails and the peer's does not: hand over with the normal coordinated swap.
        self._self_swap_not_before = now + max(5.0, 2 * self.timing.step_timeout)
        notice = {"fails": self.self_check_fails, "detail": event.detail}
        self._actions.append(a.Notice("self-check-handover", notice))
        self.start.command("swap", now, None)

    def _changing_vip(self) -> bool:
        return self.run is not None and row(self.run.state).changes_vip

    def _set_holds(self, holds: bool, now: float) -> None:
        self.held_before = self.held_before or holds
        self.vip_removed_by_hand = self.vip_removed_by_hand and not holds
        if holds != self.holds:
            self.holds = holds
            self._next_heartbeat = now  # the peer learns at once, not one interval later
