"""The protocol core, driven through a NodePair with a fake clock: no sockets, no root."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from failover import protocol, wire
from failover.protocol import Timing
from failover.protocol.events import SelfCheckDone, StragglersSeen, VipObserved
from failover.protocol.states import TakeoverState, TargetState
from failover.protocol.swap import proof_deadline
from tests.nodepair import KEY, MACS, LinkFaults, NodePair


def settled(pair: NodePair) -> NodePair:
    pair.run(0.3)  # a few heartbeats: both sides know each other
    return pair


def test_swap_from_holder_moves_vip_and_reports_steps() -> None:
    pair = settled(NodePair())
    pair.run(3)  # past live's own start-up announcements
    live_announced = pair.announces["live"]
    cid = pair.command("live", "swap")
    pair.run(0.1)
    out = pair.outcome("live", cid)
    assert out is not None and out.ok, out
    assert pair.vip_on == {"backup"}
    assert (out.source, out.target, out.holder) == ("live", "backup", "backup")
    assert [s for s, _ in out.steps] == ["preflight", "target-ready", "released", "target-claimed"]
    assert [p.step for p in pair.progress["live"]] == [s for s, _ in out.steps]
    # Release (0.3 ms) + one way (0.2 ms) + claim (0.3 ms) in the fake world.
    assert out.unserved_ms == pytest.approx(0.8, abs=0.01)
    assert pair.announces["backup"] >= 1 and pair.announces["live"] == live_announced
    pair.run(3)
    assert pair.announces["backup"] == 4  # the whole default schedule: 0, 0.2, 1.1, 2.3 s
    assert pair.nodes["backup"].held_epoch == out.epoch


def test_swap_from_target_is_driven_by_the_holder() -> None:
    pair = settled(NodePair())
    cid = pair.command("backup", "swap")
    pair.run(0.1)
    out = pair.outcome("backup", cid)
    assert out is not None and out.ok, out
    assert pair.vip_on == {"backup"}
    assert [s for s, _ in out.steps] == [
        "preflight",
        "prepare-received",
        "healthy",
        "source-released",
        "claimed",
    ]


def test_unswap_goes_home_and_refuses_when_already_home() -> None:
    pair = settled(NodePair())
    refused = pair.command("live", "unswap")
    out = pair.outcome("live", refused)
    assert out is not None and not out.ok and "already on its home node live" in out.reason
    pair.command("live", "swap")
    pair.run(0.2)
    cid = pair.command("backup", "unswap")
    pair.run(0.2)
    out = pair.outcome("backup", cid)
    assert out is not None and out.ok and pair.vip_on == {"live"}
    assert out.epoch == 2 and pair.nodes["live"].held_epoch == 2


def test_unswap_refused_while_home_unhealthy() -> None:
    pair = settled(NodePair())
    pair.command("live", "swap")
    pair.run(0.2)
    pair.healthy["live"] = False
    cid = pair.command("backup", "unswap")
    pair.run(0.2)
    out = pair.outcome("backup", cid)
    assert out is not None and not out.ok
    assert out.reason == "live refused: live is not healthy: HTTP 503"
    assert pair.vip_on == {"backup"}


def test_swap_refused_when_digests_differ_and_nothing_changes() -> None:
    pair = NodePair()
    pair.digest["backup"] = "e" * 64
    pair.nodes["backup"] = pair._make("backup", "live")
    settled(pair)
    cid = pair.command("live", "swap")
    out = pair.outcome("live", cid)
    assert out is not None and not out.ok and "cluster files differ" in out.reason
    pair.run(1)
    assert pair.vip_on == {"live"}
    assert pair.nodes["live"].status(pair.now)["digests_equal"] is False


def test_swap_refused_when_peer_is_down() -> None:
    pair = settled(NodePair())
    pair.kill("backup")
    pair.run(0.3)
    cid = pair.command("live", "swap")
    out = pair.outcome("live", cid)
    assert out is not None and not out.ok
    assert out.reason.startswith("peer backup is not answering heartbeats (last heard")
    assert pair.vip_on == {"live"}


def test_target_claim_failure_rolls_back_to_source() -> None:
    pair = settled(NodePair())
    pair.claim_fails.add("backup")
    cid = pair.command("live", "swap")
    pair.run(0.2)
    out = pair.outcome("live", cid)
    assert out is not None and not out.ok and out.rolled_back
    assert "backup could not claim the VIP: injected: netlink add failed" in out.reason
    assert "; rolled back to live in " in out.reason
    assert pair.vip_on == {"live"}
    assert pair.nodes["live"].held_epoch == out.epoch + 1


def test_target_killed_after_release_rolls_back_after_silent_probe() -> None:
    pair = settled(NodePair())

    def kill_target_once_released(p: NodePair) -> None:
        if not p.vip_on and p.alive["backup"]:
            p.kill("backup")

    pair.checks.append(kill_target_once_released)
    cid = pair.command("live", "swap")
    pair.run(2)
    out = pair.outcome("live", cid)
    assert out is not None and out.rolled_back
    assert pair.vip_on == {"live"}
    steps = dict(out.steps)
    # Released, then exactly one step timeout of silence, then the probe, then the reclaim.
    assert steps["probe-silent"] - steps["released"] == pytest.approx(1000 + 80, abs=1)


def test_lost_claimed_does_not_make_source_reclaim_a_held_vip() -> None:
    pair = settled(NodePair())

    def partition_once_claimed(p: NodePair) -> None:
        if "backup" in p.vip_on:
            p.faults.partitioned = True

    pair.checks.append(partition_once_claimed)
    cid = pair.command("live", "swap")
    pair.run(3)
    out = pair.outcome("live", cid)
    assert out is not None and not out.ok and not out.rolled_back
    assert MACS["backup"] in out.reason and "not reclaiming" in out.reason
    # No heartbeat of the backup's says it holds the VIP, but its kernel, answering for its own address
    # with the MAC that answers for the VIP, does.
    assert out.holder == "backup", out
    assert pair.vip_on == {"backup"}


def test_failed_swap_names_no_holder_when_the_vip_answer_is_not_the_peer_host() -> None:
    pair = settled(NodePair())

    def kill_agent_and_host_once_claimed(p: NodePair) -> None:
        # The backup's agent and host address are gone while the VIP still answers with its MAC (a
        # stale proxy, a copy of the MAC elsewhere): nothing ties that answer to the peer's host.
        if "backup" in p.vip_on and p.alive["backup"]:
            p.faults.partitioned = True  # its Claimed is lost
            p.kill("backup")  # the VIP stays in the model's answers; its host address does not

    pair.checks.append(kill_agent_and_host_once_claimed)
    cid = pair.command("live", "swap")
    pair.run(3)
    out = pair.outcome("live", cid)
    assert out is not None and not out.ok and not out.rolled_back
    assert "not reclaiming" in out.reason
    assert out.holder is None, out


def test_prepare_timeout_is_exact_and_changes_nothing() -> None:
    pair = settled(NodePair())
    pair.faults.partitioned = True
    cid = pair.command("live", "swap")
    pair.run(2)
    out = pair.outcome("live", cid)
    assert out is not None and not out.ok
    assert out.reason == "backup did not get ready within 1000 ms; nothing changed"
    assert out.duration_ms == pytest.approx(1000.0)
    assert pair.vip_on == {"live"}


def test_swap_survives_loss_duplication_and_reordering() -> None:
    for seed in range(20):
        pair = settled(NodePair(seed=seed, faults=LinkFaults(drop=0.3, duplicate=0.3, delay=(0.0, 0.01))))
        cid = pair.command("live", "swap")
        pair.run(3)
        out = pair.outcome("live", cid)
        assert out is not None, seed
        assert len(pair.vip_on) == 1, seed
        if out.ok:
            assert pair.vip_on == {"backup"}, seed


def test_both_holding_settles_to_home_on_equal_epochs() -> None:
    pair = settled(NodePair())
    pair.run(3)  # past live's own start-up announcements
    announced = pair.announces["live"]
    pair.vip_on.add("backup")  # someone adds the VIP by hand on the standby
    pair.nodes["backup"].handle(VipObserved(True), pair.now)
    pair.run(0.2)
    assert pair.vip_on == {"live"}
    assert any(n.event == "settle" for name, n in pair.notices if name == "backup")
    assert pair.announces["live"] > announced  # the keeper re-announces


def test_both_holding_settles_with_one_release_while_netlink_is_slow() -> None:
    """A release that takes ten heartbeats to answer (a busy host) is asked for once, not once per
    heartbeat of the peer that keeps the VIP; one whose answer says it failed is asked for again."""
    pair = settled(NodePair())
    pair.op_delay = 10 * pair.timing.heartbeat_interval  # 0.5 s
    pair.vip_on.add("backup")
    pair.nodes["backup"].handle(VipObserved(True), pair.now)
    pair.run(1.0)
    assert pair.vip_on == {"live"} and not pair.nodes["backup"].holds
    assert pair.releases == [("backup", "settle")]
    pair.release_misreported.add("backup")  # the VIP goes, netlink's answer says it did not
    pair.vip_on.add("backup")
    pair.nodes["backup"].handle(VipObserved(True), pair.now)
    pair.run(0.3)  # the next heartbeat asked; netlink has not answered yet
    assert pair.releases[1:] == [("backup", "settle")]
    pair.run(0.3)  # now it has: "failed"
    pair.release_misreported.clear()
    pair.run(1.0)
    assert pair.releases[1:] == [("backup", "settle")] * 2
    assert pair.vip_on == {"live"} and not pair.nodes["backup"].holds


def test_both_holding_settles_to_newest_epoch() -> None:
    pair = settled(NodePair())
    pair.command("live", "swap")
    pair.run(0.3)
    pair.vip_on.add("live")
    pair.nodes["live"].handle(VipObserved(True), pair.now)
    pair.run(0.2)
    assert pair.vip_on == {"backup"}


def test_agent_restart_on_holder_keeps_vip() -> None:
    pair = settled(NodePair())
    pair.kill("live")
    pair.run(0.1)
    announced = pair.announces["live"]
    pair.restart("live", boot=2)
    pair.run(0.5)
    assert pair.vip_on == {"live"}
    assert pair.announces["live"] > announced  # a restarted holder announces what it holds
    assert pair.nodes["backup"].peer_alive(pair.now)
    cid = pair.command("live", "swap")
    pair.run(0.2)
    out = pair.outcome("live", cid)
    assert out is not None and out.ok


def test_heartbeat_timer_is_exact() -> None:
    pair = NodePair()
    node = pair.nodes["live"]
    assert node.get_timer() == pair.now
    node.handle_timer(pair.now)
    sends = [a for a in node.pop_actions() if isinstance(a, protocol.Send)]
    assert len(sends) == 1
    assert node.get_timer() == pytest.approx(pair.now + 0.05)


def test_bad_datagrams_are_counted_and_change_nothing() -> None:
    pair = settled(NodePair())
    live = pair.nodes["live"]
    before = live.status(pair.now)
    good = wire.encode(
        wire.Envelope("web", "backup", 1, 10**9, wire.Prepare(epoch=99, move="swap", digest="d" * 64)),
        b"x" * 32,
    )
    live.receive_datagram(b"garbage", pair.now)
    live.receive_datagram(good, pair.now)  # wrong key
    other = wire.encode(wire.Envelope("db", "backup", 1, 10**9, wire.Done(epoch=1)), KEY)
    live.receive_datagram(other, pair.now)
    stranger = wire.encode(wire.Envelope("web", "mallory", 1, 10**9, wire.Done(epoch=1)), KEY)
    live.receive_datagram(stranger, pair.now)
    assert live.rejected == {"not-failover": 1, "auth": 1, "cluster": 1, "sender": 1}
    after = live.status(pair.now)
    for key in ("holds_vip", "epoch", "held_epoch", "swap_in_progress"):
        assert after[key] == before[key]
    assert not any(
        isinstance(a, protocol.Send) and a is not None
        for a in live.pop_actions()
        if not isinstance(a, protocol.Notice)
    )


def test_replayed_datagram_is_rejected() -> None:
    pair = settled(NodePair())
    live = pair.nodes["live"]
    data = wire.encode(wire.Envelope("web", "backup", 1, 10**9, wire.SwapRequest(epoch=50, move="swap")), KEY)
    live.receive_datagram(data, pair.now)
    live.pop_actions()
    live.receive_datagram(data, pair.now)
    assert live.rejected["replay"] == 1


def test_target_restarted_after_its_claim_is_not_overruled_by_a_reclaim() -> None:
    pair = settled(NodePair())
    pair.checks.append(lambda p: None if len(p.vip_on) <= 1 else pytest.fail(f"two holders: {p.vip_on}"))

    def kill_target_once_it_holds(p: NodePair) -> None:
        if "backup" in p.vip_on and p.alive["backup"] and p.nodes["backup"].holds:
            p.faults.partitioned = True  # its Claimed is lost with it
            p.kill("backup")

    pair.checks.append(kill_target_once_it_holds)
    cid = pair.command("live", "swap")
    pair.run(0.05)
    pair.checks.pop()
    pair.restart("backup", boot=2)  # comes back knowing nothing of the swap, but holding the VIP
    pair.faults.partitioned = False
    pair.run(2)
    out = pair.outcome("live", cid)
    assert out is not None and not out.ok and not out.rolled_back, out
    assert out.reason == "backup restarted during the swap and holds the VIP; the move was not confirmed"
    assert out.holder == "backup" and pair.vip_on == {"backup"}


def test_keys_rotate_host_by_host_without_losing_the_peer() -> None:
    import dataclasses

    new = b"n" * 32
    pair = settled(NodePair())

    def rekey(name: str, keys: tuple[bytes, ...], boot: int) -> None:
        pair.restart(name, boot=boot)
        node = pair.nodes[name]
        node.setup = dataclasses.replace(node.setup, keys=keys)
        node._signing_key = keys[0]

    def both_hear_each_other() -> bool:
        return all(n.peer_alive(pair.now) for n in pair.nodes.values())

    rekey("live", (new, KEY), boot=2)  # live first: the new key, the old one still accepted
    pair.run(0.5)
    assert both_hear_each_other()
    assert pair.nodes["live"]._signing_key == KEY  # backup accepts only the old key yet
    rekey("backup", (new, KEY), boot=2)
    pair.run(0.5)
    assert both_hear_each_other()
    assert pair.nodes["live"]._signing_key == new and pair.nodes["backup"]._signing_key == new
    rekey("live", (new,), boot=3)
    rekey("backup", (new,), boot=3)
    pair.run(0.5)
    assert both_hear_each_other()
    cid = pair.command("live", "swap")
    pair.run(0.2)
    out = pair.outcome("live", cid)
    assert out is not None and out.ok


# --- unplanned takeover -------------------------------------------------------------------------------


def crash(pair: NodePair, name: str) -> None:
    """The host dies: its agent stops and nobody answers for the VIP there any more."""
    pair.kill(name)
    pair.vip_on.discard(name)


def test_crash_of_holder_leads_to_takeover_after_silent_probe() -> None:
    pair = settled(NodePair())
    crash(pair, "live")
    pair.run(1)
    last_heartbeat = pair.nodes["backup"].peer_seen  # the last one still in flight at the crash
    assert pair.vip_on == {"backup"}
    takeover = pair.nodes["backup"].last_takeover
    assert takeover is not None and takeover["ok"] and takeover["probe"] == "silent"
    assert takeover["fence"] == "none"
    assert takeover["reason"].startswith("live silent for ")
    steps = [s["step"] for s in takeover["steps"]]
    assert steps == ["suspected", "probe-silent", "holder-silent", "claimed"]
    # The 80 ms probe ran in the last stretch of dead_after (250 ms): claimed at dead_after and the claim.
    assert last_heartbeat is not None
    assert takeover["at"] - last_heartbeat == pytest.approx(0.25 + 0.0003, abs=1e-6)
    assert pair.announces["backup"] >= 1
    assert pair.nodes["backup"].held_epoch == 1


def test_heartbeats_cut_but_holder_answers_probe_means_no_takeover() -> None:
    pair = settled(NodePair())
    pair.faults.partitioned = True
    pair.run(5)
    assert pair.vip_on == {"live"}
    takeover = pair.nodes["backup"].last_takeover
    assert takeover is not None and not takeover["ok"]
    assert f"{MACS['live']} still answers for the VIP: not claiming" in takeover["reason"]
    assert takeover["probe"] == f"answered by {MACS['live']}"
    probes = [p for p in pair.probes if p[0] == "backup"]
    assert 4 <= len(probes) <= 6  # re-checked about once a second, not in a tight loop
    pair.faults.partitioned = False
    pair.run(0.5)
    assert pair.nodes["backup"].status(pair.now)["peer"]["alive"]


def test_no_takeover_when_automatic_is_off() -> None:
    pair = settled(NodePair(automatic=False))
    crash(pair, "live")
    pair.run(2)
    assert pair.vip_on == set()
    takeover = pair.nodes["backup"].last_takeover
    assert takeover is not None and "automatic takeover is off" in takeover["reason"]
    assert not [p for p in pair.probes if p[0] == "backup"]


def test_failing_fence_blocks_takeover_and_passing_fence_allows_it() -> None:
    pair = settled(NodePair(fence=True))
    pair.fence_ok = False
    crash(pair, "live")
    pair.run(2)
    assert pair.vip_on == set()
    takeover = pair.nodes["backup"].last_takeover
    assert takeover is not None and not takeover["ok"] and "fence hook failed: exit 1" in takeover["reason"]
    pair.fence_ok = True
    pair.run(1.5)
    assert pair.vip_on == {"backup"}
    takeover = pair.nodes["backup"].last_takeover
    assert takeover is not None and takeover["ok"] and takeover["fence"] == "exit 0"


def test_no_preemption_when_home_comes_back() -> None:
    pair = settled(NodePair())
    crash(pair, "live")
    pair.run(1)
    pair.restart("live", boot=2)
    pair.run(3)
    assert pair.vip_on == {"backup"}
    assert not pair.nodes["live"].holds and pair.nodes["live"].peer_holds()


def test_agents_never_claim_at_start_without_a_known_holder() -> None:
    pair = NodePair()
    pair.vip_on.clear()
    pair.nodes = {"live": pair._make("live", "backup"), "backup": pair._make("backup", "live")}
    pair.run(3)
    assert pair.vip_on == set()
    assert not pair.probes


def test_holder_heard_again_during_probe_aborts_takeover() -> None:
    pair = settled(NodePair())
    pair.probe_time = 0.5
    pair.faults.partitioned = True
    pair.vip_on.discard("live")  # and it stops answering, so the probe would be silent

    def heal_during_probe(p: NodePair) -> None:
        run = p.nodes["backup"].run
        # Past dead_after, the verdict still to come (before dead_after it is a suspicion cleared).
        probing = run is not None and run.state is TakeoverState.PROBING
        if probing and p.faults.partitioned:
            p.faults.partitioned = False
            p.vip_on.add("live")

    pair.checks.append(heal_during_probe)
    pair.run(2)
    assert pair.vip_on == {"live"}
    takeover = pair.nodes["backup"].last_takeover
    assert takeover is not None and "was heard again" in takeover["reason"]


def test_unhealthy_holder_hands_over_to_healthy_peer() -> None:
    pair = settled(NodePair())
    live = pair.nodes["live"]
    for _ in range(2):
        live.handle(SelfCheckDone(False, "HTTP 502"), pair.now)
        pair.run(0.1)
    assert pair.vip_on == {"live"}  # two failures: not yet
    live.handle(SelfCheckDone(False, "HTTP 502"), pair.now)
    pair.run(0.3)
    assert pair.vip_on == {"backup"}
    assert live.last_outcome is not None and live.last_outcome.ok
    assert any(n.event == "self-check-handover" for name, n in pair.notices if name == "live")
    # The peer saw live unhealthy in its heartbeats, so it will not hand back by itself.
    assert pair.nodes["backup"].peer_heartbeat is not None
    assert pair.nodes["backup"].peer_heartbeat.healthy is False


def test_unhealthy_holder_keeps_vip_when_peer_is_unhealthy_too() -> None:
    pair = settled(NodePair())
    for _ in range(3):
        pair.nodes["backup"].handle(SelfCheckDone(False, "HTTP 502"), pair.now)
    pair.run(0.1)
    for _ in range(5):
        pair.nodes["live"].handle(SelfCheckDone(False, "HTTP 502"), pair.now)
        pair.run(0.1)
    assert pair.vip_on == {"live"}


def vip_removed_by_hand(pair: NodePair, name: str) -> None:
    pair.vip_on.discard(name)
    pair.nodes[name].handle(VipObserved(False), pair.now)


def test_vip_removed_behind_our_back_is_reported_by_default() -> None:
    pair = settled(NodePair())
    vip_removed_by_hand(pair, "live")
    pair.run(2)
    assert pair.vip_on == set()
    assert any(n.event == "vip-changed-behind-our-back" for name, n in pair.notices if name == "live")
    assert not pair.nodes["live"].holds and pair.nodes["live"].last_takeover is None


def test_vip_removed_behind_our_back_is_reclaimed_by_policy() -> None:
    pair = settled(NodePair(on_vip_lost="reclaim"))
    vip_removed_by_hand(pair, "live")
    pair.run(0.5)
    assert pair.vip_on == {"live"}
    took = pair.nodes["live"].last_takeover
    assert took is not None and took["ok"] and took["probe"] == "silent"
    assert took["reason"].startswith("the VIP was removed from this host behind the agent's back")
    assert [s["step"] for s in took["steps"]] == ["vip-lost", "probe-silent", "claimed"]


# --- confirmation and rollback ---------------------------------------------------------------------------


def test_swap_is_done_only_once_the_new_holders_log_shows_clients() -> None:
    pair = settled(NodePair(confirm="traffic"))
    cid = pair.command("live", "swap")
    pair.run(0.1)
    out = pair.outcome("live", cid)
    assert out is not None and out.ok and out.confirmed is True
    assert out.evidence == {
        "requests": 3, "clients": ["203.0.113.100"], "to": "203.0.113.10", "destination": None,
        "canary": False, "deadline_ms": 300.0,
        "deadline_why": "live served 200 req/s before the move: 20 arrivals take 100 ms, at least 300 ms",
    }
    # The source's outcome states the proof as the new holder does.
    target = pair.nodes["backup"].last_outcome
    assert target is not None and target.confirmed and target.evidence == out.evidence
    assert out.confirm_ms == pytest.approx(5.0, abs=0.01)  # the fake clients arrive 5 ms after the claim
    assert [s for s, _ in out.steps][-2:] == ["target-claimed", "confirmed"]
    assert pair.vip_on == {"backup"}
    assert pair.watching == {}  # the log is no longer followed


def test_unconfirmed_swap_hands_back_and_rolls_back() -> None:
    pair = settled(NodePair(confirm="traffic"))
    pair.clients_follow = False
    pair.checks.append(lambda p: None if len(p.vip_on) <= 1 else pytest.fail(f"two holders: {p.vip_on}"))
    cid = pair.command("live", "swap")
    pair.run(3)
    out = pair.outcome("live", cid)
    assert out is not None and not out.ok and out.rolled_back and out.confirmed is False
    assert out.reason == (
        "no client request to 203.0.113.10 reached backup in 300 ms (live served 200 req/s before the move: "
        "20 arrivals take 100 ms, at least 300 ms); rolled back to live in 0 ms"
    )
    assert pair.vip_on == {"live"}
    steps = dict(out.steps)
    # The deadline is 300 ms after backup's claim at that rate (not confirm.within_s, 2 s here); the
    # hand-back and the reclaim follow within milliseconds.
    assert steps["reclaimed"] - steps["target-claimed"] == pytest.approx(300, abs=5)
    assert pair.nodes["live"].held_epoch == out.epoch + 1
    # The source's outcome carries the proof the target had when its deadline passed: nothing counted.
    target = pair.nodes["backup"].last_outcome
    assert target is not None and target.rolled_back and target.evidence == out.evidence
    assert out.evidence is not None and out.evidence["requests"] == 0 and out.evidence["clients"] == []
    assert out.evidence["deadline_ms"] == 300.0 and out.evidence["deadline_why"] in out.reason


def hold_off_when_confirming(pair: NodePair, seconds: float) -> None:
    """backup's agent is held off the CPU for `seconds` once, as soon as it waits for proof."""

    def check(p: NodePair) -> None:
        run = p.nodes["backup"].run
        if run is not None and run.state is TargetState.CONFIRMING:
            p.hold_off("backup", seconds)
            p.checks.remove(check)

    pair.checks.append(check)


