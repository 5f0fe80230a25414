"""A silent holder's probe runs ahead of dead_after, so that its verdict is in when the silence has lasted
dead_after; the claim comes no sooner, and only if the holder stayed silent from its last datagram on.

Pure core, fake clock, at the fast site's timers (heartbeats every 10 ms, dead after 30 ms) with the
probe window measured from the peer kernel's answers (3 probes 1.7 ms apart and 5 ms of listening).
"""

from __future__ import annotations

import pytest

from failover import protocol
from failover.protocol import Timing
from failover.protocol.states import TakeoverState
from failover.protocol.takeover import VERDICT_SLACK
from tests.nodepair import NodePair

FAST = Timing(heartbeat_interval=0.01, dead_after=0.03)
# dead_after 35 ms: the lead is the whole window and slack, and a heartbeat can clear a suspicion before
# dead_after (at 30 ms the next heartbeat after a suspicion at 20 ms lands on dead_after itself).
ROOMY = Timing(heartbeat_interval=0.01, dead_after=0.035)
CLAIM = 0.0003  # NodePair's netlink add


def fast_pair(timing: Timing = ROOMY) -> NodePair:
    pair = NodePair(timing=timing, measure_every=2.0)
    pair.run(0.5)  # three measurements in: the measured window
    return pair


def crash(pair: NodePair, name: str) -> None:
    pair.kill(name)
    pair.vip_on.discard(name)


def notices(pair: NodePair, event: str) -> list[protocol.Notice]:
    return [n for who, n in pair.notices if who == "backup" and n.event == event]


def backup_state(pair: NodePair) -> object:
    run = pair.nodes["backup"].run
    return None if run is None else run.state


def test_the_probe_starts_its_window_and_slack_before_dead_after_and_the_claim_comes_at_dead_after() -> None:
    pair = fast_pair()
    backup = pair.nodes["backup"]
    window = backup.takeover.window()
    assert window.span == pytest.approx(0.005 + 2 * 0.005 / 3)  # 8.3 ms
    assert backup.takeover.lead() == pytest.approx(window.span + VERDICT_SLACK)
    crash(pair, "live")
    pair.run(0.2)
    heard = backup.peer_seen
    assert heard is not None and pair.vip_on == {"backup"}
    ((_, start, end),) = [p for p in pair.probes if p[0] == "backup"]
    assert start - heard == pytest.approx(ROOMY.dead_after - window.span - VERDICT_SLACK)
    # The whole window lies inside the silence, and ends before dead_after.
    assert end - heard == pytest.approx(ROOMY.dead_after - VERDICT_SLACK)
    took = backup.last_takeover
    assert took is not None and took["ok"] and took["holder_host"] == "down"
    assert [s["step"] for s in took["steps"]] == ["suspected", "probe-silent", "holder-silent", "claimed"]
    assert took["reason"].startswith("live silent for 35 ms")
    assert took["at"] - heard == pytest.approx(ROOMY.dead_after + CLAIM)


def test_at_the_fast_sites_timers_the_probe_starts_after_one_missed_heartbeat() -> None:
    # 10 ms heartbeats, dead_after 30 ms: the lead (8.3 ms window + 2 ms) is cut to 10 ms, so the probe
    # starts at 20 ms of silence, when the first heartbeat has been missing for a whole interval.
    pair = fast_pair(FAST)
    backup = pair.nodes["backup"]
    window = backup.takeover.window()
    assert backup.takeover.lead() == pytest.approx(FAST.dead_after - 2 * FAST.heartbeat_interval)
    crash(pair, "live")
    pair.run(0.2)
    heard = backup.peer_seen
    ((_, start, end),) = [p for p in pair.probes if p[0] == "backup"]
    assert heard is not None and start - heard == pytest.approx(0.02)
    assert end - heard == pytest.approx(0.02 + window.span)
    took = backup.last_takeover
    assert took is not None and took["ok"]
    assert took["at"] - heard == pytest.approx(FAST.dead_after + CLAIM)


def test_a_verdict_later_than_dead_after_is_claimed_on_as_soon_as_it_is_in() -> None:
    pair = fast_pair()
    pair.probe_overshoot = 0.006  # the agent's loop woke late, more than the slack
    window = pair.nodes["backup"].takeover.window()
    crash(pair, "live")
    pair.run(0.2)
    heard = pair.nodes["backup"].peer_seen
    took = pair.nodes["backup"].last_takeover
    assert heard is not None and took is not None and took["ok"]
    assert [s["step"] for s in took["steps"]] == ["suspected", "holder-silent", "probe-silent", "claimed"]
    lead = window.span + VERDICT_SLACK
    assert took["at"] - heard == pytest.approx(ROOMY.dead_after - lead + window.span + 0.006 + CLAIM)


