"""Kernel settings that matter to failover: reading them, and judging them.

Owns the names, the values a swap needs, and the exact command that fixes each. Reads /proc/sys only
(per network namespace, so a lab host sees its own); never writes a setting.
"""

from __future__ import annotations

from pathlib import Path

from failover.findings import FAIL, OK
from failover.findings import Check as Finding

PROC = Path("/proc/sys/net")


def read(*parts: str, proc: Path = PROC) -> int:
    """`read("ipv4", "conf", "all", "arp_ignore")` -> its value; OSError/ValueError when unreadable.

    Parts, not a dotted name: an interface name may itself contain dots (a VLAN such as eth0.100).
    """
    return int(proc.joinpath(*parts).read_text().strip())


def dotted(*parts: str) -> str:
    """The name sysctl(8) takes; dots inside an interface name are written as slashes."""
    return ".".join(["net", *(p.replace(".", "/") for p in parts)])


def _fix(name: str, value: int) -> str:
    return (
        f"sysctl -w {name}={value} && echo '{name} = {value}' >> /etc/sysctl.d/90-failover.conf"
    )


# The values of each setting under which the drain copy of the VIP on lo answers no ARP for it.
DRAIN_SAFE = {"arp_ignore": (1, 2, 8), "arp_announce": (2,)}


def effective(interface: str, setting: str, proc: Path = PROC) -> int:
    """The value the kernel uses for a per-interface IPv4 setting: the larger of `all` and the interface's."""
    return max(read("ipv4", "conf", conf, setting, proc=proc) for conf in ("all", interface))


def drain_blocker(interface: str, family: int, proc: Path = PROC) -> str:
    """Why the lo drain copy would still answer ARP for the VIP here ("" when it is safe).

    Linux answers ARP for any local address on any interface unless arp_ignore says otherwise, and with
    arp_announce < 2 it may use the VIP as the sender of its own ARP requests, which would pull clients
    back. IPv6 answers neighbour solicitations only for addresses on the receiving interface.
    """
    if family == 6:
        return ""
    try:
        ignore = effective(interface, "arp_ignore", proc)
        announce_level = effective(interface, "arp_announce", proc)
    except (OSError, ValueError) as err:
        return f"cannot read arp sysctls: {err}"
    if ignore not in DRAIN_SAFE["arp_ignore"] or announce_level not in DRAIN_SAFE["arp_announce"]:
        return (
            f"arp_ignore={ignore} arp_announce={announce_level} on {interface}; "
            f"drain needs arp_ignore=1 and arp_announce=2"
        )
    return ""


def judge(interface: str, family: int, *, drain: bool, vip_bound: bool, proc: Path = PROC) -> list[Finding]:
    """Every setting that matters on this host for a VIP on `interface`, judged, each with its fix."""
    found: list[Finding] = []
    if family == 4:
        for setting, want in (("arp_ignore", 1), ("arp_announce", 2)):
            name = dotted("ipv4", "conf", interface, setting)
            try:
                value = effective(interface, setting, proc)
            except (OSError, ValueError) as err:
                found.append(Finding(name, FAIL, f"cannot read: {err}"))
                continue
            good = value in DRAIN_SAFE[setting]
            if good or not drain:
                why = "" if good else " (swap.drain_ms is 0, so the drain that needs it is off)"
                found.append(Finding(name, OK, f"{value}{why}"))
            else:
                found.append(
                    Finding(
                        name,
                        FAIL,
                        f"{value} (effective, max of all and {interface}); the drain needs {want}, "
                        "without it the agent skips the drain and a request in flight may be reset",
                        _fix(name, want),
                    )
                )
    if family == 4:
        name = dotted("ipv4", "conf", interface, "promote_secondaries")
        try:
            value = effective(interface, "promote_secondaries", proc)
        except (OSError, ValueError) as err:
            found.append(Finding(name, FAIL, f"cannot read: {err}"))
        else:
            if value == 1:
                found.append(Finding(name, OK, "1"))
            else:
                found.append(
                    Finding(
                        name,
                        FAIL,
                        "0: removing a primary address of the VIP's subnet also removes its secondaries",
                        _fix(name, 1),
                    )
                )
    ip = "ipv4" if family == 4 else "ipv6"
    nonlocal_name = dotted(ip, "ip_nonlocal_bind")
    try:
        nonlocal_bind = read(ip, "ip_nonlocal_bind", proc=proc)
    except (OSError, ValueError) as err:
        found.append(Finding(nonlocal_name, FAIL, f"cannot read: {err}"))
    else:
        if nonlocal_bind == 1 or not vip_bound:
            why = "" if nonlocal_bind == 1 else " (not needed: no listener is bound to the VIP itself)"
            found.append(Finding(nonlocal_name, OK, f"{nonlocal_bind}{why}"))
        else:
            found.append(
                Finding(
                    nonlocal_name,
                    FAIL,
                    "0 and a listener is bound to the VIP: the web server cannot start on the host "
                    "that does not hold it (or better: listen on the wildcard address)",
                    _fix(nonlocal_name, 1),
                )
            )
    return found
