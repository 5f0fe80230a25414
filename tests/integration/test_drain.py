"""The old holder's drain ends when its connections to the VIP end: real agents, nginx and sock_diag.

One keep-alive client connection, opened on live before the swap, stays open across it; what ends it
(the client, nginx's reload by the drain hook, or swap.drain_max_ms) decides when the drain ends, and
the CLI's outcome says so.
"""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
import time
from typing import Any

from failover.lab.client import ClientLoad, summarize
from failover.lab.cluster import LabCluster
from tests.integration.conftest import VIP_IP, events

# One keep-alive HTTP connection to the VIP, driven by lines on stdin: "ask", "close", "eof".
CLIENT = r"""
import json, socket, sys
sock = socket.create_connection((sys.argv[1], 80), timeout=10)
def ask():
    sock.sendall(b"GET / HTTP/1.1\r\nHost: lab\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data or not data.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionResetError("closed")
        data += chunk
    return data.split(b"\r\n\r\n", 1)[1].decode().strip()
for line in sys.stdin:
    cmd = line.strip()
    try:
        if cmd == "ask":
            print(json.dumps({"answer": ask()}), flush=True)
        elif cmd == "eof":  # wait for the server to end the idle connection: in order (FIN) or not (RST)
            data = sock.recv(4096)
            sock.close()  # as an HTTP client's pool does on a FIN
            print(json.dumps({"eof": data == b"", "data": data.decode(errors="replace")}), flush=True)
            break
        elif cmd == "close":
            sock.close()
            print(json.dumps({"closed": True}), flush=True)
            break
    except OSError as err:
        print(json.dumps({"error": type(err).__name__}), flush=True)
"""


class Client:
    def __init__(self, cluster: LabCluster) -> None:
        self.proc = cluster.lab.popen(
            "client", [sys.executable, "-c", CLIENT, VIP_IP],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )

    def say(self, cmd: str) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{cmd}\n".encode())
        self.proc.stdin.flush()
        answer: dict[str, Any] = json.loads(self.proc.stdout.readline())
        return answer

    def end(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=5)


def new_connections(cluster: LabCluster) -> ClientLoad:
    """Other clients keep coming, so the access log confirms a swap within milliseconds: new connections
    only, so that the one keep-alive connection across the move is the test's own."""
    load = ClientLoad(
        cluster.lab, "client", VIP_IP, cluster.workdir / "load", interval_ms=20, duration_s=30,
        keepalive_interval_ms=(),
    )
    load.start()
    return load


def _restart_with(cluster: LabCluster, **changes: Any) -> None:
    doc = cluster.document()
    for key, value in changes.items():
        section, name = key.split("__")
        doc.setdefault(section, {})[name] = value
    cluster.write_config(doc)
    for name in ("live", "backup"):
        cluster.stop_agent(name)
        cluster.start_agent(name)
    cluster.wait_ready()


def _swap_with_open_connection(cluster: LabCluster, while_draining: Any) -> tuple[dict[str, Any], Any]:
    """Swap while the client's connection is open on live; `while_draining(client)` runs once live's
    status shows it waiting for that connection. Returns the CLI's outcome and what it returned."""
    load = new_connections(cluster)
    client = Client(cluster)
    try:
        assert client.say("ask") == {"answer": "live"}
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            move = pool.submit(cluster.move, "swap", "live")
            seen: dict[str, Any] = {}

            def waiting() -> bool:
                draining = cluster.status("live").get("draining") or {}
                seen.update(draining)
                return draining.get("state") == "draining-connections" and (draining.get("open") or 0) >= 1

            assert cluster.lab.wait_until(waiting, 10.0), seen
            assert not move.done()  # the CLI waits for the drain
            result = while_draining(client)
            outcome = move.result(timeout=60)
    finally:
        client.end()
        load.stop()
    assert summarize(load.records()).failed == 0
    return outcome, result


def test_the_drain_lasts_until_the_last_connection_closes(cluster: LabCluster) -> None:
    _restart_with(cluster, hooks__drain=[])  # nothing asks nginx to let go: the client decides

    def use_then_close(client: Client) -> dict[str, Any]:
        time.sleep(0.5)
        answer = client.say("ask")  # through backup's handoff to live, which still serves it
        closed_at = time.monotonic()
        client.say("close")
        return {**answer, "closed_at": closed_at}

    outcome, result = _swap_with_open_connection(cluster, use_then_close)
    assert outcome["exit_code"] == 0 and outcome["holder"] == "backup", outcome
    assert result["answer"] == "live"
    drain = outcome["drain"]
    assert drain["host"] == "live" and drain["left"] == 0 and drain["how"] == "closed", drain
    assert drain["after_s"] > 1.0  # past drain_ms, which ran out while the connection was still open
    assert outcome["ended"] >= result["closed_at"]  # the CLI returned only after the client was done
    drained = events(cluster, "live", "drained")
    assert drained and drained[-1]["left"] == 0
    assert cluster.lab.wait_until(lambda: bool(events(cluster, "backup", "handoff-removed")), 5.0)
    removed = events(cluster, "backup", "handoff-removed")[-1]
    assert removed["segments_handed_off"] >= 1  # the second request went through it


def test_the_drain_hook_closes_an_idle_keepalive_connection_in_order(cluster: LabCluster) -> None:
    # The lab's file has what the README asks of an nginx host: hooks.drain runs nginx -s reload.
    def wait_for_the_close(client: Client) -> dict[str, Any]:
        return client.say("eof")

    # The reload may close the idle connection before live's status shows it waiting for it: then
    # there is nothing to wait for, and the drain ends at drain_ms with nothing left.
    load = new_connections(cluster)
    client = Client(cluster)
    try:
        assert client.say("ask") == {"answer": "live"}
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            closed = pool.submit(wait_for_the_close, client)  # the client notices the FIN, as pools do
            outcome = cluster.move("swap", "live")
            result = closed.result(timeout=10)
    finally:
        client.end()
        load.stop()
    assert outcome["exit_code"] == 0 and outcome["holder"] == "backup", outcome
    assert result == {"eof": True, "data": ""}, result  # a FIN, not a reset, and no half response
    drain = outcome["drain"]
    assert drain["left"] == 0 and drain["how"] == "closed", drain
    hooks = [h for h in events(cluster, "live", "hooks") if h.get("hook_event") == "drain"]
    assert hooks and hooks[-1]["ok"], hooks
    assert summarize(load.records()).failed == 0


def test_at_drain_max_the_open_connection_is_named(cluster: LabCluster) -> None:
    _restart_with(cluster, hooks__drain=[], swap__drain_max_ms=2500)

    def nothing(client: Client) -> None:
        return None

    outcome, _ = _swap_with_open_connection(cluster, nothing)
    assert outcome["exit_code"] == 0, outcome  # the move is done; the drain's end is reported
    drain = outcome["drain"]
    assert drain["left"] == 1 and drain["how"] == "drain_max", drain
    assert 2.4 <= drain["after_s"] <= 4.0 and drain["oldest_s"] >= 2.0, drain
    assert events(cluster, "live", "drained")[-1]["left"] == 1
