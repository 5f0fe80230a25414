"""The Prometheus endpoint: which values an agent exports, their names, and the HTTP listener.

Every value is read at scrape time from the agent's status (the core's `status()` plus what netlink
and the announcer say), so nothing is counted twice and a scrape never disagrees with `failover status`.
The listener is prometheus-client's own HTTP server in a daemon thread; the status is taken on the
agent's event loop, never read across threads.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

Snapshot = Callable[[], dict[str, Any]]


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
    yield from _gauge("failover_peer_alive", "1 when the peer's heartbeats arrive within dead_after_ms",
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


class MetricsServer:
    """http://<listen>/metrics for one agent, until close()."""

    def __init__(self, listen: tuple[IPv4Address | IPv6Address, int], snapshot: Snapshot) -> None:
        address, port = listen
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_StatusCollector(snapshot))
        ProcessCollector(registry=registry)  # memory, CPU, open files of the agent
        # Raises OSError when the address is not local or the port is taken.
        self._server, self._thread = start_http_server(port, addr=str(address), registry=registry)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=2.0)
