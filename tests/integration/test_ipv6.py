"""An IPv6 VIP end to end: swap, unswap, rollback and takeover with real agents in the namespace lab.

Everything goes over IPv6 here: the VIP (2001:db8:0:1::10/64), the nodes' addresses (heartbeats, health
checks, the connection handoff), nginx on [::]:80 and the client's load. What is proved is measured:
holders from netlink, the client's neighbour (ND) entry from its own table, who served from the bodies,
the decisions from the agents' logs and status.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from failover.agent import FAULT_ENV
from failover.lab.client import ClientLoad, first_served_by, summarize
from failover.lab.cluster import LabCluster

from .conftest import CLIENT, claimed_after_suspicion, crash, events, lab_namespaces, restart_agent

pytestmark = pytest.mark.root

SETTLE_S = 0.5


@pytest.fixture
def cluster() -> Iterator[LabCluster]:
    """Like conftest's `cluster`, on IPv6; torn down and checked the same way."""
    built = LabCluster(ipv6=True)
    prefix = built.lab.prefix
    try:
        with built:
            yield built
    finally:
        left = lab_namespaces(prefix)
        assert not left, f"namespaces left behind by the lab: {left}"


def vip(cluster: LabCluster) -> str:
    return str(cluster.vip.ip)


def start_load(cluster: LabCluster) -> ClientLoad:
    load = ClientLoad(cluster.lab, CLIENT, vip(cluster), cluster.workdir / "client", duration_s=60)
    load.start()
    return load


def client_mac(cluster: LabCluster) -> str | None:
    return cluster.lab.neighbour_mac(CLIENT, vip(cluster))


def follows(cluster: LabCluster, name: str, timeout: float = 1.0) -> bool:
    """The client's neighbour entry for the VIP carries name's MAC (within timeout)."""
    mac = cluster.lab.host(name).mac
    return cluster.lab.wait_until(lambda: client_mac(cluster) == mac, timeout)


def assert_done(outcome: dict[str, Any], source: str, target: str) -> None:
    assert outcome["exit_code"] == 0 and outcome["ok"] is True, outcome
    assert (outcome["source"], outcome["target"], outcome["holder"]) == (source, target, target)
    assert outcome["confirmed"] is True, outcome


def test_ipv6_cluster_file_is_ipv6_throughout(cluster: LabCluster) -> None:
    doc = cluster.document()
    assert doc["vip"]["address"] == "2001:db8:0:1::10/64"
    assert {n["address"] for n in doc["nodes"].values()} == {"2001:db8:0:1::11", "2001:db8:0:1::12"}
    status = cluster.status("backup")
    assert status["peer"]["alive"] is True  # heartbeats over IPv6
    assert cluster.holders() == ["live"]


def test_swap_then_unswap_under_load(cluster: LabCluster) -> None:
    client6 = str(cluster.lab.host(CLIENT).address6)
    load = start_load(cluster)
    time.sleep(SETTLE_S)
    assert follows(cluster, "live"), client_mac(cluster)

    swap = cluster.move("swap", via="live")
    assert_done(swap, "live", "backup")
    assert cluster.holders() == ["backup"]
    # The unsolicited neighbour advertisement moved the client's ND entry.
    assert follows(cluster, "backup"), client_mac(cluster)
    assert swap["evidence"]["clients"] == [client6]
    time.sleep(SETTLE_S)

    unswap = cluster.move("unswap", via="live")
    assert_done(unswap, "backup", "live")
    assert cluster.holders() == ["live"]
    assert follows(cluster, "live"), client_mac(cluster)
    time.sleep(SETTLE_S)
    load.stop()

    records = load.records()
    total = summarize(records)
    assert total.requests > 100
    assert total.failed == 0, [r for r in records if not r.ok]
    assert set(total.served_by) == {"live", "backup"}, total.served_by
    between = summarize(records, since=swap["ended"] + 0.05, until=unswap["started"])
    assert between.requests > 0 and set(between.served_by) == {"backup"}, between


def test_straggler_over_nd_is_told_and_moves(cluster: LabCluster) -> None:
    """A client that ignores unsolicited NAs keeps sending to live's MAC after the swap: live's watch sees
    it, backup sends it a neighbour solicitation from the VIP, and its entry moves; no request is lost."""
    client = cluster.lab.host(CLIENT)
    cluster.lab.set_sysctl(CLIENT, "net.ipv6.conf.all.drop_unsolicited_na", "1")
    cluster.lab.set_sysctl(CLIENT, f"net.ipv6.conf.{client.interface}.drop_unsolicited_na", "1")
    load = start_load(cluster)
    time.sleep(SETTLE_S)
    assert follows(cluster, "live"), client_mac(cluster)

    swap = cluster.move("swap", via="live")
    assert_done(swap, "live", "backup")
    assert follows(cluster, "backup", timeout=2.0), client_mac(cluster)
    time.sleep(SETTLE_S)
    load.stop()

    told = events(cluster, "backup", "told-straggler")
    assert [(e["ip"], e["mac"]) for e in told] == [(str(client.address6), client.mac)], told
    last = cluster.status("live")["last_move"]
    assert last["stragglers"] == [{"ip": str(client.address6), "mac": client.mac, "moved": True}], last
    total = summarize(load.records())
    assert total.failed == 0 and total.served_by.get("backup", 0) > 0, total


