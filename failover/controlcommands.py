"""The control socket's commands as the agent answers them: status, a move, a move's dry run.

Owns what a waiting CLI hears: a move's progress while it runs, its outcome once it is journalled (and,
when asked, once its drain is over too), a word every `WAITING_TICK` while a drain goes on, and a dry
run's plan. The socket and its line format are `failover.control`'s; the move itself is the core's.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from failover import control, journal, protocol
from failover.config import ClusterConfig, ConfigError, NodeConfig, config_from, read_config
from failover.noticejournal import NoticeJournal

# What a waiting CLI hears; None: nothing for a while (the CLI is told the agent still works on it).
_Reported = protocol.Progress | protocol.Finished | protocol.Planned | protocol.DrainReported
WAITING_TICK = 5.0  # a CLI waiting for a drain hears that it goes on this often


class ControlCommands:
    def __init__(
        self,
        config: ClusterConfig,
        node: NodeConfig,
        core: protocol.Node,
        notices: NoticeJournal,
        *,
        lock: threading.RLock,
        now: Callable[[], float],
        pump: Callable[[], None],
        status: Callable[[], Awaitable[dict[str, Any]]],
    ) -> None:
        self.config = config
        self.node = node
        self.peer = config.peer_of(node.name)
        self.core = core
        self._lock = lock  # held around every use of the core: the heartbeat thread uses it too
        self.notices = notices  # the journal: a move's operator and reason, its outcome on disk
        self.now = now
        self._pump = pump  # the agent carries out what the core asked for
        self.status = status
        self._waiters: dict[int, asyncio.Queue[_Reported]] = {}
        self._file_found_good: tuple[str, bytes] | None = None  # (path, bytes) of a cluster file

    def deliver(self, action: _Reported) -> None:
        """What the core reports for a command goes to the CLI waiting for it, if it still waits."""
        queue = self._waiters.get(action.command)
        if queue is not None:
            queue.put_nowait(action)

    async def on_control(self, request: dict[str, Any], reply: control.Reply) -> dict[str, Any]:
        cmd = request["cmd"]
        if cmd == "status":
            return {"type": "done", "status": await self.status()}
        if cmd in protocol.MOVES and request.get("dry_run"):
            return await self._dry_run(cmd)
        if cmd in protocol.MOVES:
            return await self._run_move(cmd, request, reply)
        return {"type": "error", "error": f"unknown command {cmd!r}"}

    async def _run_move(self, move: str, request: dict[str, Any], reply: control.Reply) -> dict[str, Any]:
        path = request.get("config")
        if isinstance(path, str):
            # The operator's file, as the CLI did not load it (to reach us fast): a bad one changes nothing.
            try:
                await self._check_file(path)
            except ConfigError as err:
                return {"type": "error", "error": str(err), "config_error": True}
        core = self.core
        with self._lock:
            holder = self.node.name if core.holds else self.peer.name if core.peer_holds() else None
        # Where the VIP came from, as this node's journal tells it: an unswap shows what it undoes.
        came_from = None
        if move == "unswap" and holder is not None:
            with contextlib.suppress(journal.JournalError):
                came_from = journal.came_from(self.node.journal, holder)
        with self._lock:
            cid = core.command(move, self.now())
        self.notices.command(cid, {
            "operator": str(request.get("operator") or "unknown")[:64],
            "operator_reason": str(request.get("reason") or "")[:500],
            "came_from": None if came_from is None else _summary(came_from),
        })
        wait_drained = request.get("wait_drained", True) is not False
        outcome: dict[str, Any] | None = None  # the move is over; its drain is not
        async with contextlib.aclosing(self._reports(cid, tick=WAITING_TICK)) as reports:
            async for item in reports:
                if isinstance(item, protocol.Finished):
                    await self.notices.flushed()  # the CLI hears of a move once it is journalled
                    outcome = item.outcome.to_json()
                    drain = outcome.get("drain") or {}
                    if not (wait_drained and drain.get("pending")):
                        return {"type": "done", "outcome": outcome, "came_from": came_from}
                    step = f"draining on {drain['host']}"
                    item = protocol.Progress(cid, step, item.outcome.duration_ms, {})
                if isinstance(item, protocol.DrainReported) and outcome is not None:
                    outcome["drain"] = item.report
                    return {"type": "done", "outcome": outcome, "came_from": came_from}
                if item is None and outcome is not None:
                    item = protocol.Progress(cid, "still draining", outcome["duration_ms"], {})
                if isinstance(item, protocol.Progress):
                    with contextlib.suppress(ConnectionError):
                        await reply({"type": "progress", "step": item.step, "ms": round(item.elapsed_ms, 3)})
        raise AssertionError("unreachable: the reports end only when closed")

    async def _check_file(self, path: str) -> None:
        """Raises ConfigError for a bad file. Read each time (a small regular file: on the loop); parsed
        only when its bytes differ from the ones last found good at that path, as the loader's answer
        follows from the path and the bytes alone (2-3 ms of a move's start saved, a thread's hop too)."""
        raw = read_config(path)
        if self._file_found_good == (path, raw):
            return
        await asyncio.to_thread(config_from, path, raw)
        self._file_found_good = (path, raw)

    async def _dry_run(self, move: str) -> dict[str, Any]:
        """Every check of the move on both nodes, and its plan; changes nothing, journals nothing."""
        with self._lock:
            cid = self.core.command(move, self.now(), dry_run=True)
        async with contextlib.aclosing(self._reports(cid)) as reports:
            async for item in reports:
                if isinstance(item, protocol.Planned):
                    return {"type": "done", "plan": item.plan.to_json()}
        raise AssertionError("unreachable: the reports end only when closed")

    async def _reports(self, cid: int, tick: float | None = None) -> AsyncGenerator[_Reported | None, None]:
        """What the core reports for one command (progress, outcome, plan), as it comes; None after each
        `tick` seconds without a word."""
        queue: asyncio.Queue[_Reported] = asyncio.Queue()
        self._waiters[cid] = queue
        self._pump()  # the command's first actions may already be waiting
        try:
            while True:
                try:
                    yield await asyncio.wait_for(queue.get(), tick)
                except TimeoutError:
                    yield None
        finally:
            del self._waiters[cid]


def _summary(entry: dict[str, Any]) -> dict[str, Any]:
    keys = ("at", "kind", "epoch", "source", "target", "holder", "operator", "operator_reason")
    return {k: entry.get(k) for k in keys}
