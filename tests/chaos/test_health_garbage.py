"""A backend that answers garbage (not HTTP) to the target's health check: the move is refused with the
reason, and the next move is refused the same way, never as "already in progress" (the check's task used
to die on BadStatusLine and leave the target in "checking" for ever).
"""

from __future__ import annotations

import sys

import pytest

from failover.lab.cluster import SERVERS, LabCluster

pytestmark = [pytest.mark.root, pytest.mark.chaos]

PORT = 8099
GARBAGE = f"""
import socket, time
srv = socket.create_server((__import__("sys").argv[1], {PORT}))
srv.settimeout(1.0)
end = time.monotonic() + 120  # bounded
while time.monotonic() < end:
    try:
        conn, _ = srv.accept()
    except TimeoutError:
        continue
    with conn:
        conn.settimeout(1.0)
        try:
            conn.recv(4096)
            conn.sendall(b"garbage\\r\\n\\r\\n")
        except OSError:
            pass
"""


def test_a_health_url_answering_garbage_refuses_moves_without_wedging(cluster: LabCluster) -> None:
    backup = str(cluster.lab.host("backup").address)
    cluster.lab.popen("backup", [sys.executable, "-c", GARBAGE, backup])
    doc = cluster.document()
    doc["nodes"]["backup"]["health_url"] = f"http://{backup}:{PORT}/health"
    cluster.write_config(doc)
    for name in SERVERS:
        cluster.stop_agent(name)
    for name in SERVERS:
        cluster.start_agent(name)
    cluster.wait_ready()
    for attempt in range(2):
        outcome = cluster.move("swap", via="backup", timeout=30)
        assert not outcome["ok"], outcome
        reason = outcome["reason"]
        assert "BadStatusLine" in reason and "in progress" not in reason, (attempt, outcome)
        assert cluster.holders() == ["live"]
    assert cluster.status("backup")["swap_in_progress"] is None
