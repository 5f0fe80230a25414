"""The standby answers the holder's heartbeats (Node._answer_heartbeat), on the fake link and clock.

An idle agent's CPU is mostly its wake-ups: with its own timer and the holder's heartbeat each interval,
a standby woke twice an interval; answering, once. What must not change: the holder's heartbeats, by
whose silence the standby judges a takeover, keep their cadence whatever the link loses; the standby's
own are never further apart than ANSWER_NEXT intervals (one of the holder's lost); nobody takes over on
a lossy, jittery link.
"""

from __future__ import annotations

import itertools

from failover import protocol, wire
from failover.protocol import Timing
from failover.protocol.node import ANSWER_NEXT
from tests.nodepair import KEY, LinkFaults, NodePair

INTERVAL = 0.01


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


def test_the_standby_sends_each_heartbeat_as_it_hears_the_holders() -> None:
    pair = NodePair(timing=Timing(heartbeat_interval=INTERVAL, dead_after=0.03))
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
    # Once an interval, each at the instant a heartbeat of the holder's came in: no wake-up of its own.
    assert abs(len(sent["backup"]) - len(sent["live"])) <= 1, (len(sent["backup"]), len(sent["live"]))
    assert len(answered) >= len(sent["backup"]) - 1, (len(answered), len(sent["backup"]))
    # The holder keeps its own cadence.
    assert max(_gaps(sent["live"])) <= INTERVAL + 1e-9
    assert min(_gaps(sent["live"])) >= INTERVAL - 1e-9


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
    pair = NodePair(seed=7, timing=Timing(heartbeat_interval=INTERVAL, dead_after=0.03), faults=faults)
    pair.run(1.0)
    sent = _record_heartbeats(pair)
    pair.run(60.0)
    assert max(_gaps(sent["live"])) <= INTERVAL + 1e-9  # the holder's, whatever was lost
    assert max(_gaps(sent["backup"])) <= ANSWER_NEXT * INTERVAL + 1e-9
    answered_early = sum(1 for g in _gaps(sent["backup"]) if g < INTERVAL - 1e-9)
    assert answered_early > 0  # it does answer on this link too
    assert pair.vip_on == {"live"}, pair.vip_on  # nobody took over
    assert pair.nodes["live"].holds and not pair.nodes["backup"].holds
