"""A forged-source flood at the holder's heartbeat port during a swap: the swap completes, nobody takes over.

From the client's namespace (a third address on the segment), fuzzsend sends real-key messages that
name the peer as their sender, wrong-key ones and random bytes, at 20,000 a second: each would cost the
holder's loop an HMAC and a JSON parse. The agent drops what does not come from the peer's address before
any crypto (counted as `source`) and logs about it at most once an interval.
"""

from __future__ import annotations

import json
import sys
import time

import pytest

from failover.lab.cluster import LabCluster
from tests.integration.conftest import CLIENT, client_load, events, package_env

from .conftest import figure

pytestmark = [pytest.mark.root, pytest.mark.chaos]

RATE = 20_000.0
COUNT = 200_000  # ten seconds at RATE, at most


def test_forged_source_flood_during_a_swap(cluster: LabCluster, request: pytest.FixtureRequest) -> None:
    before = cluster.status("live")["rejected"]
    argv = [
        sys.executable, "-m", "tests.chaos.fuzzsend", "--target", str(cluster.lab.host("live").address),
        "--port", "5405", "--key", str(cluster.workdir / "lab.key"), "--count", str(COUNT), "--rate",
        str(RATE), "--kinds", "replay,sender,cluster,wrong-key,random",
    ]
    load = client_load(cluster, duration_s=40)
    flood = cluster.lab.popen(CLIENT, argv, stdout=-1, env=package_env())
    try:
        time.sleep(2.0)  # the flood is on before the swap starts
        swap = cluster.move("swap", via="backup")
        out, _ = flood.communicate(timeout=COUNT / RATE * 3 + 30)
    finally:
        if flood.poll() is None:
            flood.kill()
        load.stop()
    sent = sum(json.loads(out)["sent"].values())
    assert swap["ok"], swap
    assert cluster.holders() == ["backup"]
    for name in ("live", "backup"):
        for event in ("takeover", "holder-silent", "settle"):
            assert events(cluster, name, event) == [], (name, event)
    time.sleep(0.5)
    after = cluster.status("live")["rejected"]
    grown = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
    failed = sum(1 for r in load.records() if not r.ok)
    figure(request, f"forged-source flood: {sent} datagrams, live counted {grown}; swap ok, no takeover;"
                    f" {failed} client requests failed")
    assert sent == COUNT
    assert set(grown) == {"source"}, grown  # nothing of the flood reached the decoder
    assert grown["source"] >= 0.9 * sent, (grown, sent)
    lines = events(cluster, "live", "datagrams-rejected")
    assert 1 <= len(lines) <= 1 + 30 // 10, len(lines)  # one line per 10 s at most, not one per datagram
