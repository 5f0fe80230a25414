"""The takeover probe's window sized by the holder kernel's measured answers, and "agent down, host up".

Pure core, fake clock: `AnswerTimes` on its own, then a NodePair whose fake world answers MeasurePeer
with the peer kernel's round trip and a takeover Probe with whoever answers for the VIP and for the
peer's own address.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from failover import protocol
from failover.protocol.window import ANSWER_MULTIPLE, FLOOR, MIN_SAMPLES, AnswerTimes, ProbeWindow
from tests.nodepair import MACS, NodePair

CONFIGURED = ProbeWindow(3, 0.02, 0.06)  # the defaults: 3 probes 20 ms apart, 60 ms of listening


def times(*rtts: float | None) -> AnswerTimes:
    answers = AnswerTimes(CONFIGURED)
    for rtt in rtts:
        answers.add(rtt)
    return answers


def test_too_few_answers_keep_the_configured_window() -> None:
    assert times().window() == CONFIGURED
    assert times(*[0.0003] * (MIN_SAMPLES - 1)).window() == CONFIGURED


def test_a_fast_kernel_gets_the_floor_not_less() -> None:
    window = times(0.0003, 0.0004, 0.0005).window()
    assert window.wait == pytest.approx(FLOOR)
    # The configured shape, scaled by one factor: the probes keep their count and proportion.
    assert window.count == 3
    assert window.interval == pytest.approx(0.02 * FLOOR / 0.06)
    assert window.span < CONFIGURED.span / 10


def test_the_window_is_a_few_times_median_plus_spread() -> None:
    window = times(0.004, 0.005, 0.006, 0.005).window()
    median, spread = 0.005, 0.002
    assert window.wait == pytest.approx(ANSWER_MULTIPLE * (median + spread))
    assert window.interval == pytest.approx(0.02 * window.wait / 0.06)


def test_a_slow_kernel_never_gets_more_than_configured() -> None:
    assert times(0.03, 0.03, 0.04).window() == CONFIGURED


def test_one_unanswered_measurement_brings_back_the_configured_window_until_it_ages_out() -> None:
    answers = times(0.0003, 0.0003, 0.0003, None)
    assert answers.window() == CONFIGURED
    assert answers.status()["unanswered"] == 1
    for _ in range(7):
        answers.add(0.0003)
    assert answers.window() == CONFIGURED  # the lost one is still among the last 8
    answers.add(0.0003)
    assert answers.window().wait == pytest.approx(FLOOR)


@given(st.lists(st.one_of(st.none(), st.floats(0, 0.2)), max_size=20))
def test_the_window_is_never_longer_than_configured_nor_shorter_than_the_floor(
    rtts: list[float | None],
) -> None:
    window = times(*rtts).window()
    assert window.count == CONFIGURED.count
    assert window.span <= CONFIGURED.span + 1e-12
    assert window.interval <= CONFIGURED.interval + 1e-12
    assert FLOOR - 1e-12 <= window.wait <= CONFIGURED.wait + 1e-12


# --- in the core ---------------------------------------------------------------------------------


def crash(pair: NodePair, name: str) -> None:
    pair.kill(name)
    pair.vip_on.discard(name)


def test_measures_quickly_at_start_then_every_few_seconds() -> None:
    pair = NodePair(measure_every=2.0)
    pair.run(6.35)
    at = [t - 1000.0 for name, t in pair.measures if name == "backup"]
    # 100 ms apart until three answers are in (the third comes after the fourth is due), then one
    # every measure_every.
    assert at == pytest.approx([0.0, 0.1, 0.2, 0.3, 2.3, 4.3, 6.3])
    status = pair.nodes["backup"].status(pair.now)["probe_window"]
    assert status["samples"] == 7 and status["rtt_ms"] == pytest.approx(0.4)
    assert status["window"]["wait_ms"] == pytest.approx(FLOOR * 1000)


def test_no_measuring_no_window_status_and_the_configured_probe() -> None:
    pair = NodePair()
    pair.run(0.3)
    assert not pair.measures
    assert pair.nodes["backup"].status(pair.now)["probe_window"] is None
    crash(pair, "live")
    pair.run(1)
    assert pair.windows == [None]  # the adapter's configured window
    takeover = pair.nodes["backup"].last_takeover
    assert takeover is not None and takeover["ok"] and takeover["holder_host"] == "down"


def test_crash_is_taken_over_after_the_measured_window() -> None:
    pair = NodePair(measure_every=2.0)
    pair.run(0.5)
    crash(pair, "live")
    pair.run(1)
    last_heartbeat = pair.nodes["backup"].peer_seen
    assert pair.vip_on == {"backup"}
    (window,) = pair.windows
    assert window is not None and window.wait == pytest.approx(FLOOR)
    takeover = pair.nodes["backup"].last_takeover
    assert takeover is not None and takeover["ok"] and takeover["holder_host"] == "down"
    assert takeover["probe_window"]["span_ms"] == pytest.approx(window.span * 1000, abs=0.001)
    steps = [s["step"] for s in takeover["steps"]]
    assert steps == ["suspected", "probe-silent", "holder-silent", "claimed"]
    assert last_heartbeat is not None
    # The measured window ran ahead of dead_after: claimed at dead_after and the claim.
    assert takeover["at"] - last_heartbeat == pytest.approx(0.25 + 0.0003, abs=1e-6)


def test_holder_that_stopped_answering_gets_the_configured_window() -> None:
    pair = NodePair(measure_every=2.0)
    pair.run(0.5)
    pair.peer_rtt = None  # its kernel no longer answers who-has for its own address (loss, a filter)
    pair.run(2.1)
    crash(pair, "live")
    pair.run(1)
    assert pair.windows == [CONFIGURED]
    assert pair.vip_on == {"backup"}


def test_agent_down_host_up_never_claims_reports_once_and_retries() -> None:
    pair = NodePair(measure_every=2.0)
    pair.run(0.5)
    crash(pair, "live")  # the VIP is gone from live, and its agent with it ...
    pair.host_up.add("live")  # ... but its kernel still answers for its own address
    pair.run(4)
    assert pair.vip_on == set()
    takeover = pair.nodes["backup"].last_takeover
    assert takeover is not None and not takeover["ok"]
    assert takeover["reason"].startswith("live silent for ")
    assert "agent down, host up" in takeover["reason"] and MACS["live"] in takeover["reason"]
    assert takeover["holder_host"] == "up" and takeover["probe"] == "host up, VIP silent"
    assert [s["step"] for s in takeover["steps"]] == ["holder-silent", "probe-host-up"]
    probes = [p for p in pair.probes if p[0] == "backup"]
    assert 3 <= len(probes) <= 5  # asked again about once a second (takeover_retry)
    reported = [n for who, n in pair.notices if who == "backup" and n.event == "agent-down-host-up"]
    assert len(reported) == 1  # journalled once, not at every retry
    # Then the host goes down too: the next probe is silent for both, and backup takes over.
    pair.host_up.clear()
    pair.run(1.5)
    assert pair.vip_on == {"backup"}
    takeover = pair.nodes["backup"].last_takeover
    assert takeover is not None and takeover["ok"] and takeover["holder_host"] == "down"


def test_vip_answer_still_wins_over_host_up() -> None:
    pair = NodePair(measure_every=2.0)
    pair.run(0.5)
    pair.faults.partitioned = True  # heartbeats lost, live fine: it answers for the VIP and itself
    pair.host_up.add("live")
    pair.run(2)
    assert pair.vip_on == {"live"}
    takeover = pair.nodes["backup"].last_takeover
    assert takeover is not None and not takeover["ok"]
    assert takeover["probe"] == f"answered by {MACS['live']}"
    assert not [n for _, n in pair.notices if n.event == "agent-down-host-up"]


def test_unknown_probe_is_not_host_down() -> None:
    pair = NodePair(measure_every=2.0)
    pair.run(0.5)
    crash(pair, "live")
    pair.probe_unknown = "3 frames dropped by the kernel"
    pair.run(2)
    assert pair.vip_on == set()
    takeover = pair.nodes["backup"].last_takeover
    assert takeover is not None and "could not tell" in takeover["reason"]


def test_reclaim_asks_only_for_the_vip_with_the_configured_window() -> None:
    pair = NodePair(measure_every=2.0, on_vip_lost="reclaim")
    pair.run(0.5)
    pair.vip_on.discard("live")
    pair.nodes["live"].handle(protocol.VipObserved(held=False), pair.now)
    pair.run(0.5)
    assert pair.vip_on == {"live"}
    assert pair.windows == [None]


def test_agent_heard_again_makes_a_later_host_up_news_again() -> None:
    pair = NodePair(measure_every=2.0)
    pair.run(0.5)
    pair.kill("live")
    pair.vip_on.discard("live")
    pair.host_up.add("live")
    pair.run(1.5)
    pair.vip_on.add("live")
    pair.restart("live", boot=2)  # its agent back, the VIP with it
    pair.run(1)
    pair.kill("live")
    pair.vip_on.discard("live")
    pair.run(1.5)
    reported = [n for who, n in pair.notices if who == "backup" and n.event == "agent-down-host-up"]
    assert len(reported) == 2
