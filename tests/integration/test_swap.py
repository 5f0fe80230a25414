"""Swap and unswap for real: agents, nginx and a client in namespaces, real frames, real netlink.

What is proved here is measured, never believed: who holds the VIP comes from netlink in every namespace,
where the client sends its frames from the client's own neighbour table, who served each request from the
response body and the new holder's access log.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from failover.accesslog import LogFormat
from failover.agent import FAULT_ENV
from failover.lab.client import ClientLoad, summarize
from failover.lab.cluster import LabCluster, cluster_document

from .conftest import CLIENT, CLIENT_IP, VIP_IP, events, fetch, restart_agent, vip_holders

pytestmark = pytest.mark.root

SETTLE_S = 0.5  # client load before, between and after the moves
DRAIN_WAIT_S = 2.5  # the old holder's ARP-silent copy on lo lives drain_ms (1 s in the lab)
# The steps each side reports, in order: the CLI talks to the source's agent or to the target's.
# The lab confirms moves by its access logs: a move is done once the target's log shows the client.
SOURCE_STEPS = ["preflight", "target-ready", "released", "target-claimed", "confirmed"]
TARGET_STEPS = ["preflight", "prepare-received", "healthy", "source-released", "claimed", "confirmed"]


def start_load(cluster: LabCluster) -> ClientLoad:
    load = ClientLoad(cluster.lab, CLIENT, VIP_IP, cluster.workdir / "client", duration_s=60)
    load.start()
    return load


def client_mac(cluster: LabCluster) -> str | None:
    return cluster.lab.neighbour_mac(CLIENT, VIP_IP)


def mac_of(cluster: LabCluster, name: str) -> str:
    return cluster.lab.host(name).mac


def client_follows(cluster: LabCluster, name: str) -> bool:
    """Whether the client's neighbour entry for the VIP carries name's MAC (within a second)."""
    return cluster.lab.wait_until(lambda: client_mac(cluster) == mac_of(cluster, name), 1.0)


def steps(outcome: dict[str, Any]) -> list[str]:
    return [s["step"] for s in outcome["steps"]]


def client_requests_logged(log: Path, offset: int) -> int:
    """Requests from the client's own address in the access log past offset (probes come from elsewhere)."""
    with log.open("rb") as f:
        f.seek(offset)
        lines = f.read().decode(errors="replace").splitlines()
    entries = [LogFormat.COMBINED.parse(line) for line in lines]
    return sum(1 for e in entries if e is not None and e.client == CLIENT_IP and e.status == 200)


def assert_held_by(cluster: LabCluster, holder: str) -> None:
    """holder has the VIP on eth0 and nobody else does; any drain copy elsewhere is gone in time."""
    assert vip_holders(cluster) == [holder]
    assert cluster.lab.wait_until(lambda: cluster.holders() == [holder], DRAIN_WAIT_S), cluster.holders()


def assert_done(outcome: dict[str, Any], source: str, target: str) -> None:
    assert outcome["exit_code"] == 0, outcome
    assert outcome["ok"] is True, outcome
    assert (outcome["source"], outcome["target"], outcome["holder"]) == (source, target, target)
    assert outcome["rolled_back"] is False


def assert_refused(outcome: dict[str, Any], *phrases: str) -> None:
    assert outcome["exit_code"] == 1, outcome
    assert outcome["ok"] is False, outcome
    assert any(p in outcome["reason"] for p in phrases), outcome["reason"]


# --- moves that work ------------------------------------------------------------------------------


