"""failover.announce: frame contents (no root), then real frames between namespaces (root).

The namespace tests run the adapter under `ip netns exec`, as the agent runs, and judge it by what a
Linux client does: the client's neighbour entry for the VIP must move to the new holder's MAC.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest
from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6NDOptDstLLAddr, ICMPv6NDOptSrcLLAddr, IPv6
from scapy.layers.l2 import ARP, Ether

from failover.announce import (
    GARP_REPLY,
    GARP_REQUEST,
    UNSOLICITED_NA,
    ProbeResult,
    build_frames,
    build_probe,
    build_tell,
    probe_filter,
)
from failover.bpf import attach_filter
from tests.nsutil import NEEDS_ROOT_REASON, Host, Topology, is_root, neigh, ns, py_in, sysctl, topology

root = pytest.mark.skipif(not is_root(), reason=NEEDS_ROOT_REASON)

VIP4 = "203.0.113.10"
VIP6 = "2001:db8:0:1::10"
WRONG_MAC = "02:00:00:00:00:99"
MAC = "02:00:00:00:00:01"


# --- frame contents -------------------------------------------------------------------------------


def test_garp_request_and_reply_frames() -> None:
    frames = build_frames(IPv4Address(VIP4), MAC)
    assert set(frames) == {GARP_REQUEST, GARP_REPLY}
    req = Ether(frames[GARP_REQUEST])
    assert (req.dst, req.src) == ("ff:ff:ff:ff:ff:ff", MAC)
    arp = req[ARP]
    assert (arp.op, arp.hwsrc, arp.psrc, arp.hwdst, arp.pdst) == (1, MAC, VIP4, "00:00:00:00:00:00", VIP4)
    rep = Ether(frames[GARP_REPLY])
    assert rep.dst == "ff:ff:ff:ff:ff:ff"
    arp = rep[ARP]
    assert (arp.op, arp.hwsrc, arp.psrc, arp.hwdst, arp.pdst) == (2, MAC, VIP4, MAC, VIP4)


def test_unsolicited_na_frame() -> None:
    frames = build_frames(IPv6Address(VIP6), MAC)
    assert set(frames) == {UNSOLICITED_NA}
    eth = Ether(frames[UNSOLICITED_NA])
    assert (eth.dst, eth.src) == ("33:33:00:00:00:01", MAC)
    assert (eth[IPv6].src, eth[IPv6].dst, eth[IPv6].hlim) == (VIP6, "ff02::1", 255)
    na = eth[ICMPv6ND_NA]
    assert (na.R, na.S, na.O, na.tgt) == (0, 0, 1, VIP6)
    assert eth[ICMPv6NDOptDstLLAddr].lladdr == MAC


def test_tell_frames() -> None:
    arp = Ether(build_tell(IPv4Address(VIP4), MAC, IPv4Address("203.0.113.2"), "02:00:00:00:00:02"))
    assert arp.dst == "02:00:00:00:00:02"
    assert (arp.op, arp.hwsrc, arp.psrc, arp.hwdst, arp.pdst) == (
        1,
        MAC,
        VIP4,
        "00:00:00:00:00:00",
        "203.0.113.2",
    )
    ns_ = Ether(build_tell(IPv6Address(VIP6), MAC, IPv6Address("2001:db8:0:1::2"), "02:00:00:00:00:02"))
    assert ns_.dst == "02:00:00:00:00:02"
    assert (ns_[IPv6].src, ns_[IPv6].dst, ns_[IPv6].hlim) == (VIP6, "2001:db8:0:1::2", 255)
    assert ns_[ICMPv6ND_NS].tgt == "2001:db8:0:1::2"
    assert ns_[ICMPv6NDOptSrcLLAddr].lladdr == MAC


def test_probe_frames() -> None:
    arp = Ether(build_probe(IPv4Address(VIP4), MAC))
    assert arp.dst == "ff:ff:ff:ff:ff:ff"
    assert (arp.op, arp.hwsrc, arp.psrc, arp.hwdst, arp.pdst) == (
        1,
        MAC,
        "0.0.0.0",
        "00:00:00:00:00:00",
        VIP4,
    )
    dad = Ether(build_probe(IPv6Address(VIP6), MAC))
    assert dad.dst == "33:33:ff:00:00:10"
    assert (dad[IPv6].src, dad[IPv6].dst, dad[IPv6].hlim) == ("::", "ff02::1:ff00:10", 255)
    assert dad[ICMPv6ND_NS].tgt == VIP6
    assert ICMPv6NDOptSrcLLAddr not in dad


# --- real frames between namespaces ---------------------------------------------------------------


@pytest.fixture
def topo() -> Iterator[Topology]:
    if not is_root():
        pytest.skip(NEEDS_ROOT_REASON)
    with topology(("a", "b")) as t:
        yield t


def holder_snippet(host: Host, vip: str, prefix: int, body: str) -> str:
    """Code for ``host``: claim ``vip`` (VipLink), open an Announcer, run ``body``, print JSON ``out``."""
    return f"""
