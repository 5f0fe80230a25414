"""This host's checks as the core asks for them, each result reported to the core.

Owns the health check a new holder passes before it answers ready, the holder's periodic self-check,
the canaries sent through the VIP after a move, and a dry run's read-only checks of this host for the
part it would play. What each finding says is `failover.check`'s; an HTTP check is `failover.health`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import structlog

from failover import check, protocol
from failover.agentcontext import AgentContext
from failover.health import canary_token, canary_url, check_health
from failover.netlink import NetlinkError, VipLink
from failover.protocol import events
from failover.protocol.swap import CANARY_GAP, CANARY_RETRY_GAP

log = structlog.get_logger("failover.agent")

CANARY_MIN_TIMEOUT = 0.2  # seconds: a canary sent just before the window ends still gets a fair chance


class HostChecks:
    def __init__(
        self, ctx: AgentContext, link: VipLink, *, vip_changes_done: Callable[[], Awaitable[None]]
    ) -> None:
        self.config = ctx.config
        self.node = ctx.node
        self.peer = ctx.peer
        self.link = link
        self._report = ctx.report
        self._vip_changes_done = vip_changes_done  # every netlink change asked for so far is carried out
        self._canary_stops: dict[int, asyncio.Event] = {}

    async def ready_check(self, action: protocol.CheckHealth) -> None:
        ok, detail = await asyncio.to_thread(
            check_health, self.node.health_url, self.config.health.timeout_ms / 1000
        )
        log.info("health-check", epoch=action.epoch, ok=ok, detail=detail)
        self._report(events.HealthDone(action.epoch, ok, detail))

    async def host_check(self, action: protocol.HostCheck) -> None:
        """A dry run's checks of this host for the part it would play: reads only, changes nothing."""
        target = action.role == "target"
        found = await asyncio.to_thread(self._host_findings, target)
        vip, interface = self.config.vip.address, self.node.interface
        try:
            holds = await self.link.holds()
        except NetlinkError as err:
            found.append(check.Finding("VIP on this host", check.FAIL, f"netlink: {err}"))
        else:
            if target and holds:
                found.append(check.Finding(
                    "VIP not on this host", check.FAIL, f"{vip} is already on {interface}",
                    f"failover status shows who holds it; if it was added by hand: "
                    f"ip addr del {vip} dev {interface}"))
            elif target:
                found.append(check.Finding("VIP not on this host", check.OK, f"{vip} not on {interface}"))
            elif holds:
                found.append(check.Finding("VIP on this host", check.OK, f"{vip} on {interface}"))
            else:
                found.append(check.Finding("VIP on this host", check.FAIL, f"{vip} is not on {interface}"))
        checks = tuple(dataclasses.replace(f, node=self.node.name) for f in found)
        log.info("host-check", role=action.role, for_peer=action.peer_boot is not None,
                 failed=[c.check for c in checks if c.level == check.FAIL])
        self._report(events.HostCheckDone(action, checks))

    def _host_findings(self, target: bool) -> list[check.Finding]:
        """Blocking (files, /proc, an HTTP request): run in a thread."""
        cfg, node = self.config, self.node
        found = [check.key_finding(cfg), check.interface_finding(node.interface)]
        if target:
            ok, detail = check_health(node.health_url, cfg.health.timeout_ms / 1000)
            fix = "" if ok else f"start the web server on {node.name}, or fix nodes.{node.name}.health_url"
            found.append(check.Finding("health_url", check.OK if ok else check.FAIL, detail, fix))
            found.append(check.access_log_finding(cfg, node))
        found += check.sysctl_findings(cfg, node)
        if target:
            found += check.handoff_findings(cfg)
        return found

    def canary(self, action: protocol.Canary) -> Coroutine[Any, Any, None]:
        """The canaries of `action`, to be spawned; from now on a StopCanary for its epoch is heard."""
        stop = self._canary_stops[action.epoch] = asyncio.Event()
        return self._send_canaries(action, stop)

    async def _send_canaries(self, action: protocol.Canary, stop: asyncio.Event) -> None:
        try:
            await self._vip_changes_done()  # the core ended the drain first: its copy would answer here
            await self._canaries(action, stop)
        finally:
            if self._canary_stops.get(action.epoch) is stop:
                del self._canary_stops[action.epoch]

    async def _canaries(self, action: protocol.Canary, stop: asyncio.Event) -> None:
        url = canary_url(
            self.peer.health_url, self.config.vip.ip, canary_token(self.config.cluster, action.epoch)
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + action.within
        requests = self.config.confirm.requests
        # A thread for every canary the window can hold: each blocks up to health.timeout_ms (a lost SYN
        # waits for its retransmit), and a later one queued behind them would start after the window.
        # Their own threads, too: a stuck canary must not delay the default executor's work (state.json).
        threads = requests + math.ceil(action.within / CANARY_RETRY_GAP) + 1
        pool = ThreadPoolExecutor(threads, thread_name_prefix="failover-canary")
        sent: list[asyncio.Future[tuple[bool, str]]] = []
        try:
            while not stop.is_set() and (left := deadline - loop.time()) > 0 and len(sent) < threads:
                timeout = min(self.config.health.timeout_ms / 1000, max(left, CANARY_MIN_TIMEOUT))
                sent.append(loop.run_in_executor(pool, check_health, url, timeout))
                # The first confirm.requests close together; later ones, if no stop came, are the
                # retries for a lost request or a log truncated before the follower read the line.
                gap = CANARY_GAP if len(sent) < requests else CANARY_RETRY_GAP
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), min(gap, max(left, 0.0)))
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        results = [f.result()[1] for f in sent if f.done() and not f.cancelled()]
        log.info("canary", epoch=action.epoch, url=url, sent=len(sent), stopped=stop.is_set(),
                 results=results)

    def stop_canary(self, action: protocol.StopCanary) -> None:
        stop = self._canary_stops.get(action.epoch)
        if stop is not None:
            stop.set()

    async def self_check_loop(self, every: float) -> None:
        timeout = min(self.config.health.timeout_ms / 1000, every)
        while True:
            await asyncio.sleep(every)
            ok, detail = await asyncio.to_thread(check_health, self.node.health_url, timeout)
            self._report(events.SelfCheckDone(ok, detail))
