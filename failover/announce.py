"""Link-layer announcements for the VIP: gratuitous ARP, unsolicited neighbour advertisements, targeted
ARP/NS to stragglers, the RFC 5227 / DAD-style probe that asks whether anyone holds the VIP (and whether
the silent holder's host still answers for its own address), and the timing of the peer's kernel.

The only module that imports scapy. Scapy only *builds and parses* frames; sending goes through one plain
long-lived ``AF_PACKET`` socket per interface, so the critical path (``Announcer.announce``) is a few
``send()`` calls of bytes built at start-up. Only the layers used are loaded: Ethernet and ARP with this
module (the agent imports it at start, never during a swap), the IPv6 ones by the first IPv6 frame, so an
IPv4 agent never holds them. It makes no protocol decisions: when and how often to announce is the
caller's business.

The takeover probe and the peer measurement (``Prober``, one per agent, reached as
``Announcer.prober``) run on the agent's event loop, not in a thread: their frames and kernel filters are
built once, their two listening sockets stay open and are shut by a drop-all filter between uses, so a
probe costs a filter swap, a few ``send()`` calls and loop timers on top of its window.

Why both ARP forms (see FIELD.md): switches and routers disagree on which one they honour. Linux takes
either as gratuitous when sender IP = target IP; a reply must also carry target MAC = sender MAC.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Any

import scapy.data
from scapy.layers.l2 import ARP, Ether

from failover.bpf import DROP_ALL, attach_filter, compile_any, read_drops

# scapy.data reads Wireshark's vendor table when scapy is imported: about 50,000 MAC prefixes, some 10 MiB
# that would stay resident in every agent. scapy consults it only to print a MAC with its vendor's name,
# which nothing here does, so the table is dropped as soon as the layers are in.
scapy.data.MANUFDB = scapy.data.ManufDA(_name="scapy/manufdb")

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
    "ProbeResult",
    "Prober",
    "frame_source",
    "measure_peer",
    "probe",
    "probe_filter",
    "probe_result",
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


# Bytes of each accepted probe answer the kernel copies: an ARP frame is 42, an NA with its link-layer
# option 86; the rest of a larger frame is never read.
_PROBE_SNAPLEN = 256
ICMPV6 = 58
ND_NS, ND_NA = 135, 136


def _address(offset: int, ip: IPAddress) -> list[tuple[int, int, int]]:
    """Checks that the frame holds ``ip`` at ``offset``."""
    return [(4, offset + i, int.from_bytes(ip.packed[i : i + 4], "big")) for i in range(0, len(ip.packed), 4)]


def _peer_clauses(peer: IPAddress) -> list[list[tuple[int, int, int]]]:
    """Frames from the peer's kernel about its own address: any ARP from it, an NA for it, an NS from it."""
    if isinstance(peer, IPv4Address):
        return [[(2, 12, ETH_P_ARP), *_address(28, peer)]]
    icmp6 = [(2, 12, ETH_P_IPV6), (1, 20, ICMPV6)]
    return [[*icmp6, (1, 54, ND_NA), *_address(62, peer)], [*icmp6, (1, 54, ND_NS), *_address(22, peer)]]


def probe_filter(vip: IPAddress, peer: IPAddress | None = None) -> bytes:
    """The kernel filter of the probe's socket: only frames that can show another holder of ``vip``.

    IPv4: an ARP frame whose sender IP is the VIP (a holder's reply or announcement), or an RFC 5227
    probe for it (request, sender 0.0.0.0, target the VIP). IPv6 (no extension headers, as RFC 4861
    requires of ND): a neighbour advertisement for the VIP, or a DAD solicitation for it (source ::).
    With ``peer``, also every frame from the peer's kernel about its own address (``_peer_clauses``).
    Everything else on the segment, ordinary who-has and solicitations for the VIP included, stays in
    the kernel, so a busy segment cannot fill the probe's queue with frames it would ignore anyway.
    """
    extra = [] if peer is None else _peer_clauses(peer)
    if isinstance(vip, IPv4Address):
        arp = (2, 12, ETH_P_ARP)
        return compile_any(
            [
                [arp, (4, 28, int(vip))],
                [arp, (2, 20, 1), (4, 28, 0), (4, 38, int(vip))],
                *extra,
            ],
            _PROBE_SNAPLEN,
        )
    target = _address(62, vip)
    icmp6 = [(2, 12, ETH_P_IPV6), (1, 20, ICMPV6)]
    unspecified = [(4, 22 + i, 0) for i in range(0, 16, 4)]
    return compile_any(
        [
            [*icmp6, (1, 54, ND_NA), *target],
            [*icmp6, (1, 54, ND_NS), *unspecified, *target],
            *extra,
        ],
        _PROBE_SNAPLEN,
    )


