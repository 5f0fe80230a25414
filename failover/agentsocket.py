"""Where each node's agent listens, read straight from the cluster file: the CLI's fast way to its agent.

`failover swap|unswap|status` need one fact from the cluster file before they can speak to the agent: the
node's control socket. The full loader (`failover.config`: the schema and every check) costs more to
import than everything else these commands do, so they read just `cluster` and `nodes` here, with
libyaml, and the whole file is checked by the full loader anyway: before the request when the agent
cannot be reached, after its answer otherwise (see `failover.cli`).

This module judges nothing: whatever it cannot read plainly it returns as unknown (None), and the full
loader, the one authority on the file, says what is wrong. The one rule it shares with the loader, where
the socket is when the file does not say, lives here and the loader uses it.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import NamedTuple

import yaml

# libyaml when PyYAML was built with it: a tenth of the pure-Python parser's time.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def default_control_socket(cluster: str) -> Path:
    """The control socket of a node whose entry in the cluster file names none."""
    return Path(f"/run/failover/{cluster}.sock")


class NodeSocket(NamedTuple):
    name: str
    family: int  # socket.AF_INET or socket.AF_INET6, from the address as written
    address: str
    control_socket: Path


def _family(address: str) -> int | None:
    # inet_pton, not bind() or getaddrinfo(): a name in the address field must never reach a resolver.
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, address)
        except OSError:
            continue
        return family
    return None


def node_sockets(path: Path) -> tuple[NodeSocket, ...] | None:
    """Each node's name, address and control socket; None when the file does not plainly say."""
    try:
        data = yaml.load(path.read_bytes().decode("utf-8-sig"), Loader=_LOADER)
    except (OSError, ValueError, yaml.YAMLError, RecursionError):
        return None
    nodes = data.get("nodes") if isinstance(data, dict) else None
    if not isinstance(nodes, dict) or len(nodes) != 2:
        return None
    cluster = data.get("cluster")
    found: list[NodeSocket] = []
    for name, node in nodes.items():
        if not isinstance(name, str) or not isinstance(node, dict):
            return None
        address = node.get("address")
        family = _family(address) if isinstance(address, str) else None
        if not isinstance(address, str) or family is None:
            return None
        if "control_socket" in node:
            written = node["control_socket"]
            # A relative path would name a different socket in every working directory.
            if not isinstance(written, str) or not written.startswith("/"):
                return None
            sock = Path(written)
        elif isinstance(cluster, str) and cluster:
            sock = default_control_socket(cluster)
        else:
            return None
        found.append(NodeSocket(name, family, address, sock))
    return tuple(found)
