"""The drain ends when the work ends: the old holder's table (states.DRAIN) and the new holder's handoff.

Driven through NodePair with a fake clock; its fake kernel counts `pair.connections[node]` connections to
the VIP while that node drains.
"""

from __future__ import annotations

import pytest

from failover import wire
from failover.protocol.drain import DRAINED_COPIES
from failover.protocol.runs import DrainedCopies, DrainWait, KeptHandoff
from failover.protocol.states import DrainedCopyState, DrainWaitState, HandoffState, Timeout
from tests.nodepair import KEY, NodePair


def settled(pair: NodePair) -> NodePair:
    pair.run(0.3)
    return pair


def _lose_drained(pair: NodePair) -> list[float]:
    """Every Drained is lost on the link from now on; returns the times they were sent."""
    lost: list[float] = []
    transmit = pair._transmit

    def lossy(to: str, data: bytes) -> None:
        if isinstance(wire.decode(data, (KEY,)).message, wire.Drained):
            lost.append(pair.now)
            return
        transmit(to, data)

    pair._transmit = lossy  # type: ignore[method-assign]
    return lost


def _first_seen(pair: NodePair, name: str, kind: type[object]) -> list[tuple[float, object]]:
    """When a record of `kind` first appears among `name`'s drain records, and the record."""
    seen: list[tuple[float, object]] = []

    def look(p: NodePair) -> None:
        for record in p.nodes[name].drainer.records():
            if isinstance(record, kind) and all(r is not record for _, r in seen):
                seen.append((p.now, record))

    pair.checks.append(look)
    return seen


def _report(pair: NodePair, name: str, cid: int) -> dict[str, object]:
    found = [r.report for r in pair.drain_reports[name] if r.command == cid]
    assert len(found) == 1, pair.drain_reports[name]
    return found[0]


def test_the_drain_waits_for_the_last_connection_and_the_handoff_lives_as_long() -> None:
    pair = settled(NodePair(drain=0.5))
    pair.connections["live"] = 2
    cid = pair.command("live", "swap")
    pair.run(1.5)  # well past drain_ms
    live = pair.nodes["live"]
    out = pair.outcome("live", cid)
    assert out is not None and out.ok and pair.vip_on == {"backup"}
    assert out.drain == {"host": "live", "epoch": out.epoch, "pending": True}
    assert "live" in pair.draining and pair.handoffs == {"backup": out.epoch}
    status = live.status(pair.now)["draining"]
    assert status["state"] == "draining-connections" and status["open"] == 2
    assert pair.drain_reports["live"] == []
    pair.connections["live"] = 0  # the last client closed
    pair.run(0.15)
    assert "live" not in pair.draining
    report = _report(pair, "live", cid)
    assert report["left"] == 0 and report["how"] == "closed" and report["host"] == "live"
    assert 1.5 <= float(str(report["after_s"])) <= 1.7
    assert pair.handoffs == {}  # Drained reached backup: its handoff went at once
    assert live.status(pair.now)["draining"] is None and live.status(pair.now)["last_drain"] == report


def test_with_nothing_open_the_drain_ends_at_drain_ms() -> None:
    pair = settled(NodePair(drain=0.5))
    cid = pair.command("live", "swap")
    pair.run(0.3)
    assert "live" in pair.draining  # even with no connection: packets on their way are served
    pair.run(0.4)
    assert "live" not in pair.draining and pair.handoffs == {}
    report = _report(pair, "live", cid)
    assert report["left"] == 0 and report["how"] == "closed"


def test_at_drain_max_what_is_still_open_is_named() -> None:
    pair = settled(NodePair(drain=0.5, drain_max=3.0))
    pair.connections["live"] = 4
    cid = pair.command("live", "swap")
    pair.run(2.5)
    assert "live" in pair.draining and pair.drain_reports["live"] == []
    pair.run(1.0)
    assert "live" not in pair.draining and pair.handoffs == {}
    report = _report(pair, "live", cid)
    assert report["left"] == 4 and report["how"] == "drain_max" and report["oldest_s"] == 1.5
    drained = [n for name, n in pair.notices if name == "live" and n.event == "drained"]
    assert [n.detail for n in drained] == [report]  # the journal hears of it too


def test_a_drain_that_cannot_count_ends_at_drain_ms_and_says_so() -> None:
    pair = settled(NodePair(drain=0.5))
    pair.connections["live"] = None
    cid = pair.command("live", "swap")
    pair.run(0.7)
    assert "live" not in pair.draining
    report = _report(pair, "live", cid)
    assert report["left"] is None and report["how"] == "not-counted" and report["error"] == "injected"


