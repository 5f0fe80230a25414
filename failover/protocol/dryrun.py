"""A dry run of a swap or unswap: the effects of the dry-run table, and the plan it prints.

Every check the move would make runs for real on both nodes (each checks its own host for the part it
would play) and nothing changes: no run, no epoch, no VIP, no journal entry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from failover import wire
from failover.protocol import actions as a
from failover.protocol import events as e
from failover.protocol.results import FAIL, Check, Level, Plan
from failover.protocol.runs import DryRun
from failover.protocol.states import DryRunState
from failover.protocol.swap import CANARY_PROOF, CANARY_RETRY_GAP, MOVES

if TYPE_CHECKING:
    from failover.protocol.node import Node

D = DryRunState
PEER_ANSWERS_KEPT = 16  # our answers to the peer's last dry runs, for its retransmissions


def _level(text: str) -> Level:
    """A level from the peer's answer; one we do not know counts as a failure."""
    try:
        return Level(text)
    except ValueError:
        return Level.FAIL


class DryRuns:
    def __init__(self, node: Node) -> None:
        self.node = node
        # (peer boot, nonce) -> our answer to the peer's dry run (None: checks still running), the last few
        self.answers: dict[tuple[int, int], wire.CheckResult | None] = {}

    def start(self, dry: DryRun, now: float) -> DryRunState:
        node = self.node
        me = node.setup.name
        if dry.move in MOVES and dry.source:
            # Roles are known: each node checks its own host for the part it would play.
            role = "source" if dry.source == me else "target"
            dry.waiting_local = True
            node.emit(a.HostCheck(dry.nonce, role))
            if node.peer_alive(now):
                dry.waiting_peer = True
                peer_role = "target" if role == "source" else "source"
                dry.request = wire.CheckRequest(epoch=0, nonce=dry.nonce, move=dry.move, role=peer_role)
                node.send(dry.request)
                dry.resend_at = now + node.timing.retransmit
        return self._plan_when_all_in(dry, now)

    def local_checks(self, dry: DryRun, event: e.HostCheckDone, now: float) -> DryRunState:
        if not dry.waiting_local:
            return D.CHECKING
        dry.waiting_local = False
        dry.host[self.node.setup.name] = list(event.findings)
        return self._plan_when_all_in(dry, now)

    def peer_checks(self, dry: DryRun, msg: wire.CheckResult, now: float) -> DryRunState:
        if not dry.waiting_peer:
            return D.CHECKING
        peer = self.node.setup.peer
        dry.waiting_peer = False
        dry.resend_at = None
        found = [
            Check(check, _level(level), detail, fix, node=peer)
            for level, check, detail, fix in wire.unpack_findings(msg.findings)
        ]
        if not msg.ok and all(c.level != FAIL for c in found):
            lost = "a check failed (its text did not fit in the answer)"
            found.append(Check("checks", FAIL, lost, node=peer))
        dry.host[peer] = found
        return self._plan_when_all_in(dry, now)

    def checks_timed_out(self, dry: DryRun, _: None, now: float) -> DryRunState:
        within = f"within {(now - dry.started) * 1000:.0f} ms"
        if dry.waiting_peer:
            dry.waiting_peer = False
            dry.resend_at = None
            peer = self.node.setup.peer
            dry.host[peer] = [Check("checks answered", FAIL, f"{peer} did not answer {within}", node=peer)]
        if dry.waiting_local:
            dry.waiting_local = False
            me = self.node.setup.name
            late = f"this host's checks did not finish {within}"
            dry.host[me] = [Check("checks answered", FAIL, late, node=me)]
        return self._plan_when_all_in(dry, now)

    def _plan_when_all_in(self, dry: DryRun, now: float) -> DryRunState:
        if dry.waiting_local or dry.waiting_peer:
            return D.CHECKING
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
            steps=self.plan_steps(dry.move, dry.source, dry.target) if known else (),
            duration_ms=(now - dry.started) * 1000.0,
        )
        self.node.emit(a.Notice("dry-run", plan.to_json()))
        self.node.emit(a.Planned(dry.command, plan))
        return D.PLANNED

    # --- the peer's dry run: our host's checks for it ---------------------------------------------

    def on_check_request(self, msg: wire.CheckRequest, peer_boot: int) -> None:
        key = (peer_boot, msg.nonce)
        if key in self.answers:
            answer = self.answers[key]
            if answer is not None:
                self.node.send(answer)  # our answer was lost; while the checks run, the answer is on its way
            return
        if msg.move not in MOVES or msg.role not in ("source", "target"):
            return
        self.answers[key] = None
        while len(self.answers) > PEER_ANSWERS_KEPT:
            del self.answers[next(iter(self.answers))]
        self.node.emit(a.HostCheck(msg.nonce, msg.role, peer_boot=peer_boot))

    def answer_peer(self, event: e.HostCheckDone) -> None:
        action = event.action
        assert action.peer_boot is not None
        key = (action.peer_boot, action.nonce)
        if key not in self.answers:
            return
        rows = [(str(c.level), c.check, c.detail, c.fix) for c in event.findings]
        ok = all(c.level != FAIL for c in event.findings)
        result = wire.CheckResult(epoch=0, nonce=action.nonce, ok=ok, findings=wire.pack_findings(rows))
        self.answers[key] = result
        self.node.send(result)

    # --- the plan --------------------------------------------------------------------------------

    def plan_steps(self, move: str, source: str, target: str) -> tuple[tuple[str, str], ...]:
        """What the move would do, step by step, with this node's settings (the same file on both)."""
        s, t = self.node.setup, self.node.timing
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
            f", keeping it ARP-silent on lo for at least {s.drain * 1000:.0f} ms so packets in flight are "
            f"served, then until its last connection to the VIP ends (at most {s.drain_max * 1000:.0f} ms)"
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
            window = f"{min(s.confirm_within, CANARY_PROOF) * 1000:.0f} ms"
            confirm = (
                f"canary: {source} sends marked requests to the VIP ({s.confirm_requests} at once, then "
                f"one every {CANARY_RETRY_GAP * 1000:.0f} ms until the move is proven); "
                f"{s.confirm_requests} must reach {target}'s access log within {window}, "
                f"else {source} takes the VIP back"
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