def answer_filter(peer: IPAddress, our_ip: IPAddress) -> bytes:
    """The kernel filter of a measurement: only the peer's answer to us for its own address (an ARP
    reply from ``peer`` to ``our_ip``, an NA for ``peer`` sent to ``our_ip``), never its own requests."""
    if isinstance(peer, IPv4Address):
        return compile_any([[(2, 12, ETH_P_ARP), (2, 20, 2), *_address(28, peer), *_address(38, our_ip)]],
                           _PROBE_SNAPLEN)  # fmt: skip
    icmp6 = [(2, 12, ETH_P_IPV6), (1, 20, ICMPV6)]
    return compile_any([[*icmp6, (1, 54, ND_NA), *_address(38, our_ip), *_address(62, peer)]], _PROBE_SNAPLEN)


@dataclass(frozen=True)
class ProbeResult:
    """What a probe learned: who answered for the VIP, and whether it could have missed an answer.

    ``unknown`` is "" when the probe saw every frame the filter let through; otherwise it says why it
    may not have (frames dropped by the kernel, the frame cap reached, a receive error), and then even
    an empty ``answered_by`` does not mean that nobody holds the VIP. ``host_answered_by``: with a
    ``peer`` to ask about, the MACs that answered for (or spoke from) the peer's own address.
    """

    answered_by: tuple[str, ...]  # sorted distinct MACs of other hosts answering for the VIP
    unknown: str = ""
    frames: int = 0  # frames that passed the filter and were read
    host_answered_by: tuple[str, ...] = ()

    def for_core(self) -> list[str]:
        """The ``answered_by`` the protocol core takes (``probe_done``): an unknown result carries a
        non-empty sentinel, ``"unknown: <why>"``, so the core, for which any answer means "do not claim",
        never claims on a probe that may have missed the holder."""
        if self.unknown:
            return [*self.answered_by, f"unknown: {self.unknown}"]
        return list(self.answered_by)


# Frames one wake-up of the event loop reads before it lets heartbeats and timers run again: a flood the
# filter lets through (a rival prober) is read to the cap without starving the rest of the agent.
_READ_BATCH = 64


class _Listener:
    """One receiving packet socket for one EtherType, kept open for the agent's life and *shut* between
    uses: its filter then drops every frame, so nothing queues, nothing is dropped, nothing wakes us.

    A use opens it with its own filter and first throws away what is still queued: frames from the tail
    of the last use, read by nobody, all older than the frames this use sends. Discarding them is what a
    fresh socket did; it cannot lose an answer to this use's frames, which are not out yet. While shut
    the queue only shrinks, so that drain ends. The drop count is reset after the drain, so a drop it
    reports later is a frame of this use: unknown.
    """

    def __init__(self, interface: str, proto: int) -> None:
        self.interface = interface
        self.lock = asyncio.Lock()  # one use at a time: two would read each other's answers
        # Protocol 0 receives nothing: the filter is in place before the bind that starts delivery.
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            attach_filter(sock, DROP_ALL)
            sock.bind((interface, proto))
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise _oserror(interface, "open listening socket", exc) from exc
        self.sock = sock

    def open(self, program: bytes, rcvbuf: int | None = None) -> None:
        try:
            for _ in range(_MAX_FRAMES_READ):
                try:
                    self.sock.recv(1)
                except BlockingIOError:
                    break
            else:
                raise AnnounceError(f"listening socket on {self.interface}: stale frames kept coming")
            if rcvbuf is not None:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            attach_filter(self.sock, program)
            read_drops(self.sock)  # start from zero
        except OSError as exc:
            raise _oserror(self.interface, "open listening socket", exc) from exc

    def shut(self) -> None:
        attach_filter(self.sock, DROP_ALL)

    def close(self) -> None:
        self.sock.close()


