"""The old holder's VIP changes around a drain: the connection hold is taken, and its connections
counted, once the release is done and reported, not beside the netlink changes.

VipChanges on a real event loop; the netlink link and the connection hold are stand-ins (their real
behaviour is tests/test_netlink.py's and tests/test_connectionhold.py's), so that a take can be made to
last, or to fail, exactly when a test needs it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, ClassVar

import pytest

from failover import protocol, vipchanges
from failover.agentcontext import AgentContext
from failover.connectionhold import HoldError
from tests.labconfig import lab_config

TRACE: list[str] = []  # what the link, the report, the counts and the take did, in order


class Link:
    def __init__(self) -> None:
        self.done = TRACE

    async def start_drain(self) -> None:
        self.done.append("start-drain")

    async def release(self) -> None:
        self.done.append("release")

    async def end_drain(self) -> None:
        self.done.append("end-drain")

    async def holds(self) -> bool:
        return False


class Hold:
    """ConnectionHold's stand-in: each take waits for its gate, then returns or raises as told."""

    made: ClassVar[list[Hold]] = []

    def __init__(self, vip: Any, limit: int) -> None:
        self.gate = threading.Event()
        self.fail = False
        self.closed = False
        self.held: dict[int, Any] = {}
        self.discarded = 0
        self.error = ""
        self.shut_inodes: set[int] = set()
        Hold.made.append(self)

    def take(self) -> int:
        TRACE.append("take")
        self.gate.wait(10)
        if self.fail:
            raise HoldError("injected: the take failed")
        return 0

    def close(self) -> None:
        self.closed = True  # like the real one: a take under way runs on, and holds nothing


@pytest.fixture
def changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[vipchanges.VipChanges, Link]:
    Hold.made = []
    TRACE.clear()
    monkeypatch.setattr(vipchanges, "ConnectionHold", Hold)
    monkeypatch.setattr(vipchanges, "hold_limit", lambda: 100)

    async def idle(*_: Any) -> None:
        await asyncio.Event().wait()

    async def count(*_: Any) -> None:
        TRACE.append("count")
        await asyncio.Event().wait()

    def report(event: Any) -> None:
        TRACE.append(f"reported {type(event).__name__}")

    monkeypatch.setattr(vipchanges, "count_while_draining", count)
    monkeypatch.setattr(vipchanges, "hold_while_draining", idle)
    config = lab_config(tmp_path)

    def spawn(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(coro)

    async def durable(_: int) -> None:
        return None

    ctx = AgentContext(config, config.node("live"), report=report, spawn=spawn,
                       now=lambda: asyncio.get_running_loop().time())
    link = Link()
    return vipchanges.VipChanges(ctx, link, fault="", failed=lambda: None, durable=durable), link  # type: ignore[arg-type]


async def _drain_and_release(vc: vipchanges.VipChanges, epoch: int) -> None:
    """As the core asks for a release with a drain: the lo copy, then the release; until both are done."""
    vc.put(protocol.StartDrain(epoch))
    vc.put(protocol.Release(epoch, "swap"))
    await asyncio.wait_for(vc.done(), 2.0)


def test_the_release_does_not_wait_for_the_take_but_the_drain_hooks_do(
    changes: tuple[vipchanges.VipChanges, Link],
) -> None:
    vc, link = changes

    async def scenario() -> None:
        carrying = asyncio.get_running_loop().create_task(vc.carry_out())
        await _drain_and_release(vc, 1)
        assert link.done[:3] == ["start-drain", "release", "reported ReleaseDone"]  # the take still runs
        await asyncio.wait_for(vc.held(2), 0.5)  # another drain's hooks have nothing to wait for
        waiting = asyncio.get_running_loop().create_task(vc.held(1))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        Hold.made[0].gate.set()
        await asyncio.wait_for(waiting, 2.0)
        carrying.cancel()

    asyncio.run(scenario())


def test_a_failed_take_of_an_earlier_drain_leaves_the_later_hold_alone(
    changes: tuple[vipchanges.VipChanges, Link],
) -> None:
    vc, _ = changes

    async def scenario() -> None:
        carrying = asyncio.get_running_loop().create_task(vc.carry_out())
        await _drain_and_release(vc, 1)
        await _drain_and_release(vc, 2)  # a second drain while the first one's take is still running
        first, second = Hold.made
        assert first.closed and not second.closed  # the new drain let go of the old hold
        first.fail = True
        first.gate.set()  # the old take ends now, failing
        await asyncio.sleep(0.2)
        assert not second.closed  # the old take's failure is not the new drain's end
        second.gate.set()
        await asyncio.wait_for(vc.held(2), 2.0)
        carrying.cancel()

    asyncio.run(scenario())


def test_the_drain_is_counted_and_held_only_once_its_release_is_reported(
    changes: tuple[vipchanges.VipChanges, Link],
) -> None:
    """Both are threads: beside the netlink changes they held the loop up (the GIL) on the way to the
    Released, which the report sends."""
    vc, _ = changes

    async def scenario() -> None:
        carrying = asyncio.get_running_loop().create_task(vc.carry_out())
        await _drain_and_release(vc, 1)
        for _ in range(100):
            if "take" in TRACE:
                break
            await asyncio.sleep(0.01)
        assert TRACE[:3] == ["start-drain", "release", "reported ReleaseDone"]
        assert sorted(TRACE[3:]) == ["count", "take"]
        Hold.made[0].gate.set()
        await asyncio.wait_for(vc.held(1), 2.0)
        carrying.cancel()

    asyncio.run(scenario())


def test_a_drain_ended_before_its_release_is_carried_out_is_neither_counted_nor_held(
    changes: tuple[vipchanges.VipChanges, Link],
) -> None:
    vc, _ = changes

    async def scenario() -> None:
        carrying = asyncio.get_running_loop().create_task(vc.carry_out())
        vc.put(protocol.StartDrain(1))
        vc.put(protocol.Release(1, "swap"))
        vc.put(protocol.EndDrain(1))  # the core ended it at once (a claim seen here, say)
        await asyncio.wait_for(vc.done(), 2.0)
        await asyncio.sleep(0.1)
        assert TRACE == ["start-drain", "release", "reported ReleaseDone", "end-drain"]
        assert Hold.made[0].closed
        await asyncio.wait_for(vc.held(1), 0.5)  # its hooks have no take to wait for
        carrying.cancel()

    asyncio.run(scenario())


def test_a_failed_release_starts_neither_counts_nor_a_take(
    changes: tuple[vipchanges.VipChanges, Link], monkeypatch: pytest.MonkeyPatch
) -> None:
    vc, link = changes

    async def refused() -> None:
        TRACE.append("release")
        raise vipchanges.NetlinkError("injected: netlink delete refused")

    monkeypatch.setattr(link, "release", refused)

    async def scenario() -> None:
        carrying = asyncio.get_running_loop().create_task(vc.carry_out())
        await _drain_and_release(vc, 1)
        await asyncio.sleep(0.1)
        assert TRACE == ["start-drain", "release", "reported ReleaseDone"]
        carrying.cancel()

    asyncio.run(scenario())