def test_a_command_on_the_target_hears_the_source_drain() -> None:
    pair = settled(NodePair(drain=0.5))
    pair.connections["live"] = 1
    cid = pair.command("backup", "swap")
    pair.run(1.0)
    out = pair.outcome("backup", cid)
    assert out is not None and out.ok and out.drain is not None and out.drain["pending"]
    assert out.drain["host"] == "live"
    pair.connections["live"] = 0
    pair.run(0.2)
    report = _report(pair, "backup", cid)
    assert report["host"] == "live" and report["left"] == 0 and report["how"] == "closed"


def test_the_drain_hook_runs_on_the_old_holder_after_its_release() -> None:
    pair = settled(NodePair(drain=0.5))
    pair.command("live", "swap")
    pair.run(0.1)
    drains = [(name, h) for name, h in pair.hooks if h.event == "drain"]
    assert [name for name, _ in drains] == ["live"]
    assert drains[0][1].source == "live" and drains[0][1].target == "backup"


def test_claiming_again_ends_the_drain_and_its_connections_go_on_here() -> None:
    pair = settled(NodePair(drain=0.5))
    pair.connections["live"] = 3
    pair.command("live", "swap")
    pair.run(1.2)
    assert "live" in pair.draining
    cid = pair.command("live", "unswap")
    pair.run(1.5)
    assert pair.vip_on == {"live"}
    live = pair.nodes["live"]
    assert live.drainer.last is not None and live.drainer.last["how"] == "claimed"
    out = pair.outcome("live", cid)
    assert out is not None and out.ok
    # The unswap's own drain is backup's; its report came with the outcome or right after it.
    assert out.drain is not None and out.drain["host"] == "backup"


def test_drained_rides_the_next_heartbeats_too() -> None:
    pair = settled(NodePair(drain=0.3))
    pair.command("live", "swap")
    pair.run(2.0)
    assert pair.nodes["live"].sent["drained"] == 1 + DRAINED_COPIES
    assert pair.nodes["backup"].received["drained"] == 1 + DRAINED_COPIES


def test_a_rollback_keeps_the_handoff_to_the_target_until_it_drained() -> None:
    pair = settled(NodePair(drain=0.5, confirm="traffic"))
    pair.clients_follow = False  # nobody comes: backup hands the VIP back, live reclaims
    pair.connections["backup"] = 1  # a straggler's connection began on backup
    cid = pair.command("live", "swap")
    pair.run(pair.confirm_within + 1.5)
    out = pair.outcome("live", cid)
    assert out is not None and out.rolled_back and pair.vip_on == {"live"}
    assert out.drain is not None and out.drain["host"] == "backup" and out.drain["pending"]
    assert "backup" in pair.draining and pair.handoffs == {"live": out.epoch}
    pair.connections["backup"] = 0
    pair.run(0.2)
    assert "backup" not in pair.draining and pair.handoffs == {}
    assert _report(pair, "live", cid)["how"] == "closed"


def test_without_a_drain_the_outcome_says_so() -> None:
    pair = settled(NodePair())
    cid = pair.command("live", "swap")
    pair.run(0.5)
    out = pair.outcome("live", cid)
    assert out is not None and out.ok and out.drain == {"host": "live", "skipped": "swap.drain_ms is 0"}
    on_target = pair.command("backup", "unswap")
    pair.run(0.5)
    back = pair.outcome("backup", on_target)
    assert back is not None and back.ok and back.drain == {"host": "backup", "skipped": "swap.drain_ms is 0"}
    assert pair.drain_reports["live"] == pair.drain_reports["backup"] == []


def test_connections_still_open_at_drain_ms_get_the_hooks_a_second_time() -> None:
    # Keep-alive connections a straggler opened here after the first round (its router still had our
    # MAC) would otherwise hold the drain until drain_max_ms.
    pair = settled(NodePair(drain=0.5))
    pair.connections["live"] = 1
    pair.command("live", "swap")
    pair.run(0.3)
    assert [h.reason for name, h in pair.hooks if h.event == "drain"] == [None]
    pair.run(0.4)
    rounds = [h for name, h in pair.hooks if h.event == "drain"]
    assert [h.reason for h in rounds] == [None, "connections opened during the drain"]
    pair.run(2.0)
    assert len([h for name, h in pair.hooks if h.event == "drain"]) == 2  # once more, not once a count


