"""The metrics exported for a status document: names, labels, values; no listener, no root."""

from __future__ import annotations

import asyncio
import math
import socket
import threading
import time
import urllib.request
from ipaddress import IPv4Address
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from failover.metrics import MetricsServer, _StatusCollector, status_on_loop
from tests.nodepair import NodePair


def agent_status(pair: NodePair, name: str, **extra: Any) -> dict[str, Any]:
    """The core's status plus what the agent adds (as Agent.status() does)."""
    status = pair.nodes[name].status(pair.now)
    status.update(holds_vip_netlink=name in pair.vip_on, cluster="web", vip="203.0.113.10/24",
                  interface="eth0", announcements_sent=pair.announces[name] * 2, **extra)
    return status


def samples(snapshot: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StatusCollector(snapshot))
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_values_follow_a_swap_on_both_nodes() -> None:
    pair = NodePair()
    pair.run(0.3)
    before = {n: samples(lambda n=n: agent_status(pair, n)) for n in ("live", "backup")}
    assert before["live"][("failover_vip_held", ())] == 1
    assert before["live"][("failover_role", (("role", "holder"),))] == 1
    assert before["backup"][("failover_role", (("role", "standby"),))] == 1
    assert ("failover_last_move_unserved_ms", ()) not in before["live"]
    assert before["live"][("failover_heartbeats_sent_total", ())] == 7  # every 50 ms from t=0 to 0.3 s
    pair.command("live", "swap")
    pair.run(0.3)
    after = {n: samples(lambda n=n: agent_status(pair, n)) for n in ("live", "backup")}
    assert after["live"][("failover_vip_held", ())] == 0 and after["backup"][("failover_vip_held", ())] == 1
    for name in ("live", "backup"):
        assert after[name][("failover_moves_total", (("move", "swap"), ("outcome", "ok")))] == 1
        assert after[name][("failover_heartbeats_received_total", ())] > before[name][
            ("failover_heartbeats_received_total", ())]
        assert after[name][("failover_epoch", ())] == 1
    assert after["live"][("failover_last_move_unserved_ms", ())] == 0.8
    assert after["live"][("failover_messages_sent_total", (("kind", "prepare"),))] == 1
    assert after["backup"][("failover_garp_frames_sent_total", ())] == 4  # rounds at 0 and 0.2 s, 2 frames


def test_rejections_by_reason_and_a_peer_never_heard() -> None:
    pair = NodePair()
    pair.nodes["live"].receive_datagram(b"garbage", pair.now)
    got = samples(lambda: agent_status(pair, "live"))
    assert got[("failover_heartbeats_rejected_total", (("reason", "not-failover"),))] == 1
    assert math.isnan(got[("failover_peer_heartbeat_age_ms", ())])
    assert got[("failover_peer_alive", ())] == 0
    assert ("failover_digests_equal", ()) not in got  # not known before the first heartbeat


def test_an_agent_that_does_not_answer_reports_up_0() -> None:
    def stuck() -> dict[str, Any]:
        raise TimeoutError

    assert samples(stuck) == {("failover_up", ()): 0}


# --- the listener, on a real loopback socket --------------------------------------------------------------


def _scrape(port: int, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as resp:
        return str(resp.read().decode())


def test_a_scrape_that_times_out_is_cancelled_on_the_loop() -> None:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    cancelled = threading.Event()

    async def slow_status() -> dict[str, Any]:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return {}

    try:
        snapshot = status_on_loop(slow_status, loop, timeout=0.2)
        with pytest.raises(TimeoutError):
            snapshot()
        assert cancelled.wait(2.0), "the status call was left running on the loop"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_many_silent_scrapers_hold_at_most_the_bound_and_are_dropped() -> None:
    calls = 0
    lock = threading.Lock()

    def snapshot() -> dict[str, Any]:
        nonlocal calls
        with lock:
            calls += 1
        raise TimeoutError  # the loop is not asked here; up 0 is enough

    server = MetricsServer((IPv4Address("127.0.0.1"), 0), snapshot, max_scrapers=3, read_timeout=0.5,
                           connection_timeout=2.0)
    before = threading.active_count()
    silent = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(50)]
    try:
        time.sleep(0.2)
        assert threading.active_count() - before <= 3  # a thread for each one let in, no more
        time.sleep(1.0)  # past the read timeout: the silent ones are gone
        assert "failover_up 0.0" in _scrape(server.port)
        assert calls == 1
    finally:
        for sock in silent:
            sock.close()
        server.close()


def test_a_trickling_scraper_is_cut_at_the_connection_timeout() -> None:
    server = MetricsServer((IPv4Address("127.0.0.1"), 0), lambda: {}, max_scrapers=1, read_timeout=1.0,
                           connection_timeout=1.0)
    sock = socket.create_connection(("127.0.0.1", server.port))
    try:
        started = time.monotonic()
        sock.settimeout(0.3)
        closed = False
        while time.monotonic() - started < 5 and not closed:
            try:
                sock.sendall(b"G")  # one byte at a time, each within the read timeout
                closed = sock.recv(1) == b""
            except TimeoutError:
                continue
            except OSError:
                closed = True
        assert closed and time.monotonic() - started < 3
    finally:
        sock.close()
        server.close()
