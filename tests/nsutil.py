"""Network-namespace topologies for the adapter tests: hosts joined by a bridge in its own namespace.

Nothing is created in the root namespace: the bridge namespace creates each veth pair and puts the peer
straight into its host namespace as ``eth0``. Every name carries a per-run prefix ("fo" + 6 hex digits),
addresses come only from 203.0.113.0/24 and 2001:db8::/32, and ``topology()`` removes every namespace it
made, whatever happens inside the ``with``.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

NEEDS_ROOT_REASON = "needs root to create network namespaces"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def is_root() -> bool:
    return os.geteuid() == 0


@dataclass(frozen=True)
class Host:
    name: str  # short name: "a", "b", "c"
    netns: str
    mac: str
    ip4: str  # without prefix
    ip6: str


@dataclass
class Topology:
    prefix: str
    bridge_netns: str
    hosts: dict[str, Host] = field(default_factory=dict)
    namespaces: list[str] = field(default_factory=list)

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]


def run(*args: str, check: bool = True, timeout: float = 10.0) -> str:
    """Run a command, return its stdout; the error names the command and its stderr."""
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False, cwd=REPO)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def ns(netns: str, *args: str, check: bool = True) -> str:
    return run("ip", "netns", "exec", netns, *args, check=check)


def sysctl(netns: str, key: str, value: str) -> None:
    ns(netns, "sysctl", "-q", "-w", f"{key}={value}")


def py_in(netns: str, code: str, timeout: float = 20.0) -> object:
    """Run ``code`` with this interpreter inside ``netns``; it must print one JSON value last."""
    out = run("ip", "netns", "exec", netns, sys.executable, "-c", code, timeout=timeout)
    return json.loads(out.strip().splitlines()[-1])


def neigh(netns: str, ip: str) -> tuple[str | None, str]:
    """(lladdr, state) of the neighbour entry for ``ip`` on eth0, (None, "") if there is none."""
    data = json.loads(ns(netns, "ip", "-j", "neigh", "show", "dev", "eth0", "to", ip) or "[]")
    for entry in data:
        if entry.get("dst") == ip:
            states = entry.get("state") or [""]
            return entry.get("lladdr"), states[0]
    return None, ""


def _remove(netns: str) -> None:
    run("ip", "netns", "del", netns, check=False)


@contextmanager
def topology(names: tuple[str, ...] = ("a", "b")) -> Iterator[Topology]:
    """Hosts ``names`` (at most 9) on one bridged segment; host i is 203.0.113.i and 2001:db8:0:1::i."""
    assert 1 <= len(names) <= 9
    prefix = "fo" + secrets.token_hex(3)
    topo = Topology(prefix=prefix, bridge_netns=f"{prefix}-br")
    try:
        run("ip", "netns", "add", topo.bridge_netns)
        topo.namespaces.append(topo.bridge_netns)
        br = topo.bridge_netns
        run(
            "ip",
            "-n",
            br,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
            "forward_delay",
            "0",
        )
        run("ip", "-n", br, "link", "set", "br0", "up")
        for i, name in enumerate(names, start=1):
            host = Host(
                name=name,
                netns=f"{prefix}-{name}",
                mac=f"02:00:00:00:00:{i:02x}",
                ip4=f"203.0.113.{i}",
                ip6=f"2001:db8:0:1::{i}",
            )
            run("ip", "netns", "add", host.netns)
            topo.namespaces.append(host.netns)
            # Set before eth0 arrives so its link-local address is never tentative either.
            sysctl(host.netns, "net.ipv6.conf.default.accept_dad", "0")
            port = f"p{i}"
            run(
                "ip",
                "-n",
                br,
                "link",
                "add",
                port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                host.netns,
            )
            run("ip", "-n", br, "link", "set", port, "master", "br0", "up")
            run("ip", "-n", host.netns, "link", "set", "lo", "up")
            run("ip", "-n", host.netns, "link", "set", "eth0", "address", host.mac, "up")
            run("ip", "-n", host.netns, "addr", "add", f"{host.ip4}/24", "dev", "eth0")
            run("ip", "-n", host.netns, "addr", "add", f"{host.ip6}/64", "dev", "eth0", "nodad")
            topo.hosts[name] = host
        yield topo
    finally:
        for netns in reversed(topo.namespaces):
            _remove(netns)
