"""The kernel witness: which clients the VIP's service answered on this host since the claim.

For a log format without the server address, a log line cannot say whether a request was sent to the VIP
or to this node's own address. The new holder asks the kernel instead: from the claim on, an nftables set
collects the destination of every packet the service sends from VIP:port (resets excluded), that is every
client whose connection to the VIP reached a listening socket here. `accesslog.proof` then counts a log line
only if its client is in that set.

Why replies and not requests: a client's SYN to the VIP may be seen in prerouting and then dropped by the
host's firewall, which is exactly the failed move to catch. A reply leaving through postrouting, after
every filter of the default priorities, means the service got the packet. A reset (no listener, a segment
of a connection this host never had) proves nothing, so it is left out; so is the host talking to itself
over `lo`.

Limits: the witness knows clients, not requests: a client that reached the VIP once and also polls this
node's own address has its later lines to the node counted too. A filter that drops in postrouting after
priority 300 is not seen. The set holds at most `MAX_CLIENTS` addresses; beyond that, clients are not
recorded (so not counted), never wrongly recorded.

Needs: nftables sets updated from the packet path (`add @set { ip daddr }`, the kernel's dynset
expression, Linux >= 4.3), an `inet` table with a `postrouting` filter chain, `nft -j` JSON listings
(nftables >= 0.9.0). Tested with nftables 1.0.6 on Linux 6.18.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Final

from failover.handoff import HandoffError, table_name
from failover.handoff import _nft as nft

IPAddress = IPv4Address | IPv6Address

MAX_CLIENTS: Final = 65536
# Postrouting, after the filter (0) and source NAT (100) priorities: what got this far leaves the host.
_PRIORITY: Final = 300
_SAFE = re.compile(r"[A-Za-z0-9_.-]+")


class WitnessError(Exception):
    """nft refused, is missing, or the witness is not installed; the message is one line."""


def witness_table(cluster: str) -> str:
    return f"{table_name(cluster)}_witness"


def ruleset(cluster: str, vip: IPAddress, ports: Collection[int]) -> str:
    """The nft text of the witness for `vip` serving on TCP `ports`."""
    if not _SAFE.fullmatch(cluster):
        raise WitnessError(f"refusing an unusual cluster name in an nft rule: {cluster!r}")
    if not ports or any(isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 65535 for p in ports):
        raise WitnessError(f"the witness needs TCP ports between 1 and 65535, got {sorted(ports)!r}")
    family, kind = ("ip", "ipv4_addr") if vip.version == 4 else ("ip6", "ipv6_addr")
    port_set = ", ".join(str(p) for p in sorted(set(ports)))
    return (
        f"table inet {witness_table(cluster)} {{\n"
        f"  set clients {{ type {kind}; flags dynamic; size {MAX_CLIENTS}; }}\n"
        "  chain answered {\n"
        f"    type filter hook postrouting priority {_PRIORITY}; policy accept;\n"
        f'    oifname != "lo" {family} saddr {vip} tcp sport {{ {port_set} }} tcp flags & rst == 0 '
        f"add @clients {{ {family} daddr }}\n"
        "  }\n"
        "}\n"
    )


async def _run(args: list[str], stdin: str | None = None) -> tuple[int, str]:
    try:
        return await nft(args, stdin)
    except HandoffError as err:
        raise WitnessError(str(err)) from None
    except TimeoutError:
        raise WitnessError(f"nft {' '.join(args)}: no answer within 5 s") from None


async def install(cluster: str, vip: IPAddress, ports: Collection[int]) -> None:
    """Start witnessing with an empty set (replacing an older witness of this cluster)."""
    text = ruleset(cluster, vip, ports)
    await remove(cluster)
    code, out = await _run(["-f", "-"], text)
    if code != 0:
        raise WitnessError(f"nft -f: {out.splitlines()[0] if out else f'exit {code}'}")


async def sources(cluster: str) -> frozenset[str]:
    """The clients answered from VIP:port since `install`, in canonical form (IPv6 compressed)."""
    code, out = await _run(["-j", "list", "set", "inet", witness_table(cluster), "clients"])
    if code != 0:
        why = out.splitlines()[0] if out else f"exit {code}"
        raise WitnessError(f"no witness for cluster {cluster}: {why}")
    return _elements(out)


async def remove(cluster: str) -> None:
    """Take the witness away; absent is fine."""
    await _run(["delete", "table", "inet", witness_table(cluster)])


def _elements(listing: str) -> frozenset[str]:
    try:
        doc = json.loads(listing)
    except ValueError:
        raise WitnessError("nft -j list set: not JSON") from None
    found: set[str] = set()
    for item in doc.get("nftables", []):
        for element in item.get("set", {}).get("elem", []) if isinstance(item, dict) else []:
            # A plain address, or {"elem": {"val": address, ...}} when an element carries a timeout.
            value = element.get("elem", {}).get("val") if isinstance(element, dict) else element
            try:
                found.add(str(ip_address(str(value))))
            except ValueError:
                continue
    return frozenset(found)
