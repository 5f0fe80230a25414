"""failover.stragglers: the BPF program and frame parsing (no root), then real frames between namespaces.

The namespace tests move the VIP from A to B *without* any announcement, so the client keeps sending to
A's MAC, and judge the watch on A by what it reports and by what the client's neighbour table does once
B tells it. Clients send with plain UDP sockets (port 9), run under `ip netns exec`.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6NDOptSrcLLAddr, IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet

from failover.announce import AnnounceError, frame_source
from failover.stragglers import (
    SNAPLEN,
    SO_TIMESTAMPNS,
    Straggler,
    StragglerWatch,
    _in_netns,
    arrived_at,
    attach_filter,
    bpf_program,
    resolve_ips,
)
from tests.nsutil import NEEDS_ROOT_REASON, Host, Topology, is_root, neigh, ns, py_in, run, sysctl, topology

root = pytest.mark.skipif(not is_root(), reason=NEEDS_ROOT_REASON)

VIP4 = "203.0.113.10"
VIP6 = "2001:db8:0:1::10"
OUR_MAC = "02:00:00:00:00:01"
OTHER_MAC = "02:00:00:00:00:77"  # on no host: the bridge floods frames to it


# --- the filter and the parser, no root -----------------------------------------------------------


def decode(program: bytes) -> list[tuple[int, int, int, int]]:
    return [struct.unpack("HBBI", program[i : i + 8]) for i in range(0, len(program), 8)]


def test_bpf_program_ipv4_is_the_documented_ten_instructions() -> None:
    insns = decode(bpf_program(OUR_MAC, IPv4Address(VIP4)))
    assert insns == [
        (0x28, 0, 0, 12),
        (0x15, 0, 7, 0x0800),
        (0x20, 0, 0, 0),
        (0x15, 0, 5, 0x02000000),
        (0x28, 0, 0, 4),
        (0x15, 0, 3, 0x0001),
        (0x20, 0, 0, 30),
        (0x15, 0, 1, int(IPv4Address(VIP4))),
        (0x06, 0, 0, SNAPLEN),
        (0x06, 0, 0, 0),
    ]
    assert len(decode(bpf_program(OUR_MAC, IPv6Address(VIP6)))) == 16


def udp4(dst_mac: str, dst_ip: str, src_mac: str = "02:00:00:00:00:03", payload: bytes = b"x" * 200) -> bytes:
    return bytes(Ether(dst=dst_mac, src=src_mac) / IP(src="203.0.113.3", dst=dst_ip) / UDP(dport=9) / payload)


def udp6(dst_mac: str, dst_ip: str, src_mac: str = "02:00:00:00:00:03") -> bytes:
    return bytes(Ether(dst=dst_mac, src=src_mac) / IPv6(src="2001:db8:0:1::3", dst=dst_ip) / UDP(dport=9))


def nd6(icmp: Packet, dst_mac: str, dst_ip: str) -> bytes:
    return bytes(
        Ether(dst=dst_mac, src="02:00:00:00:00:03")
        / IPv6(src="2001:db8:0:1::3", dst=dst_ip, hlim=255)
        / icmp
        / ICMPv6NDOptSrcLLAddr(lladdr="02:00:00:00:00:03")
    )


@pytest.mark.parametrize(
    ("vip", "frame", "passes"),
    [
        (VIP4, udp4(OUR_MAC, VIP4), True),
        (VIP4, udp4(OTHER_MAC, VIP4), False),
        (VIP4, udp4("ff:ff:ff:ff:ff:ff", VIP4), False),
        (VIP4, udp4(OUR_MAC, "203.0.113.1"), False),
        (VIP4, udp4("02:00:00:00:01:01", VIP4), False),  # same first four MAC bytes
        (VIP4, bytes(Ether(dst=OUR_MAC) / ARP(pdst=VIP4, psrc="203.0.113.3")), False),
        (VIP4, udp6(OUR_MAC, VIP6), False),
        (VIP6, udp6(OUR_MAC, VIP6), True),
        (VIP6, udp6(OUR_MAC, "2001:db8:0:1::11"), False),
        (VIP6, udp6(OUR_MAC, "2001:db8:0:2::10"), False),
        (VIP6, udp6(OTHER_MAC, VIP6), False),
        (VIP6, udp4(OUR_MAC, VIP4), False),
        # Over ND: a straggler's unicast solicitation (its NUD probe) to the VIP at our MAC is a straggler
        # frame; a multicast solicitation (address resolution, DAD) or an NA from the VIP is not.
        (VIP6, nd6(ICMPv6ND_NS(tgt=VIP6), OUR_MAC, VIP6), True),
        (VIP6, nd6(ICMPv6ND_NS(tgt=VIP6), "33:33:ff:00:00:10", "ff02::1:ff00:10"), False),
        (VIP6, nd6(ICMPv6ND_NA(tgt=VIP6), OUR_MAC, "2001:db8:0:1::3"), False),
    ],
)
def test_bpf_program_filters(vip: str, frame: bytes, passes: bool) -> None:
    # A socket filter runs on AF_UNIX datagrams too, with offsets from the datagram's start: no root needed.
    tx, rx = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with tx, rx:
        attach_filter(rx, bpf_program(OUR_MAC, ip_address(vip)))
        rx.setblocking(False)
        tx.send(frame)
        try:
            got: bytes | None = rx.recv(4096)
        except BlockingIOError:
            got = None
    if passes:
        assert got == frame[:SNAPLEN]
    else:
        assert got is None


def test_frame_source() -> None:
    assert frame_source(udp4(OUR_MAC, VIP4)) == ("02:00:00:00:00:03", IPv4Address("203.0.113.3"))
    assert frame_source(udp6(OUR_MAC, VIP6)[:SNAPLEN]) == (
        "02:00:00:00:00:03",
        IPv6Address("2001:db8:0:1::3"),
    )
    assert frame_source(bytes(Ether(dst=OUR_MAC) / ARP(pdst=VIP4))) is None
    assert frame_source(udp4(OUR_MAC, VIP4)[:20]) is None


# --- real frames between namespaces ---------------------------------------------------------------


def send_udp(host: Host, dst: str, count: int, gap: float = 0.03) -> None:
    """``count`` UDP datagrams from ``host`` to ``dst``:9, ``gap`` seconds apart."""
    code = (
        "import socket, time\n"
        f"s = socket.socket(socket.{'AF_INET' if ':' not in dst else 'AF_INET6'}, socket.SOCK_DGRAM)\n"
        f"for _ in range({count}):\n"
        f"    s.sendto(b'straggler', ({dst!r}, 9))\n"
        f"    time.sleep({gap})\n"
    )
    ns(host.netns, sys.executable, "-c", code)


def wait_for(check: Callable[[], bool], seconds: float = 2.0) -> bool:
    for _ in range(int(seconds / 0.02)):
        if check():
            return True
        time.sleep(0.02)
    return check()


def announcer(host: Host, body: str) -> None:
    """Run ``body`` in ``host`` with ``ann``, an Announcer for the VIP at ``host``'s MAC."""
    py_in(
        host.netns,
        f"""
import json, time
from ipaddress import ip_address
from failover.announce import Announcer
ann = Announcer("eth0", ip_address("{VIP4}"), "{host.mac}")
{body}
ann.close()
print(json.dumps(0))
""",
    )


