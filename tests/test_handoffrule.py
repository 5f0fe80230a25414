"""The handoff rule's life on one host (failover/handoffrule.py): an install skips the removal of an older
table once this agent knows there is none (a listing that cost the new holder 2-5 ms on its way to ready),
and still makes it whenever there may be one. nftables is played by a fake that keeps whether this
cluster's table is there and records each command it is given."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from failover import handoff
from failover.agentcontext import AgentContext
from failover.handoffrule import HandoffRule
from failover.protocol import events
from tests.labconfig import lab_config


class FakeNft:
    def __init__(self, present: bool, fail_all: bool = False) -> None:
        self.present = present
        self.fail_all = fail_all
        self.slow_list = 0.0  # seconds a listing takes to answer, its snapshot taken as it was asked
        self.calls: list[str] = []

    async def __call__(self, args: list[str], stdin: str | None = None) -> tuple[int, str]:
        text = " ".join(args) if stdin is None else (stdin.splitlines()[0] if stdin else "")
        self.calls.append(text)
        if args[:2] == ["-j", "list"] and self.slow_list:
            was_present = self.present
            await asyncio.sleep(self.slow_list)
            return (0, '{"nftables": []}') if was_present else (1, "Error: No such file or directory")
        if self.fail_all:
            return 1, "Error: netlink: Operation not permitted"
        if args[:2] == ["-j", "list"]:
            return (0, '{"nftables": []}') if self.present else (1, "Error: No such file or directory")
        if args[:2] == ["delete", "table"]:
            self.present = False
        if stdin is not None and stdin.startswith("table "):
            self.present = True
        return 0, ""


def _rule(tmp_path: Path, done: list[events.Event]) -> HandoffRule:
    config = lab_config(tmp_path)
    ctx = AgentContext(config, config.node("backup"), report=done.append,
                       spawn=lambda c: asyncio.get_running_loop().create_task(c),
                       now=lambda: asyncio.get_running_loop().time())
    return HandoffRule(ctx)


@pytest.fixture
def no_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    async def connections(vip: object) -> tuple[list[handoff.Connection], int]:
        return [], 0

    monkeypatch.setattr(handoff, "connections", connections)


def _listings(nft: FakeNft) -> int:
    return sum(1 for c in nft.calls if c.startswith("-j list"))


@pytest.mark.usefixtures("no_sockets")
def test_after_a_clean_start_and_after_each_removal_an_install_lists_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nft = FakeNft(present=False)
    monkeypatch.setattr(handoff, "_nft", nft)
    done: list[events.Event] = []

    async def main() -> None:
        rule = _rule(tmp_path, done)
        await rule.remove_stale()
        assert _listings(nft) == 2  # the removal's, and the look that finds it gone
        rule.install(1)
        await asyncio.sleep(0.05)
        assert _listings(nft) == 2 and nft.present  # no listing on the way to ready
        rule.end_after(1, 0.0)
        await asyncio.sleep(0.05)
        assert not nft.present and _listings(nft) == 4
        rule.install(2)
        await asyncio.sleep(0.05)
        assert _listings(nft) == 4 and nft.present

    asyncio.run(main())
    assert [(e.epoch, e.ok) for e in done if isinstance(e, events.HandoffDone)] == [(1, True), (2, True)]


@pytest.mark.usefixtures("no_sockets")
def test_an_install_removes_first_whenever_a_table_may_be_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The start's removal failed (nftables refused every command): the table may be there, left by an
    # agent that died mid-swap, and the install must take it away first.
    nft = FakeNft(present=True, fail_all=True)
    monkeypatch.setattr(handoff, "_nft", nft)
    done: list[events.Event] = []

    async def main() -> None:
        rule = _rule(tmp_path, done)
        await rule.remove_stale()
        nft.fail_all = False
        start = len(nft.calls)
        rule.install(1)
        await asyncio.sleep(0.05)
        # Listed, the old table deleted, then the new one loaded.
        assert nft.calls[start].startswith("-j list")
        assert "delete table ip failover_lab" in nft.calls[start + 2]
        assert nft.present
        # A second install while the first's table is there (no removal between): listed again.
        rule.install(2)
        await asyncio.sleep(0.05)
        assert _listings(nft) == 4  # the start's two, and one each

    asyncio.run(main())


@pytest.mark.usefixtures("no_sockets")
def test_an_install_while_a_removal_looks_is_never_taken_for_absent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The removal's look lists nftables slowly; an install asked for meanwhile waits for it, so the look
    # cannot find "absent" from before the install and the next install skip a table that is there.
    nft = FakeNft(present=False)
    monkeypatch.setattr(handoff, "_nft", nft)
    done: list[events.Event] = []

    async def main() -> None:
        rule = _rule(tmp_path, done)
        await rule.remove_stale()
        rule.install(1)
        await asyncio.sleep(0.05)
        nft.slow_list = 0.1
        rule.end_after(1, 0.0)
        await asyncio.sleep(0.02)  # the removal is done, its look is listing
        rule.install(2)
        await asyncio.sleep(0.3)
        assert nft.present  # the second install's table
        nft.slow_list = 0.0
        start = len(nft.calls)
        rule.install(3)
        await asyncio.sleep(0.05)
        assert nft.calls[start].startswith("-j list"), nft.calls[start:]  # removed first, not skipped

    asyncio.run(main())