def test_proof_deadline_gives_back_the_time_the_new_holder_was_held_off_the_cpu() -> None:
    """Clients 450 ms after the claim miss a 300 ms deadline; a new holder held off the CPU for 250 ms of
    it waits that much longer, sees them and confirms."""
    pair = settled(NodePair(confirm="traffic"))
    pair.clients_after = 0.45
    hold_off_when_confirming(pair, 0.25)
    cid = pair.command("live", "swap")
    pair.run(2)
    out = pair.outcome("live", cid)
    assert out is not None and out.ok and out.confirmed is True, out
    extended = [n.detail for name, n in pair.notices if name == "backup" and n.event == "proof-extended"]
    assert len(extended) == 1 and extended[0]["ms"] == pytest.approx(250 - 5, abs=1)  # less the slack
    assert out.evidence is not None and out.evidence["deadline_ms"] == pytest.approx(545, abs=1)
    assert "ms more: this host was held off the CPU" in out.evidence["deadline_why"]


def test_same_late_clients_on_a_host_never_held_off_roll_back() -> None:
    pair = settled(NodePair(confirm="traffic"))
    pair.clients_after = 0.45
    cid = pair.command("live", "swap")
    pair.run(2)
    out = pair.outcome("live", cid)
    assert out is not None and not out.ok and out.rolled_back and pair.vip_on == {"live"}
    assert not [n for name, n in pair.notices if n.event == "proof-extended"]
    assert out.evidence is not None and out.evidence["deadline_ms"] == 300.0


