"""RSTs from the VIP seen by the client namespace: one packet socket, a kernel filter, a bounded tally.

A client library hides most resets (it reconnects, retries, or reports "connection closed"), so the lab
counts them where they cannot hide: every TCP segment with the RST flag whose source is a watched address
(the VIP, IPv4 or IPv6), on any interface of the namespace. The classic BPF program below runs in the
kernel, so the socket receives only such frames (the first ``SNAPLEN`` bytes); Python then parses each
one again (``parse_rst``), and only what that parse accepts is counted. The socket is opened with
``ETH_P_ALL``, which delivers from the moment it exists: the frames queued before the filter was attached
are read too, and the parse keeps the count exact.

Bounded: the counter counts for at most ``lifetime`` seconds (then ignores and discards), keeps at most
``MAX_KEPT`` frames' details, and reads at most ``_READ_BATCH`` frames per call. Frames the kernel
dropped on a full queue are reported (``drops``), never guessed.

Offsets assume an Ethernet header (veths, bridges, ``lo``); IPv6 RSTs behind extension headers and IPv4
fragments are not matched (a RST is neither in practice).
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

from failover.bpf import attach_filter, read_drops

__all__ = ["MAX_KEPT", "RstCounter", "RstFrame", "parse_rst", "rst_filter"]

IPAddress = IPv4Address | IPv6Address

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
TCP = 6
RST = 0x04
SNAPLEN = 96  # Ethernet + IPv6 + TCP flags (68) with room for an IPv4 header with options
MAX_KEPT = 10_000
_READ_BATCH = 1000

# <linux/filter.h> opcodes; bpf.py's equality clauses cannot test one bit or follow the IPv4 IHL.
_LD_W_ABS, _LD_H_ABS, _LD_B_ABS = 0x20, 0x28, 0x30
_LD_B_IND = 0x50  # A <- packet[X + k]
_LDX_B_MSH = 0xB1  # X <- 4 * (packet[k] & 0x0f): the IPv4 header's length
_JEQ_K, _JSET_K, _RET_K = 0x15, 0x45, 0x06
_ACCEPT, _DROP = "accept", "drop"


@dataclass(frozen=True)
class RstFrame:
    at: float  # time.monotonic() when read (within a millisecond or so of arrival)
    source: str
    source_port: int
    dest_port: int
    flags: int  # the TCP flags byte (0x04 RST, 0x14 RST|ACK)
    mac: str = ""  # the frame's source MAC: which host sent it (the VIP is on one, or on lo of another)


def rst_filter(sources: Sequence[IPAddress], snaplen: int = SNAPLEN) -> bytes:
    """The ``struct sock_filter[]`` accepting TCP segments with RST set from any of ``sources``.

    Per IPv4 source::

        ldh [12]; jeq #0x0800 else next family   ; EtherType
        ld  [26]; jeq #source else next source   ; IPv4 source address
        ldb [23]; jeq #6 else drop               ; protocol TCP
        ldh [20]; jset #0x1fff then drop         ; a later fragment carries no TCP header
        ldxb 4*([14]&0xf); ldb [x+27]            ; TCP flags at 14 + IHL + 13
        jset #0x04 then accept else drop

    and per IPv6 source (no extension headers): EtherType 0x86dd, next header [20] = 6, the source's four
    words at 22..37, the flags byte at 14 + 40 + 13 = 67.
    """
    if not sources:
        raise ValueError("an RST filter needs at least one source address")
    insns: list[tuple[int, int | str, int | str, int]] = []  # (code, jt, jf, k); labels resolved below
    labels: dict[str, int] = {}

    def label(name: str) -> None:
        labels[name] = len(insns)

    def load(code: int, k: int) -> None:
        insns.append((code, 0, 0, k))

    def jump(code: int, k: int, jt: int | str, jf: int | str) -> None:
        insns.append((code, jt, jf, k))

    for i, source in enumerate(sources):
        here, after = f"s{i}", f"s{i + 1}" if i + 1 < len(sources) else _DROP
        label(here)
        load(_LD_H_ABS, 12)
        if isinstance(source, IPv4Address):
            jump(_JEQ_K, ETH_P_IP, 0, after)
            load(_LD_W_ABS, 26)
            jump(_JEQ_K, int(source), 0, after)
            load(_LD_B_ABS, 23)
            jump(_JEQ_K, TCP, 0, _DROP)
            load(_LD_H_ABS, 20)
            jump(_JSET_K, 0x1FFF, _DROP, 0)
            load(_LDX_B_MSH, 14)
            load(_LD_B_IND, 14 + 13)
        else:
            jump(_JEQ_K, ETH_P_IPV6, 0, after)
            load(_LD_B_ABS, 20)
            jump(_JEQ_K, TCP, 0, after)
            for word in range(4):
                load(_LD_W_ABS, 22 + 4 * word)
                jump(_JEQ_K, int.from_bytes(source.packed[4 * word : 4 * word + 4], "big"), 0, after)
            load(_LD_B_ABS, 14 + 40 + 13)
        jump(_JSET_K, RST, _ACCEPT, _DROP)
    label(_ACCEPT)
    load(_RET_K, snaplen)
    label(_DROP)
    load(_RET_K, 0)

    out = []
    for pc, (code, jt, jf, k) in enumerate(insns):
        offsets = []
        for target in (jt, jf):
            offset = labels[target] - pc - 1 if isinstance(target, str) else target
            if not 0 <= offset <= 255:
                raise ValueError("filter too long for classic BPF's 8-bit jumps")
            offsets.append(offset)
        out.append(struct.pack("HBBI", code, offsets[0], offsets[1], k))
    return b"".join(out)


def parse_rst(frame: bytes, sources: Sequence[IPAddress], at: float = 0.0) -> RstFrame | None:
    """The RST segment in an Ethernet ``frame`` from one of ``sources``, or None for anything else."""
    if len(frame) < 14:
        return None
    (ethertype,) = struct.unpack_from("!H", frame, 12)
    if ethertype == ETH_P_IP and len(frame) >= 34:
        ihl = (frame[14] & 0x0F) * 4
        fragment = struct.unpack_from("!H", frame, 20)[0] & 0x1FFF
        if frame[23] != TCP or fragment or ihl < 20:
            return None
        source: IPAddress = IPv4Address(frame[26:30])
        tcp = 14 + ihl
    elif ethertype == ETH_P_IPV6 and len(frame) >= 54:
        if frame[20] != TCP:
            return None
        source = IPv6Address(frame[22:38])
        tcp = 54
    else:
        return None
    if len(frame) < tcp + 14 or source not in sources or not frame[tcp + 13] & RST:
        return None
    sport, dport = struct.unpack_from("!HH", frame, tcp)
    mac = ":".join(f"{b:02x}" for b in frame[6:12])
    return RstFrame(
        at=at, source=str(source), source_port=sport, dest_port=dport, flags=frame[tcp + 13], mac=mac
    )


class RstCounter:
    """Counts RSTs from ``sources`` reaching the namespace it was opened in, for ``lifetime`` seconds.

    Open it inside the namespace to watch (the socket stays there); call ``read_ready`` when the socket
    is readable (``fileno``; an asyncio reader, or a loop with a timeout), ``result`` for the tally.
    """

    def __init__(self, sources: Sequence[str | IPAddress], lifetime: float) -> None:
        self.sources: list[IPAddress] = [ip_address(s) if isinstance(s, str) else s for s in sources]
        self.deadline = time.monotonic() + lifetime
        self.frames = 0
        self.kept: list[RstFrame] = []
        self.drops = 0
        self.closed = False
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        try:
            attach_filter(self._sock, rst_filter(self.sources))
        except OSError:
            self._sock.close()
            raise
        self._sock.setblocking(False)

    def fileno(self) -> int:
        return self._sock.fileno()

    def read_ready(self) -> int:
        """Read what is queued (at most a batch); returns the RSTs counted by this call."""
        if self.closed:
            return 0
        counted = 0
        for _ in range(_READ_BATCH):
            try:
                frame, addr = self._sock.recvfrom(SNAPLEN)
            except (BlockingIOError, InterruptedError):
                break
            now = time.monotonic()
            if now > self.deadline or addr[2] == socket.PACKET_OUTGOING:
                continue
            rst = parse_rst(frame, self.sources, now)
            if rst is None:
                continue
            counted += 1
            if len(self.kept) < MAX_KEPT:
                self.kept.append(rst)
        self.frames += counted
        return counted

    def close(self) -> None:
        """Read what is still queued, note the kernel's drops, close the socket; idempotent."""
        if self.closed:
            return
        self.read_ready()
        self.drops += read_drops(self._sock)
        self.closed = True
        self._sock.close()

    def result(self) -> dict[str, Any]:
        """``frames``: RSTs counted; ``drops``: frames the kernel could not queue (so maybe more);
        ``kept``: [at, source, source_port, dest_port, flags, source MAC] of the first ``MAX_KEPT``."""
        return {
            "frames": self.frames,
            "drops": self.drops,
            "sources": [str(s) for s in self.sources],
            "kept": [[r.at, r.source, r.source_port, r.dest_port, r.flags, r.mac] for r in self.kept],
            "error": None,
        }
