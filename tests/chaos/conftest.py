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
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from failover.lab.cluster import LabCluster
from failover.lab.netns import BRIDGE_HOST
from tests.integration.conftest import (  # noqa: F401  (fixtures and hooks are used by name)
    CLIENT,
    REPO,
    VIP_IP,
    _needs_root_and_nginx,
    cluster,
    fetch,
    package_env,
    pytest_runtest_makereport,
    vip_holders,
)

# Long variants (5 minutes of netem, 200 swap cycles, a million datagrams) only when asked for.
SOAK = os.environ.get("FAILOVER_SOAK", "") == "1"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "chaos: the chaos and security suite (tests/chaos)")


def figure(request: pytest.FixtureRequest, text: str) -> None:
    """A measured figure, shown in the terminal summary and kept in the JUnit XML."""
    request.node.user_properties.append(("figure", text))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """The chaos suite's figures, unless the integration conftest (which prints every figure) is loaded."""
    if any(
        getattr(p, "__name__", "") == "tests.integration.conftest"
        for p in config.pluginmanager.get_plugins()
    ):
        return
    figures = [
        (report.nodeid, value)
        for report in terminalreporter.stats.get("passed", []) + terminalreporter.stats.get("failed", [])
        for name, value in getattr(report, "user_properties", [])
        if name == "figure"
    ]
    if figures:
        terminalreporter.section("measured")
        for nodeid, value in figures:
            terminalreporter.write_line(f"{nodeid.rsplit('::', 1)[-1]}: {value}")


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
    cluster: LabCluster, name: str, *, arp: bool = False, udp_port: int = 0, duration_s: float = 60.0,
    max_records: int = 100_000,
) -> Iterator[Sniffer]:
    out = cluster.workdir / f"sniff-{name}.jsonl"
    argv = [sys.executable, "-m", "tests.chaos.sniff", "--out", str(out), "--duration", str(duration_s),
            "--max", str(max_records)]
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


def total_rejected(status: dict[str, Any]) -> int:
    return sum(int(v) for v in status.get("rejected", {}).values())
