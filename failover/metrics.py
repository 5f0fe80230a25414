"""The Prometheus endpoint: which values an agent exports, their names, and the HTTP listener.

Every value is read at scrape time from the agent's status (the core's `status()` plus what netlink
and the announcer say), so nothing is counted twice and a scrape never disagrees with `failover status`.
The listener is a small threading HTTP server serving prometheus-client's text; the status is taken on
the agent's event loop, never read across threads. Scrapers cannot hold up the loop: at most
MAX_SCRAPERS connections are served at once (more are closed at once), each has READ_TIMEOUT to send
its request and CONNECTION_TIMEOUT in all, and a status call that times out is cancelled on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import IPv4Address, IPv6Address
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

Snapshot = Callable[[], dict[str, Any]]
MAX_SCRAPERS = 4
READ_TIMEOUT = 5.0  # seconds a scraper has to send each part of its request
CONNECTION_TIMEOUT = 10.0  # seconds a scraper's connection lasts at most, however it trickles


def status_on_loop(
    status: Callable[[], Coroutine[Any, Any, dict[str, Any]]], loop: asyncio.AbstractEventLoop, timeout: float
) -> Snapshot:
    """A Snapshot for the metrics thread: `status()` run on `loop`, cancelled there if it takes longer
    than `timeout` (the scrape says failover_up 0), so no scrape leaves work queued on the loop."""

    def snapshot() -> dict[str, Any]:
        future = asyncio.run_coroutine_threadsafe(status(), loop)
        try:
            return future.result(timeout=timeout)
        finally:
            future.cancel()  # no-op when done

    return snapshot


def _gauge(name: str, doc: str, value: float | None) -> Iterator[Metric]:
    if value is not None:
        yield GaugeMetricFamily(name, doc, value=float(value))


def _counter(name: str, doc: str, label: str, values: dict[str, int]) -> Metric:
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, n in sorted(values.items()):
        family.add_metric([key], n)
    return family


def families(status: dict[str, Any]) -> Iterator[Metric]:
    """The metrics for one agent's status document (as `failover status --json` shows it)."""
    peer = status["peer"]
    info = GaugeMetricFamily(
        "failover_info", "this agent: cluster, node, peer, VIP", labels=["cluster", "node", "peer", "vip"]
    )
    info.add_metric([status["cluster"], status["node"], peer["name"], status["vip"]], 1)
    yield info
    netlink = status.get("holds_vip_netlink")
    held = status["holds_vip"] if netlink is None else netlink
    yield from _gauge("failover_vip_held", "1 when the VIP is on this host (netlink)", held)
    role = GaugeMetricFamily("failover_role", "1 for this node's role: holder or standby", labels=["role"])
    role.add_metric(["holder"], 1 if held else 0)
    role.add_metric(["standby"], 0 if held else 1)
    yield role
    yield from _gauge("failover_epoch", "the newest move epoch this node knows", status["epoch"])
    yield from _gauge("failover_held_epoch", "the epoch in which this node last claimed the VIP",
                      status["held_epoch"])
    yield from _gauge("failover_peer_alive", "1 when the peer's heartbeats arrive within dead_after_ms "
                      "(for the holder, an idle standby's longer window: heartbeat.dead_after_ms)",
                      peer["alive"])
    age = peer["heartbeat_age_ms"]
    yield from _gauge("failover_peer_heartbeat_age_ms", "time since the peer was last heard (NaN: never)",
                      math.nan if age is None else age)
    yield from _gauge("failover_peer_holds_vip", "1 when the peer's last heartbeat says it holds the VIP",
                      peer["holds_vip"])
    yield from _gauge("failover_digests_equal", "1 when both nodes run the same cluster file",
                      status["digests_equal"])
    yield from _gauge("failover_self_check_healthy", "1 while this node's own health_url passes",
                      status["self_check"]["healthy"])
    yield from _gauge("failover_move_in_progress", "1 while a swap, unswap or takeover runs",
                      status["swap_in_progress"] is not None)
    sent, received = status["sent"], status["received"]
    yield CounterMetricFamily("failover_heartbeats_sent", "heartbeats sent to the peer",
                              value=sent.get("heartbeat", 0))
    yield CounterMetricFamily("failover_heartbeats_received", "heartbeats accepted from the peer",
                              value=received.get("heartbeat", 0))
    yield _counter("failover_heartbeats_rejected",
                   "datagrams on the heartbeat port rejected, by reason (auth, replay, sender, ...)",
                   "reason", status["rejected"])
    others = {k: v for k, v in sent.items() if k != "heartbeat"}
    yield _counter("failover_messages_sent", "swap and dry-run messages sent, by kind", "kind", others)
    others = {k: v for k, v in received.items() if k != "heartbeat"}
    yield _counter("failover_messages_received", "swap and dry-run messages accepted, by kind", "kind",
                   others)
    moves = CounterMetricFamily(
        "failover_moves", "moves this node took part in, by outcome (ok, refused, failed, rolled_back)",
        labels=["move", "outcome"],
    )
    for move, outcomes in sorted(status["moves"].items()):
        for outcome, n in sorted(outcomes.items()):
            moves.add_metric([move, outcome], n)
    yield moves
    last = status["last_move"]
    if last is not None:
        yield from _gauge("failover_last_move_ok", "1 when the last move this node saw succeeded", last["ok"])
        yield from _gauge("failover_last_move_duration_ms", "duration of the last move", last["duration_ms"])
        yield from _gauge("failover_last_move_unserved_ms",
                          "time the VIP was on no host during the last move (known to the old holder)",
                          last["unserved_ms"])
    yield CounterMetricFamily("failover_garp_frames_sent", "gratuitous ARP / unsolicited NA frames sent",
                              value=status.get("announcements_sent", 0))
    yield CounterMetricFamily("failover_stragglers_seen", "clients still sending to this node after it "
                              "released the VIP", value=status["stragglers_seen"])


