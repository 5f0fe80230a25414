"""The cluster file's schema: one frozen dataclass per section, with its defaults, and `ConfigError`.

Imports nothing of YAML: code that only passes a loaded configuration around, or builds one (tests, the
lab), needs this module alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface
from pathlib import Path
from typing import Final

IPAddress = IPv4Address | IPv6Address


class ConfigError(Exception):
    """A configuration problem. ``str(err)`` is always exactly one line."""

    def __init__(
        self, problem: str, *, file: str | None = None, line: int | None = None, field: str | None = None
    ) -> None:
        self.problem = problem
        self.file = file
        self.line = line
        self.field = field
        parts: list[str] = []
        if file is not None:
            parts.append(file if line is None else f"{file}:{line}")
        if field:
            parts.append(field)
        parts.append(problem)
        # File names, keys and YAML messages come from outside; none of them may split the line.
        super().__init__(" ".join(": ".join(parts).splitlines()))


@dataclass(frozen=True)
class VipConfig:
    address: IPv4Interface | IPv6Interface
    interface: str

    @property
    def ip(self) -> IPAddress:
        return self.address.ip

    @property
    def family(self) -> int:
        return self.address.version


@dataclass(frozen=True)
class AuthConfig:
    key_file: Path
    # During key rotation the old key is still accepted, so the two agents can be re-keyed one at a time.
    previous_key_file: Path | None = None


@dataclass(frozen=True)
class HeartbeatConfig:
    port: int = 5405
    interval_ms: int = 50
    dead_after_ms: int = 250


@dataclass(frozen=True)
class AnnounceConfig:
    schedule_ms: tuple[int, ...] = (0, 200, 1100, 2300)


@dataclass(frozen=True)
class SwapConfig:
    step_timeout_ms: int = 1000
    # After releasing, the old holder keeps accepting packets for the VIP (ARP-silent) at least this
    # long, so connections that left clients before the announcement reached them are still served;
    # then until its last connection to the VIP has ended, or drain_max_ms after the release. 0: off.
    drain_ms: int = 1000
    # A long download, or a client that keeps its connection: named in the outcome once this runs out.
    drain_max_ms: int = 60_000


@dataclass(frozen=True)
class HealthConfig:
    timeout_ms: int = 1000
    # The holder checks its own health_url every `self_check_every_ms` (0: never); after
    # `self_check_fails` failures in a row, with a healthy peer, it hands the VIP over.
    self_check_every_ms: int = 0
    self_check_fails: int = 3


@dataclass(frozen=True)
class TakeoverConfig:
    """The unplanned takeover when the holder goes silent."""

    automatic: bool = True  # false: report a silent holder, never take over
    on_vip_lost: str = "report"  # the VIP removed behind the holder's back: "report", or "reclaim" it
    fence: tuple[str, ...] = ()  # argv run (no shell) before claiming; non-zero exit: no takeover
    fence_timeout_ms: int = 5000
    # RFC 5227 probes before claiming: any answer means someone still holds the VIP.
    probe_count: int = 3
    probe_interval_ms: int = 20
    probe_wait_ms: int = 60
    # While both are up, time the peer kernel's answer for its own address this often (0: never); a
    # takeover's probe then listens a few times that long, never longer than the window above.
    probe_measure_every_ms: int = 2000


@dataclass(frozen=True)
class ConfirmConfig:
    mode: str = "traffic"
    requests: int = 3
    within_s: float = 10.0
    ignore_clients: tuple[IPAddress, ...] = ()
    log_format: str = "combined"
    # After a release the old holder watches this long for clients still sending to its MAC; the new
    # holder sends each a targeted ARP request, and the outcome names the ones that never moved. 0: off.
    straggler_window_ms: int = 1000


@dataclass(frozen=True)
class NodeConfig:
    name: str
    address: IPAddress
    home: bool
    health_url: str
    access_log: Path
    interface: str
    control_socket: Path
    state_dir: Path
    # Each node its own (two lab agents share a filesystem); the default lives in state_dir.
    journal: Path = Path("/var/lib/failover/journal.jsonl")


HOOK_EVENTS: Final = ("before_release", "after_claim", "confirmed", "rolled_back", "takeover", "drain")


@dataclass(frozen=True)
class HooksConfig:
    """Operator programs per event: each a list of argv (absolute path, no shell), run in order."""

    before_release: tuple[tuple[str, ...], ...] = ()  # on the holder, before it releases; failing aborts
    after_claim: tuple[tuple[str, ...], ...] = ()  # on the node that just claimed the VIP
    confirmed: tuple[tuple[str, ...], ...] = ()  # on the new holder, once clients proved the move
    rolled_back: tuple[tuple[str, ...], ...] = ()  # on the node that took the VIP back after a failed move
    takeover: tuple[tuple[str, ...], ...] = ()  # on the node that took over from a silent holder
    # On the old holder once it released: ask the web server to close idle keep-alive connections in
    # order (nginx -s reload), so the drain ends when the work does.
    drain: tuple[tuple[str, ...], ...] = ()
    timeout_ms: int = 10_000  # each program; a timed-out before_release hook aborts the swap

    def for_event(self, event: str) -> tuple[tuple[str, ...], ...]:
        hooks: tuple[tuple[str, ...], ...] = getattr(self, event)
        return hooks


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus text at http://<listen>/metrics from each agent; off when listen is None."""

    listen: tuple[IPAddress, int] | None = None


@dataclass(frozen=True)
class ClusterConfig:
    cluster: str
    vip: VipConfig
    auth: AuthConfig
    heartbeat: HeartbeatConfig
    announce: AnnounceConfig
    swap: SwapConfig
    health: HealthConfig
    confirm: ConfirmConfig
    nodes: tuple[NodeConfig, NodeConfig]
    source: Path
    digest: bytes
    takeover: TakeoverConfig = TakeoverConfig()
    hooks: HooksConfig = HooksConfig()
    metrics: MetricsConfig = MetricsConfig()

    def node(self, name: str) -> NodeConfig:
        for node in self.nodes:
            if node.name == name:
                return node
        known = ", ".join(n.name for n in self.nodes)
        raise ConfigError(f"no node named {name!r} (known: {known})", file=str(self.source), field="nodes")

    def peer_of(self, name: str) -> NodeConfig:
        me = self.node(name)
        return self.nodes[1] if me is self.nodes[0] else self.nodes[0]

    @property
    def home_node(self) -> NodeConfig:
        return next(n for n in self.nodes if n.home)

