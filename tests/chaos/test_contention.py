"""The request the endurance case lost, made to happen on purpose, and swap/unswap cycles on busy cores.

The lost request (captured on the bridge): the client's SYN reached the draining old holder, the
gratuitous ARP moved the client, and its GET went to the new holder, which held a TIME_WAIT socket for
the same client port from when it last served the VIP (43 s before; clients reuse ports within
seconds under load). The handoff rule of that time asked the kernel's socket lookup (`socket
wildcard`), which found that socket instead of the listener, so the segment was not handed off: the
dead connection's ACK answered it and every retransmission, and the client gave up at 2 s. The rule
now keeps its own record (failover/handoff.py): the set `own` of the new holder's connections, filled
from the SYNs it sends from the VIP after the rule is loaded and from its live connections listed at
install; any segment without SYN whose tuple is not in it goes to the old holder, whatever socket the
kernel would find. The first case builds exactly that trap (the new holder also closes those sockets
before it claims); the third runs the moves with every core kept busy by a bounded CPU hog. The second
is the same trap set by a keep-alive connection the new holder served at its last holding period:
nginx's reload by the drain hook leaves its end as an orphaned FIN-WAIT-2, and the agent closes what is
left when the drain ends, so it is neither recorded as its own nor answers the reused port.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from failover.lab.client import ClientLoad, summarize
from failover.lab.cluster import LabCluster
from tests.integration.conftest import CLIENT, CLIENT_IP, VIP_IP

from .conftest import SOAK, figure

pytestmark = [pytest.mark.root, pytest.mark.chaos]

# Outside the ephemeral range (32768-60999), so the background load never takes it.
REUSED_PORT = 20480

# `close` PORT: one request with Connection: close from PORT (the server closes first, so the server
# keeps the TIME_WAIT). `keep` PORT: a keep-alive connection from PORT, a request now and one when told.
CLIENT_SCRIPT = r"""
import json, socket, sys
mode, vip, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
def ask(sock, close=False):
    extra = b"Connection: close\r\n" if close else b""
    sock.sendall(b"GET / HTTP/1.1\r\nHost: lab\r\n" + extra + b"\r\n")
    data = b""
    while b"\r\n\r\n" not in data or not data.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionResetError("closed")
        data += chunk
    return data.split(b"\r\n\r\n", 1)[1].decode().strip()
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.settimeout(2)
sock.bind(("", port))
sock.connect((vip, 80))
if mode == "close":
    print(json.dumps({"first": ask(sock, close=True)}), flush=True)
    sock.recv(1)  # the server's FIN
    sock.close()
    raise SystemExit(0)
print(json.dumps({"first": ask(sock)}), flush=True)
sys.stdin.readline()
try:
    print(json.dumps({"second": ask(sock)}), flush=True)
except OSError as err:
    print(json.dumps({"second_error": type(err).__name__}), flush=True)
