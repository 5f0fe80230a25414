"""Stragglers: clients still sending to the VIP at the old holder's MAC after it released the VIP.

The old holder runs a ``StragglerWatch`` during the confirmation window. It owns one ``AF_PACKET`` socket
on the interface with a classic BPF filter, so the kernel hands Python only the frames addressed to the
VIP *and* to our MAC (everything else on the segment never leaves the kernel), and one daemon thread that
reads them and keeps, per source MAC, when it was first and last seen. The new holder sends each
straggler a targeted ARP request / NS (``Announcer.tell``); a straggler has moved when its MAC stops
showing up here. When and whom to tell is the caller's business: this module only watches and reports.

A straggler is identified by its source MAC, not its source IP (FIELD.md, "Clients behind a router"):
behind a router the frames carry the remote client's IP but the router's MAC, and the frame that moves
the router must go to the router's own address. So a straggler's IP is the old holder's neighbour-table
entry for that MAC, and the frame's source IP only when the table has none.

Frames still arriving while the old holder drains the VIP on ``lo`` (ARP-silent) are served, and they
are stragglers all the same: the filter matches on addresses, not on whether the VIP is held.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Any, TypeVar

from failover.announce import (
    ETH_P_IP,
    ETH_P_IPV6,
    PACKET_OUTGOING,
    AnnounceError,
    IPAddress,
    _open_packet_socket,
    _oserror,
    frame_source,
)
from failover.bpf import Check, attach_filter, compile_any
from failover.netlink import NetlinkError, neighbour_ips

__all__ = ["Straggler", "StragglerWatch", "attach_filter", "bpf_program", "resolve_ips"]

T = TypeVar("T")

_CLONE_NEWNET = 0x40000000  # <sched.h>

# Bytes of each accepted frame the kernel copies to us: Ethernet + IPv6 header (54) and a little more.
# Only the source MAC and source IP are read, so a flood costs no payload copies.
SNAPLEN = 64
_RECV_SIZE = 128
_READ_TIMEOUT = 0.1  # s: how soon the thread notices stop(); also its idle resolution tick
_RESOLVE_EVERY = 0.05  # s: new MACs are looked up in batches at most this often
_RETRY_UNRESOLVED = 1.0  # s: a MAC the neighbour table lacked is looked up again at most this often
_JOIN_TIMEOUT = 1.0
# The kernel's receive time of each frame (<asm-generic/socket.h>; SCM_TIMESTAMPNS has the same number):
# a thread held off the CPU reads frames late, and a read time would make a straggler that moved when
# told look as if it went on sending (a starved CI host: "moved": false behind a GARP-dropping router).
SO_TIMESTAMPNS = 35
_TIMESPEC = struct.Struct("@qq")
_ANCILLARY_SIZE = socket.CMSG_SPACE(_TIMESPEC.size)
_MAX_AGE = 2.0  # s: a stamp older than this, or in the future, means the wall clock stepped: read time
_SYNC_TIMEOUT = 5.0
MAX_SOURCES = 4096  # distinct MACs tracked; far above a segment's worth of routers and clients


@dataclass(frozen=True)
class Straggler:
    """A host still sending to the VIP at the old holder's MAC, and the segment address to tell."""

    mac: str
    ip: str  # the neighbour-table address for ``mac``, else the frame's source IP


@dataclass
class _Source:
    src_ip: IPAddress  # source IP of the first frame
    first_seen: float
    last_seen: float
    count: int
    ip: IPAddress | None = None  # segment address to tell; None until looked up
    from_table: bool = False
    looked_up: float = 0.0


def bpf_program(mac: str, vip: IPAddress) -> bytes:
    """The classic BPF program (``struct sock_filter[]``) that accepts the first ``SNAPLEN`` bytes of
    untagged Ethernet frames with destination MAC ``mac`` and destination IP ``vip``, and drops the rest.

    Offsets are from the start of the Ethernet header (an ``AF_PACKET``/``SOCK_RAW`` socket). For IPv4 it
    is 10 instructions::

        0  ldh [12]              ; EtherType
        1  jeq #0x0800, 0, 7     ; not IPv4 -> 9
        2  ld  [0]               ; destination MAC, bytes 0-3
        3  jeq #mac[0:4], 0, 5
        4  ldh [4]               ; destination MAC, bytes 4-5
        5  jeq #mac[4:6], 0, 3
        6  ld  [30]              ; IPv4 destination address (14 + 16; fixed whatever the IHL)
        7  jeq #vip, 0, 1
        8  ret #SNAPLEN
        9  ret #0

    For IPv6 the EtherType is 0x86dd and the destination address is four words at 38, 42, 46 and 50,
    so 16 instructions. Every comparison is on fixed offsets, so it also holds for a frame whose IP
    header has options; 802.1Q-tagged frames do not match (the tag is stripped before the socket on
    accelerated NICs, and a tagged frame is not addressed to this interface's VIP anyway).
    """
    dst = bytes.fromhex(mac.replace(":", "").replace("-", ""))
    if len(dst) != 6:
        raise ValueError(f"not a MAC address: {mac}")
    checks: list[Check] = [
        (2, 12, ETH_P_IP if isinstance(vip, IPv4Address) else ETH_P_IPV6),
        (4, 0, int.from_bytes(dst[0:4], "big")),
        (2, 4, int.from_bytes(dst[4:6], "big")),
    ]
    if isinstance(vip, IPv4Address):
        checks.append((4, 30, int(vip)))
    else:
        packed = vip.packed
        checks += [(4, 38 + i, int.from_bytes(packed[i : i + 4], "big")) for i in range(0, 16, 4)]
    return compile_any([checks], SNAPLEN)


