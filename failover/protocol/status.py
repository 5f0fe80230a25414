"""The status of one node's core, as `failover status` and the metrics show it: a plain dict for JSON.

Owns the status's shape: what the node believes of the VIP and its epochs, the peer as its heartbeats
tell it, the move under way, the drain, the last move and takeover, the self-check and the counters.
The agent adds what only it knows (netlink's own answer, rejections before the core, task failures).
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from failover.protocol.node import Node


def node_status(node: Node, now: float) -> dict[str, Any]:
    hb = node.peer_heartbeat
    run = node.run
    return {
        "node": node.setup.name,
        "holds_vip": node.holds,
        "held_epoch": node.held_epoch,
        "epoch": node.epoch,
        "peer": {
            "name": node.setup.peer,
            "alive": node.peer_alive(now),
            "heartbeat_age_ms": None
            if node.peer_seen is None
            else round((now - node.peer_seen) * 1000, 1),
            "holds_vip": None if hb is None else hb.holds_vip,
            "held_epoch": None if hb is None else hb.held_epoch,
            "digest": None if hb is None else hb.digest,
        },
        "digest": node.setup.digest,
        "digests_equal": None if hb is None else hb.digest == node.setup.digest,
        "swap_in_progress": None
        if run is None or not node.busy()
        else {"epoch": run.epoch, "move": run.move, "role": run.role, "state": str(run.state)},
        "draining": node.drainer.status(now),
        "last_drain": node.drainer.last,
        "last_move": None if node.last_outcome is None else node.last_outcome.to_json(),
        "last_takeover": node.last_takeover,
        "probe_window": node.takeover.window_status(),
        "self_check": {"fails_in_a_row": node.self_check_fails, "healthy": node.healthy()},
        "rejected": dict(node.rejected),
        "received": dict(node.received),
        "sent": dict(node.sent),
        "ignored": dict(node.ignored),
        "moves": _nested(node.moves),
        "stragglers_seen": node.stragglers_total,
    }


def _nested(counts: Counter[tuple[str, str]]) -> dict[str, dict[str, int]]:
    nested: dict[str, dict[str, int]] = {}
    for (outer, inner), n in sorted(counts.items()):
        nested.setdefault(outer, {})[inner] = n
    return nested
