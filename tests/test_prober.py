"""failover.prober.Prober, the agent's long-lived probe: real frames between namespaces (root).

One Prober serves every probe and measurement of an agent's life, on two listening sockets that stay
open and are shut (a drop-all filter) between uses. These tests check what that must not change: a
probe hears what a fresh socket heard, and nothing from before it was sent, while the event loop stays
free for the agent's heartbeats.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator

import pytest
from scapy.layers.l2 import ARP, Ether

from tests.nsutil import NEEDS_ROOT_REASON, Host, Topology, is_root, py_in, topology

pytestmark = pytest.mark.skipif(not is_root(), reason=NEEDS_ROOT_REASON)

VIP4 = "203.0.113.10"
FLOOR = "count=3, interval=5 / 3 / 1000, wait=0.005"  # the shortest window the core picks


@pytest.fixture
def topo() -> Iterator[Topology]:
    with topology(("a", "b", "c")) as t:
        yield t


def in_a(topo: Topology, body: str, timeout: float = 30.0) -> object:
    """Run ``body`` (the inside of ``async def main()``, with ``p`` a Prober on a) in a's namespace."""
    a, b = topo["a"], topo["b"]
    indented = "\n".join("        " + line for line in body.strip().splitlines())
    code = f"""
import asyncio, json, subprocess
from ipaddress import ip_address
from failover.prober import Prober
from failover.bpf import read_drops
ours, peer = ip_address("{a.ip4}"), ip_address("{b.ip4}")
async def main():
    p = Prober("eth0", ip_address("{VIP4}"), "{a.mac}")
    p.prepare(ours, peer)
    try:
{indented}
    finally:
        p.close()
print(json.dumps(asyncio.run(main())))
"""
    return py_in(a.netns, code, timeout=timeout)


def send_command(host: Host, frame: bytes, *, frames: int, gap: float = 0.0) -> list[str]:
    """The command by which ``host`` sends ``frame`` ``frames`` times, ``gap`` seconds apart (bounded in
    count, so in time); it prints "sending" first."""
    code = f"""
import socket, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
s.bind(("eth0", 0))
frame = bytes.fromhex("{frame.hex()}")
print("sending", flush=True)
for _ in range({frames}):
    try:
        s.send(frame)
    except OSError:
        time.sleep(0.0001)
    if {gap}:
        time.sleep({gap})
"""
    return ["ip", "netns", "exec", host.netns, sys.executable, "-c", code]


@contextlib.contextmanager
def sender(host: Host, frame: bytes, *, frames: int, gap: float = 0.0) -> Iterator[subprocess.Popen[str]]:
    """``host`` sends ``frame`` ``frames`` times, ``gap`` seconds apart, while the ``with`` runs."""
    command = send_command(host, frame, frames=frames, gap=gap)
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "sending"
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=5)


def rival_probe(host: Host) -> bytes:
    """An RFC 5227 probe for the VIP from ``host``: a frame the probe's filter lets through."""
    return bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src=host.mac) / ARP(op=1, hwsrc=host.mac, psrc="0.0.0.0",
                                                                   pdst=VIP4))  # fmt: skip


def test_a_shut_prober_queues_nothing(topo: Topology) -> None:
    """Between probes the kernel keeps every frame, wanted or not, away from the socket: c probing for
    the VIP a few thousand times leaves the probe's queue empty and its drop count at zero."""
    c = topo["c"]
    body = """
await asyncio.sleep(0.5)  # c's frames reach a meanwhile
queued = 0
sock = p._probe.sock
sock.setblocking(False)
while True:
    try:
        sock.recv(1)
    except BlockingIOError:
        break
    queued += 1
return [queued, read_drops(sock)]
"""
    with sender(c, rival_probe(c), frames=3000, gap=0.0001):
        assert in_a(topo, body) == [0, 0]


def test_stale_frames_are_discarded_not_taken_for_answers(topo: Topology) -> None:
    """Frames left in the queue from before a probe (here: the probe socket left open while c floods,
    overflowing the queue) are neither an answer nor a loss for the next probe: nobody holds the VIP
    when it runs, and it says so."""
    c = topo["c"]
    send = send_command(c, rival_probe(c), frames=20000)
    body = f"""
p._probe.open(p._filter("probe", peer, None))
subprocess.run({send!r}, check=True, timeout=20)  # c floods, then stops: the queue is full, drops counted
p._probe.shut()
r = await p.probe({FLOOR}, peer=(ours, peer))
return [list(r.answered_by), r.unknown, r.frames]
"""
    result = in_a(topo, body)
    assert isinstance(result, list)
    answered, unknown, frames = result
    assert answered == [] and unknown == "", result
    assert frames < 20, result  # its own three probes (outgoing) and b's three answers for its own address


