"""The agent's UDP socket for heartbeats and swap messages: bound, its receive buffer sized, read in batches.

asyncio's datagram transport reads one datagram per turn of the event loop: under a flood (a forger of the
peer's address, tests/chaos/test_wire_fuzz.py) that turn, an epoll_wait and the loop's bookkeeping, cost
more than the datagram itself (~17 µs of the agent's ~43 µs at 8,000/s, measured). An agent kept that busy
is a CPU hog to the kernel's scheduler, and on a loaded host a hog can sit off the CPU for a few hundred
milliseconds: its heartbeats stop for longer than dead_after and the peer starts a takeover. Reading every
queued datagram (up to a bound, so timers still run between batches) on one wake-up keeps the agent well
under its share of a core, and a task that sleeps is woken at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address

import structlog

log = structlog.get_logger("failover.agent")

BATCH = 64  # datagrams read per wake-up at most: ~1.5 ms of work, then the loop's timers get their turn
RECEIVE_BUFFER = 4 * 1024 * 1024  # ~1500 queued datagrams: 200 ms of a flood while the loop is busy
MAX_READ = 65536  # any UDP payload whole: an oversized one must reach the decoder as oversized
SO_RCVBUFFORCE = 33  # Linux <asm-generic/socket.h>; the socket module does not name it

Receiver = Callable[[bytes, str], None]  # (datagram, source address)


def _size_receive_buffer(sock: socket.socket) -> None:
    """A loop held up for a moment (a busy host) must not cost the peer's datagrams: queue more of them."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)  # past rmem_max
    except OSError:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)


class HeartbeatSocket:
    """A bound, non-blocking UDP socket; each datagram goes to `receive` as it is read."""

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop, receive: Receiver) -> None:
        self._sock = sock
        self._loop = loop
        self._receive = receive
        self._closed = False
        loop.add_reader(sock.fileno(), self._read_ready)

    @classmethod
    def open(cls, address: IPv4Address | IPv6Address, port: int, receive: Receiver) -> HeartbeatSocket:
        """Bound to (address, port) on the running loop; OSError when it cannot be bound."""
        family, kind, proto, _, where = socket.getaddrinfo(str(address), port, type=socket.SOCK_DGRAM)[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            sock.bind(where)
            _size_receive_buffer(sock)
        except OSError:
            sock.close()
            raise
        return cls(sock, asyncio.get_running_loop(), receive)

    def _read_ready(self) -> None:
        for _ in range(BATCH):
            if self._closed:
                return
            try:
                data, addr = self._sock.recvfrom(MAX_READ)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:  # an ICMP error queued on the socket: nothing to read, nothing lost
                log.debug("udp-error", error=str(err))
                return
            self._receive(data, str(addr[0]))

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        """Send now or not at all: a datagram that does not fit is one lost, which the protocol survives."""
        if self._closed:
            return
        try:
            self._sock.sendto(data, addr)
        except OSError as err:
            log.debug("udp-error", error=str(err))

    def receive_buffer(self) -> int:
        return self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
