"""Connection handoff during a swap: the only module that speaks to nftables.

While the old holder drains (the VIP ARP-silent on its lo), the new holder passes TCP segments of
connections it does not own to it, instead of answering them with a reset: a connection open on the old
holder when the announcement reached the client finishes there. ``dup to`` keeps the VIP as destination
and sends the copy to the old holder's MAC; the original is dropped.

How a segment is known to be someone else's: the rule keeps its own record. From the moment the table is
loaded, every segment with SYN that leaves this host from the VIP (the SYN-ACK of a connection it accepts,
the SYN of one it opens) adds (peer address, peer port, VIP port) to the set ``own``; ``install`` adds the
connections this host already has on the VIP (a host taking the VIP back while it still drains it). A
segment to the VIP that carries no SYN and whose tuple is not in ``own`` belongs to no connection here, and
is handed off. The verdict does not depend on which socket the kernel would find, so a listener bound to
the VIP itself (``listen 203.0.113.10:80`` with ``ip_nonlocal_bind``) is covered exactly like one on the
wildcard address, and so is IPv6. Client RSTs are handed off too: the old holder learns of an abort.

What else was weighed, and why not:
- The ``socket`` expression (what this rule used before): it finds the socket the segment would reach,
  established first, then the listener, and its keys (``transparent``, ``mark``, ``wildcard``,
  ``cgroupv2``) only describe that socket. ``socket wildcard 1`` tells "only the wildcard listener
  matched", but a listener bound to the VIP and an established socket are both bound to the VIP; an
  accepted socket also inherits the listener's mark and transparency, so no key tells them apart. And
  ``wildcard`` needs a full socket: at a TIME_WAIT one the rule stops and the segment reaches TCP, which
  answers with the dead connection's ACK.
- Conntrack (``ct state new`` on a segment without SYN: a mid-stream pickup, which only happens with
  ``nf_conntrack_tcp_loose=1``): with loose pickup off the same segment is ``invalid``, as is an
  out-of-window segment of a connection this host owns, which must never be handed off (the old holder
  would answer it with an RST the client accepts). Worse, conntrack entries outlive what they describe:
  a client port reused for a connection the old holder owns meets this host's entry of the earlier
  connection (TIME_WAIT for 2 minutes, or frozen in its last state when the hooks were off meanwhile:
  with no other conntrack user they are registered only while a ``ct`` rule is loaded, and
  unregistering them leaves the entries), is
  judged against that connection's window and turns ``invalid``: the port-reuse failure of the TIME_WAIT
  socket again, for longer.
  Removing those entries needs conntrack-tools or ctnetlink, not nft. It would also load nf_conntrack
  and track every flow of the family in this namespace (a hash entry per connection, a lookup per
  packet, drops when ``nf_conntrack_max`` is reached) just for a drain.
- ``fib`` and ``meta`` keys see routes, interfaces and marks, never sockets: the VIP is local here
  either way.
A fresh set per install has none of these limits: nothing in it predates the table, and it needs neither
nf_conntrack nor nft_socket (sets updated from rules and a negated lookup are older kernel features than
the ``socket`` expression the rule used before). Its cost is one hash lookup
per segment to the VIP while the rule exists, and one element per connection this host opens in that
time. If the set is full (``OWN_CAPACITY``) the SYN-ACK is dropped and the client retries, rather than a
connection being accepted that the rule would then hand away.

A TIME_WAIT socket left here from when this host last held the VIP no longer hides a reused client port
(the rule acts before TCP), but ``install`` still closes those sockets (SOCK_DESTROY, as ``ss -K`` does):
they serve nothing, and they must not be recorded as live. The kernel's sock_diag lists the live
connections for ``own``, in this process (no ``ss`` started).
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import json
import os
import re
import socket
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address

IPAddress = IPv4Address | IPv6Address
Connection = tuple[IPAddress, int, int]  # peer, peer's port, the VIP's port

# Connections this host may open on the VIP during one handoff; an element costs ~100 bytes (measured).
OWN_CAPACITY = 1 << 20
# The ss states of a socket whose connection is over here (see close_time_wait). Not FIN-WAIT-2: the
# server closed, but the client's FIN is still to come, and this host may be draining it right now (a
# move back soon after the last one: a command returns once only such connections are left); closing it
# would send that client a reset, and leaving it out of the record would hand its FIN away.
OVER = ("time-wait",)

_SAFE = re.compile(r"[A-Za-z0-9_.-]+")


class HandoffError(Exception):
    """nft refused or is missing; the message is one line."""


def table_name(cluster: str) -> str:
    return f"failover_{cluster.replace('-', '_').replace('.', '_')}"


def _family(vip: IPAddress) -> tuple[str, str]:
    """The nft table family and the set's address type for the VIP's family."""
    return ("ip", "ipv4_addr") if vip.version == 4 else ("ip6", "ipv6_addr")


def _checked(cluster: str, vip: IPAddress, old_holder: IPAddress, interface: str) -> None:
    if vip.version != old_holder.version:
        raise HandoffError(f"the VIP {vip} and the old holder's address {old_holder} differ in family")
    if not _SAFE.fullmatch(interface) or not _SAFE.fullmatch(cluster):
        raise HandoffError(f"refusing unusual names in an nft rule: {interface!r}, {cluster!r}")


def ruleset(cluster: str, vip: IPAddress, old_holder: IPAddress, interface: str) -> str:
    """The table without its handoff rule: the record of own connections, recording from now on."""
    _checked(cluster, vip, old_holder, interface)
    family, address = _family(vip)
    own = f"{family} saddr {vip} tcp flags & syn == syn"
    return (
        f"table {family} {table_name(cluster)} {{\n"
        "  set own {\n"
        f"    type {address} . inet_service . inet_service; size {OWN_CAPACITY}; flags dynamic;\n"
        "  }\n"
        "  chain own_connections {\n"
        "    type filter hook output priority mangle; policy accept;\n"
        f"    {own} add @own {{ {family} daddr . tcp dport . tcp sport }} accept\n"
        # Only reached when the set is full: no connection rather than one the rule would hand away.
        f"    {own} drop\n"
        "  }\n"
        "}\n"
    )


def handoff_rule(
    cluster: str, vip: IPAddress, old_holder: IPAddress, interface: str, live: Iterable[Connection] = ()
) -> str:
    """What completes ``ruleset``: this host's live connections on the VIP, then the rule itself."""
    _checked(cluster, vip, old_holder, interface)
    family, _ = _family(vip)
    table = f"{family} {table_name(cluster)}"
    elements = ", ".join(f"{peer} . {peer_port} . {port}" for peer, peer_port, port in live)
    return (
        (f"add element {table} own {{ {elements} }}\n" if elements else "")
        + f"add chain {table} handoff {{ type filter hook prerouting priority mangle; policy accept; }}\n"
        f'add rule {table} handoff iifname "{interface}" {family} daddr {vip} tcp flags & syn == 0 '
        f"{family} saddr . tcp sport . tcp dport != @own "
        f'counter dup to {old_holder} device "{interface}" drop\n'
    )