def test_a_heartbeat_before_dead_after_clears_the_suspicion_and_holds_nothing_off() -> None:
    pair = fast_pair()
    pair.faults.partitioned = True

    def heal_once_suspected(p: NodePair) -> None:
        if p.faults.partitioned and backup_state(p) is TakeoverState.SUSPECTING:
            p.faults.partitioned = False

    pair.checks.append(heal_once_suspected)
    pair.run(0.1)
    assert backup_state(pair) is TakeoverState.CLEARED
    assert pair.nodes["backup"].last_takeover is None  # no takeover was due: nothing refused
    (cleared,) = notices(pair, "suspicion-cleared")
    assert ROOMY.dead_after - 0.0104 < cleared.detail["silent_ms"] / 1000 < ROOMY.dead_after
    assert not notices(pair, "takeover-refused")
    # Nothing held off: a crash right after it is taken over at dead_after, not a takeover_retry later.
    crash(pair, "live")
    pair.run(0.2)
    heard = pair.nodes["backup"].peer_seen
    took = pair.nodes["backup"].last_takeover
    assert heard is not None and took is not None and took["ok"]
    assert took["at"] - heard == pytest.approx(ROOMY.dead_after + CLAIM)


def test_a_late_datagram_during_the_suspicion_clears_it_and_the_silence_counts_from_it() -> None:
    pair = fast_pair()
    held: list[bytes] = []
    deliver = pair._transmit

    def hold_one_heartbeat(to: str, data: bytes) -> None:
        if to == "backup" and not held:
            held.append(data)  # overtaken by the next one: when it comes, it comes late
            return
        deliver(to, data)

    pair._transmit = hold_one_heartbeat  # type: ignore[method-assign]
    pair.run(0.025)  # the next heartbeats overtake it (the gap it leaves is a suspicion of its own)
    pair._transmit = deliver  # type: ignore[method-assign]
    before = len(notices(pair, "suspicion-cleared"))
    crash(pair, "live")
    late_at: list[float] = []

    def deliver_late_once_suspected(p: NodePair) -> None:
        if not late_at and backup_state(p) is TakeoverState.SUSPECTING:
            late_at.append(p.now)
            p.nodes["backup"].receive_datagram(held[0], p.now)

    pair.checks.append(deliver_late_once_suspected)
    pair.run(0.3)
    backup = pair.nodes["backup"]
    assert backup.received["late"] == 1 and late_at
    assert len(notices(pair, "suspicion-cleared")) == before + 1  # its probe's silence no longer counts
    took = backup.last_takeover
    assert took is not None and took["ok"] and pair.vip_on == {"backup"}
    assert took["at"] - late_at[0] == pytest.approx(ROOMY.dead_after + CLAIM)  # silent from the late one on


@pytest.mark.parametrize("stop_comes_late", [False, True], ids=["stopped", "answers-anyway"])
def test_a_verdict_left_by_a_cleared_suspicion_is_not_taken_for_the_next_ones(stop_comes_late: bool) -> None:
    pair = fast_pair()
    pair.probe_overshoot = 0.04  # the first suspicion's verdict would come in during the next suspicion
    pair.stop_comes_late = stop_comes_late
    pair.faults.partitioned = True

    def heal_once_suspected(p: NodePair) -> None:
        if p.faults.partitioned and backup_state(p) is TakeoverState.SUSPECTING:
            p.faults.partitioned = False

    def crash_once_cleared(p: NodePair) -> None:
        if p.alive["live"] and backup_state(p) is TakeoverState.CLEARED:
            crash(p, "live")  # silence from here on, and nobody answers: the first verdict says "silent"

    pair.checks += [heal_once_suspected, crash_once_cleared]
    pair.run(0.3)
    backup = pair.nodes["backup"]
    assert len(notices(pair, "suspicion-cleared")) == 1
    # Stopped when its suspicion was cleared; an adapter that answers all the same is not listened to.
    assert backup.ignored["other-probe"] == (1 if stop_comes_late else 0)
    took = backup.last_takeover
    assert took is not None and took["ok"]
    first, second = [p for p in pair.probes if p[0] == "backup"]
    assert first[2] < second[2] and first[2] > second[1]  # the first's verdict came during the second
    assert took["at"] == pytest.approx(second[2] + CLAIM)  # on its own probe's verdict, not the first's


