"""The draining host's lingering close: a second reference to each of its connections to the VIP.

Why: a drain asks the web server to let go of idle keep-alive connections (`nginx -s reload`), and
nginx before 1.27.4 (`keepalive_min_timeout`) closes such a connection with a bare close(): a request
the client sent just before (in the socket's buffer, unread) makes the kernel answer with RST instead of
FIN, and one that crosses the FIN meets an orphaned socket, which must answer data with RST
(RFC 1122 4.2.2.13). Seen in the zero-reset test: ~1 per 40 moves, from a client asking every 10 ms.
A lingering close (FIN first, then read and discard until the client's FIN) has neither problem; the
client reads a FIN with no response and retries on a fresh connection (RFC 9112 9.3.1).

How: when the drain starts, every connection to the VIP that a process owns is duplicated into this
process with pidfd_getfd(2). While the server keeps its own descriptor nothing changes: this one is
never read or written. Once no process but this one refers to the socket, the server's close has not
reached TCP: the socket is shut down for writing (the FIN), read and thrown away until the client's
FIN, and closed. What is left at the drain's end is closed then.

Knowing that the server let go: every process's descriptors are scanned when a connection is taken,
and once more (`confirm`) soon after: an owner set that did not change between the two is the
connection's for good (a server that hands accepted connections to another process, as Node's cluster
primary does, does so right after the accept). For such a connection, that its owners' descriptors no
longer refer to it (one readlink each, every `HOLD_EVERY`) is enough, and the FIN leaves at once:
the window in which a request meets a close without a response stays about as short as the server's
own. An unconfirmed one is scanned for again before it is shut.

Needs CAP_SYS_PTRACE (the web server runs as another user) and Linux 5.6; without either, the drain
goes on as before and the hold says why it could not take the connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from failover.pyroute2_parts import DiagSocket

IPAddress = IPv4Address | IPv6Address

_SYS_PIDFD_GETFD = 438  # the same number on every architecture (asm-generic since 5.6)
_ESTABLISHED, _CLOSE_WAIT = 1, 8
# A server's connection that may still see a request: served, or the client closed and the server not yet.
_HELD_STATES = (1 << _ESTABLISHED) | (1 << _CLOSE_WAIT)
READ_CHUNK = 65536
LOOK_SHARE = 10.0  # the pause after a look is at least this many times what the look cost


class HoldError(Exception):
    """The connections cannot be held here; the message is one line."""


@dataclass
class Held:
    sock: socket.socket  # our reference (a duplicate of the server's open file)
    owners: list[tuple[int, int]]  # (pid, fd) of every process descriptor seen referring to it
    shut: bool = False  # the server let go; the FIN is sent and the rest is read and thrown away
    confirmed: bool = False  # a second scan of every process found the same owners


@dataclass
class ConnectionHold:
    """The VIP's connections held by this process during one drain. Blocking calls: run in a thread."""

    vip: IPAddress
    held: dict[int, Held] = field(default_factory=dict)  # socket inode -> what is held
    error: str = ""  # why connections could not be taken (the first reason), "" if none
    discarded: int = 0  # bytes that came after the server let go (requests it never read)
    _refused: set[int] = field(default_factory=set)  # inodes that could not be duplicated: not retried
    _lock: threading.Lock = field(default_factory=threading.Lock)  # take/let_go run in a thread
    _diag: Any = None
    _libc: Any = None

    def take(self) -> int:
        """Hold every connection to the VIP that a process owns and this hold does not have yet;
        returns how many it took now."""
        with self._lock:
            inodes = self._server_inodes() - set(self.held) - self._refused
        if not inodes:
            return 0
        taken = 0
        for inode, owners in _owners(inodes).items():
            held = self._duplicate(inode, owners)
            with self._lock:
                if held is None:
                    self._refused.add(inode)
                else:
                    self.held[inode] = held
                    taken += 1
        return taken

    def shut_inodes(self) -> frozenset[int]:
        """The sockets whose server let go: this hold closes them, so a drain counts them as closing."""
        with self._lock:
            return frozenset(inode for inode, held in self.held.items() if held.shut)

    def confirm(self) -> None:
        """Scan every process again for the owners of held sockets not yet confirmed (see above)."""
        with self._lock:
            waiting = {i: h.owners for i, h in self.held.items() if not h.confirmed and not h.shut}
        if not waiting:
            return
        found = _owners(set(waiting))
        with self._lock:
            for inode, owners in waiting.items():
                held = self.held.get(inode)
                if held is None or held.shut:
                    continue
                now = found.get(inode, [])
                if now and sorted(now) == sorted(owners):
                    held.confirmed = True
                elif now:
                    held.owners = now

    def gone(self) -> tuple[list[int], list[int]]:
        """The held sockets whose every known owner has closed its descriptor (one readlink each: run
        it often), as (confirmed, unconfirmed): shut the first with `shut` at once, the second with
        `let_go`."""
        with self._lock:
            waiting = [(i, h.owners, h.confirmed) for i, h in self.held.items() if not h.shut]
        sure: list[int] = []
        unsure: list[int] = []
        for inode, owners, confirmed in waiting:
            if _all_gone(inode, owners):
                (sure if confirmed else unsure).append(inode)
        return sure, unsure

    def let_go(self, candidates: list[int]) -> list[int]:
        """Shut each of `candidates` that no other process refers to (every process is looked at);
        returns those inodes."""
        if not candidates:
            return []
        still = _owners(set(candidates))
        with self._lock:
            for inode in candidates:
                held = self.held.get(inode)
                if held is not None and inode in still:
                    held.owners, held.confirmed = still[inode], False
        return self.shut([inode for inode in candidates if inode not in still])

    def shut(self, inodes: list[int]) -> list[int]:
        """Send the FIN the server's close did not: shut each for writing; returns those shut now (to
        read from with `read_away`)."""
        done = []
        with self._lock:
            for inode in inodes:
                held = self.held.get(inode)
                if held is None or held.shut:
                    continue
                held.shut = True
                done.append(inode)
                with contextlib.suppress(OSError):
                    # A server that asked for reset-on-close (SO_LINGER 0) asked it of its own close;
                    # this one is the orderly close it could not make.
                    held.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 0, 0))
                    held.sock.shutdown(socket.SHUT_WR)
        return done

    def fileno(self, inode: int) -> int | None:
        with self._lock:
            held = self.held.get(inode)
            return None if held is None else held.sock.fileno()

    def read_away(self, inode: int) -> bool:
        """Read what came on a shut socket and throw it away; True once the client's FIN (or an error)
        came: then `drop` it."""
        with self._lock:
            held = self.held.get(inode)
        if held is None or not held.shut:
            return True
        while True:
            try:
                data = held.sock.recv(READ_CHUNK, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return False
            except OSError:
                return True
            if not data:
                return True
            self.discarded += len(data)

    def drop(self, inode: int) -> None:
        with self._lock:
            held = self.held.pop(inode, None)
        if held is not None:
            held.sock.close()

    def close(self) -> None:
        """Let go of everything (the drain ended): the server's sockets are its own again."""
        with self._lock:
            inodes = list(self.held)
        for inode in inodes:
            self.drop(inode)
        if self._diag is not None:
            self._diag.close()
            self._diag = None

    def _server_inodes(self) -> set[int]:
        families = (socket.AF_INET, socket.AF_INET6) if self.vip.version == 4 else (socket.AF_INET6,)
        vip = str(self.vip)
        try:
            if self._diag is None:
                self._diag = DiagSocket()
                self._diag.bind()
            replies = [m for family in families for m in self._diag.get_sock_stats(family, _HELD_STATES)]
        except OSError as err:
            raise HoldError(f"sock_diag: {err.strerror or err}") from None
        return {
            int(m["idiag_inode"])
            for m in replies
            if m["idiag_inode"] and m["idiag_src"] in (vip, f"::ffff:{vip}")
        }

    def _duplicate(self, inode: int, owners: list[tuple[int, int]]) -> Held | None:
        for pid, fd in owners:
            try:
                mine = self._getfd(pid, fd)
            except OSError as err:
                if not self.error:
                    self.error = f"pidfd_getfd of pid {pid}: {err.strerror or err}"
                continue
            if os.fstat(mine).st_ino != inode:  # the server closed it and reused the number meanwhile
                os.close(mine)
                continue
            return Held(socket.socket(fileno=mine), owners)
        return None

    def _getfd(self, pid: int, fd: int) -> int:
        if self._libc is None:
            self._libc = ctypes.CDLL(None, use_errno=True)
        pidfd = os.pidfd_open(pid)
        try:
            mine = int(self._libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0))
        finally:
            os.close(pidfd)
        if mine < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code) if code != errno.ENOSYS else "needs Linux 5.6")
        return mine


