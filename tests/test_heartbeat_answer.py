"""The standby answers the holder's heartbeats (Node._answer_heartbeat), and an idle one sends one in
`Timing.standby_beats` of them, on the fake link and clock.

An idle agent's CPU is its heartbeats: with its own timer and the holder's heartbeat each interval, a
standby woke twice an interval; answering, once; and each heartbeat it sends costs the holder a wake-up
and a decode too. Idle, nothing waits for the standby's heartbeats but the holder's judgement of its
liveness, which follows the gap each one announces (every_ms). What must not change: the holder's
heartbeats, by whose silence the standby judges a takeover, keep their cadence whatever the link loses;
the standby's are never further apart than `Timing.longest_standby_gap` (one of the holder's lost), and
every interval during a move; a holder that does not announce its gaps (an older agent) hears the standby
every interval; nobody takes over on a lossy, jittery link.
"""

from __future__ import annotations

import dataclasses
import itertools

from failover import protocol, wire
from failover.protocol import Timing
from failover.protocol.node import ANSWER_NEXT
from tests.nodepair import KEY, LinkFaults, NodePair

INTERVAL = 0.01
TIMING = Timing(heartbeat_interval=INTERVAL, dead_after=0.03)
BEATS = TIMING.standby_beats  # 5 at 10 ms


def _record_heartbeats(pair: NodePair) -> dict[str, list[float]]:
    """When each node sent each heartbeat, on the pair's clock."""
    sent: dict[str, list[float]] = {"live": [], "backup": []}
    do = pair._do

    def recording(name: str, node: protocol.Node, action: protocol.Action) -> None:
        if isinstance(action, protocol.Send) and isinstance(wire.decode(action.data, (KEY,)).message,
                                                            wire.Heartbeat):
            sent[name].append(pair.now)
        do(name, node, action)

    pair._do = recording  # type: ignore[method-assign]
    return sent


def _gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def _older_holder(pair: NodePair) -> None:
    """live's heartbeats as an agent before every_ms sends them: without it."""
    node = pair.nodes["live"]
    send = node.send

    def send_without_every(msg: wire.Message) -> None:
        send(dataclasses.replace(msg, every_ms=0.0) if isinstance(msg, wire.Heartbeat) else msg)

    node.send = send_without_every  # type: ignore[method-assign]


def test_an_idle_standby_sends_one_heartbeat_in_five_each_as_it_hears_the_holders() -> None:
    assert BEATS == 5
    pair = NodePair(timing=TIMING)
    delivered: list[float] = []
    receive = pair.nodes["backup"].receive_datagram

    def heard(data: bytes, now: float) -> None:
        delivered.append(now)
        receive(data, now)

    pair.nodes["backup"].receive_datagram = heard  # type: ignore[method-assign]
    pair.run(1.0)
    sent = _record_heartbeats(pair)
    delivered.clear()
    pair.run(10.0)
    heard_at = set(delivered)
    answered = [t for t in sent["backup"] if t in heard_at]
    # One in five of the holder's, each at the instant one of the holder's came in: no wake-up of its own.
    assert abs(len(sent["backup"]) - len(sent["live"]) / BEATS) <= 1, (len(sent["backup"]), len(sent["live"]))
    assert len(answered) >= len(sent["backup"]) - 1, (len(answered), len(sent["backup"]))
    # The holder keeps its own cadence, and judged the standby alive all along.
    assert max(_gaps(sent["live"])) <= INTERVAL + 1e-9
    assert min(_gaps(sent["live"])) >= INTERVAL - 1e-9
    assert pair.nodes["live"].peer_alive(pair.now)
    assert pair.nodes["live"].received["heartbeat"] < len(sent["live"]) / 2


def test_a_holder_that_does_not_announce_its_gaps_hears_the_standby_every_interval() -> None:
    pair = NodePair(timing=TIMING)
    _older_holder(pair)
    pair.run(1.0)
    sent = _record_heartbeats(pair)
    pair.run(2.0)
    # It judges by dead_after alone: the standby answers each of its heartbeats, as before every_ms.
    assert abs(len(sent["backup"]) - len(sent["live"])) <= 1, (len(sent["backup"]), len(sent["live"]))
    assert max(_gaps(sent["backup"])) <= ANSWER_NEXT * INTERVAL + 1e-9


def test_the_holder_judges_a_silent_standby_dead_after_dead_after_of_its_announced_gaps() -> None:
    pair = NodePair(timing=TIMING)
    pair.run(1.0)
    live = pair.nodes["live"]
    window = live.peer_dead_after()
    assert window == TIMING.dead_after * TIMING.longest_standby_gap / INTERVAL  # 3 gaps of 52.5 ms
    pair.kill("backup")
    last = live.peer_seen
    assert last is not None
    pair.run(window - (pair.now - last) - 0.001)
    assert live.peer_alive(pair.now)
    pair.run(0.002)
    assert not live.peer_alive(pair.now)