# take(frame, addr) -> True ends the exchange early (a measurement's answer has come).
_Take = Callable[[bytes, tuple[Any, ...]], bool]


async def _exchange(
    listener: _Listener,
    frames_out: Sequence[bytes],
    *,
    count: int,
    interval: float,
    wait: float,
    max_frames: int,
    take: _Take,
    action: str,
) -> tuple[int, list[str], float]:
    """Send ``frames_out`` ``count`` times, ``interval`` seconds apart on the first send's schedule,
    listen ``wait`` seconds after the last send, hand every frame read to ``take``; (frames read, why
    the result is unknown, first send).

    On the event loop, no thread: the socket is non-blocking, its frames are read when the loop sees it
    readable, and the sends and the end are loop timers armed from the moment each send actually went,
    so a busy loop lengthens the window, never shortens it. At the end, whatever the kernel queued in
    time is read before the answer is given. A failed send raises ``AnnounceError``; once the first
    frames are out, a receive error or the cap makes the result unknown instead.
    """
    loop = asyncio.get_running_loop()
    sock = listener.sock
    done: asyncio.Future[None] = loop.create_future()
    unknown: list[str] = []
    frames = 0
    sent = 0
    timer: asyncio.TimerHandle | None = None

    def finish() -> None:
        if not done.done():
            done.set_result(None)

    ending = False  # the window is over: read what is queued, in batches, then answer

    def read() -> None:
        nonlocal frames
        for _ in range(_READ_BATCH):
            if done.done():
                return
            if frames >= max_frames:
                unknown.append(f"stopped after {frames} frames, the probe's cap")
                finish()
                return
            try:
                data, addr = sock.recvfrom(_PROBE_SNAPLEN)
            except BlockingIOError:
                if ending:
                    finish()
                return
            except OSError as exc:
                unknown.append(f"receive failed: {os.strerror(exc.errno or 0)}")
                finish()
                return
            frames += 1
            if take(data, addr):
                finish()

    def send_round() -> None:
        nonlocal sent, timer
        try:
            for frame in frames_out:
                sock.send(frame)
        except OSError as exc:
            if not done.done():
                done.set_exception(_oserror(listener.interface, action, exc))
            return
        sent += 1
        if sent < count:
            # Rounds on the first send's schedule, so a late timer does not push back every later one
            # (the loop wakes at millisecond steps). Only the listening after the last round counts for
            # safety, and that runs from the moment it actually went.
            timer = loop.call_at(first_send + sent * interval, send_round)
        else:
            timer = loop.call_later(wait, end)

    def end() -> None:
        nonlocal ending
        ending = True
        read()  # and, while frames remain, the reader again on the next turns of the loop

    loop.add_reader(sock.fileno(), read)
    first_send = loop.time()
    try:
        send_round()
        await done
    finally:
        loop.remove_reader(sock.fileno())
        if timer is not None:
            timer.cancel()
    try:
        dropped = read_drops(sock)
    except OSError as exc:
        unknown.append(f"cannot read the socket's drop count: {os.strerror(exc.errno or 0)}")
    else:
        if dropped:
            unknown.insert(0, f"{dropped} frames dropped by the kernel")
    return frames, unknown, first_send


