"""failover.netlink against real interfaces in throw-away network namespaces (root only)."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Iterator
from ipaddress import ip_interface

import pytest

from failover.netlink import NetlinkError, VipLink
from tests.nsutil import NEEDS_ROOT_REASON, Topology, is_root, ns, py_in, topology

pytestmark = [pytest.mark.root, pytest.mark.skipif(not is_root(), reason=NEEDS_ROOT_REASON)]

VIP4 = ip_interface("203.0.113.10/24")
VIP6 = ip_interface("2001:db8:0:1::10/64")


@pytest.fixture
def topo() -> Iterator[Topology]:
    with topology(("a",)) as t:
        yield t


def addrs(netns: str) -> list[dict[str, object]]:
    """The address entries of eth0 in ``netns``, as `ip -j addr` prints them."""
    data = json.loads(ns(netns, "ip", "-j", "addr", "show", "dev", "eth0"))
    return list(data[0]["addr_info"]) if data else []


def has(netns: str, vip: object) -> bool:
    vip_if = ip_interface(str(vip))
    return any(
        a["local"] == str(vip_if.ip) and a["prefixlen"] == vip_if.network.prefixlen for a in addrs(netns)
    )


def test_claim_and_release_v4(topo: Topology) -> None:
    a = topo["a"].netns

    async def scenario() -> None:
        link = await VipLink.open("eth0", VIP4, netns=a)
        try:
            assert link.interface == "eth0"
            assert link.mac == topo["a"].mac
            assert link.ifindex > 0
            assert not await link.holds()
            await link.claim()
            assert has(a, VIP4)
            assert await link.holds()
            await link.claim()  # already there: fine
            assert has(a, VIP4)
            await link.release()
            assert not has(a, VIP4)
            assert not await link.holds()
            await link.release()  # already gone: fine
            assert not await link.holds()
        finally:
            await link.close()

    asyncio.run(scenario())


def test_claim_v6_is_nodad_and_never_tentative(topo: Topology) -> None:
    a = topo["a"].netns

    async def scenario() -> None:
        link = await VipLink.open("eth0", VIP6, netns=a)
        try:
            await link.claim()
            # Read at once: with DAD the address would still be tentative for about a second.
            entries = [e for e in addrs(a) if e["local"] == str(VIP6.ip)]
            assert len(entries) == 1, entries
            entry = entries[0]
            assert entry["prefixlen"] == 64
            assert entry.get("nodad") is True, entry
            assert not entry.get("tentative") and not entry.get("dadfailed"), entry
            assert "tentative" not in ns(a, "ip", "-6", "addr", "show", "dev", "eth0")
            assert await link.holds()
            await link.claim()
            await link.release()
            assert not await link.holds()
            await link.release()
        finally:
            await link.close()

    asyncio.run(scenario())


def test_holds_ignores_the_prefix(topo: Topology) -> None:
    a = topo["a"].netns
    ns(a, "ip", "addr", "add", "203.0.113.10/32", "dev", "eth0")

    async def scenario() -> bool:
        link = await VipLink.open("eth0", VIP4, netns=a)
        try:
            return await link.holds()
        finally:
            await link.close()

    assert asyncio.run(scenario())


@pytest.mark.parametrize(
    "vip,other", [(VIP4, "203.0.113.10/32"), (VIP6, "2001:db8:0:1::10/128")], ids=["v4", "v6"]
)
def test_release_removes_the_vip_under_another_prefix(topo: Topology, vip: object, other: str) -> None:
    """holds() matches any prefix, so release() must leave holds() false whatever prefix was used."""
    a = topo["a"].netns
    ns(a, "ip", "addr", "add", other, "dev", "eth0")

    async def scenario() -> tuple[bool, bool]:
        link = await VipLink.open("eth0", ip_interface(str(vip)), netns=a)
        try:
            before = await link.holds()
            await link.release()
            return before, await link.holds()
        finally:
            await link.close()

    assert asyncio.run(scenario()) == (True, False)
    assert not has(a, other)


def test_missing_interface_is_a_one_line_error(topo: Topology) -> None:
    with pytest.raises(NetlinkError) as info:
        asyncio.run(VipLink.open("eth9", VIP4, netns=topo["a"].netns))
    assert str(info.value) == "interface eth9 not found"


def test_missing_namespace_is_an_error_and_is_not_created(topo: Topology) -> None:
    name = topo.prefix + "-typo"
    with pytest.raises(NetlinkError) as info:
        asyncio.run(VipLink.open("eth0", VIP4, netns=name))
    assert str(info.value) == f"network namespace {name} not found"
    assert name not in ns(topo["a"].netns, "ip", "netns", "list")


def test_claim_on_a_vanished_interface_names_it(topo: Topology) -> None:
    a = topo["a"].netns

    async def scenario() -> None:
        link = await VipLink.open("eth0", VIP4, netns=a)
        try:
            ns(a, "ip", "link", "del", "eth0")
            with pytest.raises(NetlinkError) as info:
                await link.claim()
            message = str(info.value)
            assert "\n" not in message
            assert "203.0.113.10/24" in message and "eth0" in message and "ENODEV" in message, message
        finally:
            await link.close()

    asyncio.run(scenario())


def test_link_up_follows_the_interface(topo: Topology) -> None:
    a = topo["a"].netns

    async def scenario() -> tuple[bool, bool]:
        link = await VipLink.open("eth0", VIP4, netns=a)
        try:
            before = await link.link_up()
            ns(a, "ip", "link", "set", "eth0", "down")
            return before, await link.link_up()
        finally:
            await link.close()

    assert asyncio.run(scenario()) == (True, False)


def test_watch_vip_sees_changes_behind_our_back(topo: Topology) -> None:
    a = topo["a"].netns

    async def scenario() -> list[bool]:
        link = await VipLink.open("eth0", VIP4, netns=a)
        seen: list[bool] = []
        watch = link.watch_vip()
        try:
            seen.append(await asyncio.wait_for(anext(watch), 2))
            ns(a, "ip", "addr", "add", str(VIP4), "dev", "eth0")
            seen.append(await asyncio.wait_for(anext(watch), 2))
            # An unrelated address must not wake the watcher.
            ns(a, "ip", "addr", "add", "203.0.113.11/24", "dev", "eth0")
            ns(a, "ip", "addr", "del", str(VIP4), "dev", "eth0")
            seen.append(await asyncio.wait_for(anext(watch), 2))
        finally:
            await watch.aclose()
            await link.close()
        return seen

    assert asyncio.run(scenario()) == [False, True, False]


def test_agent_path_without_netns_argument(topo: Topology) -> None:
    """The agent runs under `ip netns exec` and passes no netns: the default path must work too."""
    code = """
