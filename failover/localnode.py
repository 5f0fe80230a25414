"""Which node of the cluster file this host is: the one whose address it can bind to.

The one lookup for the CLI and the agent (`--node` overrides it). A bind, not netlink: the CLI's fast
commands use it before anything heavy is imported.
"""

from __future__ import annotations

import _socket  # not socket: its enum classes cost the CLI's fast commands ~4 ms (see failover.agentsocket)

TYPE_CHECKING = False  # typing's own flag without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from failover.config import ClusterConfig, NodeConfig


def is_local(family: int, address: str) -> bool:
    """A node address is ours if we can bind to it."""
    s = _socket.socket(family, _socket.SOCK_DGRAM)
    try:
        s.bind((address, 0))
    except OSError:
        return False
    finally:
        s.close()
    return True


def own_node(config: ClusterConfig, name: str | None) -> NodeConfig:
    """`name`'s node, or the one whose address is on this host; ConfigError naming both otherwise."""
    from failover.config import ConfigError

    if name:
        return config.node(name)
    families = {4: _socket.AF_INET, 6: _socket.AF_INET6}
    local = [n for n in config.nodes if is_local(families[n.address.version], str(n.address))]
    if len(local) != 1:
        names = ", ".join(n.name for n in config.nodes)
        found = "none" if not local else "both"
        raise ConfigError(f"{found} of the node addresses ({names}) are on this host; use --node",
                          file=str(config.source), field="nodes")
    return local[0]