def test_proof_extension_is_at_most_half_a_step() -> None:
    """Held off for 450 ms with no clients: the 300 ms deadline is put off to 800 ms after the claim
    (half of step_timeout's 1 s more), not by all 450 ms, then the hand-back."""
    pair = settled(NodePair(confirm="traffic"))
    pair.clients_follow = False
    hold_off_when_confirming(pair, 0.45)
    cid = pair.command("live", "swap")
    pair.run(5)
    out = pair.outcome("live", cid)
    assert out is not None and not out.ok and out.rolled_back and pair.vip_on == {"live"}
    assert out.evidence is not None and out.evidence["deadline_ms"] == 800.0
    assert out.reason.startswith("no client request to 203.0.113.10 reached backup in 800 ms (")
    assert "; 500 ms more: this host was held off the CPU that long meanwhile" in out.reason


def test_target_side_command_reports_the_rollback_too() -> None:
    pair = settled(NodePair(confirm="traffic"))
    pair.clients_follow = False
    cid = pair.command("backup", "swap")
    pair.run(3)
    out = pair.outcome("backup", cid)
    assert out is not None and not out.ok and out.rolled_back
    assert out.reason.endswith("; rolled back to live")
    assert pair.vip_on == {"live"}


def test_canary_mode_confirms_without_clients() -> None:
    pair = settled(NodePair(confirm="canary"))
    pair.clients_follow = False
    cid = pair.command("live", "swap")
    pair.run(0.2)
    out = pair.outcome("live", cid)
    assert out is not None and out.ok and out.confirmed is True
    assert pair.canaries == 1 and pair.vip_on == {"backup"}
    # Sent for the target's whole proof window unless stopped; stopped when the move is over.
    assert pair.canary_windows == [1.0] and pair.canary_stops == [out.epoch]


