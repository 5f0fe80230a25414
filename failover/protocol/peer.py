"""The peer, as its heartbeats tell it: alive or silent, holding or not, which keys it accepts.

A part of `Node` (a mixin): what a node concludes from heartbeats and their absence. Key rotation,
the takeover question when the holder goes silent, taking back a VIP that nobody holds, settling a
VIP held twice, and the announcements a holder sends. The machines it starts live in `takeover`.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from failover import wire
from failover.protocol import actions as a
from failover.protocol.states import Input

if TYPE_CHECKING:
    from failover.protocol.runs import AnyRun
    from failover.protocol.setup import NodeSetup, Timing
    from failover.protocol.states import State
    from failover.protocol.takeover import Takeover


class PeerWatch:
    """Liveness, keys, silence and settling; the rest of the node is `Node`'s."""

    # Kept by Node, read and written here.
    setup: NodeSetup
    timing: Timing
    holds: bool
    held_epoch: int
    held_before: bool
    peer_epoch: int
    peer_heartbeat: wire.Heartbeat | None
    peer_seen: float | None
    last_takeover: dict[str, Any] | None
    rejected: Counter[str]
    takeover: Takeover
    _actions: list[a.Action]
    _signing_key: bytes
    _settle_announced: float
    _releases: set[int]
    _takeover_not_before: float
    _silence_reported: bool
    _nobody_since: float | None
    _announce_due: list[float]
    _announce_round: int
    vip_removed_by_hand: bool

    if TYPE_CHECKING:

        def busy(self) -> bool: ...
        def begin(self, run: AnyRun, state: State, now: float) -> None: ...
        def offer(self, inp: Input, event: object, now: float) -> None: ...
        def release_vip(self, epoch: int, why: str) -> None: ...
        def hold_off_takeover(self, until: float) -> None: ...
        def _changing_vip(self) -> bool: ...

    def peer_alive(self, now: float) -> bool:
        return self.peer_seen is not None and now - self.peer_seen <= self.peer_dead_after()

    def peer_dead_after(self) -> float:
        """How long the peer may be silent and still be alive: dead_after, for a peer heartbeating every
        interval. A peer that does not hold the VIP and announces its gaps (every_ms) may be an idle standby
        or become one at its next heartbeat, which a lost datagram would not tell us of: it gets as many
        of an idle standby's longest gaps as dead_after has intervals, at most three of them more than
        dead_after. Never longer for a peer that holds the VIP: by its silence a takeover is judged."""
        hb, timing = self.peer_heartbeat, self.timing
        if hb is None or hb.holds_vip or hb.every_ms <= 0:
            return timing.dead_after
        gap = timing.longest_standby_gap
        return min(timing.dead_after * gap / timing.heartbeat_interval, timing.dead_after + 3 * gap)

    def peer_holds(self) -> bool:
        return self.peer_heartbeat is not None and self.peer_heartbeat.holds_vip

    def _reject(self, reason: str) -> None:
        self.rejected[reason] += 1
        self._actions.append(a.Notice("datagram-rejected", {"reason": reason}))

    def _on_heartbeat(self, hb: wire.Heartbeat, now: float) -> None:
        self.peer_heartbeat = hb
        if hb.keys:
            # Sign with our newest key the peer accepts: during a rotation, host by host, both keep
            # talking; once both have the new key first, both use it.
            accepted = set(hb.keys.split(","))
            usable = [k for k in self.setup.keys if wire.key_fingerprint(k) in accepted]
            if usable and usable[0] != self._signing_key:
                self._signing_key = usable[0]
                self._actions.append(a.Notice("signing-key", {"key": wire.key_fingerprint(usable[0])}))
        self.peer_epoch = max(self.peer_epoch, hb.epoch)
        self._silence_reported = False
        self.takeover.host_up_reported = False  # its agent is back: a next "agent down" is news again
        self.offer(Input.PEER_HEARD, hb, now)
        if not (self.holds and hb.holds_vip) or self._changing_vip():
            return
        if self._releases:
            # Already letting go: every heartbeat until netlink answers would ask again (a slow host
            # released three times for one settle). A failed release answers too, and the next asks anew.
            return
        # Both hold the VIP: the newer holding epoch keeps it, the home node wins a tie.
        mine = (self.held_epoch, self.setup.home)
        theirs = (hb.held_epoch, not self.setup.home)
        if theirs > mine:
            self._actions.append(
                a.Notice("settle", {"keeps": self.setup.peer, "mine": mine[0], "theirs": theirs[0]})
            )
            self.release_vip(self.held_epoch, "settle")
        elif now - self._settle_announced >= self.timing.dead_after:
            # The peer will release; re-announce so clients that followed it come back.
            self._settle_announced = now
            self._schedule_announce(now)

    def _may_take_over(self) -> bool:
        """Standing by while the peer holds the VIP: its silence would be a takeover question."""
        return (
            not self.holds
            and self.peer_holds()
            and self.peer_seen is not None
            and not self.busy()
            and not self._silence_reported  # automatic off: said once, until the peer is heard again
        )

    @property
    def recover_after(self) -> float:
        """Both up and neither holding this long: no move can still be under way, the VIP is on nobody."""
        return 2 * self.timing.step_timeout + self.timing.dead_after

    def _held_last(self) -> bool:
        """One rule on both nodes, with the same facts: the node that held the VIP last (home wins a tie)."""
        hb = self.peer_heartbeat
        theirs = 0 if hb is None else hb.held_epoch
        return self.held_before and (self.held_epoch, self.setup.home) > (theirs, not self.setup.home)

    def _recover_if_nobody_holds(self, now: float) -> None:
        hb = self.peer_heartbeat
        up = hb is not None and self.peer_alive(now)
        if self.peer_holds():
            self.vip_removed_by_hand = False
        if self.holds or not up or self.peer_holds() or self.busy() or self.vip_removed_by_hand:
            self._nobody_since = None
            return
        if self._nobody_since is None:
            self._nobody_since = now
        if now < self._nobody_since + self.recover_after or now < self._takeover_not_before:
            return  # the same sum get_timer() waits for, so the two never disagree by a rounding
        if not self._held_last():
            return  # the peer held it last: it claims it, after the same silent probe as a takeover
        self._nobody_since = None
        nobody_ms = self.recover_after * 1000
        if not self.setup.automatic:
            self.hold_off_takeover(now + self.setup.takeover_retry)
            if not self._silence_reported:
                self._silence_reported = True
                reason = f"neither node has held the VIP for {nobody_ms:.0f} ms; automatic takeover is off"
                self.last_takeover = {"ok": False, "at": now, "reason": reason}
                self._actions.append(a.Notice("nobody-holds", dict(self.last_takeover)))
            return
        why = f"neither node held the VIP for {nobody_ms:.0f} ms; {self.setup.name} held it last"
        run = self.takeover.start("recover", why, "nobody-holds", now)
        self.begin(run, run.state, now)

    def silence_deadline(self) -> float:
        """When the standing-by node acts on the holder's silence (`_may_take_over`): with automatic takeover,
        dead_after less the probe's lead, so that the probe's verdict is in at dead_after; without, just past
        dead_after (alive means "heard within dead_after", inclusive), to report it. Never before a refused
        takeover's retry."""
        assert self.peer_seen is not None
        if self.setup.automatic:
            at = self.peer_seen + self.timing.dead_after - self.takeover.lead()
        else:
            at = self.peer_seen + self.timing.dead_after + 0.001
        return max(at, self._takeover_not_before)

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
                self._actions.append(a.Notice("holder-silent", dict(self.last_takeover)))
            return
        why = f"{peer} silent for {silent_ms:.0f} ms"
        early = now < self.peer_seen + self.timing.dead_after  # probing ahead: see Takeover.lead
        run = self.takeover.start("takeover", why, "suspected" if early else "holder-silent", now)
        self.begin(run, run.state, now)

    def _schedule_announce(self, now: float) -> None:
        self._announce_round = 0
        self._announce_due = [now + offset for offset in self.timing.announce_schedule]
        self._announce_if_due(now)  # the first round goes out at once, not a timer tick later

    def _announce_if_due(self, now: float) -> None:
        while self._announce_due and now >= self._announce_due[0]:
            self._announce_due.pop(0)
            if self.holds:
                self._actions.append(a.Announce(self._announce_round))
                self._announce_round += 1
