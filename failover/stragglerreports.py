"""The old holder's straggler watch during a move, as the agent carries it out.

Owns one watch at a time (started when the core asks, for one epoch), passing what it saw to the core
every `STRAGGLER_REPORT_INTERVAL`, leaving out the new holder's own frames. Which frames count as a
straggler is `failover.stragglers`'; what to do about one is the core's.
"""

from __future__ import annotations

import asyncio

import structlog

from failover import announce
from failover.agentcontext import AgentContext
from failover.protocol import events
from failover.stragglers import StragglerWatch

log = structlog.get_logger("failover.agent")

STRAGGLER_REPORT_INTERVAL = 0.1  # how often the old holder passes what its straggler watch saw


class StragglerReports:
    def __init__(self, ctx: AgentContext, mac: str) -> None:
        self.config = ctx.config
        self.node = ctx.node
        self.peer = ctx.peer
        self.mac = mac  # this host's, on the VIP's interface
        self._report = ctx.report
        self._spawn = ctx.spawn
        self._stragglers: tuple[int, StragglerWatch, asyncio.Task[None]] | None = None

    def watch(self, epoch: int) -> None:
        self.unwatch(None)
        try:
            watch = StragglerWatch(self.node.interface, self.config.vip.ip, self.mac)
            watch.start()
        except announce.AnnounceError as err:
            log.error("straggler-watch-failed", epoch=epoch, error=str(err))
            return
        self._stragglers = (epoch, watch, self._spawn(self._report_stragglers(epoch, watch)))

    async def _report_stragglers(self, epoch: int, watch: StragglerWatch) -> None:
        while True:
            await asyncio.sleep(STRAGGLER_REPORT_INTERVAL)
            # The new holder's own frames are the connection handoff at work, not a straggler.
            seen = [
                (s.mac, s.ip, watch.last_seen(s.mac) or 0.0)
                for s in watch.stragglers()
                if s.ip != str(self.peer.address)
            ]
            if seen:
                self._report(events.StragglersSeen(epoch, tuple(seen)))

    def unwatch(self, epoch: int | None) -> None:
        if self._stragglers is None or (epoch is not None and self._stragglers[0] != epoch):
            return
        watched, watch, task = self._stragglers
        self._stragglers = None
        task.cancel()
        watch.stop()
        log.info("straggler-watch-ended", epoch=watched, frames_seen=watch.frames_seen)
