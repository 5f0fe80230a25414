"""Link-layer announcements for the VIP: gratuitous ARP, unsolicited neighbour advertisements, targeted
ARP/NS to stragglers, the RFC 5227 / DAD-style probe that asks whether anyone holds the VIP (and whether
the silent holder's host still answers for its own address), and the timing of the peer's kernel.

The only module that imports scapy. Scapy only *builds and parses* frames; sending goes through one plain
long-lived ``AF_PACKET`` socket per interface, so the critical path (``Announcer.announce``) is a few
``send()`` calls of bytes built at start-up. Only the layers used are loaded: Ethernet and ARP with this
module (the agent imports it at start, never during a swap), the IPv6 ones by the first IPv6 frame, so an
IPv4 agent never holds them. It makes no protocol decisions: when and how often to announce is the
caller's business.

The takeover probe and the peer measurement that use these frames live in ``failover.prober`` (one
``Prober`` per agent, reached as ``Announcer.prober``); ``read_answer`` reads what they hear.

Why both ARP forms (see FIELD.md): switches and routers disagree on which one they honour. Linux takes
either as gratuitous when sender IP = target IP; a reply must also carry target MAC = sender MAC.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv6Address
from typing import TYPE_CHECKING, Any

from failover import lean

with lean.scapy_without_vendor_tables():
    import scapy.data
from scapy.layers.l2 import ARP, Ether

if TYPE_CHECKING:
    from failover.prober import Prober

# scapy.data reads Wireshark's vendor table when scapy is imported: about 50,000 MAC prefixes, some 10 MiB
# that would stay resident in every agent. scapy consults it only to print a MAC with its vendor's name,
# which nothing here does: it is not built (failover.lean), and where it was (scapy imported before us,
# or Wireshark's manuf file read) it is dropped as soon as the layers are in.
scapy.data.MANUFDB = scapy.data.ManufDA(_name="scapy/manufdb")
# Likewise Bluetooth's company identifiers (~4,000 names, ~0.5 MiB), read for scapy's Bluetooth layers only.
scapy.data.BLUETOOTH_CORE_COMPANY_IDENTIFIERS = {}

# scapy's IPv6 layers (~2 MiB, ~40 ms to import), bound by _need_inet6() before the first IPv6 frame.
IPv6: Any
ICMPv6ND_NA: Any
ICMPv6ND_NS: Any
ICMPv6NDOptDstLLAddr: Any
ICMPv6NDOptSrcLLAddr: Any

__all__ = [
    "GARP_REPLY",
    "GARP_REQUEST",
    "UNSOLICITED_NA",
    "AnnounceError",
    "Announcer",
    "IPAddress",
    "frame_source",
]

IPAddress = IPv4Address | IPv6Address

GARP_REQUEST = "garp-request"
GARP_REPLY = "garp-reply"
UNSOLICITED_NA = "unsolicited-na"

ETH_P_ARP = 0x0806
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
PACKET_OUTGOING = 4
BROADCAST = "ff:ff:ff:ff:ff:ff"
ZERO_MAC = "00:00:00:00:00:00"
ALL_NODES = IPv6Address("ff02::1")
ALL_NODES_MAC = "33:33:00:00:00:01"
_MAX_FRAMES_READ = 10_000  # a bound on the probe's receive loop, far above any real segment's chatter


class AnnounceError(Exception):
    """A packet socket could not be opened or a frame not sent; one line naming the interface."""


def _oserror(interface: str, action: str, exc: OSError) -> AnnounceError:
    if exc.errno == errno.ENODEV:
        return AnnounceError(f"interface {interface} not found")
    code = exc.errno or 0
    name = errno.errorcode.get(code, str(code))
    return AnnounceError(f"{action} on {interface}: {os.strerror(code)} ({name})")


def _open_packet_socket(interface: str, proto: int) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(proto))
    try:
        sock.bind((interface, proto))
    except OSError as exc:
        sock.close()
        raise _oserror(interface, "open packet socket", exc) from exc
    return sock


def _solicited_node(ip: IPv6Address) -> tuple[IPv6Address, str]:
    low = int(ip) & 0xFFFFFF
    group = IPv6Address(int(IPv6Address("ff02::1:ff00:0")) | low)
    mac = "33:33:ff:" + ":".join(f"{(low >> s) & 0xFF:02x}" for s in (16, 8, 0))
    return group, mac


def _norm_mac(mac: str) -> str:
    return mac.lower()


def _need_inet6() -> None:
    global IPv6, ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6NDOptDstLLAddr, ICMPv6NDOptSrcLLAddr
    from scapy.layers.inet6 import (
        ICMPv6ND_NA,
        ICMPv6ND_NS,
        ICMPv6NDOptDstLLAddr,
        ICMPv6NDOptSrcLLAddr,
        IPv6,
    )


def build_frames(vip: IPAddress, mac: str) -> dict[str, bytes]:
    """The gratuitous frames for ``vip`` held at ``mac``, by form name."""
    if isinstance(vip, IPv4Address):
        return {
            GARP_REQUEST: bytes(
                Ether(dst=BROADCAST, src=mac)
                / ARP(op=1, hwsrc=mac, psrc=str(vip), hwdst=ZERO_MAC, pdst=str(vip))
            ),
            GARP_REPLY: bytes(
                Ether(dst=BROADCAST, src=mac) / ARP(op=2, hwsrc=mac, psrc=str(vip), hwdst=mac, pdst=str(vip))
            ),
        }
    _need_inet6()
    return {
        UNSOLICITED_NA: bytes(
            Ether(dst=ALL_NODES_MAC, src=mac)
            / IPv6(src=str(vip), dst=str(ALL_NODES), hlim=255)
            / ICMPv6ND_NA(R=0, S=0, O=1, tgt=str(vip))
            / ICMPv6NDOptDstLLAddr(lladdr=mac)
        )
    }


def build_tell(vip: IPAddress, mac: str, ip: IPAddress, dst_mac: str) -> bytes:
    """An ordinary who-has ``ip`` from ``vip``/``mac``, sent to ``dst_mac`` only (NS for IPv6)."""
    if isinstance(vip, IPv4Address):
        if not isinstance(ip, IPv4Address):
            raise ValueError(f"cannot tell IPv6 {ip} about IPv4 VIP {vip}")
        return bytes(
            Ether(dst=dst_mac, src=mac) / ARP(op=1, hwsrc=mac, psrc=str(vip), hwdst=ZERO_MAC, pdst=str(ip))
        )
    if not isinstance(ip, IPv6Address):
        raise ValueError(f"cannot tell IPv4 {ip} about IPv6 VIP {vip}")
    _need_inet6()
    return bytes(
        Ether(dst=dst_mac, src=mac)
        / IPv6(src=str(vip), dst=str(ip), hlim=255)
        / ICMPv6ND_NS(tgt=str(ip))
        / ICMPv6NDOptSrcLLAddr(lladdr=mac)
    )


def build_probe(vip: IPAddress, mac: str) -> bytes:
    """RFC 5227 ARP probe (sender IP 0.0.0.0), or a DAD neighbour solicitation from :: for IPv6."""
    if isinstance(vip, IPv4Address):
        return bytes(
            Ether(dst=BROADCAST, src=mac)
            / ARP(op=1, hwsrc=mac, psrc="0.0.0.0", hwdst=ZERO_MAC, pdst=str(vip))
        )
    _need_inet6()  # also for _claimant, which reads the answers to this probe
    group, group_mac = _solicited_node(vip)
    # No source link-layer option: RFC 4861 forbids it when the source is the unspecified address.
    return bytes(
        Ether(dst=group_mac, src=mac) / IPv6(src="::", dst=str(group), hlim=255) / ICMPv6ND_NS(tgt=str(vip))
    )


def build_who_has(target: IPAddress, our_ip: IPAddress, mac: str) -> bytes:
    """An ordinary broadcast who-has ``target`` from ``our_ip``/``mac`` (IPv6: an NS to its
    solicited-node group): what a kernel sends to resolve a neighbour, and what it answers at once."""
    if isinstance(target, IPv4Address):
        if not isinstance(our_ip, IPv4Address):
            raise ValueError(f"cannot ask for IPv4 {target} from IPv6 {our_ip}")
        return bytes(
            Ether(dst=BROADCAST, src=mac)
            / ARP(op=1, hwsrc=mac, psrc=str(our_ip), hwdst=ZERO_MAC, pdst=str(target))
        )
    if not isinstance(our_ip, IPv6Address):
        raise ValueError(f"cannot ask for IPv6 {target} from IPv4 {our_ip}")
    _need_inet6()
    group, group_mac = _solicited_node(target)
    return bytes(
        Ether(dst=group_mac, src=mac)
        / IPv6(src=str(our_ip), dst=str(group), hlim=255)
        / ICMPv6ND_NS(tgt=str(target))
        / ICMPv6NDOptSrcLLAddr(lladdr=mac)
    )


class Announcer:
    """Gratuitous announcements for one VIP on one interface, through one long-lived packet socket."""

    interface: str
    vip: IPAddress
    mac: str
    frames: dict[str, bytes]  # form name -> prebuilt frame; GARP_REQUEST+GARP_REPLY, or UNSOLICITED_NA

    def __init__(self, interface: str, vip: IPAddress, mac: str) -> None:
        self.interface = interface
        self.vip = vip
        self.mac = _norm_mac(mac)
        self.frames = build_frames(vip, self.mac)
        self._tell_cache: dict[tuple[IPAddress, str], bytes] = {}
        # Protocol 0: the kernel delivers no frames to a send-only socket, so no receive queue fills up.
        self._sock = _open_packet_socket(interface, 0)
        self._prober: Prober | None = None

    @property
    def prober(self) -> Prober:
        """The takeover probe and peer measurement for this VIP and interface, opened on first use and
        kept until ``close``: an agent's first measurement at start opens it, long before a takeover."""
        if self._prober is None:
            from failover.prober import Prober

            self._prober = Prober(self.interface, self.vip, self.mac)
        return self._prober

    def announce(self, forms: Iterable[str] | None = None) -> int:
        """Send each gratuitous form once (all of them by default); return the number of frames sent."""
        frames = self.frames.values() if forms is None else [self.frames[name] for name in forms]
        sent = 0
        for frame in frames:
            self._send(frame, "announce")
            sent += 1
        return sent

    def tell(self, ip: IPAddress, mac: str) -> None:
        """Make one straggler at ``ip``/``mac`` learn the VIP's MAC even if it drops gratuitous frames."""
        key = (ip, _norm_mac(mac))
        frame = self._tell_cache.get(key)
        if frame is None:
            frame = build_tell(self.vip, self.mac, ip, key[1])
            if len(self._tell_cache) < 4096:
                self._tell_cache[key] = frame
        self._send(frame, f"tell {ip}")

    def _send(self, frame: bytes, action: str) -> None:
        try:
            self._sock.send(frame)
        except OSError as exc:
            raise _oserror(self.interface, action, exc) from exc

    def close(self) -> None:
        self._sock.close()
        if self._prober is not None:
            self._prober.close()