def test_real_clients_do_not_confirm_a_canary_move() -> None:
    pair = settled(NodePair(confirm="canary"))
    pair.canary_reaches = False  # the clients' requests arrive, the marked ones do not
    cid = pair.command("live", "swap")
    pair.run(3)
    out = pair.outcome("live", cid)
    assert out is not None and out.rolled_back
    assert out.reason.startswith("no canary request to 203.0.113.10 reached backup in 1000 ms"), out.reason
    assert pair.canary_stops == [out.epoch]  # the rollback ends the canaries too


def test_confirmation_off_reports_unconfirmed() -> None:
    pair = settled(NodePair(confirm="none"))
    cid = pair.command("live", "swap")
    pair.run(0.1)
    out = pair.outcome("live", cid)
    assert out is not None and out.ok and out.confirmed is None and pair.watching == {}


def test_target_crash_while_confirming_rolls_back_after_silent_probe() -> None:
    pair = settled(NodePair(confirm="traffic"))
    pair.clients_follow = False

    def crash_target_once_it_holds(p: NodePair) -> None:
        if "backup" in p.vip_on and p.alive["backup"]:
            crash(p, "backup")

    pair.checks.append(crash_target_once_it_holds)
    cid = pair.command("live", "swap")
    pair.run(5)
    out = pair.outcome("live", cid)
    assert out is not None and out.rolled_back and pair.vip_on == {"live"}
    assert "confirmation-timeout" in dict(out.steps)


