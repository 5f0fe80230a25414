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
(the rule acts before TCP), but ``install`` still closes those sockets (``ss -K``): they serve nothing,
and they must not be recorded as live. ``ss`` also lists the live connections for ``own``.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterable
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
    return await _run("nft", args, stdin)


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


async def install(cluster: str, vip: IPAddress, old_holder: IPAddress, interface: str) -> int:
    """Put the handoff rule in place (replacing an older one of this cluster), then close the VIP's
    leftover TIME_WAIT sockets here; returns how many it closed.

    Order matters: the record starts before the live connections are listed, so a connection accepted
    in between is in it either way, and the rule comes with the list, in one transaction.
    """
    await remove(cluster, vip.version)
    await _load(ruleset(cluster, vip, old_holder, interface))
    try:
        live = await live_connections(vip)
        await _load(handoff_rule(cluster, vip, old_holder, interface, live))
    except BaseException:
        await remove(cluster, vip.version)  # a record without its rule is of no use to anyone
        raise
    return await close_time_wait(vip)


async def _load(rules: str) -> None:
    code, out = await _nft(["-f", "-"], rules)
    if code != 0:
        raise HandoffError(f"nft -f: {_first_line(out, code)}")


def _first_line(out: str, code: int) -> str:
    """What a failed tool said, in one line."""
    return out.splitlines()[0] if out else f"exit {code}"


def _ss_filter(vip: IPAddress, states: tuple[str, ...], but: tuple[str, ...] = ()) -> list[str]:
    """ss arguments that select the VIP's TCP sockets (local address) in any of ``states``, except
    those in a state of ``but``. No family option: for an IPv4 VIP, ss then also finds the IPv6 sockets
    of a dual-stack listener that serve it (``[::ffff:203.0.113.10]``)."""
    source = str(vip) if vip.version == 4 else f"[{vip}]"
    wanted = [w for state in states for w in ("state", state)]
    wanted += [w for state in but for w in ("exclude", state)]
    return ["-t", "-n", "-H", *wanted, "src", source]


def _endpoint(text: str) -> tuple[IPAddress, int]:
    """``203.0.113.3:40000``, ``[2001:db8::3]:40000`` or ``[::ffff:203.0.113.3]:40000`` (ss -n) ->
    (address, port), a mapped IPv4 address as the IPv4 one the packets carry."""
    host, _, port = text.rpartition(":")
    address = ip_address(host.strip("[]").split("%")[0])
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped, int(port)
    return address, int(port)


async def live_connections(vip: IPAddress) -> list[Connection]:
    """This host's TCP connections on the VIP that are not over: (peer, peer port, VIP port) each.

    Over: the states ``close_time_wait`` closes; recorded, such a tuple would keep a reused client port
    from the handoff.
    """
    code, out = await _run("ss", _ss_filter(vip, ("connected",), but=OVER))
    if code != 0:
        raise HandoffError(f"live connections on the VIP: ss: {_first_line(out, code)}")
    found = []
    for line in out.splitlines():
        fields = line.split()
        try:
            _, port = _endpoint(fields[-2])
            peer, peer_port = _endpoint(fields[-1])
        except (IndexError, ValueError):
            raise HandoffError(f"live connections on the VIP: ss printed {line!r}") from None
        found.append((peer, peer_port, port))
    return found


async def _close(vip: IPAddress, states: tuple[str, ...], what: str) -> int:
    code, out = await _run("ss", ["-K", *_ss_filter(vip, states)])
    if code != 0:
        raise HandoffError(f"{what}: ss -K: {_first_line(out, code)}")
    return len(out.splitlines())


async def close_time_wait(vip: IPAddress) -> int:
    """Close (SOCK_DESTROY) the VIP's TIME_WAIT sockets on this host; returns how many.

    Called on the new holder before it claims, when it does not hold the VIP: none of these serves
    a live connection of its own. A FIN-WAIT-2 is not over: its client's FIN still comes (a drain
    waits for it, and one cut short at drain_max_ms closes its leftovers itself).
    """
    return await _close(vip, OVER, "handoff rule in place, but its TIME_WAIT sockets")


async def close_leftovers(vip: IPAddress) -> int:
    """Close every TCP connection on the VIP here (listeners stay); returns how many.

    For the old holder when its drain ends on schedule: nothing reaches these connections any more
    (the VIP is on no interface here, the new holder's handoff is over), yet a keep-alive server
    keeps its end for a minute or more (nginx: keepalive_timeout 75 s). Left, such a socket hides a
    reused client port from the handoff rule of the next move back, exactly as a TIME_WAIT does.
    Never call it while this host holds or drains the VIP: it would reset live connections.
    """
    return await _close(vip, ("connected",), "leftover connections")


async def remove(cluster: str, version: int) -> int:
    """Take the rule away (absent is fine); returns how many segments it handed off."""
    family = "ip" if version == 4 else "ip6"
    code, out = await _nft(["-j", "list", "table", family, table_name(cluster)])
    handed_off = _counted_packets(out) if code == 0 else 0
    # The rule goes first, on its own: one transaction that deletes both chains unhooks them one after
    # the other, and a SYN-ACK that passes the unhooked record while the rule still hooks prerouting
    # has its connection's next segment handed to the old holder, which resets it (seen in the lab).
    await _nft(["delete", "chain", family, table_name(cluster), "handoff"])
    await _nft(["delete", "table", family, table_name(cluster)])
    return handed_off


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