def test_a_peer_is_never_given_more_than_an_idle_standbys_gap_nor_a_holder_more_than_dead_after() -> None:
    pair = NodePair(timing=TIMING)
    pair.run(1.0)
    live, backup = pair.nodes["live"], pair.nodes["backup"]
    hb = live.peer_heartbeat
    assert hb is not None and not hb.holds_vip
    live.peer_heartbeat = dataclasses.replace(hb, every_ms=3_600_000.0)  # "my next in an hour"
    assert live.peer_dead_after() == TIMING.dead_after * TIMING.longest_standby_gap / INTERVAL
    held = backup.peer_heartbeat
    assert held is not None and held.holds_vip
    backup.peer_heartbeat = dataclasses.replace(held, every_ms=3_600_000.0)
    assert backup.peer_dead_after() == TIMING.dead_after  # by the holder's silence a takeover is judged
    # A long dead_after at short intervals: three of the standby's gaps more, not 5.25 times as long.
    patient = NodePair(timing=Timing(heartbeat_interval=INTERVAL, dead_after=5.0))
    patient.run(1.0)
    assert patient.nodes["live"].peer_dead_after() == 5.0 + 3 * patient.timing.longest_standby_gap


def test_during_a_move_the_standby_heartbeats_every_interval_and_after_it_the_new_standby_slows() -> None:
    pair = NodePair(timing=TIMING, health_delay=0.1)  # the target is busy for its health check's 100 ms
    pair.run(1.0)
    sent = _record_heartbeats(pair)
    while not sent["backup"]:
        pair.run(0.001)
    start = pair.now  # just after the standby's heartbeat: its next is a long gap away
    assert pair.nodes["backup"]._next_heartbeat - start > 4 * INTERVAL
    cid = pair.command("live", "swap")
    pair.run(0.09)
    assert pair.nodes["backup"].busy()  # still getting ready
    during = [start, *(t for t in sent["backup"] if t >= start)]
    assert len(during) >= 8 and max(_gaps(during)) <= INTERVAL * ANSWER_NEXT + 1e-9  # not the long gap
    pair.run(3.0)
    outcome = pair.outcome("live", cid)
    assert outcome is not None and outcome.ok, outcome
    assert pair.vip_on == {"backup"}
    mark = pair.now
    pair.run(2.0)
    late = [t for t in sent["live"] if t >= mark]  # live is the idle standby now
    assert abs(len(late) - 2.0 / INTERVAL / BEATS) <= 2, len(late)
    assert max(_gaps([t for t in sent["backup"] if t >= mark])) <= INTERVAL + 1e-9


def test_without_a_holder_both_keep_their_own_timers() -> None:
    pair = NodePair(timing=Timing(heartbeat_interval=INTERVAL, dead_after=0.03))
    pair.vip_on.clear()  # nobody holds the VIP: neither answers, both send on their own timers
    pair.nodes["live"].holds = False
    pair.run(0.5)
    sent = _record_heartbeats(pair)
    pair.run(0.5)
    assert not (pair.nodes["live"].holds or pair.nodes["backup"].holds)
    for name in ("live", "backup"):
        assert all(abs(g - INTERVAL) < 1e-9 for g in _gaps(sent[name])), name


def test_a_lossy_jittery_link_keeps_the_holders_cadence_and_bounds_the_standbys_gaps() -> None:
    faults = LinkFaults(drop=0.3, delay=(0.03, 0.07))  # 30 % loss, 50 +- 20 ms
    pair = NodePair(seed=7, timing=TIMING, faults=faults)
    pair.run(1.0)
    sent = _record_heartbeats(pair)
    pair.run(60.0)
    assert max(_gaps(sent["live"])) <= INTERVAL + 1e-9  # the holder's, whatever was lost
    assert max(_gaps(sent["backup"])) <= TIMING.longest_standby_gap + 1e-9
    answered_early = sum(1 for g in _gaps(sent["backup"]) if g < INTERVAL - 1e-9)
    assert answered_early > 0  # it does answer on this link too
    assert pair.vip_on == {"live"}, pair.vip_on  # nobody took over
    assert pair.nodes["live"].holds and not pair.nodes["backup"].holds


def test_after_a_drained_move_the_new_standby_slows_once_the_drain_is_over() -> None:
    # The drain's records stay listed once ended: only one under way keeps the standby at every interval.
    pair = NodePair(timing=TIMING, drain=0.2, drain_max=1.0)
    pair.run(1.0)
    sent = _record_heartbeats(pair)
    cid = pair.command("live", "swap")
    pair.run(3.0)
    outcome = pair.outcome("live", cid)
    assert outcome is not None and outcome.ok, outcome
    assert pair.nodes["live"].drainer.records()  # ended, and still there
    mark = pair.now
    pair.run(2.0)
    late = [t for t in sent["live"] if t >= mark]
    assert abs(len(late) - 2.0 / INTERVAL / BEATS) <= 2, len(late)


def test_a_lost_first_long_gap_heartbeat_does_not_make_the_holder_judge_the_standby_dead() -> None:
    pair = NodePair(timing=TIMING)
    transmit = pair._transmit
    dropped: list[float] = []

    def losing_the_first_long_gap(to: str, data: bytes) -> None:
        msg = wire.decode(data, (KEY,)).message
        if to == "live" and not dropped and isinstance(msg, wire.Heartbeat) and msg.every_ms > 20:
            dropped.append(pair.now)  # the one that says "my next in 52.5 ms"
            return
        transmit(to, data)

    pair._transmit = losing_the_first_long_gap  # type: ignore[method-assign]
    live = pair.nodes["live"]
    judged_dead = []
    for _ in range(500):
        pair.run(0.001)
        if live.peer_seen is not None and not live.peer_alive(pair.now):
            judged_dead.append(pair.now)
    assert dropped, "no long-gap heartbeat was sent"
    assert judged_dead == []