import asyncio, json
from ipaddress import ip_interface
from failover.netlink import VipLink
async def main():
    link = await VipLink.open("eth0", ip_interface("203.0.113.10/24"))
    await link.claim()
    held = await link.holds()
    await link.release()
    out = [link.mac, held, await link.holds()]
    await link.close()
    return out
print(json.dumps(asyncio.run(main())))
"""
    assert py_in(topo["a"].netns, code) == [topo["a"].mac, True, False]


@pytest.mark.parametrize("vip", [VIP4, VIP6], ids=["v4", "v6"])
def test_claim_release_latency(topo: Topology, vip: object, capsys: pytest.CaptureFixture[str]) -> None:
    """claim/release are on the swap's critical path: one request each, well under a millisecond here."""
    a = topo["a"].netns
    vip_if = ip_interface(str(vip))

    async def scenario() -> tuple[list[float], list[float]]:
        link = await VipLink.open("eth0", vip_if, netns=a)
        claims: list[float] = []
        releases: list[float] = []
        try:
            for _ in range(100):
                t0 = time.perf_counter()
                await link.claim()
                t1 = time.perf_counter()
                await link.release()
                t2 = time.perf_counter()
                claims.append((t1 - t0) * 1000)
                releases.append((t2 - t1) * 1000)
        finally:
            await link.close()
        return claims, releases

    claims, releases = asyncio.run(scenario())
    with capsys.disabled():
        print(
            f"\n[v{vip_if.version}] claim median {statistics.median(claims):.3f} ms "
            f"max {max(claims):.3f} ms; release median {statistics.median(releases):.3f} ms "
            f"max {max(releases):.3f} ms"
        )
    assert statistics.median(claims) < 5
    assert statistics.median(releases) < 5


def test_dumps_at_the_same_time_on_one_link_all_answer(topo: Topology) -> None:
    # The kernel runs one dump at a time per netlink socket and refuses another with EBUSY: a drain's
    # end (holds) and the self-check (holds, draining) met that way in the lab.
    a = topo["a"].netns

    async def scenario() -> list[bool]:
        link = await VipLink.open("eth0", VIP4, netns=a)
        try:
            await link.claim()
            await link.start_drain()
            asked = [link.holds() if i % 2 else link.draining() for i in range(40)]
            answers = await asyncio.gather(*asked)
            await link.end_drain()
            await link.release()
            return list(answers)
        finally:
            await link.close()

    assert asyncio.run(scenario()) == [True] * 40