import asyncio, json, time
from ipaddress import ip_address, ip_interface
from failover.announce import Announcer, probe
from failover.netlink import VipLink
async def claim():
    link = await VipLink.open("eth0", ip_interface("{vip}/{prefix}"))
    await link.claim()
    mac = link.mac
    await link.close()
    return mac
mac = asyncio.run(claim())
ann = Announcer("eth0", ip_address("{vip}"), mac)
out = {{}}
{body}
ann.close()
print(json.dumps(out))
"""


def wrong_entry(client: Host, vip: str, state: str = "stale") -> None:
    ns(client.netns, "ip", "neigh", "replace", vip, "lladdr", WRONG_MAC, "dev", "eth0", "nud", state)
    assert neigh(client.netns, vip)[0] == WRONG_MAC


def wait_for_mac(client: Host, vip: str, mac: str, seconds: float = 1.0) -> str | None:
    """The client's lladdr for ``vip`` once it equals ``mac``, or the last one seen after ``seconds``."""
    seen = None
    for _ in range(int(seconds / 0.02)):
        seen = neigh(client.netns, vip)[0]
        if seen == mac:
            break
        time.sleep(0.02)
    return seen


@root
@pytest.mark.parametrize("forms", [None, [GARP_REQUEST], [GARP_REPLY]], ids=["both", "request", "reply"])
@pytest.mark.parametrize("state", ["stale", "reachable-locktime-30s"])
def test_gratuitous_arp_moves_the_client(topo: Topology, forms: list[str] | None, state: str) -> None:
    a, b = topo["a"], topo["b"]
    if state.startswith("reachable"):
        sysctl(b.netns, "net.ipv4.neigh.eth0.locktime", "3000")  # in 1/100 s: 30 s
        wrong_entry(b, VIP4, "reachable")
    else:
        wrong_entry(b, VIP4, "stale")
    out = py_in(a.netns, holder_snippet(a, VIP4, 24, f"out['sent'] = ann.announce({forms!r})"))
    assert out == {"sent": 2 if forms is None else 1}
    assert wait_for_mac(b, VIP4, a.mac) == a.mac


@root
@pytest.mark.parametrize("state", ["stale", "reachable"])
def test_unsolicited_na_moves_the_client(topo: Topology, state: str) -> None:
    a, b = topo["a"], topo["b"]
    wrong_entry(b, VIP6, state)
    out = py_in(a.netns, holder_snippet(a, VIP6, 64, "out['sent'] = ann.announce()"))
    assert out == {"sent": 1}
    assert wait_for_mac(b, VIP6, a.mac) == a.mac


@root
def test_tell_reaches_a_client_that_drops_gratuitous_arp(topo: Topology) -> None:
    a, b = topo["a"], topo["b"]
    for scope in ("all", "eth0"):
        sysctl(b.netns, f"net.ipv4.conf.{scope}.drop_gratuitous_arp", "1")
    wrong_entry(b, VIP4)
    body = f"""
out['sent'] = ann.announce()
time.sleep(0.3)
out['after_garp'] = json.loads(__import__('subprocess').run(
    ['ip', 'netns', 'exec', '{b.netns}', 'ip', '-j', 'neigh', 'show', 'to', '{VIP4}', 'dev', 'eth0'],
    capture_output=True, text=True, check=True).stdout)[0]['lladdr']
ann.tell(ip_address("{b.ip4}"), "{b.mac}")
"""
    out = py_in(a.netns, holder_snippet(a, VIP4, 24, body))
    assert out == {"sent": 2, "after_garp": WRONG_MAC}
    assert wait_for_mac(b, VIP4, a.mac) == a.mac


