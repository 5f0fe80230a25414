"""The agent's UDP socket for heartbeats and swap messages: bound, its receive buffer sized, read by a thread.

Why a thread of its own: at 10 ms heartbeats an agent wakes ~200 times a second (a heartbeat to send, one
heard), and an asyncio wake-up (epoll_wait, the selector's bookkeeping, the timer heap, the ready queue)
costs more than a thread's return from poll(): a bare pair heartbeating costs 0.83-0.87 % of a core
from an asyncio loop, 0.53-0.6 % from such a thread on this machine kind (`bench/asyncio_floor.py
[--mode thread]`, bench/results/2026-12-02-floor-asyncio-vs-thread.json). This thread waits in poll()
on the socket and a wake-up fd, with the core's next deadline as its timeout, and runs the agent's
`receive` for each datagram and its `timer` when the deadline is due. The event loop sleeps through the
heartbeats and wakes only when the core has something for it (the agent's `_pump`, called thread-safe);
a busy loop no longer holds heartbeats back for longer than the interpreter's switch interval.

Reading every queued datagram (up to a bound, so the deadline is looked at between batches) on one
wake-up keeps a flood (a forger of the peer's address, tests/chaos/test_wire_fuzz.py) cheap per datagram:
an agent kept busy is a CPU hog to the kernel's scheduler, and on a loaded host a hog can sit off the CPU
for a few hundred milliseconds, its heartbeats stopped for longer than dead_after.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address

import structlog

log = structlog.get_logger("failover.agent")

BATCH = 64  # datagrams read per wake-up at most: ~1.5 ms of work, then the deadline gets its look
RECEIVE_BUFFER = 4 * 1024 * 1024  # ~1500 queued datagrams: 200 ms of a flood while the thread is busy
MAX_READ = 65536  # any UDP payload whole: an oversized one must reach the decoder as oversized
SO_RCVBUFFORCE = 33  # Linux <asm-generic/socket.h>; the socket module does not name it
MAX_WAIT = 60.0  # seconds one poll() waits at most (no deadline, or one far off): then it looks again
JOIN_TIMEOUT = 2.0  # close() waits this long for the thread (it wakes at once: the wake fd)

Receiver = Callable[[bytes, str], None]  # (datagram, source address), called on the socket's thread


def _size_receive_buffer(sock: socket.socket) -> None:
    """A thread held up for a moment (a busy host) must not cost the peer's datagrams: queue more of them."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)  # past rmem_max
    except OSError:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)


class HeartbeatSocket:
    """A bound UDP socket and the thread that reads it.

    `deadline()` says when `timer()` is next due (a time.monotonic() value); both, and `receive`, are
    called on the thread, each under `lock` (the lock the agent holds around the core). Whoever moves the
    deadline earlier from another thread calls `wake_if_before(deadline)` with the same lock held, so the
    thread's wait never outlasts it. `failed` hears of an exception in any of them (on the thread): the
    thread then stops.
    """

    def __init__(
        self,
        sock: socket.socket,
        receive: Receiver,
        *,
        lock: threading.RLock,
        deadline: Callable[[], float],
        timer: Callable[[], None],
        failed: Callable[[BaseException], None],
    ) -> None:
        self._sock = sock
        self._receive = receive
        self._lock = lock
        self._deadline = deadline
        self._timer = timer
        self._failed = failed
        self._closed = False
        self._waiting_until = math.inf  # the deadline the thread waits for, written under the lock
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN)
        self._poll.register(self._wake, select.POLLIN)
        self._thread = threading.Thread(target=self._run, name="heartbeats", daemon=True)

    @classmethod
    def open(
        cls,
        address: IPv4Address | IPv6Address,
        port: int,
        receive: Receiver,
        *,
        lock: threading.RLock,
        deadline: Callable[[], float],
        timer: Callable[[], None],
        failed: Callable[[BaseException], None],
    ) -> HeartbeatSocket:
        """Bound to (address, port), not yet read (`start()`); OSError when it cannot be bound."""
        family, kind, proto, _, where = socket.getaddrinfo(str(address), port, type=socket.SOCK_DGRAM)[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            sock.bind(where)
            _size_receive_buffer(sock)
        except OSError:
            sock.close()
            raise
        return cls(sock, receive, lock=lock, deadline=deadline, timer=timer, failed=failed)

    def start(self) -> None:
        self._thread.start()

    def wake_if_before(self, deadline: float) -> None:
        """The deadline may have moved earlier than the one the thread waits for: wake it. Lock held."""
        if deadline < self._waiting_until:
            self._waiting_until = deadline  # one wake-up is enough until the thread looks again
            with contextlib.suppress(OSError):
                os.eventfd_write(self._wake, 1)

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    if self._closed:
                        return
                    until = self._deadline()
                    self._waiting_until = until
                wait = until - time.monotonic()
                if wait <= 0:
                    with self._lock:
                        self._timer()
                        # The next deadline now, not at another turn of the loop: a wake-up costs each
                        # look at the core and each poll() again (an idle holder's wake-ups are its timer).
                        if self._closed:
                            return
                        until = self._deadline()
                        self._waiting_until = until
                    wait = until - time.monotonic()
                # What queued meanwhile is read before a deadline that is due already is handled.
                # poll() counts whole milliseconds: rounded up, the wait never ends before the deadline.
                timeout = 0 if wait <= 0 else math.ceil(min(wait, MAX_WAIT) * 1000)
                for fd, _ in self._poll.poll(timeout):
                    if fd == self._wake:
                        with contextlib.suppress(BlockingIOError):
                            os.eventfd_read(self._wake)
                    else:
                        self._read_batch()
        except BaseException as err:  # the agent must hear that its heartbeats stopped
            self._failed(err)

    def _read_batch(self) -> None:
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
            with self._lock:
                self._receive(data, str(addr[0]))

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        """Send now or not at all: a datagram that does not fit is one lost, which the protocol survives.
        From any thread."""
        if self._closed:
            return
        try:
            self._sock.sendto(data, addr)
        except OSError as err:
            log.debug("udp-error", error=str(err))

    def receive_buffer(self) -> int:
        return self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)

    def close(self) -> None:
        """Stops the thread (waits for it, unless called on it) and closes the socket."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        with contextlib.suppress(OSError):
            os.eventfd_write(self._wake, 1)
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(JOIN_TIMEOUT)
        if not self._thread.is_alive():
            self._sock.close()
            os.close(self._wake)
