"""What the protocol core keeps across an agent's restarts: its epochs, and whether it ever held the VIP.

Owns `state_dir/state.json`: read at start (a missing or damaged file is a fresh start), written
durably whenever the core's figures change, off the event loop (`StateSaver`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from failover import journal


@dataclass(frozen=True)
class PersistentState:
    epoch: int = 0
    held_epoch: int = 0
    held_before: bool = False  # this node has held the VIP: it may take back a VIP that nobody holds


def load_state(state_dir: Path) -> PersistentState:
    try:
        doc = json.loads((state_dir / "state.json").read_text())
        held_before = doc.get("held_before") is True
        epoch, held_epoch = int(doc["epoch"]), int(doc["held_epoch"])
        return PersistentState(epoch=epoch, held_epoch=held_epoch, held_before=held_before)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return PersistentState()


def save_state(state_dir: Path, state: PersistentState) -> None:
    doc = {"epoch": state.epoch, "held_epoch": state.held_epoch, "held_before": state.held_before}
    journal.write_file_durably(state_dir / "state.json", json.dumps(doc).encode())


class StateSaver:
    """Writes state.json off the event loop: the newest state given, one write at a time.

    An fsync (two: the file and its directory) takes milliseconds on a busy disk, and on the event loop
    it held up whatever came next, a claim's netlink add among them. `durable(epoch)` is the order the
    core relies on instead: a claim waits until a state with at least its epoch is on disk (or its write
    failed, which `on_error` was told of; a claim does not wait for a disk that cannot be written).
    """

    def __init__(self, state_dir: Path, state: PersistentState, on_error: Callable[[OSError], None]) -> None:
        self.state_dir = state_dir
        self._on_error = on_error
        self._wanted = state  # the newest state given
        self._written = state  # the newest state on disk (or whose write failed)
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()  # set after each write

    def put(self, state: PersistentState) -> None:
        self._wanted = state
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._write())

    async def _write(self) -> None:
        while self._written != self._wanted:
            state = self._wanted
            try:
                await asyncio.to_thread(save_state, self.state_dir, state)
            except OSError as err:
                self._on_error(err)
            self._written = state
            self._changed.set()
            self._changed.clear()

    async def durable(self, epoch: int) -> None:
        """Until a state whose epoch is at least `epoch` is written (or failed to be)."""
        while self._written.epoch < epoch:
            if self._wanted.epoch < epoch:
                return  # nothing asked to keep it (a core that never meant to): do not wait forever
            await self._changed.wait()

    async def flushed(self) -> None:
        """Every state given so far is written."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)