@root
def test_tell_reaches_a_client_that_drops_unsolicited_na(topo: Topology) -> None:
    a, b = topo["a"], topo["b"]
    for scope in ("all", "eth0"):
        sysctl(b.netns, f"net.ipv6.conf.{scope}.drop_unsolicited_na", "1")
    wrong_entry(b, VIP6)
    out = py_in(a.netns, holder_snippet(a, VIP6, 64, "out['sent'] = ann.announce()"))
    assert out == {"sent": 1}
    time.sleep(0.3)
    assert neigh(b.netns, VIP6)[0] == WRONG_MAC
    py_in(a.netns, holder_snippet(a, VIP6, 64, f"ann.tell(ip_address('{b.ip6}'), '{b.mac}')"))
    assert wait_for_mac(b, VIP6, a.mac) == a.mac


@root
def test_announcer_on_a_missing_interface(topo: Topology) -> None:
    code = f"""
import json
from ipaddress import ip_address
from failover.announce import AnnounceError, Announcer
try:
    Announcer("eth9", ip_address("{VIP4}"), "{MAC}")
    print(json.dumps(None))
except AnnounceError as exc:
    print(json.dumps(str(exc)))
"""
    assert py_in(topo["a"].netns, code) == "interface eth9 not found"


@root
def test_announce_send_latency(topo: Topology, capsys: pytest.CaptureFixture[str]) -> None:
    a = topo["a"]
    body = """
import statistics
for v in ("203.0.113.10", "2001:db8:0:1::10"):
    ann2 = Announcer("eth0", ip_address(v), mac)
    times = []
    for _ in range(200):
        t0 = time.perf_counter()
        ann2.announce()
        times.append((time.perf_counter() - t0) * 1e6)
    ann2.close()
    out[v] = [statistics.median(times), max(times)]
"""
    out = py_in(a.netns, holder_snippet(a, VIP4, 24, body))
    assert isinstance(out, dict)
    with capsys.disabled():
        print(
            f"\nannounce() v4 (2 frames) median {out[VIP4][0]:.1f} us max {out[VIP4][1]:.1f} us; "
            f"v6 (1 frame) median {out[VIP6][0]:.1f} us max {out[VIP6][1]:.1f} us"
        )
    assert out[VIP4][0] < 1000 and out[VIP6][0] < 1000


def run_probe(host: Host, vip: str, **kwargs: int) -> tuple[list[str], float]:
    args = "".join(f", {k}={v}" for k, v in kwargs.items())
    code = f"""
import json, time
from ipaddress import ip_address
from failover.announce import probe
t0 = time.monotonic()
found = probe("eth0", ip_address("{vip}"), "{host.mac}"{args})
print(json.dumps([found, time.monotonic() - t0]))
"""
    result = py_in(host.netns, code)
    assert isinstance(result, list) and len(result) == 2
    return [str(mac) for mac in result[0]], float(result[1])


@root
@pytest.mark.parametrize("vip", [VIP4, VIP6], ids=["v4", "v6"])
def test_probe_finds_nobody(topo: Topology, vip: str) -> None:
    found, elapsed = run_probe(topo["a"], vip)
    assert found == []
    assert 0.09 <= elapsed < 0.5  # 2 intervals of 20 ms + 60 ms wait, bounded


@root
@pytest.mark.parametrize("vip,prefix", [(VIP4, 24), (VIP6, 64)], ids=["v4", "v6"])
def test_probe_finds_the_holder(topo: Topology, vip: str, prefix: int) -> None:
    a, b = topo["a"], topo["b"]
    extra = ["nodad"] if ":" in vip else []
    ns(b.netns, "ip", "addr", "add", f"{vip}/{prefix}", "dev", "eth0", *extra)
    found, _ = run_probe(a, vip)
    assert found == [b.mac]