_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def _enter_netns(netns: str) -> None:
    """Move the calling *thread* into ``/run/netns/<netns>`` (network namespaces are per thread)."""
    try:
        fd = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise AnnounceError(f"network namespace {netns} not found") from exc
    try:
        _setns(fd)
    finally:
        os.close(fd)


@contextmanager
def _in_netns(netns: str | None) -> Iterator[None]:
    """Run the body with the calling thread in ``netns`` (sockets opened there stay there), then return."""
    if netns is None:
        yield
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _enter_netns(netns)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)


def _run_sync(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from synchronous code, also from inside a running loop's thread
    (pyroute2 refuses a second loop in the same thread, so the coroutine then gets a short-lived thread).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = asyncio.run(make())
        except BaseException as exc:
            box["error"] = exc

    worker = threading.Thread(target=run, name="failover-netlink-sync", daemon=True)
    worker.start()
    worker.join(_SYNC_TIMEOUT)
    if worker.is_alive():
        raise NetlinkError(f"neighbour lookup took more than {_SYNC_TIMEOUT:.0f} s")
    if "error" in box:
        raise box["error"]
    value: T = box["value"]
    return value


def resolve_ips(
    macs: Iterable[str], netns: str | None = None, *, interface: str | None = None, version: int | None = None
) -> dict[str, str]:
    """MAC -> the neighbour-table address with that lladdr (of ``interface`` and IP ``version`` if
    given); MACs without an entry are left out. Blocking (one netlink dump); safe from any thread.
    """
    wanted = [mac.lower() for mac in macs]
    table = _run_sync(lambda: neighbour_ips(wanted, netns, interface=interface, version=version))
    return {mac: str(ips[0]) for mac, ips in table.items() if ips}


def arrived_at(ancillary: list[tuple[int, int, bytes]], read_at: float, wall_now: float) -> float:
    """``time.monotonic()`` of a frame's arrival: ``read_at`` less its age by the kernel's receive stamp
    (wall clock, ``wall_now`` read with ``read_at``); ``read_at`` itself without a usable stamp."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            seconds, nanoseconds = _TIMESPEC.unpack_from(data)
            age = wall_now - (seconds + nanoseconds / 1e9)
            if 0.0 <= age <= _MAX_AGE:
                return read_at - float(age)
    return read_at


class StragglerWatch:
    """Watches one interface for frames to ``vip`` at ``our_mac`` and reports their senders by MAC.

    ``__init__`` opens the filtered socket (so errors surface at once, and frames queue from then on);
    ``start`` begins reading in a daemon thread; ``stop`` ends it. The thread stops by itself after
    ``lifetime`` seconds, and reads at most ``max_frames_per_second`` frames a second: past that the
    excess waits in the socket buffer, and the kernel drops what does not fit (a flood brings few new
    MACs, not worth the CPU).
    """

    interface: str
    vip: IPAddress
    our_mac: str
    netns: str | None

    def __init__(
        self,
        interface: str,
        vip: IPv4Address | IPv6Address,
        our_mac: str,
        *,
        netns: str | None = None,
        lifetime: float = 600.0,
        max_frames_per_second: int = 5000,
    ) -> None:
        self.interface = interface
        self.vip = vip
        self.our_mac = our_mac.lower()
        self.netns = netns
        self._lifetime = lifetime
        self._max_rate = max(1, max_frames_per_second)
        self._proto = ETH_P_IP if isinstance(vip, IPv4Address) else ETH_P_IPV6
        program = bpf_program(self.our_mac, vip)
        with _in_netns(netns):
            # Protocol 0 receives nothing: the filter is in place before the bind that starts delivery,
            # so not one unfiltered frame is ever queued.
            sock = _open_packet_socket(interface, 0)
            try:
                attach_filter(sock, program)
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                sock.bind((interface, self._proto))
            except OSError as exc:
                sock.close()
                raise _oserror(interface, "open straggler watch", exc) from exc
        sock.settimeout(_READ_TIMEOUT)
        self._sock = sock
        self._lock = threading.Lock()
        self._sources: dict[str, _Source] = {}
        self._frames = 0
        self._untracked = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.error: str | None = None  # why the thread ended early, if it did

    @property
    def frames_seen(self) -> int:
        """Incoming frames that passed the filter and reached Python."""
        with self._lock:
            return self._frames

    @property
    def running(self) -> bool:
        """Whether the reading thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Begin reading in a daemon thread; a second call does nothing."""
        if self._thread is not None or self._closed:
            return
        self._thread = threading.Thread(
            target=self._run, name=f"failover-stragglers-{self.interface}", daemon=True
        )
        self._thread.start()

    def stragglers(self, since: float | None = None) -> list[Straggler]:
        """Senders seen with a frame at or after ``since`` (``time.monotonic()``; all if None), first seen
        first. A MAC appears once its address is known: right after the thread has looked it up.
        """
        with self._lock:
            found = [
                (src.first_seen, Straggler(mac=mac, ip=str(src.ip)))
                for mac, src in self._sources.items()
                if src.ip is not None and (since is None or src.last_seen >= since)
            ]
        return [straggler for _, straggler in sorted(found, key=lambda item: item[0])]

    def last_seen(self, mac: str) -> float | None:
        """``time.monotonic()`` of the latest frame from ``mac``, None if none came."""
        with self._lock:
            src = self._sources.get(mac.lower())
            return None if src is None else src.last_seen

    def stop(self) -> None:
        """Stop the thread (within about 0.1 s, waiting at most 1 s) and close the socket; idempotent."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(_JOIN_TIMEOUT)
        if not self._closed:
            self._closed = True
            self._sock.close()

    def _run(self) -> None:
        try:
            if self.netns is not None:
                # Only this thread: its neighbour lookups then see the watched namespace.
                _enter_netns(self.netns)
            self._read_loop()
        except Exception as exc:  # the thread must end quietly; the reason is kept for the caller
            self.error = f"{type(exc).__name__}: {exc}"

    def _read_loop(self) -> None:
        now = time.monotonic()
        deadline = now + self._lifetime
        window, budget = now, self._max_rate
        next_resolve = 0.0
        while not self._stop.is_set() and now < deadline:
            if now - window >= 1.0:
                window, budget = now, self._max_rate
            if budget <= 0:
                self._stop.wait(window + 1.0 - now)
                now = time.monotonic()
                continue
            try:
                data, ancillary, _flags, addr = self._sock.recvmsg(_RECV_SIZE, _ANCILLARY_SIZE)
            except TimeoutError:
                data = b""
            except OSError:
                if self._stop.is_set():
                    return
                raise
            now = time.monotonic()
            if data:
                budget -= 1
                if addr[2] != PACKET_OUTGOING:
                    self._record(data, arrived_at(ancillary, now, time.time()))
            if now >= next_resolve and self._resolve_due(now):
                next_resolve = now + _RESOLVE_EVERY

    def _record(self, frame: bytes, now: float) -> None:
        parsed = frame_source(frame)
        with self._lock:
            self._frames += 1
            if parsed is None:
                return
            mac, src_ip = parsed
            src = self._sources.get(mac)
            if src is not None:
                src.last_seen = max(src.last_seen, now)
                src.count += 1
            elif len(self._sources) < MAX_SOURCES:
                self._sources[mac] = _Source(src_ip=src_ip, first_seen=now, last_seen=now, count=1)
            else:
                self._untracked += 1

    def _resolve_due(self, now: float) -> bool:
        """Look up the MACs that need it in one neighbour dump; whether a lookup was made."""
        with self._lock:
            due = {
                mac: src.src_ip
                for mac, src in self._sources.items()
                if src.ip is None
                or (
                    not src.from_table
                    and src.last_seen >= src.looked_up
                    and now - src.looked_up >= _RETRY_UNRESOLVED
                )
            }
        if not due:
            return False
        try:
            table = _run_sync(
                lambda: neighbour_ips(due, None, interface=self.interface, version=self.vip.version)
            )
        except NetlinkError:
            table = {}
        with self._lock:
            for mac, src_ip in due.items():
                src = self._sources[mac]
                candidates = table.get(mac, [])
                src.from_table = bool(candidates)
                # A client on the segment sends from its own address: keep it when the table agrees.
                src.ip = src_ip if not candidates or src_ip in candidates else candidates[0]
                src.looked_up = now
        return True
