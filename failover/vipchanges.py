"""The VIP's netlink changes on this host, one at a time and in the order the core asked for them.

Owns the queue of claims, releases and drain starts and ends, carrying each out against the `VipLink`
within a step's timeout and reporting the result to the core; the connection counts while a drain runs;
closing what a drain leaves behind. Decides nothing: what changes and when is the core's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import assert_never

import structlog

from failover import handoff, protocol
from failover.agentcontext import AgentContext
from failover.connectionhold import ConnectionHold, HoldError, hold_limit, hold_while_draining
from failover.connections import Count, count_while_draining
from failover.netlink import NetlinkError, VipLink
from failover.protocol import events

log = structlog.get_logger("failover.agent")

DRAIN_COUNT_EVERY = 0.1  # seconds between two counts of the draining host's connections to the VIP
# Seconds between two looks at the held connections: a request sent after the server let go of one
# waits up to this long for the FIN that sends its client to a fresh connection (then retried there).
HOLD_EVERY = 0.0005
HOLD_TAKE_EVERY = 0.1  # seconds between two looks for connections opened during the drain

VipChange = protocol.StartDrain | protocol.Release | protocol.Claim | protocol.EndDrain


class VipChanges:
    def __init__(
        self,
        ctx: AgentContext,
        link: VipLink,
        *,
        fault: str,
        failed: Callable[[], None],
        durable: Callable[[int], Awaitable[None]],
    ) -> None:
        self.link = link
        self.config = ctx.config
        self.fault = fault  # test-only fault injection (agent.FAULT_ENV)
        self._report = ctx.report
        self._spawn = ctx.spawn
        self._failed = failed  # one more task that ended with an exception
        self.now = ctx.now
        self._durable = durable  # until state.json keeps at least this epoch (persisted.StateSaver)
        self._vip_ops: asyncio.Queue[VipChange] = asyncio.Queue()
        self._counting: asyncio.Task[None] | None = None  # the drain's connection counts
        self._hold: ConnectionHold | None = None  # the drain's second reference to its connections
        self._holding: asyncio.Task[None] | None = None
        self._hold_epoch: int | None = None
        self._taking: asyncio.Task[None] | None = None  # the hold's take, once its release is done
        self._taking_epoch: int | None = None
        self._watch_after_release: int | None = None  # the drain whose counts and take wait for its release

    def put(self, action: VipChange) -> None:
        self._vip_ops.put_nowait(action)
        self._count_connections(action)

    async def done(self) -> None:
        """Every change asked for so far is carried out (or failed), and any asked for meanwhile: it
        returns once the queue is empty."""
        await self._vip_ops.join()

    def _count_connections(self, action: VipChange) -> None:
        """From the drain's start to its end, the core hears how many connections to the VIP are open."""
        if isinstance(action, protocol.EndDrain | protocol.StartDrain) and self._counting is not None:
            self._counting.cancel()
            self._counting = None
        if isinstance(action, protocol.EndDrain):  # the core's always names the newest drain (node.end_drain)
            self._watch_after_release = None
        if isinstance(action, protocol.StartDrain):
            self._stop_holding()
            self._hold = ConnectionHold(self.config.vip.ip, limit=hold_limit())
            self._hold_epoch = action.epoch
            self._watch_after_release = action.epoch

    def _watch_drain(self, epoch: int) -> None:
        """The drain's counts and its hold's take, begun once its release is done: both are threads
        (sock_diag, /proc), and beside the netlink changes they held the loop up for the GIL (4-8 ms
        between the target's Prepared and our Released, where the changes take 0.4 ms)."""
        hold = self._hold
        if self._watch_after_release != epoch or hold is None:
            return  # its drain ended (or another began) before the release was carried out
        self._watch_after_release = None

        def counted(count: Count | str) -> None:
            if isinstance(count, str):
                self._report(events.ConnectionsCounted(epoch, None, 0.0, count))
            else:
                closing = count.closing
                self._report(events.ConnectionsCounted(epoch, count.open, count.oldest_s, closing=closing))

        self._counting = self._spawn(
            count_while_draining(self.config.vip.ip, DRAIN_COUNT_EVERY, counted, hold.shut_inodes)
        )
        # Nothing closes a connection before the drain hooks, which wait for the take (held()).
        self._taking = self._spawn(self._hold_connections(epoch))
        self._taking_epoch = epoch

    async def carry_out(self) -> None:
        """The VIP's netlink changes, one at a time and in order: the drain copy before the release."""
        while True:
            action = await self._vip_ops.get()
            try:  # one that fails is logged and the next goes on: the core's deadlines see to the rest
                match action:
                    case protocol.StartDrain():
                        await self._start_drain(action)
                    case protocol.Release():
                        await self._release(action)
                    case protocol.Claim():
                        await self._claim(action)
                    case protocol.EndDrain():
                        await self._end_drain(action)
                    case _:
                        assert_never(action)
            except Exception as err:
                self._failed()
                log.error("vip-op-failed", action=type(action).__name__, error=repr(err), exc_info=err)
            finally:
                self._vip_ops.task_done()

    async def _claim(self, action: protocol.Claim) -> None:
        ok, error = True, ""
        try:
            if self.fault == "hang-before-claim" and action.why == "swap":
                log.warning("test-fault-hanging-before-claim")
                await asyncio.sleep(3600)
            if self.fault == "claim-fails" and action.why == "swap":
                raise NetlinkError("injected test fault: netlink add refused")
            # The claim's epoch on disk first: restarted, this node never reuses an epoch it claimed with.
            await asyncio.wait_for(self._claim_durably(action.epoch), self.config.swap.step_timeout_ms / 1000)
        except (NetlinkError, TimeoutError) as err:
            ok, error = False, str(err) or "netlink add timed out"
        done_at = self.now()
        self._report(events.ClaimDone(action.epoch, ok, error))
        # `at` is CLOCK_MONOTONIC, shared by every namespace of a host: the lab lines events up with it.
        log.info("claim", epoch=action.epoch, why=action.why, ok=ok, error=error or None, at=done_at)

    async def _claim_durably(self, epoch: int) -> None:
        await self._durable(epoch)
        await self.link.claim()

    async def _start_drain(self, action: protocol.StartDrain) -> None:
        try:
            await asyncio.wait_for(self.link.start_drain(), self.config.swap.step_timeout_ms / 1000)
        except (NetlinkError, TimeoutError) as err:
            # The release goes on: in-flight connections may be reset, the VIP still moves.
            log.error("drain-start-failed", epoch=action.epoch, error=str(err) or "timed out")

    async def held(self, epoch: int) -> None:
        """The hold of `epoch`'s drain has taken its connections, or given up: the web server may now be
        asked to close them (the drain hooks)."""
        taking = self._taking
        if taking is not None and self._taking_epoch == epoch and not taking.done():
            await asyncio.wait({taking})  # its outcome is logged by the take itself

    async def _hold_connections(self, epoch: int) -> None:
        """Before the drain hooks: a second reference to each connection, so that the web server's close
        of an idle one is made in order (connectionhold)."""
        hold = self._hold
        if hold is None or self._hold_epoch != epoch:
            return  # this drain's hold was already let go (a later StartDrain or its EndDrain)
        try:
            step = self.config.swap.step_timeout_ms / 1000
            taken = await asyncio.wait_for(asyncio.to_thread(hold.take), step)
        except (HoldError, TimeoutError) as err:
            # A take still running in its thread holds nothing once the hold is closed.
            log.warning("connections-not-held", epoch=epoch, error=str(err) or "timed out")
            if self._hold is hold:
                self._stop_holding()
            else:
                hold.close()  # a later drain's hold is not this take's to end
            return
        if self._hold is not hold:
            return  # let go of while it took (its close let go of what the take got)
        log.info("connections-held", epoch=epoch, held=taken, error=hold.error or None)
        if self._holding is not None:
            self._holding.cancel()
        self._holding = self._spawn(hold_while_draining(hold, HOLD_EVERY, HOLD_TAKE_EVERY))

    def _stop_holding(self) -> None:
        if self._holding is not None:
            self._holding.cancel()  # its end closes what it held
            self._holding = None
        if self._hold is not None:
            self._hold.close()  # idempotent; also stops a take still in its thread from holding more
        self._hold = None
        self._hold_epoch = None

    async def _release(self, action: protocol.Release) -> None:
        ok, error = True, ""
        try:
            await asyncio.wait_for(self.link.release(), self.config.swap.step_timeout_ms / 1000)
        except (NetlinkError, TimeoutError) as err:
            ok, error = False, str(err) or "netlink delete timed out"
        done_at = self.now()
        if ok:
            # Spawned first, so the drain hooks the report may fire find the take; run only after this
            # step, once the report has sent the Released.
            self._watch_drain(action.epoch)
        self._report(events.ReleaseDone(action.epoch, ok, error))
        log.info("release", epoch=action.epoch, why=action.why, ok=ok, error=error or None, at=done_at)

    async def _end_drain(self, action: protocol.EndDrain) -> None:
        step = self.config.swap.step_timeout_ms / 1000
        if self._hold is not None:
            log.info("connections-let-go", epoch=action.epoch, held=len(self._hold.held),
                     discarded_bytes=self._hold.discarded)  # fmt: skip
        self._stop_holding()
        try:
            await asyncio.wait_for(self.link.end_drain(), step)
            held = await asyncio.wait_for(self.link.holds(), step)
        except (NetlinkError, TimeoutError) as err:
            log.error("drain-end-failed", epoch=action.epoch, error=str(err) or "timed out")
            return
        log.info("drain-ended", epoch=action.epoch, at=self.now())
        if not held:  # ended on schedule, not by a claim here
            self._spawn(self._close_leftovers(action.epoch))  # not in the VIP's queue: it may take seconds

    async def _close_leftovers(self, epoch: int) -> None:
        # Unreachable now, but a keep-alive server keeps them open: each would hide a reused client port
        # from the handoff rule of the next move back (tests/chaos/test_contention.py).
        try:
            closed = await handoff.close_leftovers(self.config.vip.ip)
        except (handoff.HandoffError, TimeoutError) as err:
            log.warning("leftovers-not-closed", epoch=epoch, error=str(err))
            return
        log.info("leftovers-closed", epoch=epoch, connections_closed=closed)