@root
def test_probe_finds_both_holders_of_a_split_brain() -> None:
    with topology(("a", "b", "c")) as t:
        for name in ("b", "c"):
            ns(t[name].netns, "ip", "addr", "add", f"{VIP4}/24", "dev", "eth0")
        found, _ = run_probe(t["a"], VIP4, count=2, interval_ms=10, wait_ms=50)
        assert found == sorted([t["b"].mac, t["c"].mac])


@root
def test_probe_ignores_its_own_vip(topo: Topology) -> None:
    """A host probing for an address it holds itself must not report itself."""
    a = topo["a"]
    ns(a.netns, "ip", "addr", "add", f"{VIP4}/24", "dev", "eth0")
    found, _ = run_probe(a, VIP4)
    assert found == []


# --- the probe's kernel filter and its "unknown" ------------------------------------------------------

CLIENT4 = "203.0.113.3"
CLIENT6 = "2001:db8:0:1::3"
OTHER = "02:00:00:00:00:03"


def arp(op: int, psrc: str, pdst: str, hwsrc: str = OTHER) -> bytes:
    return bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src=hwsrc) / ARP(op=op, hwsrc=hwsrc, psrc=psrc, pdst=pdst))


def na(tgt: str, src: str = CLIENT6) -> bytes:
    return bytes(
        Ether(dst="33:33:00:00:00:01", src=OTHER)
        / IPv6(src=src, dst="ff02::1")
        / ICMPv6ND_NA(tgt=tgt)
        / ICMPv6NDOptDstLLAddr(lladdr=OTHER)
    )


def ns_frame(tgt: str, src: str) -> bytes:
    return bytes(
        Ether(dst="33:33:ff:00:00:10", src=OTHER)
        / IPv6(src=src, dst="ff02::1:ff00:10")
        / ICMPv6ND_NS(tgt=tgt)
    )


@pytest.mark.parametrize(
    ("vip", "frame", "passes"),
    [
        (VIP4, arp(2, VIP4, CLIENT4), True),  # the holder's reply
        (VIP4, arp(1, VIP4, VIP4), True),  # its gratuitous request
        (VIP4, arp(1, "0.0.0.0", VIP4), True),  # another prober (RFC 5227)
        (VIP4, arp(1, CLIENT4, VIP4), False),  # a client asking for the VIP: no claim, kept in the kernel
        (VIP4, arp(2, CLIENT4, VIP4), False),
        (VIP4, arp(1, "0.0.0.0", "203.0.113.11"), False),
        (VIP4, arp(2, "203.0.113.11", CLIENT4), False),
        (VIP4, na(VIP6), False),
        (VIP6, na(VIP6), True),
        (VIP6, ns_frame(VIP6, "::"), True),  # another DAD for the VIP
        (VIP6, ns_frame(VIP6, CLIENT6), False),  # an ordinary solicitation for the VIP
        (VIP6, na("2001:db8:0:1::11"), False),
        (VIP6, ns_frame("2001:db8:0:1::11", "::"), False),
        (VIP6, arp(2, VIP4, CLIENT4), False),
    ],
)
def test_probe_filter(vip: str, frame: bytes, passes: bool) -> None:
    # A socket filter runs on AF_UNIX datagrams too, with offsets from the datagram's start: no root needed.
    tx, rx = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with tx, rx:
        attach_filter(rx, probe_filter(ip_address(vip)))
        rx.setblocking(False)
        tx.send(frame)
        try:
            got: bytes | None = rx.recv(4096)
        except BlockingIOError:
            got = None
    assert (got == frame) if passes else (got is None)


def test_probe_result_for_core() -> None:
    assert ProbeResult(answered_by=()).for_core() == []
    assert ProbeResult(answered_by=("02:00:00:00:00:02",)).for_core() == ["02:00:00:00:00:02"]
    # Unknown is never empty for the core: any answer means "do not claim".
    assert ProbeResult(answered_by=(), unknown="3 frames dropped by the kernel").for_core() == [
        "unknown: 3 frames dropped by the kernel"
    ]


FLOOD_MAX_S = 30.0  # the bounds of a flood that its block did not end first
FLOOD_MAX_FRAMES = 20_000_000


