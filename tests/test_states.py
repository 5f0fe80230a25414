"""The protocol's tables: complete, consistent, drawn in the README, and the only place states are named."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from failover import protocol, wire
from failover.protocol import diagram
from failover.protocol.events import ClaimDone, HealthDone, VipObserved
from failover.protocol.states import MACHINE_OF, MACHINES, RESEND_DRAINED, DrainedCopyState, Input, State
from failover.protocol.timeouts import HEARTBEATS
from failover.reference import section_of
from tests.nodepair import KEY, NodePair

ROOT = Path(__file__).resolve().parent.parent


def settled(pair: NodePair) -> NodePair:
    pair.run(0.3)
    return pair


def test_every_state_has_one_row_and_every_transition_leads_to_a_row() -> None:
    for machine in MACHINES:
        assert set(machine.rows) == set(machine.states), machine.name
        for state in machine.entry:
            assert state in machine.rows
        for state, row in machine.rows.items():
            for inp, transition in row.on.items():
                assert transition.next, (machine.name, state, inp)
                for nxt in transition.next:
                    assert nxt in MACHINE_OF[type(nxt)].rows, (machine.name, state, inp, nxt)


def test_a_timeout_and_its_row_come_together() -> None:
    for machine in MACHINES:
        for state, row in machine.rows.items():
            assert (row.timeout is not None) == (Input.DEADLINE in row.on), (machine.name, state)
            if row.terminal:
                assert row.finished and row.timeout is None, (machine.name, state)


def test_a_timeout_counted_in_heartbeats_is_only_the_drained_copies() -> None:
    # The node counts such a timeout on the one record that has a count (DrainedCopies.beats_left).
    counted = [(m.name, s) for m in MACHINES for s, r in m.rows.items() if r.timeout in HEARTBEATS]
    assert counted == [(RESEND_DRAINED.name, DrainedCopyState.RESENDING)]


def test_every_effect_a_table_names_is_a_method_of_its_machine() -> None:
    node = NodePair().nodes["live"]
    for machine in MACHINES:
        handler = node._effects[machine.name]
        for state, row in machine.rows.items():
            for inp, transition in row.on.items():
                assert callable(getattr(handler, transition.effect, None)), (machine.name, state, inp)


def test_the_readme_shows_the_tables_as_they_are() -> None:
    readme = (ROOT / "README.md").read_text()
    assert section_of(readme, diagram.START, diagram.END) == diagram.render(), (
        "README.md is out of date: run python -m failover.protocol.diagram --update README.md"
    )


def test_the_diagram_draws_every_transition_between_two_states() -> None:
    drawn = "\n".join(diagram.mermaid(m) for m in MACHINES)
    for machine in MACHINES:
        for state, row in machine.rows.items():
            for transition in row.on.values():
                for nxt in transition.next:
                    if nxt != state:
                        assert f"{diagram._id(state)} --> {diagram._id(nxt)}:" in drawn


def test_no_state_is_compared_as_a_string_outside_the_tables() -> None:
    values = {str(s.value) for m in MACHINES for s in m.states}
    pattern = re.compile(r"""\.state\s*(?:==|!=|\bin\b|\bnot in\b)\s*\(?\s*["']([a-z-]+)["']""")
    found = []
    for path in (ROOT / "failover").rglob("*.py"):
        for match in pattern.finditer(path.read_text()):
            if match.group(1) in values:
                found.append(f"{path.relative_to(ROOT)}: {match.group(0)}")
    assert found == []


def test_an_input_its_state_does_not_list_is_counted_and_changes_nothing() -> None:
    pair = settled(NodePair())
    live = pair.nodes["live"]
    pair.command("live", "swap")
    pair.run(0.1)
    assert pair.vip_on == {"backup"}
    before = (live.holds, live.epoch, live.run, live.last_outcome)
    ignored = live.ignored["out-of-state"]
    assert live.run is not None
    # A health answer for the finished move's epoch: the source's done state does not listen to it.
    live.handle(HealthDone(live.run.epoch, True, "HTTP 200"), pair.now)
    assert live.ignored["out-of-state"] == ignored + 1
    assert (live.holds, live.epoch, live.run, live.last_outcome) == before
    assert live.status(pair.now)["ignored"]["out-of-state"] == ignored + 1
    live.handle(ClaimDone(live.epoch + 5, True), pair.now)  # a claim nobody asked for: another epoch
    assert live.status(pair.now)["ignored"]["other-epoch"] >= 1


def test_status_keeps_the_state_strings() -> None:
    pair = settled(NodePair())
    pair.before_release_ok = None
    for node in pair.nodes.values():
        node.setup = dataclasses.replace(node.setup, before_release=5.0)
    pair.command("live", "swap")
    status = pair.nodes["live"].status(pair.now)
    assert status["swap_in_progress"]["state"] == "before-release"
    assert type(status["swap_in_progress"]["state"]) is str


# --- the agent decides nothing: drain, handoff, hooks and epochs are the core's actions ---------------


def test_drain_starts_before_the_release_and_ends_after_drain_seconds() -> None:
    pair = settled(NodePair(drain=0.5))
    live = pair.nodes["live"]
    live.command("swap", pair.now)
    pair.run(0.0)
    order: list[str] = []
    for _ in range(40):
        pair.run(0.001)
        if "live" in pair.draining and "drain" not in order:
            order.append("drain")
        if "live" not in pair.vip_on and "released" not in order:
            order.append("released")
    assert order == ["drain", "released"]
    assert "live" in pair.draining
    pair.run(0.5)
    assert "live" not in pair.draining and pair.vip_on == {"backup"}


def test_a_reclaim_ends_the_drain_at_once() -> None:
    pair = settled(NodePair(drain=5.0))
    pair.claim_fails.add("backup")
    cid = pair.command("live", "swap")
    pair.run(0.2)
    out = pair.outcome("live", cid)
    assert out is not None and out.rolled_back and pair.vip_on == {"live"}
    assert "live" not in pair.draining  # on the interface again: the copy on lo went with the claim


def test_the_target_says_ready_only_once_the_handoff_is_in_place() -> None:
    pair = settled(NodePair(drain=0.5))
    pair.op_delay = 0.05  # the nft rule takes longer than the health check
    pair.command("live", "swap")
    pair.run(0.02)
    backup = pair.nodes["backup"]
    assert backup.run is not None and backup.run.state == "checking"  # healthy, handoff not yet in
    assert pair.handoffs == {"backup": backup.run.epoch}
    pair.run(0.2)
    assert pair.vip_on == {"backup"}


def test_hooks_are_asked_for_by_the_core_in_order() -> None:
    pair = settled(NodePair(confirm="traffic"))
    pair.clients_follow = False  # nobody comes: backup hands the VIP back, live reclaims
    cid = pair.command("live", "swap")
    pair.run(pair.confirm_within + 2)
    out = pair.outcome("live", cid)
    assert out is not None and out.rolled_back
    on_live = [(h.event, h.move) for n, h in pair.hooks if n == "live"]
    assert on_live == [("after_claim", "rollback"), ("rolled_back", "swap")]
    assert [(h.event, h.move) for n, h in pair.hooks if n == "backup"] == [("after_claim", "swap")]
    rolled_back = next(h for n, h in pair.hooks if h.event == "rolled_back")
    assert (rolled_back.source, rolled_back.target, rolled_back.epoch) == ("live", "backup", out.epoch)


def test_a_command_names_its_epoch_at_once_refused_or_not() -> None:
    pair = settled(NodePair())
    refused = pair.command("live", "unswap")
    swap = pair.command("live", "swap")
    started = {s.command: s.epoch for s in pair.started["live"]}
    outcome = pair.outcome("live", refused)
    assert outcome is not None and started[refused] == outcome.epoch
    pair.run(0.1)
    done = pair.outcome("live", swap)
    assert done is not None and done.ok and started[swap] == done.epoch


@pytest.mark.parametrize("machine", MACHINES, ids=lambda m: m.name)
def test_each_machine_has_a_way_in_or_is_entered_from_another(machine: protocol.states.Machine) -> None:
    reached: set[State] = set()
    for other in MACHINES:
        for row in other.rows.values():
            for transition in row.on.values():
                reached |= {n for n in transition.next if MACHINE_OF[type(n)] is machine}
    unreachable = set(machine.rows) - reached - set(machine.entry)
    assert unreachable == set(), unreachable


# --- exactly one holder after every fault: a VIP on nobody is taken back -----------------------------


def _kill_source_between_release_and_released(pair: NodePair) -> None:
    def kill_once_released(p: NodePair) -> None:
        if not p.vip_on and p.alive["live"]:
            p.faults.partitioned = True  # Released, already on its way, is lost with the agent
            p.kill("live")
            p.checks.remove(kill_once_released)

    pair.checks.append(kill_once_released)


@pytest.mark.parametrize("down", [0.5, 3.0])
def test_a_source_killed_between_release_and_released_gets_the_vip_back(down: float) -> None:
    pair = settled(NodePair())
    _kill_source_between_release_and_released(pair)
    pair.command("live", "swap")
    pair.run(down)
    assert pair.vip_on == set() and not pair.alive["live"]
    pair.restart("live", boot=2)
    pair.faults.partitioned = False
    backup = pair.nodes["backup"]
    pair.run(0.5)
    assert pair.vip_on == set()  # the bound has not passed yet: a move might still be under way
    live = pair.nodes["live"]
    bound = live.recover_after + pair.probe_time + 0.1
    pair.run(bound)
    assert pair.vip_on == {"live"}, (live.status(pair.now), backup.status(pair.now))
    taken = live.status(pair.now)["last_takeover"]
    assert taken["ok"] and taken["probe"] == "silent"
    assert taken["reason"].startswith("neither node held the VIP for 2250 ms; live held it last")
    assert backup.last_takeover is None  # the other node only watched
    pair.run(2)
    assert pair.vip_on == {"live"} and backup.peer_holds()


def test_a_release_that_timed_out_but_took_effect_is_taken_back() -> None:
    pair = settled(NodePair())
    pair.release_misreported.add("live")
    cid = pair.command("live", "swap")
    pair.run(0.1)
    out = pair.outcome("live", cid)
    assert out is not None and not out.ok and "release failed" in out.reason
    assert pair.vip_on == set()
    live = pair.nodes["live"]
    live.handle(VipObserved(False), pair.now)  # netlink's watcher: the VIP is gone after all
    pair.run(live.recover_after + 0.5)
    assert pair.vip_on == {"live"}
    assert live.last_takeover is not None and "neither node held the VIP" in live.last_takeover["reason"]


def test_a_fresh_cluster_with_the_vip_nowhere_is_left_alone() -> None:
    pair = NodePair()
    pair.vip_on.clear()
    pair.nodes = {"live": pair._make("live", "backup"), "backup": pair._make("backup", "live")}
    pair.run(10)
    assert pair.vip_on == set()  # nobody ever held it: the operator adds it, failover never invents a holder


def test_a_probe_that_cannot_tell_is_never_taken_for_silence() -> None:
    pair = settled(NodePair())
    pair.probe_unknown = "3 frames dropped by the kernel"

    def kill_target_once_released(p: NodePair) -> None:
        if not p.vip_on and p.alive["backup"]:
            p.kill("backup")

    pair.checks.append(kill_target_once_released)
    cid = pair.command("live", "swap")
    pair.run(8)
    out = pair.outcome("live", cid)
    assert out is not None and not out.ok and not out.rolled_back, out
    assert "3 probes could not tell whether anyone holds the VIP" in out.reason
    assert [s for s, _ in out.steps].count("probe-unknown") == 3
    assert pair.vip_on == set()


def test_a_takeover_probe_that_cannot_tell_does_not_claim() -> None:
    pair = settled(NodePair())
    pair.probe_unknown = "receive error"
    pair.kill("live")  # the agent only: live's kernel may still answer, the probe cannot say
    pair.run(1)
    assert pair.vip_on == {"live"}
    taken = pair.nodes["backup"].last_takeover
    assert taken is not None and not taken["ok"] and "could not tell" in taken["reason"], taken


# --- rows the review of the tables found missing ------------------------------------------------------


def _dropping_the_first(pair: NodePair, kind: type) -> None:
    """The link loses the first datagram of this message kind (decoded with the pair's key)."""
    transmit, dropped = pair._transmit, []

    def lossy(to: str, data: bytes) -> None:
        if not dropped and isinstance(wire.decode(data, (KEY,)).message, kind):
            dropped.append(to)
            return
        transmit(to, data)

    pair._transmit = lossy  # type: ignore[method-assign]


def test_a_lost_refusal_is_sent_again_to_the_asking_source() -> None:
    pair = settled(NodePair())
    pair.healthy["backup"] = False
    _dropping_the_first(pair, wire.Refused)
    cid = pair.command("live", "swap")
    pair.run(2.0)
    out = pair.outcome("live", cid)
    assert out is not None and out.reason == "backup refused: backup is not healthy: HTTP 503", out
    assert out.duration_ms < 100  # the resent Prepare got the same Refused, not the step timeout


def test_a_verdict_that_arrives_before_the_lost_claimed_is_taken() -> None:
    pair = settled(NodePair(confirm="traffic"))
    _dropping_the_first(pair, wire.Claimed)
    cid = pair.command("live", "swap")
    pair.run(0.5)
    out = pair.outcome("live", cid)
    assert out is not None and out.ok and out.confirmed, out  # Confirmed, read in handed-over
    assert pair.vip_on == {"backup"}
