"""Fixtures for the root integration tests: a whole cluster in a fresh namespace lab per test.

Every test here needs root (network namespaces), iproute2 and nginx; without them the whole directory is
skipped with the reason. A failing test gets the tail of both agents' logs attached to its report, taken
while the lab is still up. Every lab is torn down, pass or fail, and teardown checks that none of its
namespaces outlived it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from failover.lab.client import ClientLoad
from failover.lab.cluster import SERVERS, LabCluster
from failover.lab.contenders import link_down
from failover.lab.netns import HOST_PLAN, LAB_SUBNET, VIP

REPO = Path(__file__).resolve().parents[2]
VIP_IP = str(VIP.ip)
CLIENT = "client"
CLIENT_IP = str(LAB_SUBNET.network_address + HOST_PLAN[CLIENT])


def _missing() -> str:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    for tool in ("ip", "nginx", "curl"):
        if shutil.which(tool) is None:
            return f"needs `{tool}` on PATH"
    return ""


SKIP_REASON = _missing()


@pytest.fixture(autouse=True)
def _needs_root_and_nginx() -> None:
    if SKIP_REASON:
        pytest.skip(f"integration tests: {SKIP_REASON}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    cluster = getattr(item, "funcargs", {}).get("cluster")
    if report.when == "call" and report.failed and isinstance(cluster, LabCluster):
        for name in SERVERS:
            report.sections.append((f"agent log tail: {name}", cluster.agent_log(name, tail=60)))


def lab_namespaces(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "-j", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [e["name"] for e in json.loads(out or "[]") if e["name"].startswith(f"{prefix}-")]


@pytest.fixture
def cluster() -> Iterator[LabCluster]:
    """live holds the VIP, backup stands by, client can reach both; agents hear each other."""
    lab_cluster = LabCluster()
    prefix = lab_cluster.lab.prefix
    try:
        with lab_cluster:
            yield lab_cluster
    finally:
        left = lab_namespaces(prefix)
        assert not left, f"namespaces left behind by the lab: {left}"


# --- helpers shared by the test modules ------------------------------------------------------------


def package_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def failover_cli(
    cluster: LabCluster, host: str, *args: str, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """`python -m failover ARGS` for real, inside host's namespace."""
    argv = [sys.executable, "-m", "failover", *args]
    return cluster.lab.run(host, argv, check=False, timeout=timeout, env=package_env())


def fetch(cluster: LabCluster, host: str = CLIENT, target: str = VIP_IP) -> str:
    """One HTTP GET from host to target: the body (who served it), or '' when it failed."""
    argv = ["curl", "-s", "--max-time", "2", f"http://{target}/"]
    return cluster.lab.run(host, argv, check=False, timeout=5).stdout.strip()


def restart_agent(cluster: LabCluster, name: str, env: dict[str, str] | None = None,
                  config: Path | None = None) -> None:
    """Stop name's agent (SIGTERM) and start it again, with a test fault or a file of its own."""
    cluster.stop_agent(name)
    cluster.start_agent(name, env=env, config=config)
    cluster.wait_ready()


def vip_holders(cluster: LabCluster) -> list[str]:
    """The servers with the VIP on eth0: the ones that answer for it (a drain copy on lo does not count)."""
    return cluster.holders()


def events(cluster: LabCluster, name: str, event: str) -> list[dict[str, Any]]:
    return [e for e in cluster.agent_events(name) if e.get("event") == event]


def claimed_after_suspicion(takeover: Mapping[str, Any]) -> bool:
    """A silent holder's takeover that claimed as it should: suspected (dead_after less the probe's window),
    the probe silent, dead_after reached, claimed. The probe runs ahead of dead_after, so its verdict and
    the end of dead_after come in either order, a millisecond or so apart; the claim follows both."""
    steps = [s["step"] for s in takeover["steps"]]
    return (
        sorted(steps[1:3]) == ["holder-silent", "probe-silent"]
        and steps[0] == "suspected"
        and steps[3:] == ["claimed"]
    )


@contextlib.contextmanager
def lab_cluster(
    overrides: Mapping[str, Any] | None = None,
    workdir: Path | None = None,
    hosts: tuple[str, ...] = ("live", "backup", "client"),
) -> Iterator[LabCluster]:
    """A LabCluster with its own cluster-file overrides; torn down and checked like the `cluster` fixture."""
    built = LabCluster(workdir, overrides=overrides, hosts=hosts)
    prefix = built.lab.prefix
    try:
        with built:
            yield built
    finally:
        left = lab_namespaces(prefix)
        assert not left, f"namespaces left behind by the lab: {left}"


def client_load(cluster: LabCluster, duration_s: float = 60.0) -> ClientLoad:
    """The standard client load (a new connection every 5 ms, one keep-alive) against the VIP, started."""
    load = ClientLoad(cluster.lab, CLIENT, VIP_IP, cluster.workdir / "client", duration_s=duration_s)
    load.start()
    return load


def crash(cluster: LabCluster, name: str = "live") -> float:
    """name dies: its eth0 set down in its namespace, then its agent SIGKILLed; returns the time before."""
    started = time.monotonic()
    link_down(cluster.lab, name)
    cluster.stop_agent(name, signal.SIGKILL)
    return started