async def _nft(args: list[str], stdin: str | None = None) -> tuple[int, str]:
    """``nft ARGS`` (``-f -`` reads ``stdin``), as (exit code, what it printed): the one way in to nftables.

    In this process through libnftables, the library the ``nft`` command is made of: the same text, the
    same transactions (a buffer is one, as with ``nft -f``), without a process started for each. A new
    holder places its handoff with several of these before it says it is ready, and each ``nft`` process
    costs 2-3 ms on an idle host, 5-7 ms on a busy one, against well under 1 ms here. Where the library
    cannot be loaded, the ``nft`` command does the same.
    """
    lib = _libnftables()
    if lib is None:
        return await _run("nft", args, stdin)
    return await asyncio.wait_for(asyncio.to_thread(_nft_in_process, lib, args, stdin), 5.0)


_NFT_CTX_OUTPUT_JSON = 1 << 4  # nftables/libnftables.h
# One command at a time: libnftables does not say that two contexts may run at once (the kernel would
# serialise their transactions anyway).
_nft_lock = threading.Lock()
_nft_lib: list[ctypes.CDLL | None] = []  # loaded at the first command


def _libnftables() -> ctypes.CDLL | None:
    if not _nft_lib:
        try:
            lib = ctypes.CDLL("libnftables.so.1")
        except OSError:
            _nft_lib.append(None)
            return None
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        _nft_lib.append(lib)
    return _nft_lib[0]


def _nft_command(args: list[str], stdin: str | None) -> tuple[bool, str]:
    """What ``nft ARGS`` would run, as libnftables takes it: (JSON output, the command text)."""
    as_json = args[:1] == ["-j"]
    rest = args[1:] if as_json else args
    return as_json, (stdin or "") if rest == ["-f", "-"] else " ".join(rest)


