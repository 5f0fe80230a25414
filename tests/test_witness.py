"""The kernel witness for real: nft in a server namespace; clients to the VIP, to its own address, walled."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from ipaddress import ip_address

import pytest

from failover import witness
from failover.accesslog import LogEntry, proof
from tests import nsutil

pytestmark = [
    pytest.mark.skipif(not nsutil.is_root(), reason=nsutil.NEEDS_ROOT_REASON),
    pytest.mark.skipif(shutil.which("nft") is None or shutil.which("curl") is None, reason="needs nft, curl"),
]

PORT = 8080
CLOSED_PORT = 8081  # nothing listens: the VIP answers with resets


def test_ruleset_refuses_bad_input_and_names_its_own_table() -> None:
    vip = ip_address("203.0.113.10")
    text = witness.ruleset("web-1", vip, [443, 80, 80])
    assert "table inet failover_web_1_witness {" in text
    assert "tcp sport { 80, 443 }" in text and "add @clients { ip daddr }" in text
    assert "type ipv6_addr" in witness.ruleset("web", ip_address("2001:db8::10"), [80])
    with pytest.raises(witness.WitnessError, match="unusual cluster name"):
        witness.ruleset("web; flush ruleset", vip, [80])
    for ports in ([], [0], [65536], [True]):
        with pytest.raises(witness.WitnessError, match="TCP ports"):
            witness.ruleset("web", vip, ports)


def call(netns: str, code: str) -> object:
    """Run witness calls inside `netns` (nft acts on the namespace it runs in)."""
    program = (
        "import asyncio, json\n"
        "from ipaddress import ip_address\n"
        "from failover import witness\n"
        "async def main():\n"
        + "".join(f"    {line}\n" for line in code.splitlines())
        + "print(json.dumps(asyncio.run(main())))\n"
    )
    return nsutil.py_in(netns, program)


def curl(netns: str, host: str, port: int = PORT) -> str:
    url = f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"
    argv = ["curl", "-s", "-m", "1", "-o", "/dev/null", "-w", "%{http_code}", url]
    return nsutil.ns(netns, *argv, check=False)


@contextmanager
def web_server(netns: str) -> Iterator[None]:
    # Dual-stack on the wildcard address, like nginx in the lab.
    argv = ["ip", "netns", "exec", netns, sys.executable, "-m", "http.server", "--bind", "::", str(PORT)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/")
    try:
        for _ in range(50):  # until it listens: bounded, 5 s
            if curl(netns, "127.0.0.1") == "200":
                break
            subprocess.run(["sleep", "0.1"], check=True)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=5)


@pytest.mark.parametrize("family", [4, 6])
def test_only_clients_the_vip_answered_are_witnessed(family: int) -> None:
    vip = "203.0.113.10" if family == 4 else "2001:db8:0:1::10"
    plen = 32 if family == 4 else 128
    with nsutil.topology(("server", "client", "monitor", "walled")) as topo:
        server, client, monitor, walled = (topo[n] for n in ("server", "client", "monitor", "walled"))
        own = server.ip4 if family == 4 else server.ip6
        addr = {4: lambda h: h.ip4, 6: lambda h: h.ip6}[family]
        nodad = ["nodad"] if family == 6 else []
        nsutil.ns(server.netns, "ip", "addr", "add", f"{vip}/{plen}", "dev", "eth0", *nodad)
        # The failed move to catch: this host's firewall drops one client's packets to the VIP.
        wall = (
            "table inet walltest {\n chain input {\n  type filter hook input priority 0; policy accept;\n"
            f"  {'ip' if family == 4 else 'ip6'} saddr {addr(walled)} drop\n }}\n}}\n"
        )
        nft_in_server = ["ip", "netns", "exec", server.netns, "nft", "-f", "-"]
        subprocess.run(nft_in_server, input=wall, text=True, check=True, timeout=10)
        with web_server(server.netns):
            call(server.netns, f"await witness.install('web', ip_address('{vip}'), [{PORT}])")
            call(server.netns, f"await witness.install('rst', ip_address('{vip}'), [{CLOSED_PORT}])")
            assert call(server.netns, "return sorted(await witness.sources('web'))") == []

            assert curl(client.netns, vip) == "200"
            assert curl(monitor.netns, own) == "200"  # polls the node's own address
            assert curl(walled.netns, vip) == "000"  # dropped by the host's firewall
            assert curl(monitor.netns, vip, CLOSED_PORT) == "000"  # refused with a reset
            assert curl(server.netns, vip) == "200"  # the host asking itself

            seen = call(server.netns, "return sorted(await witness.sources('web'))")
            assert seen == [addr(client)] and isinstance(seen, list)
            assert call(server.netns, "return sorted(await witness.sources('rst'))") == []

            # What the agent does with it: the monitor's line to the node's address does not count.
            entries = [LogEntry(addr(client), None, None, 200), LogEntry(addr(monitor), None, None, 200)]
            p = proof(entries, vip=vip, exclude=[own], destination_known=False, witnessed=seen)
            assert p.counted == 1 and dict(p.rejected) == {"not-witnessed": 1}

            # Installing again starts from an empty set; removing twice is fine; a removed witness says so.
            call(server.netns, f"await witness.install('web', ip_address('{vip}'), [{PORT}])")
            assert call(server.netns, "return sorted(await witness.sources('web'))") == []
            assert curl(monitor.netns, vip) == "200"
            assert call(server.netns, "return sorted(await witness.sources('web'))") == [addr(monitor)]
            call(server.netns, "await witness.remove('web')\nawait witness.remove('web')")
            error = call(
                server.netns,
                "try:\n    await witness.sources('web')\n"
                "except witness.WitnessError as e:\n    return str(e)",
            )
            assert isinstance(error, str) and error.startswith("no witness for cluster web")
            listing = nsutil.ns(server.netns, "nft", "-j", "list", "tables")
            names = [t["table"]["name"] for t in json.loads(listing)["nftables"] if "table" in t]
            assert "failover_web_witness" not in names and "failover_rst_witness" in names