def test_swap_then_unswap_under_load(cluster: LabCluster) -> None:
    backup_log = cluster.nginx["backup"].access_log
    load = start_load(cluster)
    time.sleep(SETTLE_S)
    assert client_mac(cluster) == mac_of(cluster, "live")
    log_offset = backup_log.stat().st_size
    assert client_requests_logged(backup_log, 0) == 0  # nothing reached backup before the swap

    swap = cluster.move("swap", via="live")
    assert_done(swap, "live", "backup")
    assert steps(swap) == SOURCE_STEPS
    assert vip_holders(cluster) == ["backup"]
    assert client_follows(cluster, "backup"), client_mac(cluster)
    time.sleep(SETTLE_S)
    assert_held_by(cluster, "backup")
    assert client_requests_logged(backup_log, log_offset) > 0

    unswap = cluster.move("unswap", via="live")
    assert_done(unswap, "backup", "live")
    assert steps(unswap) == TARGET_STEPS
    assert vip_holders(cluster) == ["live"]
    assert client_follows(cluster, "live"), client_mac(cluster)
    time.sleep(SETTLE_S)
    assert_held_by(cluster, "live")
    load.stop()

    records = load.records()
    total = summarize(records)
    assert total.requests > 100
    assert total.stalled_over_1s == 0
    claims = [e["at"] for n in ("live", "backup") for e in events(cluster, n, "claim") if e["ok"]]
    assert len(claims) == 2
    # Connections in flight at the neighbour flip are handed to the draining old holder: none is lost.
    assert total.failed == 0, [r for r in records if not r.ok]
    assert swap["confirmed"] is True and unswap["confirmed"] is True
    assert swap["evidence"]["clients"] == [CLIENT_IP]
    assert total.served_by.get("live", 0) > 0 and total.served_by.get("backup", 0) > 0, total.served_by
    assert set(total.served_by) == {"live", "backup"}
    # Connections opened once a move has returned all land on its target.
    between = summarize(records, since=swap["ended"] + 0.05, until=unswap["started"])
    after = summarize(records, since=unswap["ended"] + 0.05)
    assert between.requests > 0 and set(between.served_by) == {"backup"}, between
    assert after.requests > 0 and set(after.served_by) == {"live"}, after


def test_swap_issued_on_the_target(cluster: LabCluster) -> None:
    load = start_load(cluster)  # the access log confirms the move only when clients arrive
    time.sleep(SETTLE_S)
    outcome = cluster.move("swap", via="backup")
    load.stop()
    assert_done(outcome, "live", "backup")
    assert steps(outcome) == TARGET_STEPS
    assert_held_by(cluster, "backup")
    assert cluster.lab.wait_until(lambda: fetch(cluster) == "backup", 2.0)
    assert client_mac(cluster) == mac_of(cluster, "backup")
    # The source reports once its straggler window has closed, a moment after the target.
    assert cluster.lab.wait_until(lambda: (cluster.status("live")["last_move"] or {}).get("ok") is True, 3.0)
    # The agents that did it (health checks, netlink, the handoff rule, frames) run without the TLS
    # libraries: the lab's health URLs are http:// (failover.lean).
    for name, proc in cluster.agents.items():
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        assert "python" in maps, name  # the agent's interpreter itself, not a wrapper
        assert "libssl" not in maps and "_ssl." not in maps, name


# --- refusals: nothing moves ------------------------------------------------------------------------


def assert_nothing_moved(cluster: LabCluster, holder: str = "live", releases: int = 0) -> None:
    assert_held_by(cluster, holder)
    assert fetch(cluster) == holder
    assert len(events(cluster, holder, "release")) == releases


@pytest.mark.parametrize("via", ["live", "backup"])
def test_swap_refused_when_cluster_files_differ(cluster: LabCluster, via: str) -> None:
    own = cluster.workdir / "backup-cluster.yaml"
    doc = cluster_document(cluster.lab, cluster.workdir, {"announce": {"schedule_ms": [0, 300]}})
    own.write_text(yaml.safe_dump(doc, sort_keys=False))
    restart_agent(cluster, "backup", config=own)
    assert cluster.status("live")["digests_equal"] is False

    outcome = cluster.move("swap", via=via)
    assert_refused(outcome, "cluster files differ")
    assert_nothing_moved(cluster)


def test_swap_refused_when_the_peer_is_down(cluster: LabCluster) -> None:
    assert cluster.stop_agent("backup") == 0
    time.sleep(0.4)  # longer than dead_after (250 ms)
    outcome = cluster.move("swap", via="live")
    assert_refused(outcome, "not answering heartbeats", "has not been heard")
    assert "backup" in outcome["reason"]
    assert_nothing_moved(cluster)


def test_swap_refused_when_the_target_is_unhealthy(cluster: LabCluster) -> None:
    cluster.nginx["backup"].stop()
    outcome = cluster.move("swap", via="live")
    assert_refused(outcome, "not healthy")
    assert "backup" in outcome["reason"]
    assert_nothing_moved(cluster)


@pytest.mark.parametrize("via", ["live", "backup"])
def test_unswap_refused_while_home_is_unhealthy(cluster: LabCluster, via: str) -> None:
    load = start_load(cluster)
    time.sleep(SETTLE_S)
    assert_done(cluster.move("swap", via="live"), "live", "backup")
    load.stop()
    cluster.nginx["live"].stop()
    outcome = cluster.move("unswap", via=via)
    assert_refused(outcome, "not healthy")
    assert "live" in outcome["reason"]
    assert_nothing_moved(cluster, holder="backup")


