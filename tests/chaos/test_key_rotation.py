"""Key rotation host by host with `auth.previous_key_file`: heartbeats never stop, a swap works throughout.

The procedure an operator follows (README, cluster.example.yaml): both on key A; live gets
{key_file: B, previous_key_file: A} and is restarted; then backup the same; then A is dropped on both.
At every stage a sampler checks both agents hear their peer, and a swap (and unswap) completes.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from failover.lab.cluster import LabCluster
from tests.integration.conftest import client_load

from .conftest import figure

pytestmark = [pytest.mark.root, pytest.mark.chaos]


def write_key(path: Path) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return path


def node_file(cluster: LabCluster, name: str, stage: int, auth: dict[str, str]) -> Path:
    doc = cluster.document()
    doc["auth"] = auth
    path = cluster.workdir / f"{name}-stage{stage}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


class PeerWatch:
    """Polls both agents' status (bounded); records every sample where either refused a datagram's key."""

    def __init__(self, cluster: LabCluster, seconds: float = 60.0) -> None:
        self.silent: list[tuple[float, str, Any]] = []
        self.samples = 0
        self._cluster = cluster
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(seconds,))
        self._thread.start()

    def _run(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            for name in ("live", "backup"):
                try:
                    status = self._cluster.status(name)
                except Exception:  # an agent being restarted: its peer's view is what counts
                    continue
                # A peer restarting for the next stage is silent for a moment; a rejected key is the fault.
                if status["rejected"].get("auth"):
                    self.silent.append((time.monotonic(), name, status["rejected"]))
            self.samples += 1
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def test_rotate_keys_host_by_host(cluster: LabCluster, request: pytest.FixtureRequest) -> None:
    a = str(cluster.workdir / "lab.key")
    b = str(write_key(cluster.workdir / "new.key"))
    stages = [
        ("live: B, previous A", {"live": {"key_file": b, "previous_key_file": a}}),
        ("backup: B, previous A", {"backup": {"key_file": b, "previous_key_file": a}}),
        ("both: B only", {"live": {"key_file": b}, "backup": {"key_file": b}}),
    ]
    load = client_load(cluster, duration_s=120)
    watch = PeerWatch(cluster, seconds=110)
    results = []
    try:
        for number, (label, changes) in enumerate(stages, 1):
            for name, auth in changes.items():
                # Not cluster.wait_ready(): whether the peers still hear each other is what is tested.
                cluster.stop_agent(name)
                cluster.start_agent(name, config=node_file(cluster, name, number, auth))
                assert cluster.lab.wait_until(lambda n=name: cluster.socket(n).exists(), 10.0)
            both_hear = lambda: all(cluster.status(n)["peer"]["alive"] for n in ("live", "backup"))  # noqa: E731
            assert cluster.lab.wait_until(both_hear, 3.0), label
            time.sleep(0.5)
            swap = cluster.move("swap", via="live")
            time.sleep(1.2)
            unswap = cluster.move("unswap", via="live")
            results.append((label, swap["exit_code"], swap["reason"], unswap["exit_code"]))
            time.sleep(1.2)
    finally:
        watch.stop()
        load.stop()
    figure(
        request,
        f"key rotation: {results}; {len(watch.silent)} of {watch.samples} samples with a"
        f" datagram refused for its key, first: {watch.silent[:1]}",
    )
    assert watch.silent == [], watch.silent[:3]  # no datagram was ever refused for its key
    assert all(s == 0 and u == 0 for _, s, _, u in results), results
