"""The metrics exported for a status document: names, labels, values; no listener, no root."""

from __future__ import annotations

import math
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from failover.metrics import _StatusCollector
from tests.nodepair import NodePair


def agent_status(pair: NodePair, name: str, **extra: Any) -> dict[str, Any]:
    """The core's status plus what the agent adds (as Agent.status() does)."""
    status = pair.nodes[name].status(pair.now)
    status.update(holds_vip_netlink=name in pair.vip_on, cluster="web", vip="203.0.113.10/24",
                  interface="eth0", announcements_sent=pair.announces[name] * 2, **extra)
    return status


def samples(snapshot: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StatusCollector(snapshot))
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_values_follow_a_swap_on_both_nodes() -> None:
    pair = NodePair()
    pair.run(0.3)
    before = {n: samples(lambda n=n: agent_status(pair, n)) for n in ("live", "backup")}
    assert before["live"][("failover_vip_held", ())] == 1
    assert before["live"][("failover_role", (("role", "holder"),))] == 1
    assert before["backup"][("failover_role", (("role", "standby"),))] == 1
    assert ("failover_last_move_unserved_ms", ()) not in before["live"]
    assert before["live"][("failover_heartbeats_sent_total", ())] == 7  # every 50 ms from t=0 to 0.3 s
    pair.command("live", "swap")
    pair.run(0.3)
    after = {n: samples(lambda n=n: agent_status(pair, n)) for n in ("live", "backup")}
    assert after["live"][("failover_vip_held", ())] == 0 and after["backup"][("failover_vip_held", ())] == 1
    for name in ("live", "backup"):
        assert after[name][("failover_moves_total", (("move", "swap"), ("outcome", "ok")))] == 1
        assert after[name][("failover_heartbeats_received_total", ())] > before[name][
            ("failover_heartbeats_received_total", ())]
        assert after[name][("failover_epoch", ())] == 1
    assert after["live"][("failover_last_move_unserved_ms", ())] == 0.8
    assert after["live"][("failover_messages_sent_total", (("kind", "prepare"),))] == 1
    assert after["backup"][("failover_garp_frames_sent_total", ())] == 4  # rounds at 0 and 0.2 s, 2 frames


def test_rejections_by_reason_and_a_peer_never_heard() -> None:
    pair = NodePair()
    pair.nodes["live"].receive_datagram(b"garbage", pair.now)
    got = samples(lambda: agent_status(pair, "live"))
    assert got[("failover_heartbeats_rejected_total", (("reason", "not-failover"),))] == 1
    assert math.isnan(got[("failover_peer_heartbeat_age_ms", ())])
    assert got[("failover_peer_alive", ())] == 0
    assert ("failover_digests_equal", ()) not in got  # not known before the first heartbeat


def test_an_agent_that_does_not_answer_reports_up_0() -> None:
    def stuck() -> dict[str, Any]:
        raise TimeoutError

    assert samples(stuck) == {("failover_up", ()): 0}