def move_vip_silently(old: Host, new: Host, prefix: int, *, drain: bool) -> None:
    """The VIP leaves ``old`` and lands on ``new`` with no announcement at all; with ``drain`` the old
    holder keeps an ARP-silent copy on lo, as the agent does while connections drain."""
    if drain:
        for scope in ("all", "eth0"):
            sysctl(old.netns, f"net.ipv4.conf.{scope}.arp_ignore", "1")
            sysctl(old.netns, f"net.ipv4.conf.{scope}.arp_announce", "2")
        ns(old.netns, "ip", "addr", "add", f"{VIP4}/32", "dev", "lo")
    ns(old.netns, "ip", "addr", "del", f"{VIP4}/{prefix}", "dev", "eth0")
    ns(new.netns, "ip", "addr", "add", f"{VIP4}/{prefix}", "dev", "eth0")


@pytest.fixture
def watches() -> Iterator[list[StragglerWatch]]:
    made: list[StragglerWatch] = []
    yield made
    for watch in made:
        watch.stop()


def watch_on(host: Host, made: list[StragglerWatch], vip: str = VIP4) -> StragglerWatch:
    watch = StragglerWatch("eth0", ip_address(vip), host.mac, netns=host.netns)
    made.append(watch)
    watch.start()
    return watch


@pytest.fixture
def abc() -> Iterator[Topology]:
    if not is_root():
        pytest.skip(NEEDS_ROOT_REASON)
    with topology(("a", "b", "c")) as t:
        yield t


