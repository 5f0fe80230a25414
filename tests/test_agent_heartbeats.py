"""The agent's share of the heartbeat thread (failover/agent.py `_after_core_on_thread`), with a real core,
a real socket on loopback and a real event loop: what the core sends goes out from the thread only when
nothing the loop popped before is still to be sent, else it waits for the loop, in the core's order."""

from __future__ import annotations

import asyncio
import socket
import threading
from ipaddress import ip_address

from failover import protocol, wire
from failover.agent import Agent
from failover.heartbeat_socket import HeartbeatSocket
from failover.persisted import PersistentState
from tests.nodepair import KEY, NodePair


def _agent_around(node: protocol.Node, loop: asyncio.AbstractEventLoop, peer: socket.socket) -> Agent:
    agent = Agent.__new__(Agent)  # only what _after_core_on_thread and _pump use: no netlink, no files
    agent.core = node
    agent.loop = loop
    agent.fault = ""
    agent._core_lock = threading.RLock()
    agent._handed = []
    agent._pump_asked = False
    agent._carrying = 0
    agent._stopping = False
    agent._persisted = PersistentState(node.epoch_to_keep(), node.held_epoch, node.held_before)
    agent.transport = HeartbeatSocket.open(ip_address("127.0.0.1"), 0, lambda data, source: None,
                                           lock=agent._core_lock, deadline=node.get_timer,
                                           timer=lambda: None, failed=lambda err: None)
    agent.peer_addr = peer.getsockname()
    return agent


def _heard(peer: socket.socket) -> list[str]:
    kinds = []
    while True:
        try:
            data = peer.recv(65536)
        except BlockingIOError:
            return kinds
        kinds.append(wire.decode(data, (KEY,)).message.kind)


def test_a_heartbeat_never_overtakes_what_the_loop_is_still_carrying_out() -> None:
    pair = NodePair()
    pair.run(0.3)
    node = pair.nodes["live"]
    node.pop_actions()

    async def main() -> tuple[list[str], list[str], list[str]]:
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.bind(("127.0.0.1", 0))
            peer.setblocking(False)
            agent = _agent_around(node, loop, peer)
            pumped: list[int] = []
            agent._pump = lambda: pumped.append(len(agent._handed))  # type: ignore[method-assign]

            async def beat() -> list[str]:
                """The core's next heartbeat, as the thread hands it on; what the peer then heard."""
                with agent._core_lock:
                    node.handle_timer(node.get_timer())
                    agent._after_core_on_thread()
                await asyncio.sleep(0.05)
                return _heard(peer)

            try:
                # Quiet: the heartbeat goes out from the thread at once, the loop is not woken.
                quiet = await beat()
                assert not pumped and not agent._handed
                # The loop is carrying out a batch it popped: the next heartbeat waits for it.
                agent._carrying = 1
                busy = await beat()
                assert pumped == [1] and [type(a) for a in agent._handed] == [protocol.Send]
                # Something handed to the loop and not carried out yet: the next waits behind it.
                agent._carrying = 0
                behind = await beat()
                assert len(agent._handed) == 2 and pumped == [1]  # one pump asked, not one per batch
            finally:
                agent.transport.close()
            return quiet, busy, behind

    quiet, busy, behind = asyncio.run(main())
    assert quiet == ["heartbeat"]
    assert busy == [] and behind == []
