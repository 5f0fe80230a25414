"""What the agent gives each of its adapters: the cluster, this node and its peer, the way back to the core.

One frozen record instead of the same five arguments to every adapter (hook runs, straggler reports, VIP
changes, the handoff rule, host checks). It holds nothing of its own: `report` hands an event to the
core, `spawn` starts a task the agent watches, `now` is the event loop's clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from failover.config import ClusterConfig, NodeConfig
from failover.protocol import events


@dataclass(frozen=True)
class AgentContext:
    config: ClusterConfig
    node: NodeConfig
    report: Callable[[events.Event], None]
    spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]]
    now: Callable[[], float]

    @property
    def peer(self) -> NodeConfig:
        return self.config.peer_of(self.node.name)
