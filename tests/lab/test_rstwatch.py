"""The RST counter: its parse on frames scapy builds, then its kernel filter on real traffic (root)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from ipaddress import ip_address

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from failover.lab.rstwatch import parse_rst, rst_filter
from tests.nsutil import NEEDS_ROOT_REASON, REPO, is_root, py_in, topology

VIP4, VIP6, OTHER = ip_address("203.0.113.10"), ip_address("2001:db8:0:1::10"), ip_address("203.0.113.11")
SOURCES = [VIP4, VIP6]


def frame(ip: object, flags: str = "RA") -> bytes:
    return bytes(Ether() / ip / TCP(sport=80, dport=40000, flags=flags))  # type: ignore[operator]


def test_parse_counts_rst_from_a_watched_address_in_either_family() -> None:
    rst4 = parse_rst(frame(IP(src=str(VIP4), dst="203.0.113.100")), SOURCES, at=1.5)
    assert rst4 is not None and (rst4.source, rst4.source_port, rst4.dest_port) == ("203.0.113.10", 80, 40000)
    assert rst4.flags == 0x14 and rst4.at == 1.5
    bare = parse_rst(frame(IPv6(src=str(VIP6), dst="2001:db8:0:1::100"), flags="R"), SOURCES)
    assert bare is not None and bare.flags == 0x04 and bare.source == "2001:db8:0:1::10"
    # An IPv4 header with options (IHL 6): the TCP header starts 4 bytes later.
    options = IP(src=str(VIP4), dst="203.0.113.100", options=b"\x01\x01\x01\x00")
    assert parse_rst(frame(options), SOURCES) is not None


@pytest.mark.parametrize(
    "raw",
    [
        frame(IP(src=str(VIP4), dst="203.0.113.100"), flags="SA"),  # no RST
        frame(IP(src=str(VIP4), dst="203.0.113.100"), flags="FA"),
        frame(IP(src=str(OTHER), dst="203.0.113.100")),  # RST, but from elsewhere
        frame(IP(src="203.0.113.100", dst=str(VIP4))),  # RST *to* the VIP
        bytes(Ether() / IP(src=str(VIP4)) / UDP(sport=80, dport=4)),  # type: ignore[operator]
        frame(IP(src=str(VIP4), dst="203.0.113.100", frag=10)),  # a later fragment
        frame(IP(src=str(VIP4), dst="203.0.113.100"))[:40],  # cut short of the flags
        b"\x00" * 10,
    ],
)
def test_parse_ignores_everything_else(raw: bytes) -> None:
    assert parse_rst(raw, SOURCES) is None


def test_filter_needs_a_source() -> None:
    with pytest.raises(ValueError, match="at least one source"):
        rst_filter([])
    assert len(rst_filter(SOURCES)) % 8 == 0


# What the kernel hands a socket with the filter attached, while ordinary TCP, ICMP and two RSTs flow:
# only the two RSTs (the raw socket, whose frames are not parsed again), and the counter agrees.
KERNEL_FILTER = textwrap.dedent(
    """
    import json, socket, sys, time
    from ipaddress import ip_address
    from failover.bpf import attach_filter
    from failover.lab.rstwatch import RstCounter, rst_filter
    b4, b6 = sys.argv[1], sys.argv[2]
    raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    attach_filter(raw, rst_filter([ip_address(b4), ip_address(b6)]))
    raw.bind(("eth0", 3))
    raw.settimeout(0.2)
    counter = RstCounter([b4, b6], lifetime=30)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(3):  # each draws an ICMP port unreachable from b
        udp.sendto(b"x", (b4, 9))
    ok = socket.create_connection((b4, 8080), timeout=2)  # listening already: a refusal is an RST too
    ok.sendall(b"hello")
    reply = ok.recv(16)
    ok.close()
    refused = []
    for target in ((b4, 9), (b6, 9)):
        try:
            socket.create_connection(target, timeout=2).close()
        except ConnectionRefusedError:
            refused.append(target[0])
    time.sleep(0.2)
    seen = []
    try:
        while len(seen) < 50:
            seen.append(len(raw.recv(128)))
    except TimeoutError:
        pass
    counter.close()
    result = counter.result()
    print(json.dumps({"reply": reply.decode(), "refused": refused, "raw_frames": len(seen),
                      "counted": result["frames"], "drops": result["drops"],
                      "ports": sorted([k[2], k[3]] for k in result["kept"])}))
    """
)

# It says when it listens: a connection tried before that would be refused with one more RST from b.
ECHO = (
    "import socket; s = socket.create_server(('0.0.0.0', 8080)); s.settimeout(10); print('listening', "
    "flush=True); c, _ = s.accept(); c.sendall(c.recv(16)); c.close()"
)


@pytest.mark.root
@pytest.mark.skipif(not is_root(), reason=NEEDS_ROOT_REASON)
def test_kernel_filter_passes_only_rsts_from_the_watched_addresses() -> None:
    with topology(("a", "b")) as topo:
        a, b = topo["a"], topo["b"]
        argv = ["ip", "netns", "exec", b.netns, sys.executable, "-c", ECHO]
        echo = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        try:
            assert echo.stdout is not None and echo.stdout.readline() == "listening\n"
            code = f"import sys; sys.path.insert(0, {REPO!r}); sys.argv[1:] = [{b.ip4!r}, {b.ip6!r}]\n"
            result = py_in(a.netns, code + KERNEL_FILTER)
        finally:
            echo.kill()
            echo.wait(timeout=5)
    assert isinstance(result, dict), result
    assert result["reply"] == "hello"
    assert result["refused"] == [b.ip4, b.ip6]
    assert result["raw_frames"] == 2, json.dumps(result)
    assert result["counted"] == 2 and result["drops"] == 0
    assert result["ports"] == [[9, p] for _, p in result["ports"]]  # both from port 9, the closed one
