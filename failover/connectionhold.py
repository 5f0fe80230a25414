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
and once more (`confirm`) at least `confirm_after` later: an owner set that did not change between the
two is taken as the connection's for good (a server that hands accepted connections to another
process, as Node's cluster primary does, does so right after the accept). For such a connection, that
its owners' descriptors no longer refer to it (one readlink each, every `HOLD_EVERY`), and that no
child of theirs has it (a fork since), is enough, and the FIN leaves at once: the window in which a
request meets a close without an answer stays short. An unconfirmed one is scanned for in every
process again before it is shut. Not seen: a descriptor sent over a Unix socket after the
confirmation, to a process that is not an owner's child (no web server we know of does that with an
accepted connection), and processes this one may not look into (another container's init; without
CAP_SYS_PTRACE every other user's, and then nothing is held at all). A scan that fails otherwise
(EMFILE...) means "not known", never "let go".

Needs CAP_SYS_PTRACE (the web server runs as another user), Linux 5.6 and, under systemd,
`SystemCallFilter=pidfd_getfd` (it is in @debug); without them the drain goes on as before and the
hold says why it could not take the connections (`connections-held ... error`). Each held connection
is one descriptor of the agent's: the agent raises its soft RLIMIT_NOFILE to the hard limit and holds
at most that less `DESCRIPTORS_KEPT`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import resource
import socket
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from failover.connections import is_vip_address
from failover.pyroute2_parts import DiagSocket

IPAddress = IPv4Address | IPv6Address

_SYS_PIDFD_GETFD = 438  # the same number on every architecture (asm-generic since 5.6)
_ESTABLISHED, _CLOSE_WAIT = 1, 8
# A server's connection that may still see a request: served, or the client closed and the server not yet.
_HELD_STATES = (1 << _ESTABLISHED) | (1 << _CLOSE_WAIT)
READ_CHUNK = 65536
READS_PER_TURN = 16  # chunks read away per event-loop turn: a client that keeps sending holds no loop
LOOK_SHARE = 10.0  # the pause after a look is at least this many times what the look cost


DESCRIPTORS_KEPT = 256  # the agent's own descriptors the hold leaves free (hooks' pipes, journal, ...)


def raise_descriptor_limit() -> int:
    """The soft RLIMIT_NOFILE up to the hard one (systemd's soft default is 1024): each held
    connection is a descriptor of the agent's. Returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def hold_limit() -> int:
    """How many connections a drain may hold: the descriptor limit less what the agent keeps."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return max(0, soft - DESCRIPTORS_KEPT - len(os.listdir("/proc/self/fd")))


class HoldError(Exception):
    """The connections cannot be held here; the message is one line."""


@dataclass
class Held:
    sock: socket.socket  # our reference (a duplicate of the server's open file)
    owners: list[tuple[int, int]]  # (pid, fd) of every process descriptor seen referring to it
    taken_at: float  # time.monotonic()
    shut: bool = False  # the server let go; the FIN is sent and the rest is read and thrown away
    confirmed: bool = False  # a later scan of every process found the same owners


@dataclass
class ConnectionHold:
    """The VIP's connections held by this process during one drain. Blocking calls: run in a thread."""

    vip: IPAddress
    limit: int = 1024  # at most this many held (each is a descriptor of the agent's)
    confirm_after: float = 0.1  # an owner set is confirmed by a scan at least this long after the take
    held: dict[int, Held] = field(default_factory=dict)  # socket inode -> what is held
    error: str = ""  # why connections could not all be taken (the first reason), "" if none
    discarded: int = 0  # bytes that came after the server let go (requests it never read)
    _refused: set[int] = field(default_factory=set)  # inodes not to try again
    _gave_up: bool = False  # a scan could not see every process: take nothing more
    _closed: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)  # the look thread and the loop
    _diag: Any = None

    def take(self) -> int:
        """Hold every connection to the VIP that a process owns and this hold does not have yet;
        returns how many it took now."""
        with self._lock:
            if self._closed or self._gave_up:
                return 0
            inodes = self._server_inodes() - set(self.held) - self._refused
            room = self.limit - len(self.held)
        if not inodes:
            return 0
        try:
            owned = _owners(inodes)
        except ScanIncomplete as err:
            self._give_up(f"cannot see every process's descriptors ({err}): CAP_SYS_PTRACE?")
            return 0
        if not owned:
            self._note(f"no owner of the VIP's {len(inodes)} connection(s) visible in /proc: CAP_SYS_PTRACE?")
        taken = 0
        for inode in inodes:
            owners = owned.get(inode)
            held = self._duplicate(inode, owners) if owners and taken < room else None
            with self._lock:
                if held is not None and not self._closed:
                    self.held[inode] = held
                    taken += 1
                    continue
                self._refused.add(inode)
            if held is not None:
                held.sock.close()
            elif owners and taken >= room:
                self._note(f"held the first {self.limit} connections only (the agent's descriptor limit)")
        return taken

    def _note(self, reason: str) -> None:
        if not self.error:
            self.error = reason

    def _give_up(self, reason: str) -> None:
        self._note(reason)
        self._gave_up = True

    def shut_inodes(self) -> frozenset[int]:
        """The sockets whose server let go: this hold closes them, so a drain counts them as closing."""
        with self._lock:
            return frozenset(inode for inode, held in self.held.items() if held.shut)

    def confirm(self) -> None:
        """Scan every process again for the owners of held sockets taken at least `confirm_after` ago
        and not yet confirmed: the same owners then are the connection's for good (see above)."""
        ripe = time.monotonic() - self.confirm_after
        with self._lock:
            waiting = {
                i: h.owners
                for i, h in self.held.items()
                if not h.confirmed and not h.shut and h.taken_at <= ripe
            }
        if not waiting:
            return
        try:
            found = _owners(set(waiting))
        except ScanIncomplete:
            return  # unconfirmed: each is scanned for again before its FIN
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
        it often), as (confirmed, unconfirmed): the first go to `shut_confirmed`, the second to
        `let_go`."""
        with self._lock:
            waiting = [(i, h.owners, h.confirmed) for i, h in self.held.items() if not h.shut]
        sure: list[int] = []
        unsure: list[int] = []
        for inode, owners, confirmed in waiting:
            if _all_gone(inode, owners):
                (sure if confirmed else unsure).append(inode)
        return sure, unsure

    def waiting(self) -> bool:
        """Whether a held socket's server still has it (something to look for)."""
        with self._lock:
            return any(not held.shut for held in self.held.values())

    def shut_confirmed(self, candidates: list[int]) -> list[int]:
        """Shut each of `candidates` (confirmed owners, all gone) unless a child of an owner has it: a
        fork after the confirmation inherited it. Returns those shut."""
        if not candidates:
            return []
        with self._lock:
            pids = {pid for i in candidates if i in self.held for pid, _ in self.held[i].owners}
        children = _children(pids)
        try:
            still = _owners(set(candidates), children) if children else {}
        except ScanIncomplete:
            return []  # not known: the next look tries again
        self._new_owners(still)
        return self.shut([inode for inode in candidates if inode not in still])

    def let_go(self, candidates: list[int]) -> list[int]:
        """Shut each of `candidates` that no other process refers to (every process is looked at);
        returns those inodes."""
        if not candidates:
            return []
        try:
            still = _owners(set(candidates))
        except ScanIncomplete:
            return []
        self._new_owners(still)
        return self.shut([inode for inode in candidates if inode not in still])

    def _new_owners(self, still: dict[int, list[tuple[int, int]]]) -> None:
        with self._lock:
            for inode, owners in still.items():
                held = self.held.get(inode)
                if held is not None:
                    held.owners, held.confirmed, held.taken_at = owners, False, time.monotonic()

    def shut(self, inodes: list[int]) -> list[int]:
        """Send the FIN the server's close did not: shut each for writing; returns those shut now (to
        read from with `read_away`)."""
        done = []
        with self._lock:
            for inode in inodes:
                held = self.held.get(inode)
                if held is None or held.shut or self._closed:
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
        """Read what came on a shut socket and throw it away, at most READS_PER_TURN chunks a call
        (the event loop calls again while there is more); True once the client's FIN (or an error)
        came: then `drop` it."""
        with self._lock:
            held = self.held.get(inode)
        if held is None or not held.shut:
            return True
        for _ in range(READS_PER_TURN):
            try:
                data = held.sock.recv(READ_CHUNK, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return False
            except OSError:
                return True
            if not data:
                return True
            self.discarded += len(data)
        return False

    def drop(self, inode: int) -> None:
        with self._lock:
            held = self.held.pop(inode, None)
        if held is not None:
            held.sock.close()

    def close(self) -> None:
        """Let go of everything (the drain ended): the server's sockets are its own again. A take
        still running in a thread holds nothing more after this."""
        with self._lock:
            self._closed = True
            held, self.held = list(self.held.values()), {}
            diag, self._diag = self._diag, None
            if diag is not None:
                diag.close()
        for one in held:
            one.sock.close()

    def _server_inodes(self) -> set[int]:
        """(Called with the lock held.)"""
        families = (socket.AF_INET, socket.AF_INET6) if self.vip.version == 4 else (socket.AF_INET6,)
        vip = str(self.vip)
        try:
            if self._diag is None:
                self._diag = DiagSocket()
                self._diag.bind()
            replies = [m for family in families for m in self._diag.get_sock_stats(family, _HELD_STATES)]
        except Exception as err:  # pyroute2's NetlinkError is not an OSError
            if self._diag is not None:
                with contextlib.suppress(Exception):
                    self._diag.close()
                self._diag = None
            raise HoldError(f"sock_diag: {getattr(err, 'strerror', None) or err}") from None
        return {
            int(m["idiag_inode"])
            for m in replies
            if m["idiag_inode"] and is_vip_address(m["idiag_src"], vip)
        }

    def _duplicate(self, inode: int, owners: list[tuple[int, int]]) -> Held | None:
        for pid, fd in owners:
            try:
                mine = self.getfd_of(pid, fd)
            except OSError as err:
                if err.errno not in (errno.EBADF, errno.ESRCH):  # closed or ended meanwhile: no error
                    self._note(f"pidfd_getfd of pid {pid}: {err.strerror or err}")
                continue
            try:
                if os.fstat(mine).st_ino != inode:  # the server closed it and reused the number meanwhile
                    os.close(mine)
                    continue
                return Held(socket.socket(fileno=mine), owners, time.monotonic())
            except OSError:
                os.close(mine)
        return None

    @staticmethod
    def getfd_of(pid: int, fd: int) -> int:
        """A duplicate in this process of descriptor `fd` of process `pid` (pidfd_getfd(2))."""
        libc = ctypes.CDLL(None, use_errno=True)
        pidfd = os.pidfd_open(pid)
        try:
            mine = int(libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0))
        finally:
            os.close(pidfd)
        if mine < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code) if code != errno.ENOSYS else "needs Linux 5.6")
        return mine