class Prober:
    """The takeover probe and the peer measurement for one VIP on one interface, ready to go at once.

    Built at the agent's start: the probe frame (bytes, by scapy, once), one listening packet socket for
    the probe and one for the measurement, each shut between uses (``_Listener``), their filters
    compiled once per peer. A probe is then a filter swap, a few ``send()`` calls and loop timers: no
    thread, no socket to open, no frame to build. Methods are coroutines for the agent's event loop.
    """

    def __init__(self, interface: str, vip: IPAddress, mac: str) -> None:
        self.interface = interface
        self.vip = vip
        self.mac = _norm_mac(mac)
        self._proto = ETH_P_ARP if isinstance(vip, IPv4Address) else ETH_P_IPV6
        self._probe_frame = build_probe(vip, self.mac)
        self._who_has: dict[tuple[IPAddress, IPAddress], bytes] = {}  # (ours, peer) -> frame
        self._filters: dict[tuple[str, IPAddress | None, IPAddress | None], bytes] = {}
        self._probe = _Listener(interface, self._proto)
        try:
            self._answer = _Listener(interface, self._proto)
        except AnnounceError:
            self._probe.close()
            raise

    def prepare(self, our_ip: IPAddress, peer: IPAddress) -> None:
        """Build the who-has for ``peer`` and both filters that name it now, not during a takeover."""
        self._who_has_frame(our_ip, peer)
        self._filter("probe", peer, None)
        self._filter("answer", peer, our_ip)

    def _who_has_frame(self, our_ip: IPAddress, peer: IPAddress) -> bytes:
        frame = self._who_has.get((our_ip, peer))
        if frame is None:
            frame = self._who_has[(our_ip, peer)] = build_who_has(peer, our_ip, self.mac)
        return frame

    def _filter(self, kind: str, peer: IPAddress | None, our_ip: IPAddress | None) -> bytes:
        key = (kind, peer, our_ip)
        program = self._filters.get(key)
        if program is None:
            if kind == "probe":
                program = probe_filter(self.vip, peer)
            else:
                assert peer is not None and our_ip is not None
                program = answer_filter(peer, our_ip)
            self._filters[key] = program
        return program

    async def probe(
        self,
        *,
        count: int = 3,
        interval: float = 0.02,
        wait: float = 0.06,
        max_frames: int = _MAX_FRAMES_READ,
        rcvbuf: int | None = None,
        peer: tuple[IPAddress, IPAddress] | None = None,
    ) -> ProbeResult:
        """Ask whether anyone holds the VIP: ``count`` probes ``interval`` seconds apart, then ``wait``
        seconds of listening after the last one actually sent. ``peer`` = (our own address, the peer's):
        each round also asks who has the peer's address, and every frame from the peer's kernel about it
        lands in ``host_answered_by``. ``rcvbuf`` sizes the receive buffer (the kernel's default when
        None). A socket that cannot be used or a probe that cannot be sent raises ``AnnounceError``."""
        our_mac = self.mac
        frames_out = [self._probe_frame]
        if peer is not None:
            frames_out.append(self._who_has_frame(*peer))
        program = self._filter("probe", None if peer is None else peer[1], None)
        found: set[str] = set()
        hosts: set[str] = set()
        unreadable: list[str] = []

        # Same bytes, same reading: scapy's dissection is ~0.2 ms a frame, and a rival probing in a loop
        # sends one frame over and over. Bounded, so a flood of distinct frames cannot grow it.
        read_before: dict[bytes, tuple[str | None, str | None]] = {}

        def take(data: bytes, addr: tuple[Any, ...]) -> bool:
            if addr[2] == PACKET_OUTGOING:
                return False
            seen = read_before.get(data)
            if seen is not None:
                claimant, host = seen
            else:
                try:
                    eth = Ether(data)
                    claimant = _claimant(eth, self.vip, our_mac)
                    host = None if peer is None else _host_speaker(eth, peer[1], our_mac)
                except Exception as exc:  # a frame scapy cannot parse must not end the probe unnoticed
                    if not unreadable:  # one says it all: the result is unknown
                        unreadable.append(f"unreadable frame: {type(exc).__name__}")
                    return False
                if len(read_before) < 256:
                    read_before[data] = (claimant, host)
            if claimant is not None:
                found.add(claimant)
            if host is not None:
                hosts.add(host)
            return False

        async with self._probe.lock:
            self._probe.open(program, rcvbuf)
            try:
                frames, unknown, _ = await _exchange(
                    self._probe, frames_out, count=count, interval=interval, wait=wait,
                    max_frames=max_frames, take=take, action="probe",
                )  # fmt: skip
            finally:
                self._shut(self._probe)
        return ProbeResult(
            answered_by=tuple(sorted(found)),
            unknown="; ".join([*unknown, *unreadable]),
            frames=frames,
            host_answered_by=tuple(sorted(hosts)),
        )

    async def measure_peer(self, our_ip: IPAddress, peer: IPAddress, timeout: float) -> float | None:
        """Seconds from an ordinary who-has for ``peer`` (sent from ``our_ip``) to the peer kernel's
        answer being read; None when none came within ``timeout``. The loop's own delay in reading is
        part of it, which only makes a window sized from it longer. A socket that cannot be used or a
        frame that cannot be sent raises ``AnnounceError``."""
        frame = self._who_has_frame(our_ip, peer)
        program = self._filter("answer", peer, our_ip)
        loop = asyncio.get_running_loop()
        answered: list[float] = []

        def take(_data: bytes, addr: tuple[Any, ...]) -> bool:
            if addr[2] == PACKET_OUTGOING:
                return False
            answered.append(loop.time())
            return True

        async with self._answer.lock:
            self._answer.open(program)
            try:
                _, unknown, sent_at = await _exchange(
                    self._answer, [frame], count=1, interval=0.0, wait=timeout, max_frames=_MAX_FRAMES_READ,
                    take=take, action="measure",
                )  # fmt: skip
            finally:
                self._shut(self._answer)
        # A drop or a receive error does not spoil an answer that was read: its time is what it is.
        del unknown
        return answered[0] - sent_at if answered else None

    def _shut(self, listener: _Listener) -> None:
        try:
            listener.shut()
        except OSError:
            # Left open, its queue would fill with frames nobody reads: start over with a fresh socket.
            listener.close()
            fresh = _Listener(self.interface, self._proto)
            if listener is self._probe:
                self._probe = fresh
            else:
                self._answer = fresh

    def close(self) -> None:
        self._probe.close()
        self._answer.close()