def frame_source(frame: bytes) -> tuple[str, IPAddress] | None:
    """(source MAC, source IP) of an untagged Ethernet IPv4 or IPv6 frame; None for anything else.

    Plain slicing rather than scapy: it runs once per straggler frame and only needs fixed offsets, and
    it also works on a frame truncated to its headers by a socket filter.
    """
    if len(frame) < 14:
        return None
    mac = frame[6:12].hex(":")
    ethertype = int.from_bytes(frame[12:14], "big")
    if ethertype == ETH_P_IP and len(frame) >= 34 and frame[14] >> 4 == 4:
        return mac, IPv4Address(frame[26:30])
    if ethertype == ETH_P_IPV6 and len(frame) >= 54 and frame[14] >> 4 == 6:
        return mac, IPv6Address(frame[22:38])
    return None


def _claimant(eth: Ether, vip: IPAddress, our_mac: str) -> str | None:
    """The MAC of another host that this frame shows holding (or probing for) ``vip``, else None."""
    src = str(eth.src).lower()
    if src == our_mac:
        return None
    if isinstance(vip, IPv4Address):
        if ARP not in eth:
            return None
        arp = eth[ARP]
        hwsrc = str(arp.hwsrc).lower()
        if hwsrc == our_mac:
            return None
        vip_s = str(vip)
        if arp.psrc == vip_s:
            return hwsrc  # a reply from the holder, or its own announcement
        if arp.op == 1 and arp.psrc == "0.0.0.0" and arp.pdst == vip_s:
            return hwsrc  # someone else probing for it at the same time
        return None
    if ICMPv6ND_NA in eth:
        na = eth[ICMPv6ND_NA]
        if IPv6Address(na.tgt) != vip:
            return None
        if ICMPv6NDOptDstLLAddr in eth:
            return str(eth[ICMPv6NDOptDstLLAddr].lladdr).lower()
        return src
    if ICMPv6ND_NS in eth and IPv6 in eth:
        ns = eth[ICMPv6ND_NS]
        if IPv6Address(ns.tgt) == vip and IPv6Address(eth[IPv6].src) == IPv6Address("::"):
            return src  # another DAD probe for the same address
    return None


