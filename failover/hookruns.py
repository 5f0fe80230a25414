"""The core's hook actions carried out on this host: notification hooks, before_release, the fence.

Owns the one environment every hook and the fence program get (`env`), and the order they run in:
notification hooks of successive events one after another; before_release hooks and the fence at once,
each reporting its result to the core. How a program is run is `failover.hooks`'; which event fires
when is the core's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from failover import protocol
from failover.agentcontext import AgentContext
from failover.hooks import run_all, run_hook
from failover.protocol import events

log = structlog.get_logger("failover.agent")


class HookRuns:
    def __init__(self, ctx: AgentContext, *, before_drain: Callable[[int], Awaitable[None]]) -> None:
        self.config = ctx.config
        self._before_drain = before_drain  # the drain's connections are held: its hooks may close them
        self.node = ctx.node
        self.peer = ctx.peer
        self._report = ctx.report
        self._spawn = ctx.spawn
        self._hook_lock = asyncio.Lock()  # hooks of successive events run one after another, in order

    def env(self, event: str, **extra: str | None) -> dict[str, str]:
        """The one environment of every hook and of the fence program: FAILOVER_* variables."""
        env = {
            "FAILOVER_EVENT": event,
            "FAILOVER_CLUSTER": self.config.cluster,
            "FAILOVER_NODE": self.node.name,
            "FAILOVER_PEER": self.peer.name,
            "FAILOVER_VIP": str(self.config.vip.address),
        }
        env.update({f"FAILOVER_{k.upper()}": v for k, v in extra.items() if v is not None})
        return env

    def fire(self, action: protocol.RunHooks) -> None:
        hooks = self.config.hooks.for_event(action.event)
        if hooks:
            env = self.env(
                action.event, epoch=str(action.epoch), move=action.move, source=action.source,
                target=action.target, reason=action.reason,
            )
            self._spawn(self._run_hooks(action.event, hooks, env, action.epoch))

    async def _run_hooks(
        self, event: str, hooks: tuple[tuple[str, ...], ...], env: dict[str, str], epoch: int
    ) -> None:
        async with self._hook_lock:
            if event == "drain":
                await self._before_drain(epoch)
            ok, details = await run_all(hooks, env, self.config.hooks.timeout_ms / 1000)
        log.info("hooks", hook_event=event, ok=ok, details=details)

    async def before_release(self, action: protocol.BeforeRelease) -> None:
        env = self.env(
            "before_release", epoch=str(action.epoch), move=action.move, source=self.node.name,
            target=action.target,
        )
        # Not queued behind the notification hooks (_hook_lock): the core's budget for these runs from
        # its asking, and a slow `confirmed` hook of the last move must not spend it.
        hooks, timeout = self.config.hooks.before_release, self.config.hooks.timeout_ms / 1000
        ok, details = await run_all(hooks, env, timeout)
        log.info("hooks", hook_event="before_release", epoch=action.epoch, ok=ok, details=details)
        self._report(events.BeforeReleaseDone(action.epoch, ok, details[-1] if details else ""))

    async def fence(self, action: protocol.Fence) -> None:
        t = self.config.takeover
        ok, detail = await run_hook(t.fence, self.env("fence"), t.fence_timeout_ms / 1000)
        log.info("fence", epoch=action.epoch, ok=ok, detail=detail)
        self._report(events.FenceDone(action.epoch, ok, detail))