_GONE = (errno.ENOENT, errno.ESRCH)  # the process or the descriptor is gone
# A process this one may not look into (another container's init, or every other user's without
# CAP_SYS_PTRACE): it could not have been a source of pidfd_getfd either, and a web server does not
# hand its connections to such a process; it is left out. Any other error means "not known".
_NOT_OURS = (errno.EACCES, errno.EPERM)


class ScanIncomplete(Exception):
    """A process's descriptors could not be read (not "gone"): who owns what is not known."""


def _owners(inodes: set[int], pids: Iterable[int] | None = None) -> dict[int, list[tuple[int, int]]]:
    """inode -> (pid, fd) of every descriptor of another process (of `pids`, default all) that refers
    to one of the sockets. Raises ScanIncomplete if a process could not be looked at for another
    reason than being gone or not ours to see (EMFILE, ENOMEM...): a socket it may hold must not be
    taken for free."""
    wanted = {f"socket:[{inode}]": inode for inode in inodes}
    found: dict[int, list[tuple[int, int]]] = {}
    me = os.getpid()
    if pids is None:
        pids = [int(e.name) for e in os.scandir("/proc") if e.name.isdigit()]
    for pid in pids:
        if pid == me:
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError as err:
            if err.errno in _GONE or err.errno in _NOT_OURS:
                continue
            raise ScanIncomplete(f"/proc/{pid}/fd: {err.strerror or err}") from None
        for fd in fds:
            try:
                inode = wanted.get(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError as err:
                if err.errno in _GONE or err.errno in _NOT_OURS:
                    continue  # closed meanwhile, or a process not ours to see
                raise ScanIncomplete(f"/proc/{pid}/fd/{fd}: {err.strerror or err}") from None
            if inode is not None:
                found.setdefault(inode, []).append((pid, int(fd)))
    return found


def _children(pids: Iterable[int]) -> list[int]:
    """The children of each of `pids` (a fork inherits every descriptor), unknown ones left out."""
    found: list[int] = []
    for pid in pids:
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    found += [int(c) for c in f.read().split()]
    return found


def _all_gone(inode: int, owners: list[tuple[int, int]]) -> bool:
    """No (pid, fd) seen holding the socket refers to it now (closed, reused, or the process ended);
    a descriptor that cannot be read for another reason counts as still there."""
    name = f"socket:[{inode}]"
    for pid, fd in owners:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == name:
                return False
        except OSError as err:
            if err.errno not in _GONE:
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
            began = time.thread_time()  # this thread's CPU, not its waits for the GIL
            sure, unsure = hold.gone()
            cost = time.thread_time() - began
            shut = hold.shut_confirmed(sure) + hold.let_go(unsure)
            if shut:
                loop.call_soon_threadsafe(watch, shut)
            if not hold.waiting():
                stop.wait(take_every)  # nothing the server still has: only new connections to look for
                continue
            # Many connections make a look dear: then look less often, at most ~10 % of a core.
            stop.wait(max(every, LOOK_SHARE * cost))

    looking: asyncio.Future[None] = loop.create_future()

    def ended(failure: BaseException | None) -> None:
        if looking.done():
            return
        if failure is None:
            looking.set_result(None)
        else:
            looking.set_exception(failure)  # the task ends with it: logged as task-failed

    def run() -> None:  # a thread of its own: the default executor's are for short calls
        failure: BaseException | None = None
        try:
            look()
        except Exception as err:
            failure = err
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(ended, failure)

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