# --- failures in the middle: the VIP goes back to the old holder ------------------------------------


def test_claim_failure_on_the_target_rolls_back_under_load(cluster: LabCluster) -> None:
    restart_agent(cluster, "backup", env={FAULT_ENV: "claim-fails"})
    load = start_load(cluster)
    time.sleep(SETTLE_S)

    outcome = cluster.move("swap", via="live")
    assert outcome["exit_code"] == 1, outcome
    assert outcome["ok"] is False
    assert outcome["rolled_back"] is True, outcome
    assert "rolled back to live" in outcome["reason"]
    assert steps(outcome) == [*SOURCE_STEPS[:3], "target-claim-failed", "reclaimed"]
    assert_held_by(cluster, "live")
    # The fault really fired: backup tried and failed; live released and took the VIP back.
    assert [e["ok"] for e in events(cluster, "backup", "claim")] == [False]
    assert [e["why"] for e in events(cluster, "live", "claim") if e["ok"]] == ["rollback"]
    assert client_mac(cluster) == mac_of(cluster, "live")
    time.sleep(SETTLE_S)
    load.stop()

    records = load.records()
    total = summarize(records)
    assert total.failed == 0, [r for r in records if not r.ok][:5]
    assert set(total.served_by) == {"live"}, total.served_by
    after = summarize(records, since=outcome["ended"])
    assert after.requests > 0 and after.failed == 0


def test_target_killed_after_the_release_rolls_back(cluster: LabCluster) -> None:
    restart_agent(cluster, "backup", env={FAULT_ENV: "hang-before-claim"})
    load = start_load(cluster)
    time.sleep(SETTLE_S)

    result: dict[str, Any] = {}
    mover = threading.Thread(target=lambda: result.update(cluster.move("swap", via="live", timeout=30)))
    mover.start()
    try:
        hanging = "test-fault-hanging-before-claim"
        assert cluster.lab.wait_until(lambda: events(cluster, "backup", hanging), 5.0)
        assert vip_holders(cluster) == []  # released by live, not claimed by backup
        cluster.stop_agent("backup", signal.SIGKILL)
        assert cluster.lab.wait_until(lambda: vip_holders(cluster) == ["live"], 2.5), vip_holders(cluster)
    finally:
        mover.join(timeout=35)
    assert not mover.is_alive()

    outcome = result
    assert outcome["exit_code"] == 1, outcome
    assert outcome["ok"] is False and outcome["rolled_back"] is True, outcome
    assert "rolled back to live" in outcome["reason"]
    assert steps(outcome) == [*SOURCE_STEPS[:3], "probe-silent", "reclaimed"]
    # From live's release to its own reclaim: one step timeout (1 s) and a probe, on one clock.
    release = [e["at"] for e in events(cluster, "live", "release") if e["ok"]]
    reclaim = [e["at"] for e in events(cluster, "live", "claim") if e["ok"] and e["why"] == "rollback"]
    assert len(release) == 1 and len(reclaim) == 1
    assert 0.9 < reclaim[0] - release[0] < 2.0

    assert client_follows(cluster, "live"), client_mac(cluster)
    time.sleep(SETTLE_S)
    load.stop()
    after = summarize(load.records(), since=outcome["ended"])
    assert after.requests > 0 and after.failed == 0 and set(after.served_by) == {"live"}, after
    assert_held_by(cluster, "live")


def test_holder_agent_restart_under_load_keeps_the_vip(cluster: LabCluster) -> None:
    load = start_load(cluster)
    samples: list[tuple[str, ...]] = []
    stop = threading.Event()

    def sample() -> None:
        for _ in range(1000):
            if stop.is_set():
                return
            samples.append(tuple(cluster.holders()))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        time.sleep(0.3)
        assert cluster.stop_agent("live") == 0
        time.sleep(0.5)  # long enough for backup to call live dead
        assert cluster.status("backup")["peer"]["alive"] is False
        cluster.start_agent("live")
        cluster.wait_ready()
        time.sleep(0.3)
    finally:
        stop.set()
        sampler.join(timeout=10)
    load.stop()

    assert len(samples) > 20
    assert set(samples) == {("live",)}, sorted(set(samples))
    assert cluster.status("live")["holds_vip"] is True
    total = summarize(load.records())
    assert total.failed == 0 and set(total.served_by) == {"live"}, total
