"""How a move starts: the rules it must pass on this node, and the run it becomes on either side.

An operator's command starts a run on the node it was given to (the source when that node holds the
VIP, else the target, which asks the holder with a SwapRequest); a SwapRequest or a Prepare from the
peer starts the other side's run. A refused move ends at once with an outcome and changes nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from failover import wire
from failover.protocol import actions as a
from failover.protocol.results import FAIL, OK, Check, Outcome
from failover.protocol.runs import DryRun, SourceRun, TargetRun
from failover.protocol.states import Input, SourceState, TargetState
from failover.protocol.swap import MOVES

if TYPE_CHECKING:
    from failover.protocol.node import Node


class Moves:
    def __init__(self, node: Node) -> None:
        self.node = node

    def source_target(self, now: float) -> tuple[str, str]:
        node = self.node
        me, peer = node.setup.name, node.setup.peer
        if node.holds:
            return me, peer
        if node.peer_holds() and node.peer_alive(now):
            return peer, me
        return "", ""

    def preflight(self, move: str, source: str, target: str, now: float) -> list[tuple[str, str, str]]:
        """Every rule a move must pass on this node, in order: (check, problem, detail when it passes)."""
        node = self.node
        me, peer = node.setup.name, node.setup.peer
        if move not in MOVES:
            return [("move", f"unknown move {move!r}", "")]
        rows: list[tuple[str, str, str]] = []
        run = node.run
        busy = f"a {run.move} is already in progress (epoch {run.epoch})" if run and node.busy() else ""
        rows.append(("no move in progress", busy, "none"))
        alive = ""
        if node.peer_seen is None:
            alive = f"peer {peer} has not been heard from; is its agent running?"
        elif not node.peer_alive(now):
            silent_ms = (now - node.peer_seen) * 1000
            alive = f"peer {peer} is not answering heartbeats (last heard {silent_ms:.0f} ms ago)"
        heard = "" if node.peer_seen is None else f"{peer} heard {(now - node.peer_seen) * 1000:.0f} ms ago"
        rows.append(("peer alive", alive, heard))
        hb = node.peer_heartbeat
        digest = node.setup.digest
        differ = ""
        if hb is not None and hb.digest != digest:
            differ = (
                f"cluster files differ between {me} ({digest[:12]}) and {peer} "
                f"({hb.digest[:12]}); copy the same file to both hosts"
            )
        same = f"{digest[:12]} on both" if hb is not None else "the peer's is not known yet"
        rows.append(("cluster files equal", differ, same))
        both = f"both {me} and {peer} hold the VIP; wait for them to settle"
        rows.append(("one holder", both if node.holds and node.peer_holds() else "", "yes"))
        rows.append(("holder known", "" if source else "no node holds the VIP", f"{source} holds the VIP"))
        if move == "unswap":
            home = me if node.setup.home else peer
            already = f"the VIP is already on its home node {home}" if source == home else ""
            rows.append(("target is home", already, f"{target} is home"))
        return rows

    def refusal(self, move: str, source: str, target: str, now: float) -> str:
        return next((problem for _, problem, _ in self.preflight(move, source, target, now) if problem), "")

    def command(self, move: str, now: float, cid: int | None) -> None:
        """An operator's swap or unswap (or the holder's own, after failed self-checks: no cid)."""
        node = self.node
        node.offer(Input.NEW_MOVE, None, now)
        me = node.setup.name
        source, target = self.source_target(now)
        reason = self.refusal(move, source, target, now)
        epoch = max(node.epoch, node.peer_epoch) + 1
        if cid is not None:
            node.emit(a.Started(cid, epoch))
        if reason:
            self._refused(cid, move, epoch, source, target, reason, now)
            return
        node.epoch = epoch
        if source == me:
            source_run = SourceRun(
                epoch=epoch, move=move, source=source, target=target, started=now, command=cid,
                state=SourceState.BEFORE_RELEASE,
            )
            node.step(source_run, "preflight", now)
            node.begin(source_run, node.source.start(source_run, now), now)
            return
        run = TargetRun(
            epoch=epoch, move=move, source=source, target=target, started=now, command=cid,
            state=TargetState.REQUESTED,
        )
        node.step(run, "preflight", now)
        node.transmit(run, wire.SwapRequest(epoch=epoch, move=move), now)
        node.begin(run, TargetState.REQUESTED, now)

    def dry_run(self, move: str, now: float, cid: int) -> None:
        node = self.node
        me = node.setup.name
        source, target = self.source_target(now)
        checks = [
            Check(name, FAIL if problem else OK, problem or detail, node=me)
            for name, problem, detail in self.preflight(move, source, target, now)
        ]
        dry = DryRun(
            command=cid, nonce=node.next_nonce(), move=move, source=source, target=target, started=now,
            checks=checks,
        )
        node.begin_dry_run(dry, node.dry_runs.start(dry, now), now)

    def on_swap_request(self, msg: wire.SwapRequest, now: float) -> None:
        """The peer's operator asked it for a move: we hold the VIP, so we drive it."""
        node = self.node
        run = node.run
        if run is not None and run.epoch == msg.epoch:
            return  # a duplicate; our Prepare is being resent on its own
        node.offer(Input.NEW_MOVE, None, now)
        reason = ""
        if node.busy():
            reason = "a swap is already in progress"
        elif msg.epoch <= node.epoch:
            reason = f"stale epoch {msg.epoch} (current {node.epoch})"
        elif not node.holds:
            reason = f"{node.setup.name} does not hold the VIP"
        else:
            reason = self.refusal(msg.move, node.setup.name, node.setup.peer, now)
        if reason:
            node.send(wire.Refused(epoch=msg.epoch, reason=reason))
            return
        node.epoch = msg.epoch
        source = SourceRun(
            epoch=msg.epoch, move=msg.move, source=node.setup.name, target=node.setup.peer, started=now,
            command=None, state=SourceState.BEFORE_RELEASE,
        )
        node.begin(source, node.source.start(source, now), now)

    def on_prepare(self, msg: wire.Prepare, now: float) -> None:
        """The holder asks us to get ready for a move it did not hear of from us."""
        node = self.node
        node.offer(Input.NEW_MOVE, None, now)
        reason = ""
        if node.busy():
            reason = "a swap is already in progress"
        elif msg.epoch <= node.epoch:
            reason = f"stale epoch {msg.epoch} (current {node.epoch})"
        elif msg.digest != node.setup.digest:
            reason = f"cluster files differ ({node.setup.name} has {node.setup.digest[:12]})"
        elif node.holds:
            reason = f"{node.setup.name} already holds the VIP"
        if reason:
            node.send(wire.Refused(epoch=msg.epoch, reason=reason))
            return
        node.epoch = msg.epoch
        run = TargetRun(
            epoch=msg.epoch, move=msg.move, source=node.setup.peer, target=node.setup.name, started=now,
            command=None, state=TargetState.CHECKING, peer_drain=msg.drain_ms / 1000,
            peer_drain_max=msg.drain_max_ms / 1000,
        )
        node.begin(run, node.target.check(run, now), now)

    def _refused(
        self, cid: int | None, move: str, epoch: int, source: str, target: str, reason: str, now: float
    ) -> None:
        node = self.node
        holder = node.setup.name if node.holds else (node.setup.peer if node.peer_holds() else None)
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
        node.last_outcome = outcome
        node.moves[move, "refused"] += 1
        node.emit(a.Notice("move-refused", outcome.to_json()))
        if cid is not None:
            node.emit(a.Finished(cid, outcome))
