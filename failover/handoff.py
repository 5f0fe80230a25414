"""Connection handoff during a swap: the only module that speaks to nftables.

While the old holder drains (the VIP ARP-silent on its lo), the new holder passes TCP segments of
connections it does not own to it, instead of answering them with a reset: a connection whose
handshake began on the old holder just before the announcement reached the client finishes there.
The kernel's socket lookup tells the two apart: a segment (not SYN, not RST) that only finds the
wildcard listener belongs to no connection here. `dup to` keeps the VIP as destination and sends
the copy to the old holder's MAC; the original is dropped.

A TIME_WAIT socket left here from when this host last held the VIP (up to 60 s ago) is found by that
lookup too: a client that reuses the port for a connection the old holder owns would have its segments
answered here with the dead connection's ACK, never handed off, until the request times out. Clients
reuse ports within seconds under load, so ``install`` closes those sockets first (``ss -K``): they
serve nothing, the connection they guarded is over.

Limits: only for services whose listening socket is bound to the wildcard address (0.0.0.0 / ::);
a service bound to the VIP itself never matches and keeps today's behaviour (reset).
"""

from __future__ import annotations

import asyncio
import json
import re
from ipaddress import IPv4Address, IPv6Address

IPAddress = IPv4Address | IPv6Address

_SAFE = re.compile(r"[A-Za-z0-9_.-]+")


class HandoffError(Exception):
    """nft refused or is missing; the message is one line."""


def table_name(cluster: str) -> str:
    return f"failover_{cluster.replace('-', '_').replace('.', '_')}"


def ruleset(cluster: str, vip: IPAddress, old_holder: IPAddress, interface: str) -> str:
    if vip.version != old_holder.version:
        raise HandoffError(f"the VIP {vip} and the old holder's address {old_holder} differ in family")
    if not _SAFE.fullmatch(interface) or not _SAFE.fullmatch(cluster):
        raise HandoffError(f"refusing unusual names in an nft rule: {interface!r}, {cluster!r}")
    family = "ip" if vip.version == 4 else "ip6"
    return (
        f"table {family} {table_name(cluster)} {{\n"
        "  chain handoff {\n"
        "    type filter hook prerouting priority mangle; policy accept;\n"
        f'    iifname "{interface}" {family} daddr {vip} tcp flags & (syn | rst) == 0 '
        f'socket wildcard 1 counter dup to {old_holder} device "{interface}" drop\n'
        "  }\n"
        "}\n"
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
    leftover TIME_WAIT sockets here so that the rule sees every connection the old holder owns;
    returns how many it closed."""
    await remove(cluster, vip.version)
    code, out = await _nft(["-f", "-"], ruleset(cluster, vip, old_holder, interface))
    if code != 0:
        raise HandoffError(f"nft -f: {out.splitlines()[0] if out else f'exit {code}'}")
    return await close_time_wait(vip)


def _ss_filter(vip: IPAddress, states: tuple[str, ...]) -> list[str]:
    """ss arguments that select the VIP's TCP sockets (local address) in any of ``states``."""
    family = "-4" if vip.version == 4 else "-6"
    source = str(vip) if vip.version == 4 else f"[{vip}]"
    return [family, "-t", "-n", "-H", *(w for state in states for w in ("state", state)), "src", source]


async def _close(vip: IPAddress, states: tuple[str, ...], what: str) -> int:
    code, out = await _run("ss", ["-K", *_ss_filter(vip, states)])
    if code != 0:
        raise HandoffError(f"{what}: ss -K: {out.splitlines()[0] if out else f'exit {code}'}")
    return len(out.splitlines())


async def close_time_wait(vip: IPAddress) -> int:
    """Close (SOCK_DESTROY) the VIP's TIME_WAIT sockets on this host; returns how many.

    Called on the new holder before it claims, when it does not hold the VIP: none of these serves
    a live connection of its own. FIN-WAIT-2 is included: a socket whose client's FIN went to the
    other host during an earlier move lingers there just the same.
    """
    return await _close(vip, ("time-wait", "fin-wait-2"), "handoff rule in place, but its TIME_WAIT sockets")


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
