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
from typing import assert_never

from failover import protocol
from failover.protocol import Node, NodeSetup, Timing
from failover.protocol import events as ev
from failover.protocol.states import MACHINE_OF

KEY = b"k" * 32
MACS = {"live": "02:00:00:00:00:11", "backup": "02:00:00:00:00:12"}
VIP = "203.0.113.10"


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
    drain: float = 0.0
    drain_max: float = 60.0
    before_release: float = 0.0  # the hooks' budget; their answer comes from before_release_ok
    measure_every: float = 0.0  # seconds between timings of the peer's kernel (0: off, configured window)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.vip_on: set[str] = {"live"}
        self.healthy = {"live": True, "backup": True}
        self.alive = {"live": True, "backup": True}
        self.claim_fails: set[str] = set()
        self.release_misreported: set[str] = set()  # the VIP goes, but netlink's answer says it failed
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
        # Hosts whose kernel is up with their agent down: they answer for their own address, not the VIP.
        self.host_up: set[str] = set()
        self.peer_rtt: float | None = 0.0004  # the peer kernel's answer to a who-has for its own address
        self.measures: list[tuple[str, float]] = []  # (node, when) of every MeasurePeer
        self.windows: list[protocol.ProbeWindow | None] = []  # each Probe's window (None: configured)
        self.probe_time = 0.08
        self.stopped_probes: set[int] = set()  # serials of probes the core stopped: they answer nothing
        self.stop_comes_late = False  # True: a stopped probe answers all the same (it had finished)
        self.probe_overshoot = 0.0  # how much longer than its window a probe takes (the loop's wake-ups)
        self.load_rate: float | None = 200.0  # what the source's access log says of the last seconds
        self.load_delay = 0.002  # reading it
        self.probe_unknown = ""  # non-empty: probes cannot tell (frames dropped), whoever holds the VIP
        self.fence_ok = True
        # Clients follow the announcement to whoever holds the VIP (False: quiet hours, or a holder
        # whose web server logs nothing); canaries reach the holder's log.
        self.clients_follow = True
        self.clients_after = 0.005  # seconds from a claim to the clients' first lines in the new holder's log
        # A node held off the CPU until then: its timers wait (`hold_off`), as a starved agent's thread does.
        self.held_until: dict[str, float] = {}
        self.canary_reaches = True
        self.watching: dict[str, tuple[int, bool]] = {}
        self.canaries = 0
        self.canary_windows: list[float] = []
        self.canary_stops: list[int] = []
        self.tells: list[tuple[str, str, str]] = []  # (who told, ip, mac)
        self.straggler_watch: dict[str, int] = {}
        # A dry run's host checks: what each node finds on its host (default: one passing check per role).
        self.host_findings: dict[str, list[protocol.Check]] = {}
        self.host_checks: list[tuple[str, protocol.HostCheck]] = []
        # The before_release hooks' answer after hook_delay (None: never; a test answers itself).
        self.before_release_ok: bool | None = True
        self.hook_delay = 0.01
        self.hooks: list[tuple[str, protocol.RunHooks]] = []  # (node, action), in the order asked
        self.releases: list[tuple[str, str]] = []  # (node, why) of every Release asked for
        self.draining: set[str] = set()  # nodes with the VIP's ARP-silent copy on lo
        # The connections to the VIP each node's kernel counts while it drains (None: counting fails).
        self.connections: dict[str, int | None] = {"live": 0, "backup": 0}
        self.closing = {"live": 0, "backup": 0}  # of them: closed by the server, the client's FIN not in
        self.count_every = 0.1
        self.handoff_fails = ""  # non-empty: the handoff rule cannot be put in place, for this reason
        self.drain_reports: dict[str, list[protocol.DrainReported]] = {"live": [], "backup": []}
        self.handoffs: dict[str, int] = {}  # node -> epoch of the handoff rule in place
        self.started: dict[str, list[protocol.Started]] = {"live": [], "backup": []}

    def _make(self, name: str, peer: str, boot: int = 1, state: Node | None = None) -> Node:
        """A node's core; `state`: the core it replaces after a restart, whose state.json it reads."""
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
            drain=self.drain,
            drain_max=max(self.drain, self.drain_max) if self.drain else 0.0,
            drain_off="" if self.drain else "swap.drain_ms is 0",
            before_release=self.before_release,
            measure_every=self.measure_every,
            vip=VIP,
        )
        return Node(
            setup,
            holds=name in self.vip_on,
            held_epoch=0 if state is None else state.held_epoch,
            epoch=0 if state is None else state.epoch,
            held_before=state is not None and state.held_before,
            now=self.now,
        )

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
            candidates += [
                max(n.get_timer(), self.held_until.get(name, 0.0))
                for name, n in self.nodes.items()
                if self.alive[name]
            ]
            nxt = min(candidates, default=end)
            if nxt > end:
                break
            self.now = max(self.now, nxt)
            while self._queue and self._queue[0][0] <= self.now:
                _, _, fn = heapq.heappop(self._queue)
                fn()
                self._pump()
            for name, node in self.nodes.items():
                if self.alive[name] and max(node.get_timer(), self.held_until.get(name, 0.0)) <= self.now:
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

    def hold_off(self, name: str, seconds: float) -> None:
        """`name`'s timers are handled no earlier than `seconds` from now (a host that starves its agent)."""
        self.held_until[name] = self.now + seconds

    def kill(self, name: str) -> None:
        """The agent dies; the VIP stays wherever it was (a killed agent leaves its address)."""
        self.alive[name] = False

    def restart(self, name: str, boot: int) -> None:
        self.alive[name] = True
        # What the agent keeps in state.json survives: epochs, and whether this node ever held the VIP.
        peer = "backup" if name == "live" else "live"
        self.nodes[name] = self._make(name, peer, boot=boot, state=self.nodes[name])

    # --- the world ---------------------------------------------------------------------------------

    def _pump(self) -> None:
        for name, node in self.nodes.items():
            actions = node.pop_actions()
            if not self.alive[name]:
                continue
            for action in actions:
                self._do(name, node, action)
        for check in list(self.checks):  # a check may take itself out
            check(self)
        for node in self.nodes.values():
            # Every state a node is in is a row of its own machine's table.
            records = [*node._dry.values(), *([node.run] if node.run is not None else [])]
            records += node.drainer.records()
            for record in records:
                assert record.state in MACHINE_OF[type(record.state)].rows, record

    def _do(self, name: str, node: Node, action: protocol.Action) -> None:
        peer = "backup" if name == "live" else "live"
        match action:
            case protocol.Send():
                self._transmit(peer, action.data)
            case protocol.Claim():
                self.at(self.now + self.op_delay, lambda: self._claim(name, node, action.epoch))
            case protocol.Release():
                self.releases.append((name, action.why))
                self.at(self.now + self.op_delay, lambda: self._release(name, node, action.epoch))
            case protocol.StartDrain():
                self.draining.add(name)
                epoch = action.epoch
                self.at(self.now + self.op_delay, lambda: self._count(name, node, epoch))
            case protocol.EndDrain():
                self.draining.discard(name)
            case protocol.MeasureLoad():
                load = ev.LoadMeasured(action.epoch, self.load_rate, "fake access log")
                self.at(self.now + self.load_delay, lambda: self._answer(name, node, load))
            case protocol.CheckHealth():
                ok = self.healthy[name]
                done = ev.HealthDone(action.epoch, ok, "HTTP 503")
                self.at(self.now + self.health_delay, lambda: self._answer(name, node, done))
            case protocol.BeforeRelease():
                if self.before_release_ok is not None:
                    answer = ev.BeforeReleaseDone(action.epoch, self.before_release_ok, "exit 1")
                    self.at(self.now + self.hook_delay, lambda: self._answer(name, node, answer))
            case protocol.RunHooks():
                self.hooks.append((name, action))
            case protocol.Probe():
                start = self.now
                took = self.probe_time if action.window is None else action.window.span
                took += self.probe_overshoot
                self.probes.append((name, start, start + took))
                self.windows.append(action.window)
                host = action.peer_host and self._host_answers(peer)
                probe = action
                self.at(start + took, lambda: self._probed(name, node, probe, start, host))
            case protocol.StopProbe():
                if not self.stop_comes_late:
                    self.stopped_probes.add(action.serial)
            case protocol.MeasurePeer():
                self.measures.append((name, self.now))
                up = self._host_answers(peer)
                rtt = self.peer_rtt if up else None
                rtt = None if rtt is None or rtt >= action.timeout else rtt
                measured = ev.PeerMeasured(rtt)
                self.at(self.now + (action.timeout if rtt is None else rtt),
                        lambda: self._answer(name, node, measured))  # fmt: skip
            case protocol.Fence():
                fenced = ev.FenceDone(action.epoch, self.fence_ok, "exit 0" if self.fence_ok else "exit 1")
                self.at(self.now + 0.01, lambda: self._answer(name, node, fenced))
            case protocol.Handoff():
                self.handoffs[name] = action.epoch
                placed = ev.HandoffDone(action.epoch, not self.handoff_fails, self.handoff_fails)
                self.at(self.now + self.op_delay, lambda: self._answer(name, node, placed))
            case protocol.EndHandoff():
                epoch = action.epoch
                self.at(self.now + action.after, lambda: self._end_handoff(name, epoch))
            case protocol.Watch():
                self.watching[name] = (action.epoch, action.canary)
            case protocol.Unwatch():
                self.watching.pop(name, None)
            case protocol.Canary():
                self.canaries += 1
                self.canary_windows.append(action.within)
                if self.canary_reaches:
                    for holder in self.vip_on:
                        self.at(self.now + 0.01, lambda h=holder: self._traffic(h, canary=True))
            case protocol.HostCheck():
                self.host_checks.append((name, action))
                fine = [protocol.Check(f"{action.role} host", protocol.OK, "fine", node=name)]
                found = self.host_findings.get(name, fine)
                checked = ev.HostCheckDone(action, tuple(found))
                self.at(self.now + self.health_delay, lambda: self._answer(name, node, checked))
            case protocol.Tell():
                self.tells.append((name, action.ip, action.mac))
            case protocol.WatchStragglers():
                self.straggler_watch[name] = action.epoch
            case protocol.UnwatchStragglers():
                self.straggler_watch.pop(name, None)
            case protocol.StopCanary():
                self.canary_stops.append(action.epoch)
            case protocol.Announce():
                self.announces[name] += 1
            case protocol.Started():
                self.started[name].append(action)
            case protocol.Progress():
                self.progress[name].append(action)
            case protocol.Finished():
                self.finished[name].append(action)
            case protocol.Planned():
                self.planned[name].append(action)
            case protocol.DrainReported():
                self.drain_reports[name].append(action)
            case protocol.Notice():
                self.notices.append((name, action))
            case _:
                assert_never(action)

    def _answer(self, name: str, node: Node, event: ev.Event) -> None:
        if self._live(name, node):
            node.handle(event, self.now)

    def _count(self, name: str, node: Node, epoch: int) -> None:
        """The drain's connection count, every count_every while the copy on lo is there."""
        if name not in self.draining or not self._live(name, node):
            return
        n, closing = self.connections[name], self.closing[name]
        error = "" if n is not None else "injected"
        counted = ev.ConnectionsCounted(epoch, n, 1.5 if n else 0.0, error, closing=closing)
        node.handle(counted, self.now)
        self.at(self.now + self.count_every, lambda: self._count(name, node, epoch))

    def _end_handoff(self, name: str, epoch: int) -> None:
        if self.handoffs.get(name) == epoch:
            del self.handoffs[name]

    def _probed(self, name: str, node: Node, probe: protocol.Probe, start: float, host_up: bool) -> None:
        if probe.serial and probe.serial in self.stopped_probes:
            return
        # Whoever holds the VIP answers; so does anyone probing at the same time (RFC 5227 conflict).
        answered = {h for h in self.vip_on if h != name}
        answered |= {p for p, s, e in self.probes if p != name and s <= self.now and e >= start}
        macs = tuple(sorted(MACS[h] for h in answered))
        if self.probe_unknown:
            macs = ()  # the answer may be among the frames the probe lost
        peer = "backup" if name == "live" else "live"
        hosts = (MACS[peer],) if host_up else ()
        self._answer(name, node, ev.ProbeDone(probe.epoch, macs, self.probe_unknown, hosts, probe.serial))

    def _host_answers(self, name: str) -> bool:
        """Whether name's kernel answers for its own address: while its agent runs, or its host is up."""
        return self.alive[name] or name in self.host_up

    def _live(self, name: str, node: Node) -> bool:
        return self.alive[name] and self.nodes[name] is node

    def _claim(self, name: str, node: Node, epoch: int) -> None:
        if not self._live(name, node):
            return
        if name in self.claim_fails:
            node.handle(ev.ClaimDone(epoch, False, "injected: netlink add failed"), self.now)
            return
        self.vip_on.add(name)
        node.handle(ev.ClaimDone(epoch, True), self.now)
        if self.clients_follow:
            self.at(self.now + self.clients_after, lambda: self._traffic(name, canary=False))

    def _traffic(self, name: str, canary: bool) -> None:
        """Three requests land in `name`'s access log, if it still holds the VIP and watches."""
        watch = self.watching.get(name)
        if watch is None or name not in self.vip_on or watch[1] != canary or not self.alive[name]:
            return
        self.nodes[name].handle(ev.TrafficSeen(watch[0], 3, ("203.0.113.100",)), self.now)

    def _release(self, name: str, node: Node, epoch: int) -> None:
        if not self._live(name, node):
            return
        self.vip_on.discard(name)
        if name in self.release_misreported:
            node.handle(ev.ReleaseDone(epoch, False, "injected: netlink delete timed out"), self.now)
            return
        node.handle(ev.ReleaseDone(epoch, True), self.now)

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