def test_claim_failure_rolls_back_under_load(cluster: LabCluster) -> None:
    restart_agent(cluster, "backup", env={FAULT_ENV: "claim-fails"})
    load = start_load(cluster)
    time.sleep(SETTLE_S)

    outcome = cluster.move("swap", via="live")
    assert outcome["exit_code"] == 1 and outcome["ok"] is False, outcome
    assert outcome["rolled_back"] is True and "rolled back to live" in outcome["reason"], outcome
    assert cluster.holders() == ["live"]
    assert [e["ok"] for e in events(cluster, "backup", "claim")] == [False]
    assert [e["why"] for e in events(cluster, "live", "claim") if e["ok"]] == ["rollback"]
    assert follows(cluster, "live"), client_mac(cluster)
    time.sleep(SETTLE_S)
    load.stop()

    total = summarize(load.records())
    assert total.failed == 0 and set(total.served_by) == {"live"}, total


def test_target_killed_after_the_release_probe_silent_rolls_back(cluster: LabCluster) -> None:
    """backup hangs before its claim and is killed: live's NS probe hears nobody, so live reclaims."""
    restart_agent(cluster, "backup", env={FAULT_ENV: "hang-before-claim"})
    load = start_load(cluster)
    time.sleep(SETTLE_S)
    result: dict[str, Any] = {}
    mover = threading.Thread(target=lambda: result.update(cluster.move("swap", via="live", timeout=30)))
    mover.start()
    try:
        hanging = "test-fault-hanging-before-claim"
        assert cluster.lab.wait_until(lambda: events(cluster, "backup", hanging), 5.0)
        assert cluster.holders() == []
        cluster.stop_agent("backup", signal.SIGKILL)
        assert cluster.lab.wait_until(lambda: cluster.holders() == ["live"], 2.5), cluster.holders()
    finally:
        mover.join(timeout=35)
    assert not mover.is_alive()
    assert result["ok"] is False and result["rolled_back"] is True, result
    assert [s["step"] for s in result["steps"]][-2:] == ["probe-silent", "reclaimed"], result["steps"]
    assert follows(cluster, "live", timeout=2.0), client_mac(cluster)
    time.sleep(SETTLE_S)
    load.stop()
    after = summarize(load.records(), since=result["ended"])
    assert after.requests > 0 and after.failed == 0 and set(after.served_by) == {"live"}, after


def test_live_dies_backup_probes_with_ns_and_takes_over(cluster: LabCluster) -> None:
    load = start_load(cluster)
    try:
        time.sleep(SETTLE_S)
        fault_at = crash(cluster, "live")
        assert cluster.lab.wait_until(lambda: cluster.holders() == ["backup"], 5.0), cluster.holders()
        assert follows(cluster, "backup", timeout=2.0), client_mac(cluster)
        time.sleep(1.0)
    finally:
        load.stop()

    takeover = cluster.status("backup")["last_takeover"]
    assert takeover["ok"] is True and takeover["probe"] == "silent", takeover
    assert claimed_after_suspicion(takeover), takeover["steps"]
    records = load.records()
    first = first_served_by(records, "backup", fault_at)
    assert first is not None, summarize(records)
    after = summarize(records, since=first.end)
    assert after.requests > 50 and after.failed == 0 and set(after.served_by) == {"backup"}, after


def test_heartbeats_cut_holder_answers_the_ns_probe_no_takeover(cluster: LabCluster) -> None:
    """live still holds the VIP but backup no longer hears it: the DAD-style solicitation is answered
    by live's neighbour advertisement, so backup does not claim."""
    rules = (
        "table inet hbcut {\n"
        "  chain in { type filter hook input priority 0; policy accept; udp dport 5405 drop; }\n"
        "  chain out { type filter hook output priority 0; policy accept; udp dport 5405 drop; }\n"
        "}\n"
    )
    cluster.lab.run("live", ["nft", "-f", "-"], input=rules, timeout=10)
    assert cluster.lab.wait_until(lambda: cluster.status("backup")["peer"]["alive"] is False, 3.0)
    assert cluster.lab.wait_until(lambda: events(cluster, "backup", "takeover-refused"), 3.0)
    time.sleep(1.0)
    takeover = cluster.status("backup")["last_takeover"]
    live_mac = cluster.lab.host("live").mac
    assert takeover is not None and takeover["ok"] is False, takeover
    assert takeover["probe"] == f"answered by {live_mac}", takeover
    assert [e for e in events(cluster, "backup", "claim") if e["ok"]] == []
    assert cluster.holders() == ["live"]