# --- stragglers --------------------------------------------------------------------------------------------

STRAGGLER = ("02:00:cb:00:71:65", "203.0.113.101")
ROUTER = ("02:00:cb:00:71:01", "203.0.113.1")


def test_stragglers_are_told_and_named_in_the_outcome() -> None:
    pair = settled(NodePair(confirm="traffic", straggler_window=1.0))
    cid = pair.command("live", "swap")
    pair.run(0.2)  # past the grace after the claim: frames now come from clients that did not move
    assert pair.straggler_watch == {"live": 1}
    live = pair.nodes["live"]
    assert live.run is not None and live.run.claimed_seen is not None
    claimed = live.run.claimed_seen
    # One client keeps sending to live's MAC after the claim; another frame was merely in flight.
    seen = ((STRAGGLER[0], STRAGGLER[1], pair.now), (ROUTER[0], ROUTER[1], claimed))
    live.handle(StragglersSeen(1, seen), pair.now)
    pair.run(0.01)
    assert pair.tells == [("backup", STRAGGLER[1], STRAGGLER[0])]
    told = pair.now
    # The router keeps coming back; the client stops once told.
    pair.run(0.3)
    seen = ((STRAGGLER[0], STRAGGLER[1], told), (ROUTER[0], ROUTER[1], pair.now))
    live.handle(StragglersSeen(1, seen), pair.now)
    pair.run(0.3)
    live.handle(StragglersSeen(1, ((ROUTER[0], ROUTER[1], pair.now),)), pair.now)
    assert pair.outcome("live", cid) is None  # the window is still open: not reported yet
    pair.run(1)
    out = pair.outcome("live", cid)
    assert out is not None and out.ok and out.confirmed
    assert out.stragglers == (
        {"ip": STRAGGLER[1], "mac": STRAGGLER[0], "moved": True},
        {"ip": ROUTER[1], "mac": ROUTER[0], "moved": False},
    )
    assert out.duration_ms == pytest.approx(1000, abs=5)  # waited for the window after its release
    assert pair.straggler_watch == {}
    assert ("backup", ROUTER[1], ROUTER[0]) in pair.tells


