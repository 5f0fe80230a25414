"""Fixtures and helpers of the chaos suite: faults, bad input and attacks against a real lab cluster.

Everything here reuses the integration suite's lab (`tests/integration/conftest.py`): a fresh namespace
lab per test, torn down pass or fail, with the agents' log tails attached to a failing report. What is
added: the soak switch (FAILOVER_SOAK=1 runs the long variants), a passive frame sniffer in the bridge
namespace, and the wait for "exactly one holder, and it serves the client".
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from failover.lab.cluster import LabCluster
from failover.lab.netns import BRIDGE_HOST
from tests.integration import conftest as integration_conftest
from tests.integration.conftest import (  # noqa: F401  (fixtures and hooks are used by name)
    CLIENT,
    REPO,
    VIP_IP,
    _needs_root_and_nginx,
    fetch,
    package_env,
    pytest_runtest_makereport,
)
from tests.integration.conftest import vip_holders as _vip_holders_all

# The integration suite's per-test lab, under the same name here.
cluster = integration_conftest.cluster

# Long variants (5 minutes of netem, 200 swap cycles, a million datagrams) only when asked for.
SOAK = os.environ.get("FAILOVER_SOAK", "") == "1"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "chaos: the chaos and security suite (tests/chaos)")


def figure(request: pytest.FixtureRequest, text: str) -> None:
    """A measured figure, shown in the terminal summary and kept in the JUnit XML."""
    request.node.user_properties.append(("figure", text))


# --- sniffing the wire from the bridge namespace -----------------------------------------------------


class Sniffer:
    """tests/chaos/sniff.py running in the bridge namespace; records() reads what it wrote so far."""

    def __init__(self, cluster: LabCluster, out: Path, proc: subprocess.Popen[bytes]) -> None:
        self.cluster, self.out, self.proc = cluster, out, proc

    def records(self, kind: str | None = None) -> list[dict[str, Any]]:
        found = []
        with contextlib.suppress(OSError):
            for line in self.out.read_text().splitlines():
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    if kind is None or record.get("kind") == kind:
                        found.append(record)
        return found

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


@contextlib.contextmanager
def sniffing(
    cluster: LabCluster,
    name: str,
    *,
    arp: bool = False,
    udp_port: int = 0,
    duration_s: float = 60.0,
    max_records: int = 100_000,
) -> Iterator[Sniffer]:
    out = cluster.workdir / f"sniff-{name}.jsonl"
    argv = [
        sys.executable,
        "-m",
        "tests.chaos.sniff",
        "--out",
        str(out),
        "--duration",
        str(duration_s),
        "--max",
        str(max_records),
    ]
    if arp:
        argv.append("--arp")
    if udp_port:
        argv += ["--udp-port", str(udp_port)]
    env = {**package_env(), "PYTHONPATH": str(REPO)}
    proc = cluster.lab.popen(BRIDGE_HOST, argv, env=env, cwd=str(REPO), stderr=subprocess.PIPE)
    sniffer = Sniffer(cluster, out, proc)
    try:
        if not cluster.lab.wait_until(lambda: sniffer.records("ready"), 10.0, 0.02):
            raise RuntimeError(f"sniffer did not start: {proc.poll()}")
        yield sniffer
    finally:
        sniffer.stop()


def vip_holders(cluster: LabCluster, names: tuple[str, ...] = ("live", "backup")) -> list[str]:
    """Of names, those with the VIP on eth0 (netlink, one namespace after the other)."""
    if names == ("live", "backup"):
        return _vip_holders_all(cluster)
    found = []
    for name in names:
        argv = ["ip", "-n", cluster.lab.host(name).netns, "-j", "address", "show", "dev", "eth0"]
        out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=10).stdout
        if any(
            i.get("local") == VIP_IP for link in json.loads(out or "[]") for i in link.get("addr_info", [])
        ):
            found.append(name)
    return found


# --- convergence --------------------------------------------------------------------------------------


def serving_holder(cluster: LabCluster) -> str | None:
    """The one server with the VIP on eth0, if exactly one has it and it answers the client's request."""
    holders = vip_holders(cluster)
    if len(holders) != 1:
        return None
    argv = ["curl", "-s", "--max-time", "0.5", f"http://{VIP_IP}/"]
    served = cluster.lab.run(CLIENT, argv, check=False, timeout=5).stdout.strip()
    return holders[0] if served == holders[0] else None


def wait_converged(cluster: LabCluster, timeout: float) -> tuple[str | None, float]:
    """Until exactly one holder serves the client: (holder, seconds waited), or (None, timeout)."""
    started = time.monotonic()
    deadline = started + timeout
    for _ in range(int(timeout / 0.02) + 2):
        holder = serving_holder(cluster)
        if holder is not None:
            return holder, time.monotonic() - started
        if time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    return None, time.monotonic() - started


def wait_no_move(cluster: LabCluster, timeout: float) -> tuple[list[dict[str, Any]], float]:
    """Until neither node has a move in progress: (both statuses, seconds waited), the last statuses
    if `timeout` passed first. A target left ready by a source that died waits out its own step
    timeout (its READY row), so a test asks for the end of a move within that bound, not at once."""
    started = time.monotonic()
    statuses: list[dict[str, Any]] = []
    for _ in range(int(timeout / 0.02) + 2):
        statuses = [cluster.status(name) for name in ("live", "backup")]
        if all(status["swap_in_progress"] is None for status in statuses):
            break
        if time.monotonic() - started >= timeout:
            break
        time.sleep(0.02)
    return statuses, time.monotonic() - started


def total_rejected(status: dict[str, Any]) -> int:
    return sum(int(v) for v in status.get("rejected", {}).values())


class HolderSampler:
    """Samples who has the VIP on eth0 every few ms in a thread (bounded); keeps samples with two.

    Namespaces are read one after the other, so a move between two reads would look like two holders.
    Each sample reads first, second, first again (alternating which goes first): two holders only if
    the first held at both of its reads and the second held in between.
    """

    def __init__(self, cluster: LabCluster, seconds: float = 40.0) -> None:
        self.doubles: list[tuple[float, list[str]]] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(cluster, seconds))
        self._thread.start()

    def _run(self, cluster: LabCluster, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        order = ("live", "backup")
        while not self._stop.is_set() and time.monotonic() < deadline:
            first, second = order if self.samples % 2 == 0 else order[::-1]
            a1 = first in vip_holders(cluster, names=(first,))
            b = second in vip_holders(cluster, names=(second,))
            a2 = first in vip_holders(cluster, names=(first,))
            self.samples += 1
            if a1 and b and a2:
                self.doubles.append((time.monotonic(), [first, second]))
            time.sleep(0.002)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