def _nft_in_process(lib: ctypes.CDLL, args: list[str], stdin: str | None) -> tuple[int, str]:
    """Blocking (netlink): run it in a thread. A fresh context per command, as a fresh ``nft`` has."""
    as_json, text = _nft_command(args, stdin)
    with _nft_lock:
        ctx = lib.nft_ctx_new(0)
        if not ctx:
            return 1, "libnftables: no context"
        try:
            lib.nft_ctx_buffer_output(ctx)
            lib.nft_ctx_buffer_error(ctx)
            if as_json:
                lib.nft_ctx_output_set_flags(ctx, _NFT_CTX_OUTPUT_JSON)
            code = 0 if lib.nft_run_cmd_from_buffer(ctx, text.encode()) == 0 else 1
            out = lib.nft_ctx_get_output_buffer(ctx) if code == 0 else lib.nft_ctx_get_error_buffer(ctx)
        finally:
            lib.nft_ctx_free(ctx)
    return code, (out or b"").decode(errors="replace").strip()


async def _run(tool: str, args: list[str], stdin: str | None = None) -> tuple[int, str]:
    try:
        proc = await asyncio.create_subprocess_exec(
            tool,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
    except OSError as err:
        raise HandoffError(f"{tool}: {err.strerror or err}") from None
    out, _ = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin else None), 5.0)
    return int(proc.returncode or 0), out.decode(errors="replace").strip()


async def install(
    cluster: str, vip: IPAddress, old_holder: IPAddress, interface: str, *, present: bool = True
) -> int:
    """Put the handoff rule in place (replacing an older one of this cluster, unless the caller knows
    there is none: `present` False), then close the VIP's leftover TIME_WAIT sockets here; returns how
    many it closed.

    Order matters: the record starts before the live connections are listed, so a connection accepted
    in between is in it either way, and the rule comes with the list, in one transaction.
    """
    if present:
        await remove(cluster, vip.version)
    await _load(ruleset(cluster, vip, old_holder, interface))
    try:
        live, over = await connections(vip)
        await _load(handoff_rule(cluster, vip, old_holder, interface, live))
    except BaseException:
        await remove(cluster, vip.version)  # a record without its rule is of no use to anyone
        raise
    # `ss -K` only when the list just read had such sockets: a host that did not hold the VIP lately has
    # none, and then no process is started for them on the way to ready.
    return await close_time_wait(vip) if over else 0


async def _load(rules: str) -> None:
    code, out = await _nft(["-f", "-"], rules)
    if code != 0:
        raise HandoffError(f"nft -f: {_first_line(out, code)}")


def _first_line(out: str, code: int) -> str:
    """What a failed tool said, in one line."""
    return out.splitlines()[0] if out else f"exit {code}"


async def connections(vip: IPAddress) -> tuple[list[Connection], int]:
    """This host's TCP connections on the VIP that are not over, (peer, peer port, VIP port) each, and
    how many sockets on the VIP are over (``OVER``, the states ``close_time_wait`` closes).

    What ``ss -t -n state connected src VIP`` lists (every state but listening and closed, IPv6 sockets
    of a dual-stack listener included), asked of the kernel's sock_diag in this process: no ``ss``
    started on the new holder's way to ready (~5 ms idle, more on a busy host). Recorded, an over
    socket's tuple would keep a reused client port from the handoff.
    """
    try:
        sockets = await asyncio.wait_for(asyncio.to_thread(_tcp_sockets, vip, _CONNECTED), 5.0)
    except OSError as err:
        raise HandoffError(f"live connections on the VIP: sock_diag: {err.strerror or err}") from None
    found, over = [], 0
    for one in sockets:
        if one.state in OVER:
            over += 1
        else:
            found.append((one.peer, one.peer_port, one.port))
    return found, over


async def _close(vip: IPAddress, states: int, what: str) -> int:
    """Close (SOCK_DESTROY, as ``ss -K`` does) the VIP's TCP sockets in `states`; returns how many."""
    try:
        return await asyncio.wait_for(asyncio.to_thread(_destroy, vip, states), 5.0)
    except OSError as err:
        raise HandoffError(f"{what}: sock_diag: {err.strerror or err}") from None


async def close_time_wait(vip: IPAddress) -> int:
    """Close (SOCK_DESTROY) the VIP's TIME_WAIT sockets on this host; returns how many.

    Called on the new holder before it claims, when it does not hold the VIP: none of these serves
    a live connection of its own. A FIN-WAIT-2 is not over: its client's FIN still comes (a drain
    waits for it, and one cut short at drain_max_ms closes its leftovers itself).
    """
    states = sum(1 << _TCP_STATES[name] for name in OVER)
    return await _close(vip, states, "handoff rule in place, but its TIME_WAIT sockets")