def test_nothing_open_at_drain_ms_means_one_round_of_hooks() -> None:
    pair = settled(NodePair(drain=0.5))
    pair.command("live", "swap")
    pair.run(1.0)
    assert len([h for name, h in pair.hooks if h.event == "drain"]) == 1


def test_connections_that_wait_only_for_their_clients_fin_end_the_wait_not_the_drain() -> None:
    # A client pool that reads an idle connection only to reuse it sends its FIN a minute late: the work
    # is over (the host may go down, a FIN to nobody draws no reset), but the handoff stays for the FIN.
    pair = settled(NodePair(drain=0.5))
    pair.connections["live"] = 2
    pair.closing["live"] = 1
    cid = pair.command("live", "swap")
    pair.run(1.0)
    assert pair.drain_reports["live"] == []  # one connection still has work in it
    pair.closing["live"] = 2
    pair.run(0.15)
    report = _report(pair, "live", cid)
    assert report["left"] == 0 and report["closing"] == 2 and report["how"] == "closed"
    assert "live" in pair.draining and pair.handoffs  # the drain itself goes on
    rounds = [h.reason for name, h in pair.hooks if h.event == "drain"]
    assert rounds == [None, "connections opened during the drain"]
    pair.connections["live"] = pair.closing["live"] = 0  # the FINs came
    pair.run(0.15)
    assert "live" not in pair.draining and pair.handoffs == {}
    assert pair.nodes["live"].drainer.last is not None and pair.nodes["live"].drainer.last["left"] == 0


def test_a_command_on_the_new_holder_hears_too_when_only_clients_fins_are_left() -> None:
    pair = settled(NodePair(drain=0.5))
    pair.connections["live"] = pair.closing["live"] = 1
    cid = pair.command("backup", "swap")
    pair.run(1.0)
    report = _report(pair, "backup", cid)
    assert report["host"] == "live" and report["left"] == 0 and report["closing"] == 1
    assert pair.handoffs == {"backup": report["epoch"]}  # kept for the FIN
    pair.connections["live"] = pair.closing["live"] = 0
    pair.run(0.2)
    assert pair.handoffs == {}


def test_without_the_handoff_the_move_goes_on_and_both_outcomes_say_what_was_lost() -> None:
    pair = settled(NodePair(drain=0.5))
    pair.handoff_fails = "nft: not found"
    on_source = pair.command("live", "swap")
    pair.run(1.0)
    out = pair.outcome("live", on_source)
    assert out is not None and out.ok and pair.vip_on == {"backup"}
    assert out.handoff_error == "nft: not found" and out.to_json()["handoff_error"] == "nft: not found"
    on_target = pair.command("live", "unswap")  # run on live, the target now
    pair.run(1.5)
    back = pair.outcome("live", on_target)
    assert back is not None and back.ok and back.handoff_error == "nft: not found"
    plain = settled(NodePair(drain=0.5))
    cid = plain.command("live", "swap")
    plain.run(1.0)
    fine = plain.outcome("live", cid)
    assert fine is not None and fine.handoff_error is None


# --- the tables around the drain (states.KEPT_HANDOFF, DRAIN_WAIT, RESEND_DRAINED), on the fake clock ---


def test_with_no_drained_the_kept_handoff_ends_after_the_peers_drain_max_and_two_steps() -> None:
    pair = settled(NodePair(drain=0.5, drain_max=3.0))
    pair.connections["live"] = 1  # live drains until its drain_max
    lost = _lose_drained(pair)
    kept = _first_seen(pair, "backup", KeptHandoff)
    pair.command("live", "swap")
    pair.run(1.0)
    [(claimed_at, handoff)] = kept
    assert isinstance(handoff, KeptHandoff) and handoff.state is HandoffState.KEPT
    bound = 3.0 + 2 * pair.timing.step_timeout
    assert handoff.deadline == pytest.approx(claimed_at + bound)
    pair.run(claimed_at + bound - 0.001 - pair.now)
    assert lost and pair.handoffs == {"backup": handoff.epoch}  # live's drain ended, its word lost
    pair.run(0.002)
    assert pair.handoffs == {} and handoff.state is HandoffState.ENDED and handoff.deadline is None
    ended = [n.detail for _, n in pair.notices if n.event == "handoff-ended-unreported"]
    assert ended == [{"epoch": handoff.epoch}]