def _owners(inodes: set[int]) -> dict[int, list[tuple[int, int]]]:
    """inode -> (pid, fd) of every descriptor of another process that refers to one of the sockets."""
    wanted = {f"socket:[{inode}]": inode for inode in inodes}
    found: dict[int, list[tuple[int, int]]] = {}
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        pid = int(entry.name)
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue  # gone, or not ours to see
        for fd in fds:
            with contextlib.suppress(OSError):
                inode = wanted.get(os.readlink(f"/proc/{pid}/fd/{fd}"))
                if inode is not None:
                    found.setdefault(inode, []).append((pid, int(fd)))
    return found


def _all_gone(inode: int, owners: list[tuple[int, int]]) -> bool:
    """No (pid, fd) seen holding the socket refers to it now (closed, reused, or the process ended)."""
    name = f"socket:[{inode}]"
    for pid, fd in owners:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}") == name:
                return False
    return True


async def hold_while_draining(hold: ConnectionHold, every: float, take_every: float) -> None:
    """Until cancelled (the drain ended): every `take_every` s take what new connections came and
    confirm owners; every `every` s close in order those the server let go of; read each of those to
    its client's FIN; at the end, let go of all.

    The looking runs in a thread of its own, not on the event loop: how soon the FIN follows the
    server's close is the window in which a request meets a close without an answer, and the loop
    may be busy with heartbeats for longer than that."""
    loop = asyncio.get_running_loop()
    watched: dict[int, int] = {}  # inode -> fd being read (on the loop)
    stop = threading.Event()

    def readable(inode: int) -> None:
        if hold.read_away(inode):
            loop.remove_reader(watched.pop(inode))
            hold.drop(inode)

    def watch(inodes: list[int]) -> None:
        for inode in inodes:
            fd = hold.fileno(inode)
            if fd is not None and not stop.is_set():
                watched[inode] = fd
                loop.add_reader(fd, readable, inode)

    def look() -> None:
        next_take = 0.0
        while not stop.is_set():
            if time.monotonic() >= next_take:
                next_take = time.monotonic() + take_every
                with contextlib.suppress(HoldError):  # the count reports sock_diag's failures
                    hold.take()
                hold.confirm()
            began = time.monotonic()
            sure, unsure = hold.gone()
            cost = time.monotonic() - began
            shut = hold.shut(sure) + hold.let_go(unsure)
            if shut:
                loop.call_soon_threadsafe(watch, shut)
            # Many connections make a look dear: then look less often, at most ~10 % of a core.
            stop.wait(max(every, LOOK_SHARE * cost))

    looking: asyncio.Future[None] = loop.create_future()

    def ended() -> None:
        if not looking.done():
            looking.set_result(None)

    def run() -> None:  # a thread of its own: the default executor's are for short calls
        try:
            look()
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(ended)

    threading.Thread(target=run, name="connection-hold", daemon=True).start()
    try:
        await asyncio.shield(looking)
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(looking), 5.0)
        for fd in watched.values():
            loop.remove_reader(fd)
        hold.close()