async def close_leftovers(vip: IPAddress) -> int:
    """Close every TCP connection on the VIP here (listeners stay); returns how many.

    For the old holder when its drain ends on schedule: nothing reaches these connections any more
    (the VIP is on no interface here, the new holder's handoff is over), yet a keep-alive server
    keeps its end for a minute or more (nginx: keepalive_timeout 75 s). Left, such a socket hides a
    reused client port from the handoff rule of the next move back, exactly as a TIME_WAIT does.
    Never call it while this host holds or drains the VIP: it would reset live connections.
    """
    return await _close(vip, _CONNECTED, "leftover connections")


# --- sock_diag: the kernel's list of sockets, what ss reads, in this process ------------------------------

_NETLINK_SOCK_DIAG, _TCPDIAG_GETSOCK, _SOCK_DIAG_BY_FAMILY, _SOCK_DESTROY = 4, 18, 20, 21
# What a kernel without TCPDIAG_GETSOCK (CONFIG_INET_DIAG's older request) answers it with.
_NO_OLDER_REQUEST = (errno.EINVAL, errno.ENOENT, errno.EOPNOTSUPP)
_NLM_F_REQUEST, _NLM_F_ACK, _NLM_F_DUMP, _NLMSG_ERROR, _NLMSG_DONE = 0x1, 0x4, 0x300, 2, 3
_TCP_TIME_WAIT, _TCP_CLOSE, _TCP_LISTEN, _TCP_MAX_STATE = 6, 7, 10, 12  # include/net/tcp_states.h
# ss's `connected`: every state but listening and closed (TIME_WAIT and SYN_RECV too).
_CONNECTED = sum(1 << s for s in range(1, _TCP_MAX_STATE + 1) if s not in (_TCP_CLOSE, _TCP_LISTEN))
# inet_diag_msg up to its sockid's addresses: family, state, timer, retrans, then sport, dport (__be16)
_DIAG_MSG = struct.Struct("!BBBBHH16s16s")
_SOCKID_BYTES = 48  # inet_diag_sockid: ports, addresses, interface, cookie
_TCP_STATES = {"time-wait": _TCP_TIME_WAIT}  # the names OVER uses, as ss prints them
_STATE_NAMES = {number: name for name, number in _TCP_STATES.items()}


@dataclass(frozen=True)
class _Socket:
    family: int
    state: str  # "time-wait", or the kernel's number for the others (only OVER is told apart)
    local: IPAddress
    port: int
    peer: IPAddress
    peer_port: int
    sockid: bytes  # as the kernel gave it: what SOCK_DESTROY names the socket by


def _tcp_sockets(vip: IPAddress, states: int, nl: socket.socket | None = None) -> list[_Socket]:
    """This namespace's TCP sockets on the VIP in `states` (a mask of TCP states): IPv4 and IPv6 ones
    for an IPv4 VIP (a dual-stack listener's, its mapped address read as the IPv4 one), IPv6 ones for
    an IPv6 VIP. Blocking (netlink): run it in a thread."""
    if nl is None:
        with _diag_socket() as own:
            return _tcp_sockets(vip, states, own)
    if vip.version == 4:
        # Both families in one walk of the kernel's TCP hash, as the older request gives them: each walk
        # is ~2 ms of a new holder's way to ready here (262144 buckets, shared by every namespace).
        # inet_diag_req: family, address lengths, extensions (none), a zero sockid (any), states, dbs.
        req = struct.pack("=BBBB", socket.AF_INET, 0, 0, 0) + bytes(_SOCKID_BYTES)
        req += struct.pack("=II", states, 0)
        _send(nl, _TCPDIAG_GETSOCK, _NLM_F_REQUEST | _NLM_F_DUMP, req)
        try:
            return [one for one in _read_dump(nl) if one.local == vip]
        except OSError as err:
            if err.errno not in _NO_OLDER_REQUEST:
                raise
        families: tuple[int, ...] = (socket.AF_INET, socket.AF_INET6)  # a kernel without it: one walk each
    else:
        families = (socket.AF_INET6,)
    found: list[_Socket] = []
    for family in families:
        # inet_diag_req_v2: family, protocol, extensions (none), pad, states, a zero sockid (any)
        req = struct.pack("=BBBxI", family, socket.IPPROTO_TCP, 0, states) + bytes(_SOCKID_BYTES)
        _send(nl, _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST | _NLM_F_DUMP, req)
        found += [one for one in _read_dump(nl) if one.local == vip]
    return found


