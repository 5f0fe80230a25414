"""Two protocol cores wired back to back over a fake link, with a fake clock and a fake host world.

The world plays the adapters: it carries out Claim/Release/CheckHealth/Probe actions (after a
configurable delay), answers probes with the MACs of whoever holds the VIP, and records progress and
outcomes. The link can drop, delay, duplicate, reorder and partition datagrams.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from failover import protocol
from failover.protocol import Node, NodeSetup, Timing

KEY = b"k" * 32
MACS = {"live": "02:00:00:00:00:11", "backup": "02:00:00:00:00:12"}


@dataclass
class LinkFaults:
    drop: float = 0.0
    duplicate: float = 0.0
    delay: tuple[float, float] = (0.0002, 0.0002)  # uniform range, seconds; a wide range reorders
    partitioned: bool = False


@dataclass
class NodePair:
    seed: int = 0
    timing: Timing = field(default_factory=Timing)
    faults: LinkFaults = field(default_factory=LinkFaults)
    op_delay: float = 0.0003  # netlink add/delete
    health_delay: float = 0.002
    now: float = 1000.0
    automatic: bool = True
    fence: bool = False
    confirm: str = "none"
    confirm_within: float = 2.0
    straggler_window: float = 0.0
    on_vip_lost: str = "report"

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.vip_on: set[str] = {"live"}
        self.healthy = {"live": True, "backup": True}
        self.alive = {"live": True, "backup": True}
        self.claim_fails: set[str] = set()
        self.digest = {"live": "d" * 64, "backup": "d" * 64}
        self.nodes: dict[str, Node] = {}
        for name, peer in (("live", "backup"), ("backup", "live")):
            self.nodes[name] = self._make(name, peer)
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self.progress: dict[str, list[protocol.Progress]] = {"live": [], "backup": []}
        self.finished: dict[str, list[protocol.Finished]] = {"live": [], "backup": []}
        self.planned: dict[str, list[protocol.Planned]] = {"live": [], "backup": []}
        self.announces: dict[str, int] = {"live": 0, "backup": 0}
        self.notices: list[tuple[str, protocol.Notice]] = []
        self.checks: list[Callable[[NodePair], None]] = []
        self.probes: list[tuple[str, float, float]] = []
        self.probe_time = 0.08
        self.fence_ok = True
        # Clients follow the announcement to whoever holds the VIP (False: quiet hours, or a holder
        # whose web server logs nothing); canaries reach the holder's log.
        self.clients_follow = True
        self.canary_reaches = True
        self.watching: dict[str, tuple[int, bool]] = {}
        self.canaries = 0
        self.tells: list[tuple[str, str, str]] = []  # (who told, ip, mac)
        self.straggler_watch: dict[str, int] = {}
        # A dry run's host checks: what each node finds on its host (default: one passing check per role).
        self.host_findings: dict[str, list[protocol.Check]] = {}
        self.host_checks: list[tuple[str, protocol.HostCheck]] = []

    def _make(self, name: str, peer: str, boot: int = 1) -> Node:
        setup = NodeSetup(
            cluster="web",
            name=name,
            peer=peer,
            home=name == "live",
            digest=self.digest[name],
            keys=(KEY,),
            timing=self.timing,
            boot=boot,
            automatic=self.automatic,
            fence=self.fence,
            confirm=self.confirm,
            confirm_within=self.confirm_within,
            straggler_window=self.straggler_window,
            on_vip_lost=self.on_vip_lost,
        )
        return Node(setup, holds=name in self.vip_on, held_epoch=0, epoch=0, now=self.now)

    # --- driving ----------------------------------------------------------------------------------

    def at(self, when: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (when, next(self._order), fn))

    def run(self, seconds: float) -> None:
        """Advance the clock by `seconds`, processing every event in time order."""
        end = self.now + seconds
        spins = 0
        while True:
            spins += 1
            # A core whose timer stays in the past without progress would spin here forever.
            assert spins < 1_000_000, f"event loop spinning at t={self.now}"

            self._pump()
            candidates = [self._queue[0][0]] if self._queue else []
            candidates += [n.get_timer() for name, n in self.nodes.items() if self.alive[name]]
            nxt = min(candidates, default=end)
            if nxt > end:
                break
            self.now = max(self.now, nxt)
            while self._queue and self._queue[0][0] <= self.now:
                _, _, fn = heapq.heappop(self._queue)
                fn()
                self._pump()
            for name, node in self.nodes.items():
                if self.alive[name] and node.get_timer() <= self.now:
                    node.handle_timer(self.now)
                    self._pump()
        self.now = end

    def command(self, name: str, move: str, *, dry_run: bool = False) -> int:
        cid = self.nodes[name].command(move, self.now, dry_run=dry_run)
        self._pump()
        return cid

    def plan(self, name: str, cid: int) -> protocol.Plan | None:
        return next((p.plan for p in self.planned[name] if p.command == cid), None)

    def outcome(self, name: str, cid: int) -> protocol.Outcome | None:
        for f in self.finished[name]:
            if f.command == cid:
                return f.outcome
        return None

    def kill(self, name: str) -> None:
        """The agent dies; the VIP stays wherever it was (a killed agent leaves its address)."""
        self.alive[name] = False

    def restart(self, name: str, boot: int) -> None:
        self.alive[name] = True
        self.nodes[name] = self._make(name, "backup" if name == "live" else "live", boot=boot)

    # --- the world ---------------------------------------------------------------------------------

    def _pump(self) -> None:
        for name, node in self.nodes.items():
            actions = node.pop_actions()
            if not self.alive[name]:
                continue
            for action in actions:
                self._do(name, node, action)
        for check in self.checks:
            check(self)

    def _do(self, name: str, node: Node, action: protocol.Action) -> None:
        peer = "backup" if name == "live" else "live"
        if isinstance(action, protocol.Send):
            self._transmit(peer, action.data)
        elif isinstance(action, protocol.Claim):
            self.at(self.now + self.op_delay, lambda: self._claim(name, node, action.epoch))
        elif isinstance(action, protocol.Release):
            self.at(self.now + self.op_delay, lambda: self._release(name, node, action.epoch))
        elif isinstance(action, protocol.CheckHealth):
            ok = self.healthy[name]
            self.at(
                self.now + self.health_delay,
                lambda: self._live(name, node) and node.health_done(action.epoch, ok, "HTTP 503", self.now),
            )
        elif isinstance(action, protocol.Probe):
            start = self.now
            self.probes.append((name, start, start + self.probe_time))
            self.at(start + self.probe_time, lambda: self._probed(name, node, action.epoch, start))
        elif isinstance(action, protocol.Fence):
            ok = self.fence_ok
            self.at(
                self.now + 0.01,
                lambda: (
                    self._live(name, node)
                    and node.fence_done(action.epoch, ok, "exit 0" if ok else "exit 1", self.now)
                ),
            )
        elif isinstance(action, protocol.Watch):
            self.watching[name] = (action.epoch, action.canary)
        elif isinstance(action, protocol.Unwatch):
            self.watching.pop(name, None)
        elif isinstance(action, protocol.Canary):
            self.canaries += 1
            if self.canary_reaches:
                for holder in self.vip_on:
                    self.at(self.now + 0.01, lambda h=holder: self._traffic(h, canary=True))
        elif isinstance(action, protocol.HostCheck):
            self.host_checks.append((name, action))
            found = self.host_findings.get(name, [protocol.Check(name, f"{action.role} host", "ok", "fine")])
            self.at(
                self.now + self.health_delay,
                lambda: self._live(name, node) and node.host_check_done(action, found, self.now),
            )
        elif isinstance(action, protocol.Tell):
            self.tells.append((name, action.ip, action.mac))
        elif isinstance(action, protocol.WatchStragglers):
            self.straggler_watch[name] = action.epoch
        elif isinstance(action, protocol.UnwatchStragglers):
            self.straggler_watch.pop(name, None)
        elif isinstance(action, protocol.Announce):
            self.announces[name] += 1
        elif isinstance(action, protocol.Progress):
            self.progress[name].append(action)
        elif isinstance(action, protocol.Finished):
            self.finished[name].append(action)
        elif isinstance(action, protocol.Planned):
            self.planned[name].append(action)
        elif isinstance(action, protocol.Notice):
            self.notices.append((name, action))

    def _probed(self, name: str, node: Node, epoch: int, start: float) -> None:
        # Whoever holds the VIP answers; so does anyone probing at the same time (RFC 5227 conflict).
        answered = {h for h in self.vip_on if h != name}
        answered |= {p for p, s, e in self.probes if p != name and s <= self.now and e >= start}
        if self._live(name, node):
            node.probe_done(epoch, sorted(MACS[h] for h in answered), self.now)

    def _live(self, name: str, node: Node) -> bool:
        return self.alive[name] and self.nodes[name] is node

    def _claim(self, name: str, node: Node, epoch: int) -> None:
        if not self._live(name, node):
            return
        if name in self.claim_fails:
            node.claim_done(epoch, False, "injected: netlink add failed", self.now)
            return
        self.vip_on.add(name)
        node.claim_done(epoch, True, "", self.now)
        if self.clients_follow:
            self.at(self.now + 0.005, lambda: self._traffic(name, canary=False))

    def _traffic(self, name: str, canary: bool) -> None:
        """Three requests land in `name`'s access log, if it still holds the VIP and watches."""
        watch = self.watching.get(name)
        if watch is None or name not in self.vip_on or watch[1] != canary or not self.alive[name]:
            return
        self.nodes[name].traffic_seen(watch[0], 3, ["203.0.113.100"], self.now)

    def _release(self, name: str, node: Node, epoch: int) -> None:
        if not self._live(name, node):
            return
        self.vip_on.discard(name)
        node.release_done(epoch, True, "", self.now)

    def _transmit(self, to: str, data: bytes) -> None:
        f = self.faults
        if f.partitioned or self.rng.random() < f.drop:
            return
        copies = 2 if self.rng.random() < f.duplicate else 1
        for _ in range(copies):
            delay = self.rng.uniform(*f.delay)
            self.at(self.now + delay, lambda: self._deliver(to, data))

    def _deliver(self, to: str, data: bytes) -> None:
        if self.alive[to] and not self.faults.partitioned:  # a partition also loses what is in flight
            self.nodes[to].receive_datagram(data, self.now)
