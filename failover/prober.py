"""The takeover probe and the peer measurement: who answers for the VIP, and how fast the peer's kernel
answers for its own address.

``Prober`` (one per agent, reached as ``Announcer.prober``) runs on the agent's event loop, not in a
thread: its frames and kernel filters are built once, its two listening sockets stay open and are shut
by a drop-all filter between uses, so a probe costs a filter swap, a few ``send()`` calls and loop
timers on top of its window. Frames are built and read by ``failover.announce`` (the one module that
imports scapy); the blocking ``probe``, ``probe_result`` and ``measure_peer`` serve one-shot tools.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

from failover.announce import (
    _MAX_FRAMES_READ,
    ETH_P_ARP,
    ETH_P_IPV6,
    PACKET_OUTGOING,
    AnnounceError,
    IPAddress,
    _norm_mac,
    _oserror,
    build_probe,
    build_who_has,
    read_answer,
)
from failover.bpf import DROP_ALL, attach_filter, compile_any, read_drops

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
                    claimant, host = read_answer(data, self.vip, our_mac, None if peer is None else peer[1])
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