"""


def idle(cluster: LabCluster) -> bool:
    return all(cluster.status(n)["swap_in_progress"] is None for n in ("live", "backup"))


def move(cluster: LabCluster, name: str) -> dict[str, Any]:
    # The old holder stays busy for its straggler window (1 s) after a move returned.
    assert cluster.lab.wait_until(lambda: idle(cluster), 5.0, 0.05)
    outcome = cluster.move(name, via="live")
    assert outcome["exit_code"] == 0 and outcome["confirmed"] is True, outcome
    return outcome


def time_wait_of(cluster: LabCluster, host: str, port: int) -> list[str]:
    """The TCP sockets of host in TIME_WAIT (either substate) between the VIP:80 and CLIENT_IP:port."""
    argv = ["ss", "-4", "-t", "-n", "-H", "state", "time-wait", "state", "fin-wait-2",
            "src", f"{VIP_IP}:80", "dst", f"{CLIENT_IP}:{port}"]  # fmt: skip
    return cluster.lab.run(host, argv, timeout=10).stdout.splitlines()


def keep_alive_from(cluster: LabCluster, port: int) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """A keep-alive connection from the client's port to the VIP, and what its first request got."""
    proc = cluster.lab.popen(
        CLIENT, [sys.executable, "-c", CLIENT_SCRIPT, "keep", VIP_IP, str(port)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    return proc, json.loads(proc.stdout.readline())


def ask_again(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    """The keep-alive connection's second request: {"second": who} or {"second_error": name}."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b"go\n")
    proc.stdin.flush()
    answer: dict[str, Any] = json.loads(proc.stdout.readline())
    proc.wait(timeout=5)
    return answer


def swap_and_ask_again(cluster: LabCluster, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    """Swap to backup; as soon as the client follows backup, inside live's drain, use the connection."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        swapped = pool.submit(move, cluster, "swap")
        backup_mac = cluster.lab.host("backup").mac
        assert cluster.lab.wait_until(lambda: cluster.lab.neighbour_mac(CLIENT, VIP_IP) == backup_mac, 5.0)
        answer = ask_again(proc)
        swapped.result(timeout=30)
    return answer


def test_connection_on_a_port_the_new_holder_left_in_time_wait_is_handed_off(cluster: LabCluster) -> None:
    # Other clients keep coming, so each move is confirmed within milliseconds.
    load = ClientLoad(cluster.lab, CLIENT, VIP_IP, cluster.workdir / "load", interval_ms=20, duration_s=40)
    load.start()
    try:
        # backup serves one request from the port and keeps its TIME_WAIT (60 s) after moving back.
        move(cluster, "swap")
        argv = [sys.executable, "-c", CLIENT_SCRIPT, "close", VIP_IP, str(REUSED_PORT)]
        assert json.loads(cluster.lab.run(CLIENT, argv, timeout=10).stdout) == {"first": "backup"}
        move(cluster, "unswap")
        assert time_wait_of(cluster, "backup", REUSED_PORT), "precondition: backup keeps the TIME_WAIT"
        # The same port now opens a connection that live owns.
        proc, first = keep_alive_from(cluster, REUSED_PORT)
        assert first == {"first": "live"}
        second = swap_and_ask_again(cluster, proc)
    finally:
        load.stop()
    # Before the fix: backup's TIME_WAIT answered the request with a stale ACK; "second_error": "timeout".
    assert second == {"second": "live"}
    assert summarize(load.records()).failed == 0


def test_connection_on_a_port_the_new_holder_left_established_is_handed_off(cluster: LabCluster) -> None:
    load = ClientLoad(cluster.lab, CLIENT, VIP_IP, cluster.workdir / "load", interval_ms=20, duration_s=40)
    load.start()
    try:
        move(cluster, "swap")
        # A keep-alive connection that backup serves, idle across the move back (a pool that does not
        # watch it): the drain hook's reload closes backup's end (an orphaned FIN-WAIT-2), live resets
        # the connection's next request.
        old, first = keep_alive_from(cluster, REUSED_PORT)
        assert first == {"first": "backup"}
        move(cluster, "unswap")
        live_mac = cluster.lab.host("live").mac
        assert cluster.lab.wait_until(lambda: cluster.lab.neighbour_mac(CLIENT, VIP_IP) == live_mac, 5.0)
        time.sleep(1.0)  # the unswap returned after backup's drain; live's handoff ends with it
        assert "second_error" in ask_again(old)
        # Unless its agent closed it when the drain ended, backup still has its end of it now.
        proc, first = keep_alive_from(cluster, REUSED_PORT)
        assert first == {"first": "live"}
        second = swap_and_ask_again(cluster, proc)
    finally:
        load.stop()
    assert second == {"second": "live"}


# --- cycles with both cores busy --------------------------------------------------------------------

PAIRS = 50 if SOAK else 10
HOG = "import sys, time\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end: pass\n"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def test_swap_unswap_cycles_with_every_core_busy(cluster: LabCluster, request: pytest.FixtureRequest) -> None:
    duration = PAIRS * 8.0 + 20
    cores = os.cpu_count() or 2
    # One spinning process per core, each ending on its own after `duration` (killed earlier on exit).
    hogs = [subprocess.Popen([sys.executable, "-c", HOG, str(duration)]) for _ in range(cores)]
    load = ClientLoad(
        cluster.lab, CLIENT, VIP_IP, cluster.workdir / "client",
        duration_s=duration, max_requests=int(duration * 250),
    )  # fmt: skip
    try:
        load.start()
        started = time.monotonic()
        time.sleep(0.5)
        for _ in range(PAIRS):
            move(cluster, "swap")
            move(cluster, "unswap")
        elapsed = time.monotonic() - started
        assert all(h.poll() is None for h in hogs), "a hog ended before the moves did"
        hog_cpu = sum(cpu_seconds(h.pid) for h in hogs)
    finally:
        load.stop()
        for hog in hogs:
            hog.kill()
            hog.wait(timeout=5)
    total = summarize(load.records())
    figure(
        request,
        f"{PAIRS} swap/unswap pairs with {cores} CPU hogs (they got {hog_cpu:.0f} CPU-s in {elapsed:.0f} s on"
        f" {cores} cores): {total.requests} requests, {total.failed} failed,"
        f" {total.stalled_over_1s} over 1 s, max gap {total.max_gap_ms:.0f} ms",
    )
    assert total.failed == 0, [r for r in load.records() if not r.ok][:5]
    assert total.requests > 100 * PAIRS