def test_a_new_move_cuts_the_straggler_window_short() -> None:
    pair = settled(NodePair(confirm="traffic", straggler_window=1.0))
    swap = pair.command("live", "swap")
    pair.run(0.2)
    assert pair.outcome("live", swap) is None  # live still watches for stragglers
    unswap = pair.command("backup", "unswap")  # asked on the other side: live is the target now
    pair.run(0.1)
    first = pair.outcome("live", swap)
    assert first is not None and first.ok and first.duration_ms == pytest.approx(200, abs=5)
    pair.run(1.2)  # backup, the unswap's source, has a straggler window of its own
    second = pair.outcome("backup", unswap)
    assert second is not None and second.ok, second
    assert pair.vip_on == {"live"}


def test_no_straggler_watch_when_the_window_is_off() -> None:
    pair = settled(NodePair(confirm="traffic"))
    cid = pair.command("live", "swap")
    pair.run(0.1)
    out = pair.outcome("live", cid)
    assert out is not None and out.ok and out.stragglers == () and pair.straggler_watch == {}


# --- dry run ------------------------------------------------------------------------------------------


def core_state(node: protocol.Node) -> tuple[object, ...]:
    """Everything a move changes in a core: the VIP, epochs, the run, the last outcome, the counts."""
    return (node.holds, node.epoch, node.held_epoch, node.run, node.last_outcome, dict(node.moves),
            node.last_takeover)


@pytest.mark.parametrize("via", ["live", "backup"])
@pytest.mark.parametrize("move", ["swap", "unswap"])
def test_dry_run_changes_nothing_and_plans_every_step(via: str, move: str) -> None:
    pair = settled(NodePair(confirm="traffic", straggler_window=1.0))
    if move == "unswap":
        pair.command("live", "swap")
        pair.run(2)
    before = {n: core_state(node) for n, node in pair.nodes.items()}
    vip_before = set(pair.vip_on)
    notices = len(pair.notices)
    cid = pair.command(via, move, dry_run=True)
    pair.run(0.1)
    plan = pair.plan(via, cid)
    assert plan is not None and plan.ok, plan
    source, target = ("live", "backup") if move == "swap" else ("backup", "live")
    assert (plan.move, plan.source, plan.target) == (move, source, target)
    assert [s for s, _ in plan.steps] == [
        "preflight", "prepare", "release", "claim", "announce", "confirm", "stragglers", "done",
    ]
    assert "traffic: 3 client request(s)" in dict(plan.steps)["confirm"]
    assert "1000 ms" in dict(plan.steps)["stragglers"]
    # Each node ran its own host checks for the part it would play; the core's checks come first.
    roles = sorted((n, a.role) for n, a in pair.host_checks)
    assert roles == sorted([(source, "source"), (target, "target")])
    assert [c.check for c in plan.checks][:2] == ["no move in progress", "peer alive"]
    assert {c.node for c in plan.checks} == {"live", "backup"}
    # Nothing changed: no VIP, no epoch, no run, no outcome, no journal notice; no Claim or Release.
    pair.run(1)
    assert pair.vip_on == vip_before
    assert {n: core_state(node) for n, node in pair.nodes.items()} == before
    events = [notice.event for _, notice in pair.notices[notices:]]
    assert "dry-run" in events and not any(e.startswith("move-") for e in events)
    assert not any(n.busy() for n in pair.nodes.values())


