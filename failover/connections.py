"""This host's TCP connections to the VIP, as the kernel's sock_diag lists them: what a drain waits for.

The old holder drains until none is left. Counted: every state in which a segment from the client may
still arrive and need this host's socket (ESTABLISHED through LAST_ACK, FIN-WAIT-2 included: after the
server's FIN the client's own FIN still comes, through the new holder's handoff). Not counted: LISTEN,
and TIME-WAIT (the connection is over; a late retransmitted FIN is answered by whoever holds the VIP).

A FIN-WAIT-2 that no process owns any more (the server closed it: nginx's reload does that to every idle
keep-alive connection) is counted apart as `closing` once it has waited `ORPHAN_GRACE`. Everything the
server sent is acknowledged; what it waits for is the client's FIN, which a client watching its socket
sends within milliseconds, and a pool that looks at an idle connection only to reuse it may send a
minute later. The work is over, so the operator may take the host down (the FIN then goes nowhere, and
nobody answers it with a reset); the drain itself still waits for it, up to drain_max_ms, so that the
new holder's handoff brings the FIN here instead of answering it with a reset.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from failover.pyroute2_parts import DiagSocket

IPAddress = IPv4Address | IPv6Address

# TCP states (include/net/tcp_states.h) a drain waits through.
_ESTABLISHED, _SYN_RECV, _FIN_WAIT1, _FIN_WAIT2 = 1, 3, 4, 5
_CLOSE_WAIT, _LAST_ACK, _CLOSING, _NEW_SYN_RECV = 8, 9, 11, 12
OPEN_STATES = (
    _ESTABLISHED,
    _SYN_RECV,
    _FIN_WAIT1,
    _FIN_WAIT2,
    _CLOSE_WAIT,
    _LAST_ACK,
    _CLOSING,
    _NEW_SYN_RECV,
)
_STATE_MASK = sum(1 << s for s in OPEN_STATES)
# How long an orphaned FIN-WAIT-2 waits for the client's FIN before the operator stops waiting with it.
ORPHAN_GRACE = 1.0


class CountError(Exception):
    """sock_diag is not available or refused; the message is one line."""


@dataclass(frozen=True)
class Count:
    open: int  # every connection the drain waits for, `closing` ones included
    oldest_s: float  # the longest any of them has been seen open by this counter
    closing: int = 0  # of them: closed by the server ORPHAN_GRACE ago or more, waiting for the client's FIN


class ConnectionCounter:
    """Counts the VIP's open connections; remembers when it first saw each, to name the oldest."""

    def __init__(self, vip: IPAddress, let_go: Callable[[], frozenset[int]] | None = None) -> None:
        self.vip = vip
        # Inodes of sockets the server let go of but the drain's hold still closes (connectionhold):
        # their FIN-WAIT-2 is the server's closed connection as much as an orphan's.
        self._let_go = let_go
        # A dual-stack listener's IPv4 clients are AF_INET6 sockets with a v4-mapped address.
        self._families = (socket.AF_INET, socket.AF_INET6) if vip.version == 4 else (socket.AF_INET6,)
        self._first_seen: dict[int, float] = {}  # socket cookie -> monotonic time
        self._orphaned_since: dict[int, float] = {}  # cookie of an unowned FIN-WAIT-2 -> first seen so
        self._diag: Any = None

    def count(self, now: float | None = None) -> Count:
        """One count at `now` (default: time.monotonic(); blocking: a netlink dump; run it in a thread)."""
        try:
            if self._diag is None:
                self._diag = DiagSocket()
                self._diag.bind()
            replies = [
                msg for family in self._families for msg in self._diag.get_sock_stats(family, _STATE_MASK)
            ]
        except OSError as err:
            self.close()
            raise CountError(f"sock_diag: {err.strerror or err}") from None
        now = time.monotonic() if now is None else now
        vip = str(self.vip)
        let_go = self._let_go() if self._let_go is not None else frozenset()
        seen: dict[int, float] = {}
        orphans: dict[int, float] = {}
        for msg in replies:
            if msg["idiag_state"] not in OPEN_STATES or not is_vip_address(msg["idiag_src"], vip):
                continue
            cookie = int(msg["idiag_cookie"])
            if msg["idiag_state"] == _FIN_WAIT2 and (
                msg["idiag_inode"] == 0 or msg["idiag_inode"] in let_go
            ):  # no process owns it, or only the drain's hold
                orphans[cookie] = self._orphaned_since.get(cookie, now)
            seen[cookie] = self._first_seen.get(cookie, now)
        self._first_seen, self._orphaned_since = seen, orphans
        oldest = now - min(seen.values()) if seen else 0.0
        closing = sum(1 for since in orphans.values() if now - since >= ORPHAN_GRACE)
        return Count(open=len(seen), oldest_s=oldest, closing=closing)

    def close(self) -> None:
        if self._diag is not None:
            self._diag.close()
            self._diag = None


def is_vip_address(address: str, vip: str) -> bool:
    """sock_diag's local address is the VIP, or the VIP v4-mapped (a dual-stack listener's socket)."""
    return address == vip or address == f"::ffff:{vip}"


async def count_while_draining(
    vip: IPAddress,
    every: float,
    report: Callable[[Count | str], None],
    let_go: Callable[[], frozenset[int]] | None = None,
) -> None:
    """Count now and every `every` seconds until cancelled (the drain ended); a failure is reported as
    its one-line reason, and counting goes on: the core decides what an uncounted drain does."""
    counter = ConnectionCounter(vip, let_go)
    try:
        while True:
            try:
                report(await asyncio.to_thread(counter.count))
            except CountError as err:
                report(str(err))
            await asyncio.sleep(every)
    finally:
        counter.close()
