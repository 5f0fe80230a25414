"""A wall clock stepped back an hour on one host between two agent starts: the pair hears each other again.

The step is real as far as the agent can tell: libfaketime (LD_PRELOAD, Debian's libfaketime) moves
CLOCK_REALTIME of the restarted agent's process an hour back, as an NTP step or an unset RTC would;
CLOCK_MONOTONIC is left alone, as a real step leaves it. Before the boot id was a counter, the peer took
every datagram of that run for a replay of the earlier one, forever.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from failover.lab.cluster import LabCluster
from tests.integration.conftest import client_load

pytestmark = [pytest.mark.root, pytest.mark.chaos]

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
STEP_S = 3600


def started_at(cluster: LabCluster, name: str, earlier: int) -> datetime | None:
    """The wall-clock time the agent's log gives its start, for a start after the first `earlier`."""
    starts = [e for e in cluster.agent_events(name) if e.get("event") == "agent-started"]
    return datetime.fromisoformat(starts[earlier]["timestamp"]) if len(starts) > earlier else None


def test_clock_stepped_back_an_hour_between_starts(cluster: LabCluster) -> None:
    if not LIBFAKETIME.exists():
        pytest.fail(f"{LIBFAKETIME} missing: run scripts/setup (it installs libfaketime)")
    cluster.stop_agent("live")
    earlier = sum(1 for e in cluster.agent_events("live") if e.get("event") == "agent-started")
    cluster.start_agent("live", env={
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME": f"-{STEP_S}",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "FAKETIME_DONT_RESET": "1",
    })
    deadline = time.monotonic() + 15
    started = None
    while started is None and time.monotonic() < deadline:
        time.sleep(0.1)
        started = started_at(cluster, "live", earlier)
    assert started is not None, cluster.agent_log("live")
    behind = (datetime.now(UTC) - started).total_seconds()
    assert STEP_S - 60 < behind < STEP_S + 60, f"clock {behind:.0f} s behind, not 1 h"
    cluster.wait_ready(timeout=10)  # both hear the other: the restarted run's datagrams are not replays
    backup = cluster.status("backup")
    before = backup["rejected"].get("replay", 0)
    time.sleep(1.0)
    after = cluster.status("backup")
    assert after["peer"]["alive"], json.dumps(after["peer"])
    assert after["rejected"].get("replay", 0) == before, json.dumps(after["rejected"])
    load = client_load(cluster, duration_s=30)  # the swap is proven by client requests at backup
    try:
        outcome = cluster.move("swap", via="backup")
    finally:
        load.stop()
    assert outcome["ok"], outcome
    assert cluster.holders() == ["backup"]