def test_dry_run_names_the_failing_check_of_the_target() -> None:
    pair = settled(NodePair())
    pair.host_findings["backup"] = [
        protocol.Check("health_url", protocol.FAIL, "http://203.0.113.12/: Connection refused", "", "backup"),
        protocol.Check("access_log", protocol.OK, "readable", node="backup"),
    ]
    cid = pair.command("live", "swap", dry_run=True)
    pair.run(0.1)
    plan = pair.plan("live", cid)
    assert plan is not None and not plan.ok
    assert plan.reason == "backup: health_url: http://203.0.113.12/: Connection refused"
    assert [(c.node, c.check, c.level) for c in plan.checks][-2:] == [
        ("backup", "health_url", "FAIL"), ("backup", "access_log", "ok")
    ]
    assert pair.vip_on == {"live"} and pair.nodes["live"].epoch == 0


def test_dry_run_reports_every_core_refusal_without_journaling_it() -> None:
    pair = settled(NodePair())
    pair.kill("backup")
    pair.run(0.3)
    cid = pair.command("live", "unswap", dry_run=True)
    pair.run(0.01)
    plan = pair.plan("live", cid)
    assert plan is not None and not plan.ok
    failed = [c.check for c in plan.checks if c.level == "FAIL"]
    assert failed == ["peer alive", "target is home"]
    assert plan.reason.startswith("live: peer alive: peer backup is not answering heartbeats")
    assert pair.nodes["live"].last_outcome is None and pair.nodes["live"].moves == {}
    # The same rules, in the same words, refuse the real move.
    cid = pair.command("live", "unswap")
    out = pair.outcome("live", cid)
    assert out is not None and out.reason.split(" (last heard")[0] == plan.checks[1].detail.split(" (last")[0]


def test_dry_run_survives_loss_and_times_out_on_a_silent_peer() -> None:
    pair = settled(NodePair(faults=LinkFaults(drop=0.5, duplicate=0.3)))
    cid = pair.command("backup", "swap", dry_run=True)
    pair.run(0.5)
    plan = pair.plan("backup", cid)
    assert plan is not None and plan.ok, plan
    # A takeover question the lossy link may have raised (a probe finds live alive) is over first.
    pair.faults = LinkFaults()
    pair.run(1.0)
    assert not pair.nodes["backup"].busy(), pair.nodes["backup"].run
    pair.faults = LinkFaults(partitioned=True)
    cid = pair.command("backup", "swap", dry_run=True)
    pair.run(pair.timing.step_timeout + 1.0 + 0.1)
    plan = pair.plan("backup", cid)
    assert plan is not None and not plan.ok
    assert plan.reason == "live: checks answered: live did not answer within 2000 ms"
    assert pair.vip_on == {"live"} and pair.nodes["backup"].get_timer() > pair.now - 0.001


def test_status_counts_moves_by_outcome_and_stragglers() -> None:
    pair = settled(NodePair())
    pair.command("live", "unswap")  # refused: already home
    pair.command("live", "swap")
    pair.run(0.2)
    assert pair.nodes["live"].status(pair.now)["moves"] == {"swap": {"ok": 1}, "unswap": {"refused": 1}}
    assert pair.nodes["backup"].status(pair.now)["moves"] == {"swap": {"ok": 1}}
    assert pair.nodes["live"].status(pair.now)["stragglers_seen"] == 0


# --- the property test --------------------------------------------------------------------------------