def test_the_peers_final_drained_ends_the_kept_handoff_at_once() -> None:
    pair = settled(NodePair(drain=0.5))
    pair.connections["live"] = 1
    kept = _first_seen(pair, "backup", KeptHandoff)
    pair.command("live", "swap")
    pair.run(1.0)
    [(_, handoff)] = kept
    assert isinstance(handoff, KeptHandoff) and handoff.state is HandoffState.KEPT
    pair.connections["live"] = 0
    pair.run(0.15)
    assert handoff.state is HandoffState.ENDED and pair.handoffs == {}
    assert not [n for _, n in pair.notices if n.event == "handoff-ended-unreported"]


def test_a_new_handoff_replaces_the_kept_one_and_its_bound_ends_nothing() -> None:
    pair = settled(NodePair(drain=0.5, drain_max=3.0))
    pair.connections["live"] = pair.connections["backup"] = 1
    _lose_drained(pair)
    kept = _first_seen(pair, "backup", KeptHandoff)
    pair.command("live", "swap")
    pair.run(1.0)
    pair.command("live", "unswap")
    pair.run(1.0)
    pair.command("live", "swap")  # backup is the target again: it places a handoff of its own
    pair.run(0.5)
    first = kept[0][1]
    assert isinstance(first, KeptHandoff) and first.state is HandoffState.ENDED
    newest = pair.handoffs["backup"]
    assert newest > first.epoch
    pair.run(5.0)  # well past the first one's bound
    ended = [n.detail["epoch"] for name, n in pair.notices
             if name == "backup" and n.event == "handoff-ended-unreported"]  # fmt: skip
    assert first.epoch not in ended


def test_a_waiting_command_hears_no_report_after_the_drain_max_and_two_steps() -> None:
    pair = settled(NodePair(drain=0.5, drain_max=3.0))
    pair.connections["live"] = 1
    _lose_drained(pair)
    waits = _first_seen(pair, "backup", DrainWait)
    cid = pair.command("backup", "swap")
    pair.run(1.0)
    out = pair.outcome("backup", cid)
    assert out is not None and out.ok and out.drain == {"host": "live", "epoch": out.epoch, "pending": True}
    [(finished_at, wait)] = waits
    assert isinstance(wait, DrainWait) and wait.state is DrainWaitState.WAITING and wait.command == cid
    bound = 3.0 + 2 * pair.timing.step_timeout
    assert wait.deadline == pytest.approx(finished_at + bound)
    pair.run(finished_at + bound - 0.001 - pair.now)
    assert pair.drain_reports["backup"] == []
    pair.run(0.002)
    no_report = {"host": "live", "epoch": out.epoch, "left": None, "how": "no-report"}
    assert _report(pair, "backup", cid) == no_report
    assert wait.state is DrainWaitState.TOLD
    assert not [r for r in pair.nodes["backup"].drainer.records() if isinstance(r, DrainWait)]


def test_a_waiting_command_is_told_the_report_when_it_comes() -> None:
    pair = settled(NodePair(drain=0.5))
    pair.connections["live"] = 1
    waits = _first_seen(pair, "live", DrainWait)
    cid = pair.command("live", "swap")
    pair.run(1.0)
    [(_, wait)] = waits
    assert isinstance(wait, DrainWait) and wait.state is DrainWaitState.WAITING
    pair.connections["live"] = 0
    pair.run(0.15)
    assert wait.state is DrainWaitState.TOLD and _report(pair, "live", cid)["how"] == "closed"


def test_the_drained_copies_ride_exactly_the_next_heartbeats() -> None:
    pair = settled(NodePair(drain=0.3))
    live = pair.nodes["live"]
    copies = _first_seen(pair, "live", DrainedCopies)
    pair.command("live", "swap")
    for _ in range(500):  # until the drain ends (0.3 s): looked at from the moment the copies begin
        if copies:
            break
        pair.run(0.001)
    [(_, record)] = copies
    assert isinstance(record, DrainedCopies) and record.state is DrainedCopyState.RESENDING
    assert record.beats_left == DRAINED_COPIES and record.deadline is None  # counted, not timed
    assert live.sent["drained"] == 1
    for sent in range(1, DRAINED_COPIES + 1):
        heartbeats = live.sent["heartbeat"]
        while live.sent["heartbeat"] == heartbeats:
            pair.run(0.001)
        assert live.sent["drained"] == 1 + sent and record.beats_left == DRAINED_COPIES - sent
    assert record.state is DrainedCopyState.RESENT
    pair.run(1.0)
    assert live.sent["drained"] == 1 + DRAINED_COPIES


def test_the_copies_timeout_is_named_by_its_count() -> None:
    assert str(Timeout.COPIES) == f"{DRAINED_COPIES} heartbeats"
