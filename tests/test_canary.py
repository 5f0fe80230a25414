"""The canaries a quiet move is proven by: sent again through the window, stopped with the move.

HostChecks on a real event loop with its real thread pool; only the HTTP request is a stand-in (its
network path is tests/integration/test_confirm.py's), so that a request can hang as one whose SYN was
lost does, for as long as the health timeout.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from failover import hostchecks, protocol
from failover.agentcontext import AgentContext
from tests.labconfig import lab_config


class Requests:
    """check_health's stand-in: the first `lost` requests hang for their whole timeout."""

    def __init__(self, lost: int) -> None:
        self.lost = lost
        self.started: list[float] = []
        self.lock = threading.Lock()
        self.t0 = time.monotonic()

    def __call__(self, url: str, timeout: float) -> tuple[bool, str]:
        with self.lock:
            self.started.append(time.monotonic() - self.t0)
            n = len(self.started)
        if n <= self.lost:
            time.sleep(timeout)
            return False, f"{url}: timed out"
        return True, f"HTTP 200 from {url}"


def host_checks(tmp_path: Path, vip_changes_done: object = None) -> hostchecks.HostChecks:
    config = lab_config(tmp_path)

    async def done() -> None:
        return None

    ctx = AgentContext(config, config.node("live"), report=lambda _: None,
                       spawn=lambda c: asyncio.get_running_loop().create_task(c),
                       now=lambda: asyncio.get_running_loop().time())
    return hostchecks.HostChecks(ctx, None, vip_changes_done=vip_changes_done or done)  # type: ignore[arg-type]


def test_canaries_lost_on_the_way_do_not_hold_back_the_later_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Four hang for the whole health timeout (1 s, the window's length): the retries after them must
    # still leave inside the window, every 100 ms, not queue behind the hung ones.
    requests = Requests(lost=4)
    monkeypatch.setattr(hostchecks, "check_health", requests)
    checks = host_checks(tmp_path)
    asyncio.run(checks.canary(protocol.Canary(1, within=1.0)))
    in_window = [t for t in requests.started if t < 1.0]
    assert len(in_window) >= 9, requests.started
    assert in_window[5] < 0.6, requests.started  # the sixth at ~0.45 s: nobody waited for a thread


def test_a_stop_ends_the_canaries_even_before_they_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    requests = Requests(lost=0)
    monkeypatch.setattr(hostchecks, "check_health", requests)

    async def scenario() -> None:
        gate = asyncio.Event()

        async def vip_changes_done() -> None:
            await gate.wait()

        checks = host_checks(tmp_path, vip_changes_done)
        task = asyncio.get_running_loop().create_task(checks.canary(protocol.Canary(1, within=1.0)))
        await asyncio.sleep(0.05)
        checks.stop_canary(protocol.StopCanary(1))  # the move ended while the drain's end was still due
        gate.set()
        await asyncio.wait_for(task, 2.0)

    asyncio.run(scenario())
    assert requests.started == []


def test_a_stop_ends_the_retries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    requests = Requests(lost=0)
    monkeypatch.setattr(hostchecks, "check_health", requests)

    async def scenario() -> None:
        checks = host_checks(tmp_path)
        task = asyncio.get_running_loop().create_task(checks.canary(protocol.Canary(2, within=1.0)))
        await asyncio.sleep(0.3)
        checks.stop_canary(protocol.StopCanary(2))
        began = time.monotonic()
        await asyncio.wait_for(task, 2.0)
        assert time.monotonic() - began < 0.1

    asyncio.run(scenario())
    assert 3 <= len(requests.started) <= 5, requests.started