ops = st.one_of(
    st.tuples(st.just("command"), st.sampled_from(["live", "backup"]), st.sampled_from(["swap", "unswap"])),
    st.tuples(st.just("run"), st.floats(0.0, 1.5)),
    st.tuples(st.just("faults"), st.floats(0, 0.6), st.floats(0, 0.5), st.floats(0, 0.02)),
    st.tuples(st.just("partition"), st.booleans()),
    st.tuples(st.just("unhealthy"), st.sampled_from(["live", "backup"]), st.booleans()),
    st.tuples(st.just("claim-fails"), st.sampled_from(["live", "backup"]), st.booleans()),
    st.tuples(st.just("kill"), st.sampled_from(["live", "backup"])),
    st.tuples(st.just("crash"), st.sampled_from(["live", "backup"]), st.floats(0.0, 2.0)),
    st.tuples(st.just("clients"), st.booleans()),
    st.tuples(st.just("dry-run"), st.sampled_from(["live", "backup"]), st.sampled_from(["swap", "unswap"])),
    st.tuples(st.just("probe-unknown"), st.booleans()),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**16),
    confirm=st.sampled_from(["none", "traffic", "canary"]),
    steps=st.lists(ops, max_size=25),
    fast=st.booleans(),
    overshoot=st.sampled_from([0.0, 0.001, 0.006]),
)
def test_random_commands_and_faults_keep_the_safety_rules(
    seed: int, confirm: str, steps: list[tuple[object, ...]], fast: bool, overshoot: float
) -> None:
    pair = NodePair(
        seed=seed,
        confirm=confirm,
        straggler_window=0.5 if seed % 2 else 0.0,
        drain=0.3 if seed % 3 == 0 else 0.0,  # handoffs, drains and their rollback rows too
        # The fast site's timers with a measured window: the takeover's probe runs ahead of dead_after.
        timing=Timing(heartbeat_interval=0.01, dead_after=0.03) if fast else Timing(),
        measure_every=2.0 if fast else 0.0,
    )
    pair.probe_overshoot = overshoot  # the verdict before, at or after dead_after
    boot = 2

    def never_two_holders(p: NodePair) -> None:
        assert len(p.vip_on) <= 1, f"split brain at t={p.now}: {p.vip_on}"

    def done_means_target_holds(p: NodePair) -> None:
        # Checked the moment each outcome appears: a move reported done ended with the target holding.
        # A source reports a done move only when its straggler window closes: a target whose host
        # crashed after the move's last step (and so after its claim) has lost the VIP since.
        for name in ("live", "backup"):
            for f in p.finished[name][checked[name] :]:
                out = f.outcome
                if out.ok:
                    finished_work = p.now - (out.duration_ms - out.steps[-1][1]) / 1000
                    crashed_since = crashed.get(out.target, -1.0) >= finished_work - 1e-9
                    assert p.vip_on == {out.target} or (crashed_since and not p.vip_on), out
            checked[name] = len(p.finished[name])

    checked = {"live": 0, "backup": 0}
    crashed: dict[str, float] = {}  # host -> when it last crashed
    pair.checks += [never_two_holders, done_means_target_holds]
    pair.run(0.3)
    for step in steps:
        kind = step[0]
        if kind == "command" and pair.alive[str(step[1])]:
            pair.command(str(step[1]), str(step[2]))
        elif kind == "dry-run" and pair.alive[str(step[1])]:
            pair.command(str(step[1]), str(step[2]), dry_run=True)
        elif kind == "run":
            pair.run(float(step[1]))  # type: ignore[arg-type]
        elif kind == "faults":
            pair.faults.drop, pair.faults.duplicate = float(step[1]), float(step[2])  # type: ignore[arg-type]
            pair.faults.delay = (0.0, float(step[3]))  # type: ignore[arg-type]
        elif kind == "partition":
            pair.faults.partitioned = bool(step[1])
        elif kind == "unhealthy":
            pair.healthy[str(step[1])] = not step[2]
        elif kind == "claim-fails":
            (pair.claim_fails.add if step[2] else pair.claim_fails.discard)(str(step[1]))
        elif kind == "kill" and pair.alive[str(step[1])]:
            pair.kill(str(step[1]))
            pair.run(0.05)
            pair.restart(str(step[1]), boot=boot)
            boot += 1
        elif kind == "probe-unknown":
            pair.probe_unknown = "frames dropped by the kernel" if step[1] else ""
        elif kind == "clients":
            pair.clients_follow = pair.canary_reaches = bool(step[1])
        elif kind == "crash" and pair.alive[str(step[1])]:
            crashed[str(step[1])] = pair.now
            crash(pair, str(step[1]))
            pair.run(float(step[2]))  # type: ignore[arg-type]
            pair.restart(str(step[1]), boot=boot)  # it reboots without the VIP
            boot += 1
    # Faults stop: exactly one holder (unless crashes left nobody to take over), both agree on who.
    pair.faults = LinkFaults()
    pair.claim_fails.clear()
    pair.probe_unknown = ""
    pair.run(6)
    if not pair.vip_on:
        # Only possible when the holder crashed while the standby had no live holder to watch.
        assert any(step[0] == "crash" for step in steps)
        return
    assert len(pair.vip_on) == 1
    holder = next(iter(pair.vip_on))
    for name, node in pair.nodes.items():
        assert node.holds == (name == holder)
        assert node.peer_holds() == (name != holder)


# --- the proof's deadline follows how busy the site is --------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "canary", "seconds"),
    [(200.0, False, 0.3), (10.0, False, 2.0), (2.5, False, 8.0), (None, False, 10.0), (None, True, 1.0)],
)
def test_proof_deadline_is_about_twenty_arrivals_within_floor_and_confirm_within(
    rate: float | None, canary: bool, seconds: float
) -> None:
    deadline, why = proof_deadline(10.0, 3, "live", rate, canary)
    assert deadline == pytest.approx(seconds)
    assert "live" in why


def test_a_quiet_site_falls_back_to_the_canary_and_says_so() -> None:
    pair = settled(NodePair(confirm="traffic"))
    pair.load_rate = 0.5  # one request every two seconds: 20 of them would take 40 s
    pair.clients_follow = False
    cid = pair.command("live", "swap")
    pair.run(0.5)
    out = pair.outcome("live", cid)
    assert out is not None and out.ok and out.confirmed is True, out
    assert pair.canaries == 1
    assert [d.detail["rate"] for n, d in pair.notices if d.event == "too-quiet-canary"] == [0.5]


def test_an_unknown_rate_waits_confirm_within() -> None:
    pair = settled(NodePair(confirm="traffic"))
    pair.load_rate = None
    pair.clients_follow = False
    cid = pair.command("live", "swap")
    pair.run(3)
    out = pair.outcome("live", cid)
    assert out is not None and out.rolled_back
    assert "in 2000 ms (live's request rate was not known: confirm.within_s)" in out.reason


def test_the_log_is_followed_from_the_claim_on_not_before() -> None:
    pair = settled(NodePair(confirm="traffic"))
    pair.health_delay = 0.05
    pair.clients_follow = False  # nobody confirms: the watch stays open until the deadline
    pair.command("live", "swap")
    pair.run(0.02)
    backup = pair.nodes["backup"]
    assert backup.run is not None and backup.run.state == "checking"
    assert pair.watching == {}  # the health check is logged now: it must not count
    pair.run(0.04)
    assert pair.vip_on == {"backup"} and "backup" in pair.watching


def test_the_source_releases_only_once_it_knows_its_rate_or_a_moment_has_passed() -> None:
    pair = settled(NodePair(confirm="traffic"))
    pair.load_delay = 0.1  # the log is read slower than backup gets ready
    pair.clients_follow = False
    cid = pair.command("live", "swap")
    pair.run(0.05)
    live = pair.nodes["live"]
    assert live.run is not None and live.run.state == "measuring-load" and pair.vip_on == {"live"}
    pair.run(0.6)
    out = pair.outcome("live", cid)
    assert out is not None and out.rolled_back
    assert "live served 200 req/s" in out.reason  # the rate reached backup: its deadline used it
    # A log that never answers: released after the wait anyway, and the deadline is confirm.within_s.
    pair.load_delay = 10.0
    cid = pair.command("live", "swap")
    pair.run(0.2)
    assert live.run is not None and live.run.state == "measuring-load"
    pair.run(0.1)
    assert pair.vip_on == {"backup"}
    assert any(n.event == "load-not-measured" for _, n in pair.notices)