def probe(
    interface: str, vip: IPAddress, mac: str, *, count: int = 3, interval_ms: float = 20, wait_ms: float = 60
) -> list[str]:
    """Ask whether anyone holds ``vip``: the sorted distinct MACs that answered, [] when nobody did, and
    ``"unknown: <why>"`` among them when the probe cannot tell (see ``ProbeResult.for_core``).

    Blocking, for one-shot tools: sends ``count`` probes ``interval_ms`` apart and listens ``wait_ms``
    after the last; bounded by about ``(count - 1) * interval_ms + wait_ms``. The agent uses ``Prober``.
    """
    return probe_result(interface, vip, mac, count=count, interval_ms=interval_ms, wait_ms=wait_ms).for_core()


def probe_result(
    interface: str,
    vip: IPAddress,
    mac: str,
    *,
    count: int = 3,
    interval_ms: float = 20,
    wait_ms: float = 60,
    max_frames: int = _MAX_FRAMES_READ,
    rcvbuf: int | None = None,
    peer: tuple[IPAddress, IPAddress] | None = None,
) -> ProbeResult:
    """``Prober.probe`` once, blocking, on a ``Prober`` of its own (see there)."""

    async def once() -> ProbeResult:
        prober = Prober(interface, vip, mac)
        try:
            return await prober.probe(
                count=count, interval=interval_ms / 1000, wait=wait_ms / 1000, max_frames=max_frames,
                rcvbuf=rcvbuf, peer=peer,
            )  # fmt: skip
        finally:
            prober.close()

    return asyncio.run(once())


def measure_peer(
    interface: str, mac: str, our_ip: IPAddress, peer: IPAddress, timeout: float
) -> float | None:
    """``Prober.measure_peer`` once, blocking, on a ``Prober`` of its own (see there)."""

    async def once() -> float | None:
        prober = Prober(interface, peer, mac)  # its "VIP" only picks the EtherType: the peer's family
        try:
            return await prober.measure_peer(our_ip, peer, timeout)
        finally:
            prober.close()

    return asyncio.run(once())