def test_an_answer_before_dead_after_refuses_as_ever() -> None:
    pair = fast_pair()
    pair.faults.partitioned = True  # heartbeats cut, live up and answering for the VIP
    pair.run(0.1)
    took = pair.nodes["backup"].last_takeover
    assert took is not None and not took["ok"] and "still answers for the VIP" in took["reason"]
    assert [s["step"] for s in took["steps"]] == ["suspected", "probe-answered"]
    assert pair.vip_on == {"live"}


def test_the_lead_never_leaves_less_than_one_heartbeat_missed_for_an_interval() -> None:
    # The configured 100 ms window at 50 ms heartbeats and dead_after 150 ms: the probe starts at 100 ms
    # of silence, and what the lead cannot cover runs after dead_after.
    pair = NodePair(timing=Timing(heartbeat_interval=0.05, dead_after=0.15))
    pair.run(0.3)
    assert pair.nodes["backup"].takeover.lead() == pytest.approx(0.05)
    crash(pair, "live")
    pair.run(0.5)
    heard = pair.nodes["backup"].peer_seen
    ((_, start, _),) = [p for p in pair.probes if p[0] == "backup"]
    assert heard is not None and start - heard == pytest.approx(0.1)
    took = pair.nodes["backup"].last_takeover
    assert took is not None and took["ok"]
    assert [s["step"] for s in took["steps"]] == ["suspected", "holder-silent", "probe-silent", "claimed"]
    assert took["at"] - heard == pytest.approx(0.1 + 0.08 + CLAIM)  # NodePair's configured probe: 80 ms


def test_at_dead_after_of_two_intervals_there_is_no_lead_and_the_probe_follows_dead_after() -> None:
    pair = NodePair(timing=Timing(heartbeat_interval=0.05, dead_after=0.1))
    pair.run(0.3)
    assert pair.nodes["backup"].takeover.lead() == 0.0
    crash(pair, "live")
    pair.run(0.5)
    heard = pair.nodes["backup"].peer_seen
    took = pair.nodes["backup"].last_takeover
    assert heard is not None and took is not None and took["ok"]
    assert [s["step"] for s in took["steps"]] == ["holder-silent", "probe-silent", "claimed"]
    assert took["at"] - heard == pytest.approx(0.1 + 0.08 + CLAIM)


def test_automatic_off_still_only_reports_past_dead_after() -> None:
    pair = NodePair(timing=ROOMY, measure_every=2.0, automatic=False)
    pair.run(0.5)
    crash(pair, "live")
    pair.run(0.2)
    assert not [p for p in pair.probes if p[0] == "backup"]
    (said,) = notices(pair, "holder-silent")
    assert said.detail["peer_silent_ms"] > ROOMY.dead_after * 1000


def test_the_takeovers_epoch_is_kept_from_its_start_so_its_write_is_done_before_the_claim() -> None:
    pair = fast_pair()
    backup = pair.nodes["backup"]
    kept: list[tuple[object, int, int]] = []

    def note(p: NodePair) -> None:
        run = backup.run
        kept.append((None if run is None else run.state, backup.epoch, backup.epoch_to_keep()))

    pair.checks.append(note)
    crash(pair, "live")
    pair.run(0.2)
    suspecting = [(epoch, keep) for state, epoch, keep in kept if state is TakeoverState.SUSPECTING]
    assert suspecting and all(keep == epoch + 1 for epoch, keep in suspecting)  # before node.epoch takes it
    assert backup.epoch == backup.epoch_to_keep() == backup.held_epoch == 1


def test_a_swap_the_holder_starts_during_a_suspicion_clears_it_and_goes_ahead() -> None:
    pair = fast_pair()
    pair.faults.partitioned = True
    asked: list[int] = []

    def heal_and_swap_once_suspected(p: NodePair) -> None:
        if p.faults.partitioned and backup_state(p) is TakeoverState.SUSPECTING:
            p.faults.partitioned = False
            # Live's Prepare is the first datagram backup hears from it again, before any heartbeat.
            p.at(p.now, lambda: asked.append(p.command("live", "swap")))

    pair.checks.append(heal_and_swap_once_suspected)
    pair.run(1.0)
    assert len(notices(pair, "suspicion-cleared")) == 1
    assert pair.nodes["backup"].received["prepare"] >= 1
    out = pair.outcome("live", asked[0])
    assert out is not None and out.ok, out  # not refused as "a swap is already in progress"
    assert pair.vip_on == {"backup"}
