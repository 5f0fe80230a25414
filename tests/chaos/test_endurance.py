"""Endurance: swap/unswap cycles under client load, checked after every step and on the wire.

After every move exactly one namespace has the VIP on eth0 (netlink), and a sampler thread never sees
two. On the wire, a client asks who-has for the VIP every 50 ms (arping, broadcast) and a passive sniffer
in the bridge namespace records every ARP frame entering the bridge: no request may be answered by two
MACs, which is what two holders look like to a client. Gratuitous announcements are expected from each
new holder and are not answers. Default 20 cycles; FAILOVER_SOAK=1 runs 200.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict

import pytest

from failover.lab.client import ClientLoad, summarize
from failover.lab.cluster import LabCluster
from tests.integration.conftest import CLIENT, CLIENT_IP, REPO, VIP_IP, package_env, vip_holders

from .conftest import SOAK, HolderSampler, figure, sniffing

pytestmark = [pytest.mark.root, pytest.mark.chaos]

CYCLES = 200 if SOAK else 20
ASK_INTERVAL_S = 0.05
ANSWER_WINDOW_S = 0.05


def answers_by_request(arp: list[dict[str, object]]) -> dict[float, set[str]]:
    """Each who-has from the client for the VIP -> the MACs that answered it (within 50 ms)."""
    answered: dict[float, set[str]] = defaultdict(set)
    last_request: float | None = None
    for frame in sorted(arp, key=lambda f: float(f["t"])):  # type: ignore[arg-type]
        t = float(frame["t"])  # type: ignore[arg-type]
        if frame["op"] == 1 and frame["psrc"] == CLIENT_IP and frame["pdst"] == VIP_IP:
            last_request = t
            answered[t]
        elif (
            frame["op"] == 2
            and frame["psrc"] == VIP_IP
            and frame["pdst"] == CLIENT_IP
            and last_request is not None
            and t - last_request <= ANSWER_WINDOW_S
        ):
            answered[last_request].add(str(frame["hwsrc"]))
    return answered


def idle(cluster: LabCluster) -> bool:
    return all(cluster.status(n)["swap_in_progress"] is None for n in ("live", "backup"))


def test_swap_unswap_cycles_under_load(cluster: LabCluster, request: pytest.FixtureRequest) -> None:
    duration = CYCLES * 6.0 + 30
    load = ClientLoad(
        cluster.lab,
        CLIENT,
        VIP_IP,
        cluster.workdir / "client",
        duration_s=duration,
        max_requests=int(duration * 250),
    )
    outcomes = []
    with sniffing(cluster, "arp", arp=True, duration_s=duration, max_records=1_000_000) as sniffer:
        client = cluster.lab.host(CLIENT)
        asker = cluster.lab.popen(
            CLIENT,
            [
                sys.executable,
                "-m",
                "tests.chaos.sniff",
                "--ask",
                "eth0",
                VIP_IP,
                CLIENT_IP,
                client.mac,
                "--interval",
                str(ASK_INTERVAL_S),
                "--duration",
                str(duration),
            ],
            cwd=str(REPO),
            env=package_env(),
        )
        load.start()
        sampler = HolderSampler(cluster, seconds=duration)
        try:
            time.sleep(0.5)
            for cycle in range(CYCLES):
                for move, target in (("swap", "backup"), ("unswap", "live")):
                    # The old holder stays busy for its straggler window (1 s) after the move returned.
                    assert cluster.lab.wait_until(lambda: idle(cluster), 5.0, 0.05)
                    outcome = cluster.move(move, via="live")
                    outcomes.append(outcome)
                    assert outcome["exit_code"] == 0 and outcome["confirmed"] is True, (
                        cycle,
                        outcome["reason"],
                        outcome,
                    )
                    assert vip_holders(cluster) == [target], (cycle, move)
        finally:
            sampler.stop()
            load.stop()
            asker.terminate()
            asker.wait(timeout=5)
        arp = sniffer.records("arp")

    records = load.records()
    total = summarize(records)
    answered = answers_by_request(arp)
    doubles = {t: macs for t, macs in answered.items() if len(macs) > 1}
    macs_seen = {m for macs in answered.values() for m in macs}
    gratuitous = [f for f in arp if f["psrc"] == VIP_IP and f["pdst"] == VIP_IP]
    durations = sorted(o["duration_ms"] for o in outcomes)
    figure(
        request,
        f"{CYCLES} cycles ({len(outcomes)} moves): {total.requests} requests, {total.failed} failed,"
        f" max gap {total.max_gap_ms:.0f} ms; {sampler.samples} netlink samples, 0 with two holders"
        f" expected, {len(sampler.doubles)} seen; {len(answered)} who-has, {len(doubles)} answered by two"
        f" MACs; move duration median {durations[len(durations) // 2]:.0f} ms, max {durations[-1]:.0f} ms",
    )
    assert total.failed == 0, [r for r in records if not r.ok][:5]
    assert total.requests > 100 * CYCLES
    assert sampler.doubles == [], sampler.doubles[:5]
    assert doubles == {}, sorted(doubles.items())[:5]
    # The watcher saw what it should: answers from both hosts, announcements from both.
    assert macs_seen == {cluster.lab.host(n).mac for n in ("live", "backup")}, macs_seen
    assert {f["hwsrc"] for f in gratuitous} == macs_seen
    assert len(answered) > 10 * CYCLES