def _destroy(vip: IPAddress, states: int) -> int:
    """SOCK_DESTROY each of the VIP's sockets in `states`, as ``ss -K`` does; returns how many closed
    (one already gone is not counted). Blocking (netlink): run it in a thread."""
    closed = 0
    with _diag_socket() as nl:
        for one in _tcp_sockets(vip, states, nl):
            req = struct.pack("=BBBxI", one.family, socket.IPPROTO_TCP, 0, states) + one.sockid
            _send(nl, _SOCK_DESTROY, _NLM_F_REQUEST | _NLM_F_ACK, req)
            error = _read_ack(nl)
            if error == 0:
                closed += 1
            elif error != errno.ENOENT:
                raise OSError(error, f"SOCK_DESTROY: {os.strerror(error)}")
    return closed


def _diag_socket() -> socket.socket:
    nl = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG)
    nl.settimeout(5.0)
    return nl


def _send(nl: socket.socket, kind: int, flags: int, payload: bytes) -> None:
    nl.send(struct.pack("=IHHII", 16 + len(payload), kind, flags, 0, 0) + payload)


def _read_ack(nl: socket.socket) -> int:
    """The error number of the kernel's answer to a request with NLM_F_ACK (0: done)."""
    data = nl.recv(1 << 16)
    length, kind = struct.unpack_from("=IH", data, 0)
    if kind != _NLMSG_ERROR or length < 20:
        raise OSError(f"sock_diag: answer of type {kind}, not an acknowledgement")
    error: int = struct.unpack_from("=i", data, 16)[0]
    return -error


def _read_dump(nl: socket.socket) -> list[_Socket]:
    found: list[_Socket] = []
    while True:
        data, offset = nl.recv(1 << 17), 0
        while offset + 16 <= len(data):
            length, kind = struct.unpack_from("=IH", data, offset)
            if length < 16:
                raise OSError(f"sock_diag: a message of {length} bytes")
            if kind == _NLMSG_DONE:
                # A dump that failed once begun (no tcp_diag, say) says so here, not in an NLMSG_ERROR:
                # read as "no sockets", the fallback would never run and the record would miss some.
                (done,) = struct.unpack_from("=i", data, offset + 16) if length >= 20 else (0,)
                if done < 0:
                    raise OSError(-done, f"sock_diag: {os.strerror(-done)}")
                return found
            if kind == _NLMSG_ERROR:
                (error,) = struct.unpack_from("=i", data, offset + 16)
                raise OSError(-error, f"sock_diag: {os.strerror(-error)}")
            if kind in (_SOCK_DIAG_BY_FAMILY, _TCPDIAG_GETSOCK):
                body = offset + 16
                family, state, _, _, sport, dport, src, dst = _DIAG_MSG.unpack_from(data, body)
                size = 4 if family == socket.AF_INET else 16
                found.append(_Socket(
                    family, _STATE_NAMES.get(state, str(state)), _address(src[:size]), sport,
                    _address(dst[:size]), dport, bytes(data[body + 4:body + 4 + _SOCKID_BYTES]),
                ))
            offset += (length + 3) & ~3


def _address(raw: bytes) -> IPAddress:
    address = ip_address(raw)
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


async def remove(cluster: str, version: int) -> int:
    """Take the rule away (absent is fine); returns how many segments it handed off."""
    family = "ip" if version == 4 else "ip6"
    code, out = await _nft(["-j", "list", "table", family, table_name(cluster)])
    if code != 0 and "No such file or directory" in out:
        # Nothing to take away (a new holder's first handoff, most often): no delete is sent, as each
        # costs a kernel transaction of 10-16 ms here even when it fails.
        return 0
    handed_off = _counted_packets(out) if code == 0 else 0
    # The rule goes first, on its own: one transaction that deletes both chains unhooks them one after
    # the other, and a SYN-ACK that passes the unhooked record while the rule still hooks prerouting
    # has its connection's next segment handed to the old holder, which resets it (seen in the lab).
    await _nft(["delete", "chain", family, table_name(cluster), "handoff"])
    await _nft(["delete", "table", family, table_name(cluster)])
    return handed_off


async def absent(cluster: str, version: int) -> bool:
    """nftables says this cluster's table is not there (any other answer: it may be)."""
    family = "ip" if version == 4 else "ip6"
    code, out = await _nft(["-j", "list", "table", family, table_name(cluster)])
    return code != 0 and "No such file or directory" in out


def _counted_packets(listing: str) -> int:
    try:
        doc = json.loads(listing)
    except ValueError:
        return 0
    total = 0
    for item in doc.get("nftables", []):
        for expr in item.get("rule", {}).get("expr", []):
            counter = expr.get("counter") if isinstance(expr, dict) else None
            if isinstance(counter, dict):
                total += int(counter.get("packets", 0))
    return total
