"""The drain on both sides of a move: the old holder serves what clients began on it until that ends.

Old holder (the node that released)          New holder
  StartDrain: the VIP on lo, ARP-silent        Handoff: segments of connections it does not own
  release; drain hooks (nginx -s reload)         go to the old holder instead of being reset
  drain_ms at least, then until the kernel
  counts no connection to the VIP, or
  drain_max_ms after the release
  (only server-closed ones left, waiting
  for their clients' FIN: Drained(E, final=False) ->  a waiting command hears it is over)
  EndDrain; Drained(E) ------------------->   EndHandoff

The old holder's side is the drain table (`states.DRAIN`), one `DrainRun` per release; its effects are
here, with those of the three small tables around it. The new holder keeps its handoff past the move's
end until Drained arrives, or until the old holder's drain_max_ms (and two steps) have passed with no
word (`states.KEPT_HANDOFF`, a `KeptHandoff`); the old holder sends its last Drained again with its next
heartbeats (`states.RESEND_DRAINED`, a `DrainedCopies`). A command that waits for the drain gets its
report as DrainReported, or word that none came in time (`states.DRAIN_WAIT`, a `DrainWait`); every
outcome says what it knows of the drain (`drain_report`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from failover import wire
from failover.protocol import actions as a
from failover.protocol import events as e
from failover.protocol.runs import (
    AnyRun,
    DrainedCopies,
    DrainRecord,
    DrainRun,
    DrainWait,
    KeptHandoff,
    SourceRun,
    TargetRun,
)
from failover.protocol.states import DrainedCopyState, DrainState, DrainWaitState, HandoffState, Input
from failover.protocol.timeouts import DRAINED_COPIES

if TYPE_CHECKING:
    from failover.protocol.node import Node

DR, HO, DW, DC = DrainState, HandoffState, DrainWaitState, DrainedCopyState

__all__ = ["DRAINED_COPIES", "PEER_REPORTS_KEPT", "Drain", "drain_report"]

PEER_REPORTS_KEPT = 8


class Drain:
    """Effects of the drain table and of the tables around it: the new holder's kept handoff, the
    commands waiting for a drain's report, the old holder's Drained copies."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.run: DrainRun | None = None
        self.last: dict[str, Any] | None = None  # the report of the last drain here
        self.over: dict[str, Any] | None = None  # the report when only clients' FINs were left
        self._peer_reports: dict[int, dict[str, Any]] = {}  # epoch -> the peer's Drained, as a report
        self._peer_over: dict[int, dict[str, Any]] = {}  # epoch -> the peer's not-final Drained
        self._handoff: KeptHandoff | None = None  # kept for the peer's drain
        self._waiting: dict[int, list[DrainWait]] = {}  # epoch -> the commands waiting for its report
        self._copies: DrainedCopies | None = None  # the last Drained, resent with the next heartbeats

    # --- the old holder: one drain per release ---------------------------------------------------------

    def start(self, epoch: int, move: str, now: float) -> None:
        """The release of `epoch` is done with a drain copy on lo: serve, and ask the web server to let go."""
        run = DrainRun(epoch=epoch, move=move, released_at=now)
        self.run = run
        self.node.begin_record(run, DR.SERVING, now)
        source, target = self._roles(epoch)
        self.node.emit(a.RunHooks("drain", epoch, move, source, target, None))

    def counted(self, run: DrainRun, event: e.ConnectionsCounted, now: float) -> None:
        run.open, run.oldest_s, run.error = event.open, event.oldest_s, event.error
        run.closing = event.closing

    def counted_waiting(self, run: DrainRun, event: e.ConnectionsCounted, now: float) -> DrainState:
        self.counted(run, event, now)
        if event.open is None:
            return self._end(run, "not-counted", now)
        if event.open == 0:
            return self._end(run, "closed", now)
        self._over_for_the_operator(run, now)
        return DR.WAITING

    def _over_for_the_operator(self, run: DrainRun, now: float) -> None:
        """Only connections the server closed are left, waiting for their clients' FIN: the host may go
        down now (a FIN to a host that is gone draws no reset), so a waiting command hears it. The drain
        goes on, so that the handoff still brings each FIN here."""
        if run.reported or run.open is None or run.open != run.closing:
            return
        run.reported = True
        report = drain_report(
            self.node.setup.name, run.epoch, 0, 0.0, now - run.released_at, "closed",
            closing=run.closing, error=run.error,
        )
        self.over = report
        self._tell_peer(run, report, now, final=False)
        self._report(run.epoch, report, now)

    def served_minimum(self, run: DrainRun, _: None, now: float) -> DrainState:
        if run.open is None and run.error:
            # Without a count the drain cannot know when the work ends: it ends as it always did.
            return self._end(run, "not-counted", now)
        if run.open == 0:
            return self._end(run, "closed", now)
        self._over_for_the_operator(run, now)
        if run.open == run.closing:
            return DR.WAITING  # no work left for the hooks: only clients' FINs to come
        # Clients whose router or cache still had our MAC may have opened keep-alive connections here
        # after the first hooks ran (a router that ignores gratuitous ARP: until the targeted ARP reached
        # it); by now they have been told, so the hooks' second round leaves only work in progress.
        source, target = self._roles(run.epoch)
        reason = "connections opened during the drain"
        self.node.emit(a.RunHooks("drain", run.epoch, run.move, source, target, reason))
        return DR.WAITING

    def bound_reached(self, run: DrainRun, _: None, now: float) -> DrainState:
        return self._end(run, "drain_max", now)

    def claimed_again(self, run: DrainRun, event: e.ClaimDone, now: float) -> DrainState:
        if not event.ok:
            return run.state
        return self._end(run, "claimed", now)  # on the interface again: its connections go on there

    def end_now(self, how: str, now: float) -> None:
        """End the drain at once (our own canaries must reach the new holder, not the copy on lo)."""
        if self.run is not None and self.run.state is not DR.DRAINED:
            self.node.enter_record(self.run, self._end(self.run, how, now), now)

    def _report_of(self, run: DrainRun, how: str, now: float) -> dict[str, Any]:
        left = -1 if run.open is None else run.open
        return drain_report(
            self.node.setup.name, run.epoch, left, run.oldest_s, now - run.released_at, how,
            closing=run.closing if left > 0 else 0, error=run.error,
        )

    def _end(self, run: DrainRun, how: str, now: float) -> DrainState:
        node = self.node
        report = self._report_of(run, how, now)
        self.last = report
        node.emit(a.EndDrain(run.epoch))
        node.emit(a.Notice("drained", report))
        self._tell_peer(run, report, now, final=True)
        self._report(run.epoch, report, now)
        return DR.DRAINED

    def _tell_peer(self, run: DrainRun, report: dict[str, Any], now: float, *, final: bool) -> None:
        left = report["left"]
        drained = wire.Drained(
            epoch=run.epoch,
            left=-1 if left is None else left,
            oldest_ms=(report.get("oldest_s") or 0.0) * 1000,
            after_ms=report["after_s"] * 1000,
            how=report["how"],
            closing=report.get("closing") or 0,
            final=final,
        )
        self.node.send(drained)
        # A lost Drained would keep the peer's handoff for drain_max_ms: it rides the next heartbeats too.
        self._copies = DrainedCopies(drained)
        self.node.begin_record(self._copies, DC.RESENDING, now)

    def resend_drained(self, copies: DrainedCopies, _: None, now: float) -> None:
        self.node.send(copies.message)

    def copies_sent(self, copies: DrainedCopies, _: None, now: float) -> None:
        pass

    # --- the new holder: the handoff lives as long as the peer's drain ------------------------------------

    def keep_handoff(self, run: AnyRun, peer_drain_max: float, now: float) -> None:
        """Our claim is done: the handoff outlives the move, until the peer says it drained."""
        run.handoff = False
        if self._peer_reports.get(run.epoch) is not None:
            self.node.emit(a.EndHandoff(run.epoch, after=0.0))
            return
        self._handoff = KeptHandoff(run.epoch, peer_drain_max)
        self.node.begin_record(self._handoff, HO.KEPT, now)

    def place_handoff(self, run: AnyRun, now: float) -> None:
        """A new handoff replaces whatever rule an earlier move left: its end is no longer ours to ask."""
        kept = self._handoff
        if kept is not None and kept.state is HO.KEPT:
            self.node.dispatch(kept, Input.HANDOFF_PLACED, None, now)
        run.handoff = True
        self.node.emit(a.Handoff(run.epoch))

    def peer_drained_final(self, kept: KeptHandoff, msg: wire.Drained, now: float) -> None:
        self.node.emit(a.EndHandoff(msg.epoch, after=0.0))

    def handoff_replaced(self, kept: KeptHandoff, _: None, now: float) -> None:
        pass  # the new rule took its place: no EndHandoff, or it would take the new one away

    def handoff_unreported(self, kept: KeptHandoff, _: None, now: float) -> None:
        self.node.emit(a.Notice("handoff-ended-unreported", {"epoch": kept.epoch}))
        self.node.emit(a.EndHandoff(kept.epoch, after=0.0))

    def peer_drained(self, msg: wire.Drained, now: float) -> None:
        if msg.epoch in self._peer_reports or (not msg.final and msg.epoch in self._peer_over):
            return  # a copy, or a not-final one that came after the final
        report = drain_report(
            self.node.setup.peer, msg.epoch, msg.left, msg.oldest_ms / 1000, msg.after_ms / 1000, msg.how,
            closing=msg.closing,
        )
        if not msg.final:
            # Over for the operator; the handoff stays, for the FINs still to come.
            self._peer_over[msg.epoch] = report
            while len(self._peer_over) > PEER_REPORTS_KEPT:
                del self._peer_over[min(self._peer_over)]
            self._report(msg.epoch, report, now)
            return
        self._peer_reports[msg.epoch] = report
        while len(self._peer_reports) > PEER_REPORTS_KEPT:
            del self._peer_reports[min(self._peer_reports)]
        kept = self._handoff
        if kept is not None and kept.state is HO.KEPT and kept.epoch == msg.epoch:
            self.node.dispatch(kept, Input.DRAINED, msg, now)
        self._report(msg.epoch, report, now)

    # --- what an outcome says of the drain, and commands that wait for it ----------------------------------

    def expect(self, run: AnyRun, *, ok: bool, rolled_back: bool, now: float) -> dict[str, Any] | None:
        """The drain that follows this move's end: its report if in, else who drains ("pending")."""
        setup = self.node.setup
        if (ok and isinstance(run, SourceRun)) or (rolled_back and isinstance(run, TargetRun)):
            drain = self.run
            if drain is None or drain.epoch != run.epoch:
                return {"host": setup.name, "skipped": setup.drain_off} if setup.drain_off else None
            if drain.state is DR.DRAINED:
                return self.last
            if drain.reported:
                return self.over
            self._wait(run, setup.drain_max, now)
            return {"host": setup.name, "epoch": run.epoch, "pending": True}
        if (ok and isinstance(run, TargetRun)) or (rolled_back and isinstance(run, SourceRun)):
            if run.peer_drain <= 0:
                return {"host": setup.peer, "skipped": "off on the peer"}
            known = self._peer_reports.get(run.epoch) or self._peer_over.get(run.epoch)
            if known is not None:
                return known
            self._wait(run, run.peer_drain_max, now)
            return {"host": setup.peer, "epoch": run.epoch, "pending": True}
        return None

    def _wait(self, run: AnyRun, drain_max: float, now: float) -> None:
        if run.command is not None:
            wait = DrainWait(run.command, run.epoch, drain_max)
            self._waiting.setdefault(run.epoch, []).append(wait)
            self.node.begin_record(wait, DW.WAITING, now)

    def _report(self, epoch: int, report: dict[str, Any], now: float) -> None:
        for wait in list(self._waiting.get(epoch, [])):
            self.node.dispatch(wait, Input.DRAIN_REPORT, report, now)

    def tell_report(self, wait: DrainWait, report: dict[str, Any], now: float) -> None:
        self._done_waiting(wait)
        self.node.emit(a.DrainReported(wait.command, wait.epoch, report))

    def no_report(self, wait: DrainWait, _: None, now: float) -> None:
        self._done_waiting(wait)
        report = {"host": self.node.setup.peer, "epoch": wait.epoch, "left": None, "how": "no-report"}
        self.node.emit(a.DrainReported(wait.command, wait.epoch, report))

    def _done_waiting(self, wait: DrainWait) -> None:
        waiters = self._waiting[wait.epoch]
        waiters.remove(wait)
        if not waiters:
            del self._waiting[wait.epoch]

    # --- time ----------------------------------------------------------------------------------------

    def records(self) -> list[DrainRecord]:
        """Every record of the drain's tables here, in the order their timeouts are looked at."""
        records: list[DrainRecord] = []
        for record in (self.run, self._handoff):
            if record is not None:
                records.append(record)
        records += [wait for waiters in self._waiting.values() for wait in waiters]
        if self._copies is not None:
            records.append(self._copies)
        return records

    def status(self, now: float) -> dict[str, Any] | None:
        run = self.run
        if run is None or run.state is DR.DRAINED:
            return None
        setup = self.node.setup
        return {
            "epoch": run.epoch,
            "state": str(run.state),
            "open": run.open,
            "closing": run.closing,
            "oldest_s": round(run.oldest_s, 3) if run.open else None,
            "for_ms": round((now - run.released_at) * 1000, 1),
            "ends_at_latest_in_ms": round(max(0.0, run.released_at + setup.drain_max - now) * 1000, 1),
        }

    def _roles(self, epoch: int) -> tuple[str | None, str | None]:
        run = self.node.run
        if run is None or run.epoch != epoch:
            return None, None
        return run.source, run.target


def drain_report(
    host: str, epoch: int, left: int, oldest_s: float, after_s: float, how: str, *, closing: int = 0,
    error: str = "",
) -> dict[str, Any]:
    """A drain's report, as outcomes, status and the journal carry it; `left` -1: not counted."""
    report: dict[str, Any] = {
        "host": host,
        "epoch": epoch,
        "left": None if left < 0 else left,
        "oldest_s": round(oldest_s, 3) if left > 0 else None,
        "after_s": round(after_s, 3),
        "how": how,
    }
    if closing:
        report["closing"] = closing  # of `left` (or all that is left): closed by the server, FIN to come
    if error:
        report["error"] = error
    return report