@root
@pytest.mark.parametrize("variant", ["drain-on-lo", "client-drops-garp"])
def test_straggler_is_reported_then_told_and_moves(
    abc: Topology, watches: list[StragglerWatch], variant: str
) -> None:
    a, b, c = abc["a"], abc["b"], abc["c"]
    ns(a.netns, "ip", "addr", "add", f"{VIP4}/24", "dev", "eth0")
    send_udp(c, VIP4, 1)
    assert wait_for(lambda: neigh(c.netns, VIP4)[0] == a.mac)
    if variant == "client-drops-garp":
        for scope in ("all", "eth0"):
            sysctl(c.netns, f"net.ipv4.conf.{scope}.drop_gratuitous_arp", "1")

    watch = watch_on(a, watches)
    move_vip_silently(a, b, 24, drain=variant == "drain-on-lo")
    if variant == "client-drops-garp":
        announcer(b, "for _ in range(3):\n    ann.announce()\n    time.sleep(0.02)")
        time.sleep(0.1)
        assert neigh(c.netns, VIP4)[0] == a.mac  # the gratuitous burst did not move it
    since = time.monotonic()
    send_udp(c, VIP4, 5)
    send_udp(c, a.ip4, 5)  # to A's own address: not a straggler, filtered out in the kernel
    assert wait_for(lambda: bool(watch.stragglers(since)))
    assert watch.stragglers(since) == [Straggler(mac=c.mac, ip=c.ip4)]
    assert watch.frames_seen == 5

    announcer(b, f"ann.tell(ip_address('{c.ip4}'), '{c.mac}')")
    assert wait_for(lambda: neigh(c.netns, VIP4)[0] == b.mac)
    told = time.monotonic()
    before = watch.last_seen(c.mac)
    send_udp(c, VIP4, 5)
    time.sleep(0.3)
    assert watch.last_seen(c.mac) == before
    assert watch.stragglers(told) == []
    assert watch.frames_seen == 5
    assert watch.error is None


@root
def test_a_frame_read_late_is_dated_by_its_arrival(abc: Topology, watches: list[StragglerWatch]) -> None:
    """Frames queued while the watch's thread is not reading (a starved host) keep their arrival time,
    the kernel's receive stamp, not the time they were read."""
    a, c = abc["a"], abc["c"]
    ns(a.netns, "ip", "addr", "add", f"{VIP4}/24", "dev", "eth0")
    send_udp(c, VIP4, 1)
    assert wait_for(lambda: neigh(c.netns, VIP4)[0] == a.mac)
    watch = StragglerWatch("eth0", ip_address(VIP4), a.mac, netns=a.netns)  # open, not yet reading
    watches.append(watch)
    before = time.monotonic()
    send_udp(c, VIP4, 3)
    sent = time.monotonic()
    time.sleep(0.5)
    watch.start()
    assert wait_for(lambda: watch.frames_seen == 3)
    seen = watch.last_seen(c.mac)
    assert seen is not None and before - 0.01 <= seen <= sent + 0.05, (before, seen, sent)


def test_arrival_falls_back_to_the_read_time_without_a_usable_stamp() -> None:
    stamp = struct.pack("@qq", 1000, 500_000_000)  # 1000.5 s, wall clock
    cmsg = [(socket.SOL_SOCKET, SO_TIMESTAMPNS, stamp)]
    assert arrived_at(cmsg, 50.0, 1000.75) == pytest.approx(49.75)
    assert arrived_at([], 50.0, 1000.75) == 50.0
    assert arrived_at(cmsg, 50.0, 1000.0) == 50.0  # stamped in the future: the wall clock stepped back
    assert arrived_at(cmsg, 50.0, 1010.0) == 50.0  # older than any queue holds: it stepped forward


@root
def test_only_matching_frames_reach_python_and_stop_is_prompt(watches: list[StragglerWatch]) -> None:
    with topology(("a", "c")) as topo:
        a, c = topo["a"], topo["c"]
        watch = watch_on(a, watches)
        # A control socket on the same interface without a filter proves the other frames did arrive.
        with _in_netns(a.netns):
            control = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
        control.bind(("eth0", 0x0800))
        control.settimeout(0.2)
        kinds = {
            b"match": (a.mac, VIP4, 7),
            b"other-mac": (OTHER_MAC, VIP4, 3),
            b"broadcast": ("ff:ff:ff:ff:ff:ff", VIP4, 3),
            b"own-address": (a.mac, a.ip4, 3),
            b"other-ip": (a.mac, "203.0.113.99", 3),
        }
        frames = [
            bytes(Ether(dst=mac, src=c.mac) / IP(src=c.ip4, dst=ip) / UDP(dport=9) / (b"marker-" + kind))
            for kind, (mac, ip, count) in kinds.items()
            for _ in range(count)
        ]
        code = (
            "import socket\n"
            "s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)\n"
            "s.bind(('eth0', 0))\n"
            f"for f in {frames!r}:\n"
            "    s.send(f)\n"
        )
        ns(c.netns, sys.executable, "-c", code)
        seen: dict[bytes, int] = {}
        with control:
            for _ in range(1000):
                try:
                    data = control.recv(4096)
                except TimeoutError:
                    break
                for kind in kinds:
                    if data.endswith(b"marker-" + kind):
                        seen[kind] = seen.get(kind, 0) + 1
        assert seen == {kind: count for kind, (_, _, count) in kinds.items()}
        assert wait_for(lambda: watch.frames_seen >= 7)
        time.sleep(0.1)
        assert watch.frames_seen == 7
        assert watch.stragglers() == [Straggler(mac=c.mac, ip=c.ip4)]

        started = time.monotonic()
        watch.stop()
        watch.stop()
        assert not watch.running
        assert time.monotonic() - started < 1.0