@contextlib.contextmanager
def flood(
    host: Host, frame: bytes, *, frames: int = FLOOD_MAX_FRAMES, seconds: float = FLOOD_MAX_S
) -> Iterator[None]:
    """``host`` sends ``frame`` back to back on eth0 until the block ends, at most ``frames`` times and
    ``seconds`` long. Not for a fixed time: a probe started in a subprocess (scapy's import) on a busy
    host can begin after a 3 s flood ended, and then it tests nothing (CI: no frame cap reached)."""
    code = f"""
import socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
s.bind(("eth0", 0))
frame = bytes.fromhex("{frame.hex()}")
end = time.monotonic() + {seconds}
print("flooding", flush=True)
for i in range({frames}):
    try:
        s.send(frame)
    except OSError:  # a full device queue: wait a little, the flood is bounded anyway
        time.sleep(0.0001)
    if i % 256 == 0 and time.monotonic() >= end:
        break
"""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", host.netns, sys.executable, "-c", code], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "flooding"
        time.sleep(0.05)  # under way before the probe starts
        yield
    finally:
        proc.kill()
        proc.wait(timeout=5)


def run_probe_result(host: Host, vip: str, **kwargs: int) -> dict[str, object]:
    args = "".join(f", {k}={v}" for k, v in kwargs.items())
    code = f"""
import dataclasses, json
from ipaddress import ip_address
from failover.announce import probe_result
print(json.dumps(dataclasses.asdict(probe_result("eth0", ip_address("{vip}"), "{host.mac}"{args}))))
"""
    result = py_in(host.netns, code)
    assert isinstance(result, dict)
    return result


@pytest.fixture
def topo3() -> Iterator[Topology]:
    if not is_root():
        pytest.skip(NEEDS_ROOT_REASON)
    with topology(("a", "b", "c")) as t:
        yield t


@root
@pytest.mark.parametrize("vip,prefix", [(VIP4, 24), (VIP6, 64)], ids=["v4", "v6"])
def test_probe_hears_the_holder_through_a_flood(topo3: Topology, vip: str, prefix: int) -> None:
    """c floods the segment with frames the probe does not want (who-has / solicitations for other
    addresses, to everyone), far more than a probe's queue holds; b's answers still get through."""
    a, b, c = topo3["a"], topo3["b"], topo3["c"]
    extra = ["nodad"] if ":" in vip else []
    ns(b.netns, "ip", "addr", "add", f"{vip}/{prefix}", "dev", "eth0", *extra)
    noise = arp(1, c.ip4, "203.0.113.200", c.mac) if ":" not in vip else ns_frame("2001:db8:0:1::200", c.ip6)
    with flood(c, noise):
        result = run_probe_result(a, vip)
    assert result["answered_by"] == [b.mac]
    assert result["unknown"] == ""
    assert isinstance(result["frames"], int) and result["frames"] < 50  # the flood stayed in the kernel


@root
@pytest.mark.parametrize("vip", [VIP4, VIP6], ids=["v4", "v6"])
def test_probe_that_lost_frames_is_unknown(topo3: Topology, vip: str) -> None:
    """Frames the filter accepts (c probing for the same address, over and over) arrive faster than the
    probe reads them into a tiny receive buffer: the kernel drops some, and the probe says so."""
    a, c = topo3["a"], topo3["c"]
    rival = (
        arp(1, "0.0.0.0", vip, c.mac)
        if ":" not in vip
        else bytes(
            Ether(dst="33:33:ff:00:00:10", src=c.mac)
            / IPv6(src="::", dst="ff02::1:ff00:10")
            / ICMPv6ND_NS(tgt=vip)
        )
    )
    with flood(c, rival):
        result = run_probe_result(a, vip, rcvbuf=1)
    assert "dropped by the kernel" in str(result["unknown"])
    for_core = ProbeResult(
        answered_by=tuple(result["answered_by"]), unknown=str(result["unknown"])
    ).for_core()
    assert for_core[-1].startswith("unknown: ") and "dropped" in for_core[-1]


@root
def test_probe_that_reached_its_frame_cap_is_unknown(topo3: Topology) -> None:
    a, c = topo3["a"], topo3["c"]
    with flood(c, arp(1, "0.0.0.0", VIP4, c.mac)):
        result = run_probe_result(a, VIP4, max_frames=20)
    assert "cap" in str(result["unknown"])
    assert result["frames"] == 20