class _StatusCollector(Collector):
    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        try:
            status = self.snapshot()
        except Exception:  # the agent's loop did not answer in time: say so rather than fail the scrape
            yield GaugeMetricFamily("failover_up", "1 when the agent answered this scrape", value=0)
            return
        yield GaugeMetricFamily("failover_up", "1 when the agent answered this scrape", value=1)
        yield from families(status)


class _Scrape(BaseHTTPRequestHandler):
    server: _Listener

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.read_timeout)  # a silent scraper is dropped

    def do_GET(self) -> None:
        if urlsplit(self.path).path not in ("/", "/metrics"):
            self.send_error(404)
            return
        body = generate_latest(self.server.registry)
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a scrape is not an event of the agent's


class _Listener(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64  # a burst of connections is accepted and refused at once, not left in SYN retries

    def __init__(
        self, listen: tuple[IPv4Address | IPv6Address, int], registry: CollectorRegistry, max_scrapers: int,
        read_timeout: float, connection_timeout: float,
    ) -> None:
        address, port = listen
        self.address_family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        self.registry = registry
        self.read_timeout = read_timeout
        self.connection_timeout = connection_timeout
        self._slots = threading.BoundedSemaphore(max_scrapers)
        self._deadlines: dict[socket.socket, float] = {}
        self._lock = threading.Lock()
        super().__init__((str(address), port), _Scrape)  # OSError: address not local, port taken

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # enough scrapers at once: the next one is refused, not queued
            return
        with self._lock:
            self._deadlines[request] = time.monotonic() + self.connection_timeout
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._done(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._done(request)

    def _done(self, request: socket.socket) -> None:
        with self._lock:
            self._deadlines.pop(request, None)
        self._slots.release()

    def service_actions(self) -> None:
        # Run by serve_forever between polls: however slowly a scraper trickles its request, its
        # connection ends at connection_timeout (the read timeout alone is per byte).
        now = time.monotonic()
        with self._lock:
            late = [sock for sock, deadline in self._deadlines.items() if deadline <= now]
        for sock in late:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class MetricsServer:
    """http://<listen>/metrics for one agent, until close()."""

    def __init__(
        self,
        listen: tuple[IPv4Address | IPv6Address, int],
        snapshot: Snapshot,
        *,
        max_scrapers: int = MAX_SCRAPERS,
        read_timeout: float = READ_TIMEOUT,
        connection_timeout: float = CONNECTION_TIMEOUT,
    ) -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_StatusCollector(snapshot))
        ProcessCollector(registry=registry)  # memory, CPU, open files of the agent
        self._server = _Listener(listen, registry, max_scrapers, read_timeout, connection_timeout)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="metrics", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=2.0)
