"""state.json written off the event loop: the newest state wins, and a claim can wait for its epoch."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from failover import persisted
from failover.persisted import PersistentState, StateSaver, load_state


def test_the_newest_state_is_written_and_a_claim_waits_for_its_epoch(tmp_path: Path) -> None:
    async def go() -> None:
        saver = StateSaver(tmp_path, PersistentState(), on_error=lambda err: pytest.fail(str(err)))
        saver.put(PersistentState(epoch=1))
        saver.put(PersistentState(epoch=2, held_epoch=1, held_before=True))
        await asyncio.wait_for(saver.durable(2), 5)
        assert load_state(tmp_path).epoch == 2  # on disk once durable() returned
        await saver.flushed()
        assert load_state(tmp_path) == PersistentState(epoch=2, held_epoch=1, held_before=True)

    asyncio.run(go())


def test_an_epoch_nobody_asked_to_keep_is_not_waited_for(tmp_path: Path) -> None:
    async def go() -> None:
        saver = StateSaver(tmp_path, PersistentState(epoch=3), on_error=lambda err: pytest.fail(str(err)))
        await asyncio.wait_for(saver.durable(2), 1)
        await asyncio.wait_for(saver.durable(9), 1)  # never given: returns, a claim is not held forever

    asyncio.run(go())


def test_a_write_that_fails_is_reported_and_does_not_hold_a_claim(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(state_dir: Path, state: PersistentState) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(persisted, "save_state", refuse)
    errors: list[OSError] = []

    async def go() -> None:
        saver = StateSaver(tmp_path, PersistentState(), on_error=errors.append)
        saver.put(PersistentState(epoch=4))
        await asyncio.wait_for(saver.durable(4), 5)

    asyncio.run(go())
    assert [e.errno for e in errors] == [28]