def _host_speaker(eth: Ether, peer: IPAddress, our_mac: str) -> str | None:
    """The MAC of the host that this frame shows answering for (or speaking from) ``peer``'s own
    address, else None: any such frame means the peer's kernel is up."""
    if str(eth.src).lower() == our_mac:
        return None
    if isinstance(peer, IPv4Address):
        if ARP in eth and eth[ARP].psrc == str(peer):
            return str(eth[ARP].hwsrc).lower()
        return None
    if ICMPv6ND_NA in eth and IPv6Address(eth[ICMPv6ND_NA].tgt) == peer:
        if ICMPv6NDOptDstLLAddr in eth:
            return str(eth[ICMPv6NDOptDstLLAddr].lladdr).lower()
        return str(eth.src).lower()
    if ICMPv6ND_NS in eth and IPv6 in eth and IPv6Address(eth[IPv6].src) == peer:
        return str(eth.src).lower()
    return None


def read_answer(
    data: bytes, vip: IPAddress, our_mac: str, peer: IPAddress | None
) -> tuple[str | None, str | None]:
    """What one frame a probe heard says: (MAC holding or probing for ``vip``, MAC answering for
    ``peer``'s own address), each None when it says nothing of it. Raises what scapy raises on a frame
    it cannot dissect."""
    eth = Ether(data)
    return _claimant(eth, vip, our_mac), None if peer is None else _host_speaker(eth, peer, our_mac)


_PROBER_NAMES = (
    "ProbeResult", "Prober", "answer_filter", "measure_peer", "probe", "probe_filter", "probe_result",
)


def __getattr__(name: str) -> Any:
    """The probe's names, now in `failover.prober`, still reached from here (imported on first use: the
    prober imports this module)."""
    if name in _PROBER_NAMES:
        from failover import prober

        return getattr(prober, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
