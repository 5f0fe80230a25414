"""The order of the hooks the core asks for: a drain's hooks wait until its connections are held.

Real hook programs (/bin/sh writing a file) run by the agent's HookRuns on a real event loop; the wait for
the connection hold is an event the test sets (the hold itself is tests/test_connectionhold.py's).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from failover import protocol
from failover.agentcontext import AgentContext
from failover.hookruns import HookRuns
from tests.labconfig import lab_config


def hook_runs(tmp_path: Path, before_drain: Any) -> tuple[HookRuns, list[asyncio.Task[None]]]:
    config = lab_config(tmp_path, hooks={event: [["/bin/sh", "-c", f"echo {event} >> {tmp_path / 'ran'}"]]
                                         for event in ("drain", "confirmed")})
    tasks: list[asyncio.Task[None]] = []

    def spawn(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        tasks.append(asyncio.get_running_loop().create_task(coro))
        return tasks[-1]

    ctx = AgentContext(config, config.node("live"), report=lambda _: None, spawn=spawn,
                       now=lambda: asyncio.get_running_loop().time())
    return HookRuns(ctx, before_drain=before_drain), tasks


def test_drain_hooks_wait_for_the_hold_of_their_epoch(tmp_path: Path) -> None:
    async def scenario() -> None:
        held = asyncio.Event()
        asked: list[int] = []

        async def before_drain(epoch: int) -> None:
            asked.append(epoch)
            await held.wait()

        runs, tasks = hook_runs(tmp_path, before_drain)
        runs.fire(protocol.RunHooks("drain", 7, "swap", "live", "backup"))
        await asyncio.sleep(0.3)
        # The web server is not asked to close anything before its connections are held.
        assert asked == [7] and not (tmp_path / "ran").exists()
        held.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        assert (tmp_path / "ran").read_text() == "drain\n"

    asyncio.run(scenario())


def test_other_hooks_do_not_wait_for_a_hold(tmp_path: Path) -> None:
    async def scenario() -> None:
        async def never(_epoch: int) -> None:
            await asyncio.Event().wait()

        runs, tasks = hook_runs(tmp_path, never)
        runs.fire(protocol.RunHooks("confirmed", 3, "swap", "live", "backup"))
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        assert (tmp_path / "ran").read_text() == "confirmed\n"

    asyncio.run(scenario())
