"""Classic BPF socket filters for the packet sockets that *receive* (straggler watch, takeover probe).

A filter here is "accept if any clause holds", a clause being fixed-offset equality checks that must all
hold. That is all the two readers need, and it keeps the programs short enough to read in a docstring:
each check is a load and a ``jeq``; a failed check jumps to the next clause; a clause whose checks all
held returns ``snaplen``; after the last clause comes ``ret #0`` (drop). Offsets are from the start of
the Ethernet header (``AF_PACKET``/``SOCK_RAW``).

Also reads a packet socket's ``PACKET_STATISTICS``: how many frames the kernel dropped because the
receive queue was full, so a reader can tell "nothing came" from "something may have come and was lost".
"""

from __future__ import annotations

import ctypes
import socket
import struct
from collections.abc import Sequence

__all__ = ["DROP_ALL", "Check", "attach_filter", "compile_any", "read_drops"]

# <asm-generic/socket.h>, <linux/filter.h>, <linux/if_packet.h>; not exported by the socket module.
SO_ATTACH_FILTER = 26
SOL_PACKET = 263
PACKET_STATISTICS = 6
_LOAD = {4: 0x20, 2: 0x28, 1: 0x30}  # ld / ldh / ldb [k]: A <- the 4/2/1 bytes at packet[k]
_JEQ_K = 0x15  # pc += (A == k) ? jt : jf
_RET_K = 0x06  # accept k bytes of the frame (0 = drop)

# `ret #0`: a socket with it takes no frame at all, so nothing queues while nobody is listening.
DROP_ALL = struct.pack("HBBI", _RET_K, 0, 0, 0)

# (width in bytes: 1, 2 or 4; offset; value): "the big-endian integer at offset equals value".
Check = tuple[int, int, int]


def compile_any(clauses: Sequence[Sequence[Check]], snaplen: int) -> bytes:
    """The ``struct sock_filter[]`` accepting the first ``snaplen`` bytes of a frame that satisfies every
    check of at least one clause, and dropping any other frame."""
    if not clauses or any(not clause for clause in clauses):
        raise ValueError("a filter needs at least one clause, each with at least one check")
    insns: list[bytes] = []
    for clause in clauses:
        next_clause = len(insns) + 2 * len(clause) + 1  # past this clause's checks and its ret
        for width, offset, value in clause:
            if width not in _LOAD:
                raise ValueError(f"a check loads 1, 2 or 4 bytes, not {width}")
            insns.append(struct.pack("HBBI", _LOAD[width], 0, 0, offset))
            jump = next_clause - len(insns) - 1
            if jump > 255:
                raise ValueError("filter too long for classic BPF's 8-bit jumps")
            insns.append(struct.pack("HBBI", _JEQ_K, 0, jump, value))
        insns.append(struct.pack("HBBI", _RET_K, 0, 0, snaplen))
    insns.append(struct.pack("HBBI", _RET_K, 0, 0, 0))
    return b"".join(insns)


def attach_filter(sock: socket.socket, program: bytes) -> None:
    """Attach a classic BPF ``program`` to ``sock`` (SO_ATTACH_FILTER)."""
    count, rest = divmod(len(program), 8)
    if rest or not count:
        raise ValueError("a BPF program is a non-empty whole number of 8-byte instructions")
    buf = ctypes.create_string_buffer(program, len(program))
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; }, native alignment.
    fprog = struct.pack("HL", count, ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def read_drops(sock: socket.socket) -> int:
    """Frames the kernel dropped on this packet socket since the last call (a full receive queue).

    ``struct tpacket_stats { unsigned tp_packets; unsigned tp_drops; }``; reading resets both. Frames a
    filter rejects are not counted: they never were the socket's.
    """
    raw = sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
    _packets, drops = struct.unpack("II", raw)
    return int(drops)
