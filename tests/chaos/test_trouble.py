"""Access-log trouble during confirmation, and resource trouble on the holder.

Access log: the swap starts with no client load, so backup holds the VIP and waits for proof; then its
access log is rotated (rename + create + nginx SIGUSR1), truncated, deleted (no reopen) or filled with
garbage; only then do clients come. The swap must be confirmed, or (deletion) rolled back cleanly, and
either way exactly one holder serves the client and the CLI says which.

Resources: the holder's eth0 goes down and up; the VIP is removed by hand behind the agent's back.
Nothing may crash, the agent must notice (`vip-changed-behind-our-back`, status holds_vip false), and
the test records what the current policy does.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from typing import Any

import pytest

from failover.lab.client import summarize
from failover.lab.cluster import LabCluster
from failover.lab.netns import VIP
from tests.integration.conftest import client_load, events, lab_cluster

from .conftest import HolderSampler, figure, vip_holders, wait_converged

pytestmark = [pytest.mark.root, pytest.mark.chaos]


def garbage_lines(count: int) -> bytes:
    rng = random.Random(3)
    lines = []
    for i in range(count):
        kind = i % 4
        if kind == 0:
            lines.append(rng.randbytes(rng.randrange(1, 300)).replace(b"\n", b" "))
        elif kind == 1:
            lines.append(b'203.0.113.100 - - [not a date] "GET / HTTP/1.1" 200 6 "-" "-"')
        elif kind == 2:
            lines.append(b"x" * 70_000)  # one line longer than any read buffer
        else:
            lines.append(b'203.0.113.100 - - [01/Jan/1970:00:00:00 +0000] "GET')
    return b"\n".join(lines) + b"\n"


def trouble(cluster: LabCluster, what: str) -> None:
    log = cluster.nginx["backup"].access_log
    if what == "rotate":
        os.rename(log, log.with_name(log.name + ".1"))
        log.touch()
        os.kill(int(cluster.nginx["backup"].pid_file.read_text()), signal.SIGUSR1)  # nginx reopens its logs
        assert cluster.lab.wait_until(lambda: log.stat().st_size > 0 or True, 0.2)
    elif what == "truncate":
        os.truncate(log, 0)
    elif what == "delete":
        log.unlink()
    elif what == "garbage":
        with log.open("ab") as f:
            f.write(garbage_lines(2000))


@pytest.mark.parametrize("what", ["rotate", "truncate", "delete", "garbage"])
def test_access_log_trouble_during_confirmation(
    cluster: LabCluster, request: pytest.FixtureRequest, what: str
) -> None:
    result: dict[str, Any] = {}
    mover = threading.Thread(target=lambda: result.update(cluster.move("swap", via="live", timeout=30)))
    mover.start()
    load = None
    try:
        assert cluster.lab.wait_until(lambda: vip_holders(cluster) == ["backup"], 5.0)
        assert cluster.status("backup")["swap_in_progress"] is not None  # still waiting for proof
        trouble(cluster, what)
        load = client_load(cluster, duration_s=30)
        mover.join(timeout=35)
        holder, waited = wait_converged(cluster, 3.0)
        time.sleep(0.3)
    finally:
        mover.join(timeout=35)
        if load is not None:
            load.stop()
    assert not mover.is_alive()
    figure(
        request,
        f"access log {what} during confirmation: exit {result['exit_code']},"
        f" confirmed {result.get('confirmed')}, {result.get('reason') or 'done'}; holder {holder}",
    )
    assert holder is not None
    assert vip_holders(cluster) == [holder]
    assert cluster.agents["backup"].poll() is None and cluster.agents["live"].poll() is None
    if what == "delete" and result["exit_code"] == 1:
        assert result["rolled_back"] is True and holder == "live", result
    else:
        assert result["exit_code"] == 0 and result["confirmed"] is True, result
        assert holder == "backup"
    assert load is not None
    total = summarize(load.records(), since=time.monotonic() - 0.2 - waited)
    assert total.failed == 0, total


def test_holder_link_down_and_up(cluster: LabCluster, request: pytest.FixtureRequest) -> None:
    sampler = HolderSampler(cluster, seconds=20)
    try:
        cluster.lab.run("live", ["ip", "link", "set", "eth0", "down"])
        time.sleep(1.5)
        during = vip_holders(cluster)
        cluster.lab.run("live", ["ip", "link", "set", "eth0", "up"])
        up_at = time.monotonic()
        holder, waited = wait_converged(cluster, 3.0)
        time.sleep(1.0)
    finally:
        sampler.stop()
    live, backup = cluster.status("live"), cluster.status("backup")
    figure(
        request,
        f"live's eth0 down 1.5 s: VIP on {during} meanwhile (live keeps its address on the"
        f" downed link); {waited * 1000:.0f} ms after link up one serving holder ({holder});"
        f" takeovers {len(events(cluster, 'backup', 'takeover'))},"
        f" settles {len(events(cluster, 'live', 'settle'))}",
    )
    assert cluster.agents["live"].poll() is None and cluster.agents["backup"].poll() is None
    assert holder is not None and vip_holders(cluster) == [holder]
    assert live["holds_vip"] is (holder == "live") and backup["holds_vip"] is (holder == "backup")
    assert live["peer"]["alive"] and backup["peer"]["alive"]
    # While the link was down live still had the address (on a dead link): only backup answered.
    doubles_after_up = [d for d in sampler.doubles if d[0] > up_at]
    assert doubles_after_up == [] or waited < 1.0, sampler.doubles


def test_vip_removed_behind_the_agents_back(cluster: LabCluster, request: pytest.FixtureRequest) -> None:
    cluster.lab.run("live", ["ip", "address", "del", str(VIP), "dev", "eth0"])
    removed_at = time.monotonic()
    noticed = cluster.lab.wait_until(lambda: events(cluster, "live", "vip-changed-behind-our-back"), 2.0)
    noticed_ms = (time.monotonic() - removed_at) * 1000
    holder, waited = wait_converged(cluster, 5.0)
    live = cluster.status("live")
    notice = events(cluster, "live", "vip-changed-behind-our-back")
    figure(
        request,
        f"VIP deleted by hand on live: noticed in {noticed_ms:.0f} ms ({notice[:1]});"
        f" afterwards holder {holder or 'nobody'} (waited {waited:.1f} s);"
        f" live holds_vip {live['holds_vip']}",
    )
    assert noticed and notice[0]["held"] is False
    assert cluster.agents["live"].poll() is None and cluster.agents["backup"].poll() is None
    assert live["holds_vip"] is False and live["holds_vip_netlink"] is False
    assert cluster.status("backup")["peer"]["alive"] is True
    # Default policy (failover.on_vip_lost: report): nobody takes the VIP back; the operator's hand wins.
    assert vip_holders(cluster) == []
    assert holder is None


def test_vip_removed_behind_the_agents_back_is_reclaimed_by_policy(request: pytest.FixtureRequest) -> None:
    with lab_cluster({"failover": {"on_vip_lost": "reclaim"}}) as cluster:
        load = client_load(cluster, duration_s=20)
        time.sleep(0.5)
        cluster.lab.run("live", ["ip", "address", "del", str(VIP), "dev", "eth0"])
        removed_at = time.monotonic()
        holder, waited = wait_converged(cluster, 3.0)
        time.sleep(0.3)
        load.stop()
        took = cluster.status("live")["last_takeover"]
        figure(request, f"VIP deleted by hand, on_vip_lost reclaim: back on {holder} after {waited:.2f} s")
        assert holder == "live" and vip_holders(cluster) == ["live"]
        assert took["ok"] and took["probe"] == "silent" and "removed from this host" in took["reason"]
        after = summarize(load.records(), since=removed_at + waited)
        assert after.failed == 0 and after.served_by.get("live", 0) > 0
