"""The new holder's connection handoff during a move, as the agent carries it out.

Owns the rule's life on this host: installed when the core asks (its result goes back to the core),
removed when the core's delay after EndHandoff has run out, never landing after its own removal, and
removed at once when the agent stops. The rule itself (nftables, ss) is `failover.handoff`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, TypeVar

import structlog

from failover import handoff
from failover.agentcontext import AgentContext
from failover.protocol import events

log = structlog.get_logger("failover.agent")
_T = TypeVar("_T")


class HandoffRule:
    def __init__(self, ctx: AgentContext) -> None:
        self.config = ctx.config
        self.node = ctx.node
        self.peer = ctx.peer
        self._report = ctx.report
        self._spawn = ctx.spawn
        self.now = ctx.now
        self._handoff_end: asyncio.TimerHandle | None = None
        self._handoff_install: asyncio.Task[None] | None = None
        # Whether this cluster's table may be in nftables: known absent once a removal succeeded, and
        # then an install skips its own (a listing that costs the new holder 2-5 ms on its way to ready).
        self._maybe_present = True
        # An nft command that timed out may still land (its thread or process goes on): from then on the
        # table may always be there.
        self._unsure = False
        # One install, or one removal and the look after it, at a time: a look never misses an install
        # that finished while it listed, and a removal never takes away a newer install's table.
        self._changing = asyncio.Lock()

    async def remove_stale(self) -> None:
        """At start: a table left by an agent that died mid-swap goes."""
        async with self._changing:
            with contextlib.suppress(handoff.HandoffError, TimeoutError):
                await self._timed(handoff.remove(self.config.cluster, self.config.vip.family))
                await self._look_again()

    async def _look_again(self) -> None:
        """After a removal (which does not say whether nftables did it): known absent only if nftables
        says so. With `_changing` held: no install runs meanwhile."""
        gone = await self._timed(handoff.absent(self.config.cluster, self.config.vip.family))
        if gone and not self._unsure:
            self._maybe_present = False

    async def _timed(self, step: Coroutine[Any, Any, _T]) -> _T:
        try:
            return await step
        except TimeoutError:
            self._unsure = True
            raise

    def install(self, epoch: int) -> None:
        if self._handoff_end is not None:
            self._handoff_end.cancel()
        self._handoff_install = self._spawn(self._install_handoff(epoch))

    def end_after(self, epoch: int, after: float) -> None:
        self._handoff_end = asyncio.get_running_loop().call_later(
            after, lambda: self._spawn(self._remove_handoff(epoch))
        )

    async def stop(self) -> None:
        if self._handoff_end is not None:
            # A handoff outliving the agent would send segments to a host that stopped draining.
            self._handoff_end.cancel()
            await self._remove_handoff(-1)

    async def _install_handoff(self, epoch: int) -> None:
        try:
            async with self._changing:
                present, self._maybe_present = self._maybe_present, True
                closed = await self._timed(handoff.install(
                    self.config.cluster, self.config.vip.ip, self.peer.address, self.node.interface,
                    present=present,
                ))  # fmt: skip
        except (handoff.HandoffError, TimeoutError) as err:
            log.warning("handoff-unavailable", epoch=epoch, error=str(err))
            self._report(events.HandoffDone(epoch, False, str(err)))
            return
        log.info(
            "handoff-installed", epoch=epoch, to=str(self.peer.address), at=self.now(),
            time_wait_closed=closed,
        )
        self._report(events.HandoffDone(epoch, True))

    async def _remove_handoff(self, epoch: int) -> None:
        self._handoff_end = None
        install = self._handoff_install
        if install is not None and not install.done():
            # Asked for at once (a failed health check): the rule must not land after its removal.
            await asyncio.wait([install])
        async with self._changing:
            try:
                handed_off = await self._timed(handoff.remove(self.config.cluster, self.config.vip.family))
            except (handoff.HandoffError, TimeoutError) as err:
                log.warning("handoff-remove-failed", epoch=epoch, error=str(err))
                return
            with contextlib.suppress(handoff.HandoffError, TimeoutError):
                await self._look_again()
        log.info("handoff-removed", epoch=epoch, at=self.now(), segments_handed_off=handed_off)