def test_one_prober_follows_the_holder_as_it_comes_and_goes(topo: Topology) -> None:
    """Twenty probes at the floor window on one Prober, b taking and dropping the VIP in between: each
    probe reports exactly what held the VIP while it ran, never a late answer to the one before."""
    b = topo["b"]
    body = f"""
out = []
for i in range(20):
    held = i % 2 == 0
    verb = "add" if held else "del"
    subprocess.run(["ip", "-n", "{b.netns}", "addr", verb, "{VIP4}/24", "dev", "eth0"], check=True)
    r = await p.probe({FLOOR}, peer=(ours, peer))
    out.append([held, list(r.answered_by), list(r.host_answered_by), r.unknown])
return out
"""
    results = in_a(topo, body, timeout=60)
    assert isinstance(results, list) and len(results) == 20
    for held, answered, hosts, unknown in results:
        assert answered == ([b.mac] if held else []), results
        assert hosts == [b.mac] and unknown == "", results


def test_measurements_and_probes_share_one_prober(topo: Topology) -> None:
    """A measurement running while a probe runs (separate sockets) and two probes asked for at once
    (one after the other): every one of them hears b."""
    b = topo["b"]
    body = f"""
subprocess.run(["ip", "-n", "{b.netns}", "addr", "add", "{VIP4}/24", "dev", "eth0"], check=True)
results = await asyncio.gather(
    p.probe({FLOOR}, peer=(ours, peer)),
    p.probe({FLOOR}, peer=(ours, peer)),
    p.measure_peer(ours, peer, 0.06),
    p.measure_peer(ours, peer, 0.06),
)
rtts = [await p.measure_peer(ours, peer, 0.06) for _ in range(20)]
return [[list(r.answered_by), list(r.host_answered_by), r.unknown] for r in results[:2]] + [
    results[2] is not None, results[3] is not None, all(0 < r < 0.06 for r in rtts if r is not None),
    sum(r is None for r in rtts)]
"""
    result = in_a(topo, body)
    assert result == [[[b.mac], [b.mac], ""], [[b.mac], [b.mac], ""], True, True, True, 0]


def test_a_probe_under_a_flood_leaves_the_loop_running(topo: Topology) -> None:
    """c floods rival probes the filter must let through, to the probe's cap: the probe says unknown,
    and the agent's loop kept turning meanwhile (it reads in batches), so heartbeats would go out."""
    c = topo["c"]
    body = """
ticks = 0
async def ticker():
    nonlocal ticks
    while True:
        await asyncio.sleep(0)
        ticks += 1
await asyncio.sleep(0.2)  # the flood is on
t = asyncio.create_task(ticker())
await asyncio.sleep(0)
ticks = 0
r = await p.probe(count=3, interval=0.005, wait=0.2, max_frames=2000)
t.cancel()
return [r.unknown, r.frames, ticks]
"""
    with sender(c, rival_probe(c), frames=400_000, gap=0.0):
        result = in_a(topo, body)
    assert isinstance(result, list)
    unknown, frames, ticks = result
    assert "cap" in unknown and frames == 2000
    assert ticks >= 2000 // 64 - 1  # the loop ran at least once between two batches of 64 frames


def test_timing_of_one_prober(topo: Topology, capsys: pytest.CaptureFixture[str]) -> None:
    """A figure, not a goal: how long a floor-window probe takes from the call to its answer."""
    body = f"""
import statistics, time
took = []
for _ in range(30):
    t0 = time.monotonic()
    await p.probe({FLOOR}, peer=(ours, peer))
    took.append(time.monotonic() - t0)
    await asyncio.sleep(0.01)
return [statistics.median(took), min(took), max(took)]
"""
    result = in_a(topo, body)
    assert isinstance(result, list)
    median, low, high = result
    assert low >= (2 * 5 / 3 + 5) / 1000  # never shorter than its window
    with capsys.disabled():
        print(f"\nfloor-window probe (8.33 ms window): {low * 1e3:.2f} / {median * 1e3:.2f} / "
              f"{high * 1e3:.2f} ms min / median / max of 30")  # fmt: skip