@root
def test_stop_without_start_and_missing_namespace() -> None:
    with topology(("a",)) as topo:
        a = topo["a"]
        watch = StragglerWatch("eth0", ip_address(VIP4), a.mac, netns=a.netns)
        watch.stop()
        watch.stop()
        watch.start()  # after stop: does nothing
        assert not watch.running
        with pytest.raises(AnnounceError, match="interface nosuch0 not found"):
            StragglerWatch("nosuch0", ip_address(VIP4), a.mac, netns=a.netns)
    with pytest.raises(AnnounceError, match=f"network namespace {topo.prefix}-a not found"):
        StragglerWatch("eth0", ip_address(VIP4), a.mac, netns=a.netns)


@root
def test_behind_a_router_the_straggler_is_the_router(watches: list[StragglerWatch]) -> None:
    # Lab segment 203.0.113.0/25 (a .1, b .2, router r .3), remote segment 203.0.113.128/25 behind r:
    # r .129, remote client d .130.
    with topology(("a", "b", "r")) as topo:
        a, b, r = topo["a"], topo["b"], topo["r"]
        for host in (a, b, r):
            ns(host.netns, "ip", "addr", "del", f"{host.ip4}/24", "dev", "eth0")
            ns(host.netns, "ip", "addr", "add", f"{host.ip4}/25", "dev", "eth0")
        d = Host(name="d", netns=f"{topo.prefix}-d", mac="02:00:00:00:00:0d", ip4="203.0.113.130", ip6="")
        run("ip", "netns", "add", d.netns)
        topo.namespaces.append(d.netns)
        run(
            "ip",
            "-n",
            r.netns,
            "link",
            "add",
            "eth1",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            d.netns,
        )
        run("ip", "-n", r.netns, "addr", "add", "203.0.113.129/25", "dev", "eth1")
        run("ip", "-n", r.netns, "link", "set", "eth1", "up")
        sysctl(r.netns, "net.ipv4.ip_forward", "1")
        run("ip", "-n", d.netns, "link", "set", "lo", "up")
        run("ip", "-n", d.netns, "link", "set", "eth0", "address", d.mac, "up")
        run("ip", "-n", d.netns, "addr", "add", f"{d.ip4}/25", "dev", "eth0")
        run("ip", "-n", d.netns, "route", "add", "default", "via", "203.0.113.129")
        for host in (a, b):
            run("ip", "-n", host.netns, "route", "add", "203.0.113.128/25", "via", r.ip4)

        ns(a.netns, "ip", "addr", "add", f"{VIP4}/25", "dev", "eth0")
        send_udp(d, VIP4, 1)
        assert wait_for(lambda: neigh(r.netns, VIP4)[0] == a.mac)
        assert resolve_ips([r.mac.upper()], a.netns, interface="eth0", version=4) == {r.mac: r.ip4}

        async def from_a_loop() -> dict[str, str]:  # as the agent would call it: inside a running loop
            return resolve_ips([r.mac, d.mac], a.netns, interface="eth0")

        assert asyncio.run(from_a_loop()) == {r.mac: r.ip4}

        watch = watch_on(a, watches)
        move_vip_silently(a, b, 25, drain=False)
        since = time.monotonic()
        send_udp(d, VIP4, 5)
        assert wait_for(lambda: bool(watch.stragglers(since)))
        # The frames carry d's address but r's MAC: the one to tell is r, at its address on the segment.
        assert watch.stragglers(since) == [Straggler(mac=r.mac, ip=r.ip4)]

        announcer(b, f"ann.tell(ip_address('{r.ip4}'), '{r.mac}')")
        assert wait_for(lambda: neigh(r.netns, VIP4)[0] == b.mac)
        told = time.monotonic()
        before = watch.last_seen(r.mac)
        send_udp(d, VIP4, 5)
        time.sleep(0.3)
        assert watch.last_seen(r.mac) == before
        assert watch.stragglers(told) == []
