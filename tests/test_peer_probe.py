"""Real frames between namespaces: timing the peer's kernel, and the takeover probe that also asks for
the silent holder's own address (host up or down)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.nsutil import NEEDS_ROOT_REASON, Topology, is_root, ns, py_in, topology

pytestmark = pytest.mark.skipif(not is_root(), reason=NEEDS_ROOT_REASON)

VIP4 = "203.0.113.10"
VIP6 = "2001:db8:0:1::10"
ABSENT4 = "203.0.113.9"  # nobody on the segment has it


@pytest.fixture
def topo() -> Iterator[Topology]:
    with topology() as t:
        yield t


def measure(topo: Topology, peer: str, v6: bool, times: int = 1, timeout: float = 0.06) -> list[float | None]:
    a = topo["a"]
    ours = a.ip6 if v6 else a.ip4
    code = f"""
import json
from ipaddress import ip_address
from failover.announce import measure_peer
print(json.dumps([measure_peer("eth0", "{a.mac}", ip_address("{ours}"), ip_address("{peer}"), {timeout})
                  for _ in range({times})]))
"""
    result = py_in(a.netns, code)
    assert isinstance(result, list)
    return [None if r is None else float(r) for r in result]


def probe(topo: Topology, vip: str, v6: bool, **window: float) -> dict[str, object]:
    a, b = topo["a"], topo["b"]
    ours, peer = (a.ip6, b.ip6) if v6 else (a.ip4, b.ip4)
    args = "".join(f", {k}={v}" for k, v in window.items())
    code = f"""
import json
from ipaddress import ip_address
from failover.announce import probe_result
peer = (ip_address("{ours}"), ip_address("{peer}"))
r = probe_result("eth0", ip_address("{vip}"), "{a.mac}", peer=peer{args})
print(json.dumps({{"vip": r.answered_by, "host": r.host_answered_by, "unknown": r.unknown}}))
"""
    result = py_in(a.netns, code)
    assert isinstance(result, dict)
    return result


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_the_peer_kernel_answers_a_who_has_for_its_own_address_in_well_under_the_window(
    topo: Topology, v6: bool
) -> None:
    peer = topo["b"].ip6 if v6 else topo["b"].ip4
    rtts = measure(topo, peer, v6, times=20)
    assert all(r is not None for r in rtts), rtts
    answered = [r for r in rtts if r is not None]
    assert all(0 < r < 0.06 for r in answered)
    median = statistics.median(answered)
    print(f"who-has {peer}: median {median * 1e3:.3f} ms, max {max(answered) * 1e3:.3f} ms over 20")


def test_an_address_nobody_has_measures_as_no_answer(topo: Topology) -> None:
    assert measure(topo, ABSENT4, v6=False, timeout=0.03) == [None]


def test_a_measurement_ignores_the_peers_own_requests(topo: Topology) -> None:
    """Only an answer to us counts: b asking who has a third address while we time it is no answer."""
    b = topo["b"]
    ns(b.netns, "ip", "link", "set", "eth0", "arp", "off")  # b's kernel answers no ARP at all, but ...
    asker = f"""
import socket, time
from scapy.layers.l2 import ARP, Ether
frame = bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src="{b.mac}")
              / ARP(op=1, hwsrc="{b.mac}", psrc="{b.ip4}", pdst="{ABSENT4}"))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
for _ in range(100):  # ... something on b keeps asking from b's address, 0.5 s at most
    s.send(frame)
    time.sleep(0.005)
"""
    cmd = ["ip", "netns", "exec", b.netns, sys.executable, "-c", asker]
    with subprocess.Popen(cmd) as proc:
        try:
            time.sleep(0.15)  # scapy's import: the requests are flowing by now
            assert measure(topo, b.ip4, v6=False, timeout=0.05) == [None]
        finally:
            proc.wait(timeout=10)


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_host_up_without_the_vip_answers_for_itself_only(topo: Topology, v6: bool) -> None:
    """The holder's agent is gone and the VIP with it; its kernel still answers for its own address."""
    result = probe(topo, VIP6 if v6 else VIP4, v6)
    assert result == {"vip": [], "host": [topo["b"].mac], "unknown": ""}


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_holder_with_the_vip_answers_for_both(topo: Topology, v6: bool) -> None:
    b = topo["b"]
    vip, extra = (f"{VIP6}/64", ["nodad"]) if v6 else (f"{VIP4}/24", [])
    ns(b.netns, "ip", "addr", "add", vip, "dev", "eth0", *extra)
    result = probe(topo, VIP6 if v6 else VIP4, v6)
    assert result == {"vip": [b.mac], "host": [b.mac], "unknown": ""}


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_host_down_answers_for_neither(topo: Topology, v6: bool) -> None:
    b = topo["b"]
    ns(b.netns, "ip", "addr", "add", f"{VIP4}/24", "dev", "eth0")
    ns(b.netns, "ip", "link", "set", "eth0", "down")
    result = probe(topo, VIP6 if v6 else VIP4, v6)
    assert result == {"vip": [], "host": [], "unknown": ""}


def test_the_floor_window_still_hears_a_live_holder_every_time(topo: Topology) -> None:
    """The shortest window the core picks (5 ms of listening, 3 probes 1.67 ms apart), 30 times over:
    a holder on the segment is never missed."""
    a, b = topo["a"], topo["b"]
    ns(b.netns, "ip", "addr", "add", f"{VIP4}/24", "dev", "eth0")
    code = f"""
import json
from ipaddress import ip_address
from failover.announce import probe_result
peer = (ip_address("{a.ip4}"), ip_address("{b.ip4}"))
found = [probe_result("eth0", ip_address("{VIP4}"), "{a.mac}", count=3, interval_ms=5 / 3, wait_ms=5,
                      peer=peer) for _ in range(30)]
print(json.dumps([[r.answered_by, r.host_answered_by, r.unknown] for r in found]))
"""
    results = py_in(a.netns, code, timeout=30)
    assert isinstance(results, list) and len(results) == 30
    assert all(r == [[b.mac], [b.mac], ""] for r in results), json.dumps(results)
