"""The agent daemon: the one place that reads the clock and wires the adapters to the protocol core.

It owns the asyncio loop: a UDP endpoint for heartbeats and swap messages, one timer re-armed from
`Node.get_timer()`, the netlink watcher, the control socket, and the tasks that carry out the core's
actions. It makes no protocol decisions of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import UTC, datetime
from ipaddress import ip_address
from pathlib import Path
from typing import TYPE_CHECKING, Any, assert_never

import structlog

from failover import (
    announce,
    bootid,
    check,
    control,
    handoff,
    journal,
    protocol,
    sdnotify,
)
from failover.accesslog import LogFormat
from failover.config import ClusterConfig, ConfigError, NodeConfig, keys_for, load_config
from failover.confirm import LogWatcher
from failover.connections import Count, count_while_draining
from failover.health import canary_token, canary_url, check_health, service_port
from failover.hooks import run_all, run_hook
from failover.load import recent_rate
from failover.localnode import own_node
from failover.netlink import NetlinkError, VipLink
from failover.protocol import events
from failover.rejections import RejectionLog
from failover.stragglers import StragglerWatch
from failover.sysctl import drain_blocker

if TYPE_CHECKING:
    from failover.metrics import MetricsServer  # imported when metrics are on: prometheus_client is ~3 MiB

log = structlog.get_logger("failover.agent")

# Test-only fault injection (the chaos and rollback tests): never set in production.
FAULT_ENV = "FAILOVER_TEST_FAULT"


class AgentError(Exception):
    """The agent cannot start; the message is one line."""


@dataclass(frozen=True)
class PersistentState:
    epoch: int = 0
    held_epoch: int = 0
    held_before: bool = False  # this node has held the VIP: it may take back a VIP that nobody holds


def load_state(state_dir: Path) -> PersistentState:
    try:
        doc = json.loads((state_dir / "state.json").read_text())
        held_before = doc.get("held_before") is True
        epoch, held_epoch = int(doc["epoch"]), int(doc["held_epoch"])
        return PersistentState(epoch=epoch, held_epoch=held_epoch, held_before=held_before)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return PersistentState()


def save_state(state_dir: Path, state: PersistentState) -> None:
    doc = {"epoch": state.epoch, "held_epoch": state.held_epoch, "held_before": state.held_before}
    journal.write_file_durably(state_dir / "state.json", json.dumps(doc).encode())


METRICS_STATUS_TIMEOUT = 2.0  # a scrape waits this long for the event loop to hand over the status
STRAGGLER_REPORT_INTERVAL = 0.1  # how often the old holder passes what its straggler watch saw


# What a waiting CLI hears; None: nothing for a while (the CLI is told the agent still works on it).
_Reported = protocol.Progress | protocol.Finished | protocol.Planned | protocol.DrainReported
DRAIN_COUNT_EVERY = 0.1  # seconds between two counts of the draining host's connections to the VIP
WAITING_TICK = 5.0  # a CLI waiting for a drain hears that it goes on this often


HEARTBEAT_RCVBUF = 4 * 1024 * 1024  # ~1500 queued datagrams: 200 ms of a flood while the loop is busy
SO_RCVBUFFORCE = 33  # Linux <asm-generic/socket.h>; the socket module does not name it


def _size_receive_buffer(sock: socket.socket) -> None:
    """A loop held up for a moment (a busy host) must not cost the peer's datagrams: queue more of them."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, HEARTBEAT_RCVBUF)  # past rmem_max
    except OSError:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, HEARTBEAT_RCVBUF)


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.agent.on_datagram(data, str(addr[0]))

    def error_received(self, exc: Exception) -> None:
        log.debug("udp-error", error=str(exc))


class Agent:
    def __init__(self, config: ClusterConfig, node: NodeConfig) -> None:
        self.config = config
        self.node = node
        self.peer = config.peer_of(node.name)
        self.fault = os.environ.get(FAULT_ENV, "")
        self._fault_seen: tuple[int, str] | None = None
        self.loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._waiters: dict[int, asyncio.Queue[_Reported]] = {}
        self._counting: asyncio.Task[None] | None = None  # the drain's connection counts
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self._persisted = PersistentState()
        self._stopping = False
        self.watcher = LogWatcher(
            cluster=config.cluster,
            vip=config.vip.ip,
            access_log=node.access_log,
            log_format=config.confirm.log_format,
            exclude=self._not_proof(),
            service_port=service_port(node.health_url),
            report=self._report,
            spawn=self._spawn,
            now=self.now,
        )
        self._stragglers: tuple[int, StragglerWatch, asyncio.Task[None]] | None = None
        self._handoff_end: asyncio.TimerHandle | None = None
        self._handoff_install: asyncio.Task[None] | None = None
        self.announced = 0
        self._measuring = False  # a MeasurePeer is under way
        self._hook_lock = asyncio.Lock()  # hooks of successive events run one after another, in order
        # The VIP's netlink changes (drain, release, claim) run one at a time, in the order asked for.
        self._vip_ops: asyncio.Queue[protocol.Action] = asyncio.Queue()
        self._command_meta: dict[int, dict[str, Any]] = {}  # command -> operator, reason, came_from
        self._move_meta: dict[int, dict[str, Any]] = {}  # epoch -> the same, once the core named it
        self.rejections = RejectionLog(log)
        self.task_failures = 0  # tasks that ended with an exception (each logged as task-failed)
        self._journal_writer = journal.Writer(
            node.journal, on_error=lambda err: log.error("journal-failed", error=str(err))
        )

    def now(self) -> float:
        return self.loop.time()

    # --- start and stop --------------------------------------------------------------------------

    async def run(self) -> None:
        cfg, node = self.config, self.node
        keys = keys_for(cfg.auth)
        try:
            self.link = await VipLink.open(node.interface, cfg.vip.address)
        except NetlinkError as err:
            raise AgentError(f"{cfg.source}: nodes.{node.name}.interface: {err}") from None
        try:
            self.announcer = announce.Announcer(node.interface, cfg.vip.ip, self.link.mac)
        except announce.AnnounceError as err:
            raise AgentError(f"{cfg.source}: nodes.{node.name}.interface: {err}") from None
        holds = await self.link.holds()
        self.drain_blocker = drain_blocker(node.interface, cfg.vip.family) if cfg.swap.drain_ms else "off"
        if await self.link.draining():
            # Left by an agent that died while draining: it answers no ARP, but end it.
            await self.link.end_drain()
            log.info("stale-drain-removed")
        if shutil.which("nft"):
            with contextlib.suppress(handoff.HandoffError, TimeoutError):
                await handoff.remove(cfg.cluster, cfg.vip.family)  # left by an agent that died mid-swap
        state = load_state(node.state_dir)
        self._persisted = state
        t = cfg.takeover
        probe_ms = t.probe_count * t.probe_interval_ms + t.probe_wait_ms
        try:
            boot = bootid.next_boot(node.state_dir)  # grows at every start, whatever the clock did
        except bootid.BootIdError as err:
            raise AgentError(str(err)) from None
        setup = protocol.NodeSetup(
            cluster=cfg.cluster,
            name=node.name,
            peer=self.peer.name,
            home=node.home,
            digest=cfg.digest.hex(),
            keys=keys,
            timing=protocol.Timing(
                heartbeat_interval=cfg.heartbeat.interval_ms / 1000,
                dead_after=cfg.heartbeat.dead_after_ms / 1000,
                step_timeout=cfg.swap.step_timeout_ms / 1000,
                announce_schedule=tuple(ms / 1000 for ms in cfg.announce.schedule_ms),
            ),
            boot=boot,
            probe_budget=probe_ms / 1000,
            probe_window=protocol.ProbeWindow(
                t.probe_count, t.probe_interval_ms / 1e3, t.probe_wait_ms / 1e3
            ),
            measure_every=t.probe_measure_every_ms / 1000,
            fence_budget=cfg.takeover.fence_timeout_ms / 1000,
            vip=str(cfg.vip.ip),
            automatic=cfg.takeover.automatic,
            on_vip_lost=cfg.takeover.on_vip_lost,
            fence=bool(cfg.takeover.fence),
            self_check_fails=cfg.health.self_check_fails,
            confirm=cfg.confirm.mode,
            confirm_requests=cfg.confirm.requests,
            confirm_within=cfg.confirm.within_s,
            drain=0.0 if self.drain_blocker else cfg.swap.drain_ms / 1000,
            drain_max=0.0 if self.drain_blocker else cfg.swap.drain_max_ms / 1000,
            drain_off="" if not self.drain_blocker else (
                "swap.drain_ms is 0" if self.drain_blocker == "off" else self.drain_blocker
            ),
            straggler_window=cfg.confirm.straggler_window_ms / 1000,
            before_release=len(cfg.hooks.before_release) * cfg.hooks.timeout_ms / 1000,
            # A dry run's host checks: the health check with its timeout, then reading a few files.
            host_check_budget=cfg.health.timeout_ms / 1000 + 0.5,
        )
        # An agent never claims at start; it keeps what netlink says it holds.
        self.core = protocol.Node(
            setup,
            holds=holds,
            held_epoch=state.held_epoch,
            epoch=state.epoch,
            now=self.now(),
            held_before=state.held_before,
        )
        try:
            # Before binding anything: a second agent for this node must hear "already running".
            control.claim_socket_path(node.control_socket)
        except control.ControlError as err:
            raise AgentError(str(err)) from None
        try:
            self.transport, _ = await self.loop.create_datagram_endpoint(
                lambda: _Datagrams(self), local_addr=(str(node.address), cfg.heartbeat.port)
            )
        except OSError as err:
            where = f"{node.address}:{cfg.heartbeat.port}"
            raise AgentError(f"cannot bind heartbeat socket {where}: {err}") from None
        self.peer_addr = (str(self.peer.address), cfg.heartbeat.port)
        _size_receive_buffer(self.transport.get_extra_info("socket"))
        metrics = self._start_metrics()
        try:
            server = await control.serve(node.control_socket, self.on_control)
        except control.ControlError as err:
            raise AgentError(str(err)) from None
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self._stop.set)
        watcher = asyncio.create_task(self._watch_vip())
        self._spawn(self._carry_out_vip_ops())
        if cfg.health.self_check_every_ms:
            self._spawn(self._self_check_loop(cfg.health.self_check_every_ms / 1000))
        log.info(
            "agent-started",
            cluster=cfg.cluster,
            node=node.name,
            peer=self.peer.name,
            holds_vip=holds,
            vip=str(cfg.vip.address),
            interface=node.interface,
            epoch=state.epoch,
            drain=self.drain_blocker or f"{cfg.swap.drain_ms} ms",
            test_fault=self.fault or None,
        )
        self._pump()
        # Sockets are bound and the VIP's state is known: tell systemd (Type=notify) we are up.
        sdnotify.notify(f"READY=1\nSTATUS=node {node.name}, holds VIP: {'yes' if holds else 'no'}")
        interval = sdnotify.watchdog_interval()
        if interval:
            self._watchdog(interval)
        try:
            await self._stop.wait()
        finally:
            # The VIP stays where it is: restarting or stopping the agent must never cause an outage.
            sdnotify.notify("STOPPING=1")
            watcher.cancel()
            self.watcher.stop(None)
            self._unwatch_stragglers(None)
            if self._handoff_end is not None:
                # A handoff outliving the agent would send segments to a host that stopped draining.
                self._handoff_end.cancel()
                await self._remove_handoff(-1)
            if self._timer is not None:
                self._timer.cancel()
            self._stopping = True
            server.close()  # and its socket file, unless another agent's replaced it
            self.transport.close()
            if metrics is not None:
                metrics.close()
            self.announcer.close()
            for task in self._tasks:
                task.cancel()
            await self._journal_writer.flushed()  # what the core journalled is on disk before we exit
            await self.link.close()
            log.info("agent-stopped", node=node.name, holds_vip=self.core.holds)

    def _start_metrics(self) -> MetricsServer | None:
        listen = self.config.metrics.listen
        if listen is None:
            return None
        address, port = listen
        where = f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"
        from failover.metrics import MetricsServer

        try:
            server = MetricsServer(listen, self._metrics_status)
        except OSError as err:
            # Observability must never keep the agent, and so the failover, from running.
            log.error("metrics-unavailable", listen=where, error=str(err))
            return None
        log.info("metrics-listening", url=f"http://{where}/metrics")
        return server

    def _metrics_status(self) -> dict[str, Any]:
        """Called from the metrics thread: the status, taken on the event loop like any other."""
        from failover.metrics import status_on_loop  # loaded with the metrics server, when metrics are on

        status: dict[str, Any] = status_on_loop(self.status, self.loop, METRICS_STATUS_TIMEOUT)()
        return status

    def _watchdog(self, interval: float) -> None:
        # Pinged from the loop itself: a stuck loop stops the pings and systemd restarts the agent.
        sdnotify.notify("WATCHDOG=1")
        self.loop.call_later(interval, self._watchdog, interval)

    # --- events in ---------------------------------------------------------------------------------

    def on_datagram(self, data: bytes, source: str) -> None:
        if source.partition("%")[0] != str(self.peer.address):
            # Only the peer's address is worth an HMAC: a flood from anywhere else costs one comparison.
            self.rejections.drop("source", self.now())
            return
        self.core.receive_datagram(data, self.now())
        self._pump()

    def _report(self, event: events.Event) -> None:
        """An adapter's result goes to the core, stamped with the time it came in."""
        self.core.handle(event, self.now())
        self._pump()

    def _on_timer(self) -> None:
        self._timer = None
        self.core.handle_timer(self.now())
        self._pump()

    async def _watch_vip(self) -> None:
        try:
            async for held in self.link.watch_vip():
                self._report(events.VipObserved(held))
        except NetlinkError as err:
            log.error("vip-watch-failed", error=str(err))

    async def on_control(self, request: dict[str, Any], reply: control.Reply) -> dict[str, Any]:
        cmd = request["cmd"]
        if cmd == "status":
            return {"type": "done", "status": await self.status()}
        if cmd in protocol.MOVES and request.get("dry_run"):
            return await self._dry_run(cmd)
        if cmd in protocol.MOVES:
            return await self._run_move(cmd, request, reply)
        return {"type": "error", "error": f"unknown command {cmd!r}"}

    async def _run_move(self, move: str, request: dict[str, Any], reply: control.Reply) -> dict[str, Any]:
        path = request.get("config")
        if isinstance(path, str):
            # The operator's file, as the CLI did not load it (to reach us fast): a bad one changes nothing.
            try:
                await asyncio.to_thread(load_config, Path(path))
            except ConfigError as err:
                return {"type": "error", "error": str(err), "config_error": True}
        core = self.core
        holder = self.node.name if core.holds else self.peer.name if core.peer_holds() else None
        # Where the VIP came from, as this node's journal tells it: an unswap shows what it undoes.
        came_from = None
        if move == "unswap" and holder is not None:
            with contextlib.suppress(journal.JournalError):
                came_from = journal.came_from(self.node.journal, holder)
        cid = core.command(move, self.now())
        # Journaled with the move once the core says which epoch it is (its Started action).
        self._command_meta[cid] = {
            "operator": str(request.get("operator") or "unknown")[:64],
            "operator_reason": str(request.get("reason") or "")[:500],
            "came_from": None if came_from is None else _summary(came_from),
        }
        wait_drained = request.get("wait_drained", True) is not False
        outcome: dict[str, Any] | None = None  # the move is over; its drain is not
        async with contextlib.aclosing(self._reports(cid, tick=WAITING_TICK)) as reports:
            async for item in reports:
                if isinstance(item, protocol.Finished):
                    await self._journal_writer.flushed()  # the CLI hears of a move once it is journalled
                    outcome = item.outcome.to_json()
                    drain = outcome.get("drain") or {}
                    if not (wait_drained and drain.get("pending")):
                        return {"type": "done", "outcome": outcome, "came_from": came_from}
                    step = f"draining on {drain['host']}"
                    item = protocol.Progress(cid, step, item.outcome.duration_ms, {})
                if isinstance(item, protocol.DrainReported) and outcome is not None:
                    outcome["drain"] = item.report
                    return {"type": "done", "outcome": outcome, "came_from": came_from}
                if item is None and outcome is not None:
                    item = protocol.Progress(cid, "still draining", outcome["duration_ms"], {})
                if isinstance(item, protocol.Progress):
                    with contextlib.suppress(ConnectionError):
                        await reply({"type": "progress", "step": item.step, "ms": round(item.elapsed_ms, 3)})
        raise AssertionError("unreachable: the reports end only when closed")

    async def _dry_run(self, move: str) -> dict[str, Any]:
        """Every check of the move on both nodes, and its plan; changes nothing, journals nothing."""
        cid = self.core.command(move, self.now(), dry_run=True)
        async with contextlib.aclosing(self._reports(cid)) as reports:
            async for item in reports:
                if isinstance(item, protocol.Planned):
                    return {"type": "done", "plan": item.plan.to_json()}
        raise AssertionError("unreachable: the reports end only when closed")

    async def _reports(self, cid: int, tick: float | None = None) -> AsyncGenerator[_Reported | None, None]:
        """What the core reports for one command (progress, outcome, plan), as it comes; None after each
        `tick` seconds without a word."""
        queue: asyncio.Queue[_Reported] = asyncio.Queue()
        self._waiters[cid] = queue
        self._pump()  # the command's first actions may already be waiting
        try:
            while True:
                try:
                    yield await asyncio.wait_for(queue.get(), tick)
                except TimeoutError:
                    yield None
        finally:
            del self._waiters[cid]

    async def status(self) -> dict[str, Any]:
        status = self.core.status(self.now())
        try:
            status["holds_vip_netlink"] = await self.link.holds()
        except NetlinkError as err:
            status["holds_vip_netlink"] = None
            status["netlink_error"] = str(err)
        status["rejected"] = {**status["rejected"], **self.rejections.dropped}
        status["task_failures"] = self.task_failures
        status.update(
            cluster=self.config.cluster,
            vip=str(self.config.vip.address),
            interface=self.node.interface,
            announcements_sent=self.announced,
        )
        return status

    # --- actions out ---------------------------------------------------------------------------------

    def _pump(self) -> None:
        if self._stopping:
            return  # sockets are closing; the VIP stays as it is
        if self.fault.startswith("stop-entering:"):
            self._stop_if_entering(self.fault.partition(":")[2])
        for action in self.core.pop_actions():
            self._carry_out(action)
        core = self.core
        state = PersistentState(epoch=core.epoch, held_epoch=core.held_epoch, held_before=core.held_before)
        if state != self._persisted:
            self._persisted = state
            try:
                save_state(self.node.state_dir, state)
            except OSError as err:
                log.error("state-save-failed", error=str(err))
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_at(self.core.get_timer(), self._on_timer)

    def _carry_out(self, action: protocol.Action) -> None:
        if self.fault.startswith("stop-before:") and self._fault_matches(action):
            # Test only: freeze right here (SIGSTOP) so a test can SIGKILL us at this exact step.
            log.warning("test-fault-stopping", before=type(action).__name__)
            os.kill(os.getpid(), signal.SIGSTOP)
        match action:
            case protocol.Send():
                self.transport.sendto(action.data, self.peer_addr)
            case protocol.Announce():
                try:
                    self.announced += self.announcer.announce()
                except announce.AnnounceError as err:
                    log.error("announce-failed", error=str(err))
                log.info("announced", round=action.round, at=self.now())
            case protocol.StartDrain() | protocol.Release() | protocol.Claim() | protocol.EndDrain():
                self._vip_ops.put_nowait(action)
                self._count_connections(action)
            case protocol.CheckHealth():
                self._spawn(self._check_health(action))
            case protocol.MeasureLoad():
                self._spawn(self._measure_load(action))
            case protocol.BeforeRelease():
                self._spawn(self._before_release(action))
            case protocol.RunHooks():
                self._fire_hooks(action)
            case protocol.Probe():
                self._spawn(self._probe(action))
            case protocol.MeasurePeer():
                if not self._measuring:  # one at a time: a slow answer does not pile up frames
                    self._measuring = True
                    self._spawn(self._measure_peer(action))
            case protocol.Fence():
                self._spawn(self._fence(action))
            case protocol.Handoff():
                if self._handoff_end is not None:
                    self._handoff_end.cancel()
                self._handoff_install = asyncio.create_task(self._install_handoff(action.epoch))
                self._handoff_install.add_done_callback(self._task_done)
            case protocol.EndHandoff():
                epoch = action.epoch
                self._handoff_end = self.loop.call_later(
                    action.after, lambda: self._spawn(self._remove_handoff(epoch))
                )
            case protocol.WatchStragglers():
                self._watch_stragglers(action.epoch)
            case protocol.UnwatchStragglers():
                self._unwatch_stragglers(action.epoch)
            case protocol.Tell():
                try:
                    self.announcer.tell(ip_address(action.ip), action.mac)
                    log.info("told-straggler", ip=action.ip, mac=action.mac)
                except (announce.AnnounceError, ValueError) as err:
                    log.error("tell-failed", ip=action.ip, mac=action.mac, error=str(err))
            case protocol.Watch():
                token = canary_token(self.config.cluster, action.epoch) if action.canary else None
                self.watcher.start(action.epoch, token)
            case protocol.Unwatch():
                self.watcher.stop(action.epoch)
            case protocol.Canary():
                self._spawn(self._canary(action))
            case protocol.HostCheck():
                self._spawn(self._host_check(action))
            case protocol.Started():
                meta = self._command_meta.pop(action.command, None)
                if meta is not None:
                    self._move_meta[action.epoch] = meta
            case protocol.Progress() | protocol.Finished() | protocol.Planned() | protocol.DrainReported():
                queue = self._waiters.get(action.command)
                if queue is not None:
                    queue.put_nowait(action)
            case protocol.Notice():
                if action.event != "datagram-rejected":
                    log.info(action.event, **action.detail)
                else:
                    self.rejections.note(str(action.detail.get("reason")), self.now())
                self._journal_notice(action)
            case _:
                assert_never(action)

    def _count_connections(self, action: protocol.Action) -> None:
        """From the drain's start to its end, the core hears how many connections to the VIP are open."""
        if isinstance(action, protocol.EndDrain | protocol.StartDrain) and self._counting is not None:
            self._counting.cancel()
            self._counting = None
        if isinstance(action, protocol.StartDrain):
            epoch = action.epoch

            def counted(count: Count | str) -> None:
                if isinstance(count, str):
                    self._report(events.ConnectionsCounted(epoch, None, 0.0, count))
                else:
                    self._report(events.ConnectionsCounted(epoch, count.open, count.oldest_s))

            self._counting = asyncio.create_task(
                count_while_draining(self.config.vip.ip, DRAIN_COUNT_EVERY, counted)
            )
            self._counting.add_done_callback(self._task_done)

    def _stop_if_entering(self, state: str) -> None:
        """Test only: freeze (SIGSTOP) as the move enters `state`, before its actions are carried out."""
        run = self.core.run
        if run is not None and run.state == state and self._fault_seen != (run.epoch, state):
            self._fault_seen = (run.epoch, state)
            log.warning("test-fault-stopping", entering=state, epoch=run.epoch)
            os.kill(os.getpid(), signal.SIGSTOP)

    def _fault_matches(self, action: protocol.Action) -> bool:
        """`stop-before:Release` or `stop-before:Claim:swap`: an action's class, and its `why` if given."""
        _, _, spec = self.fault.partition(":")
        name, _, why = spec.partition(":")
        return type(action).__name__ == name and (not why or getattr(action, "why", None) == why)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        # No adapter exception may end a task unnoticed: it is logged with its traceback and counted.
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        self.task_failures += 1
        err = task.exception()
        name = getattr(task.get_coro(), "__name__", task.get_name())
        log.error("task-failed", task=name, error=f"{type(err).__name__}: {err}", exc_info=err)

    async def _carry_out_vip_ops(self) -> None:
        """The VIP's netlink changes, one at a time and in order: the drain copy before the release."""
        while True:
            action = await self._vip_ops.get()
            try:  # one that fails is logged and the next goes on: the core's deadlines see to the rest
                match action:
                    case protocol.StartDrain():
                        await self._start_drain(action)
                    case protocol.Release():
                        await self._release(action)
                    case protocol.Claim():
                        await self._claim(action)
                    case protocol.EndDrain():
                        await self._end_drain(action)
            except Exception as err:
                self.task_failures += 1
                log.error("vip-op-failed", action=type(action).__name__, error=repr(err), exc_info=err)
            finally:
                self._vip_ops.task_done()

    async def _claim(self, action: protocol.Claim) -> None:
        ok, error = True, ""
        try:
            if self.fault == "hang-before-claim" and action.why == "swap":
                log.warning("test-fault-hanging-before-claim")
                await asyncio.sleep(3600)
            if self.fault == "claim-fails" and action.why == "swap":
                raise NetlinkError("injected test fault: netlink add refused")
            await asyncio.wait_for(self.link.claim(), self.config.swap.step_timeout_ms / 1000)
        except (NetlinkError, TimeoutError) as err:
            ok, error = False, str(err) or "netlink add timed out"
        done_at = self.now()
        self._report(events.ClaimDone(action.epoch, ok, error))
        # `at` is CLOCK_MONOTONIC, shared by every namespace of a host: the lab lines events up with it.
        log.info("claim", epoch=action.epoch, why=action.why, ok=ok, error=error or None, at=done_at)

    async def _start_drain(self, action: protocol.StartDrain) -> None:
        try:
            await asyncio.wait_for(self.link.start_drain(), self.config.swap.step_timeout_ms / 1000)
        except (NetlinkError, TimeoutError) as err:
            # The release goes on: in-flight connections may be reset, the VIP still moves.
            log.error("drain-start-failed", epoch=action.epoch, error=str(err) or "timed out")

    async def _release(self, action: protocol.Release) -> None:
        ok, error = True, ""
        try:
            await asyncio.wait_for(self.link.release(), self.config.swap.step_timeout_ms / 1000)
        except (NetlinkError, TimeoutError) as err:
            ok, error = False, str(err) or "netlink delete timed out"
        done_at = self.now()
        self._report(events.ReleaseDone(action.epoch, ok, error))
        log.info("release", epoch=action.epoch, why=action.why, ok=ok, error=error or None, at=done_at)

    async def _end_drain(self, action: protocol.EndDrain) -> None:
        step = self.config.swap.step_timeout_ms / 1000
        try:
            await asyncio.wait_for(self.link.end_drain(), step)
            held = await asyncio.wait_for(self.link.holds(), step)
        except (NetlinkError, TimeoutError) as err:
            log.error("drain-end-failed", epoch=action.epoch, error=str(err) or "timed out")
            return
        log.info("drain-ended", epoch=action.epoch, at=self.now())
        if not held:  # ended on schedule, not by a claim here
            self._spawn(self._close_leftovers(action.epoch))  # not in the VIP's queue: it may take seconds

    async def _close_leftovers(self, epoch: int) -> None:
        # Unreachable now, but a keep-alive server keeps them open: each would hide a reused client port
        # from the handoff rule of the next move back (tests/chaos/test_contention.py).
        try:
            closed = await handoff.close_leftovers(self.config.vip.ip)
        except (handoff.HandoffError, TimeoutError) as err:
            log.warning("leftovers-not-closed", epoch=epoch, error=str(err))
            return
        log.info("leftovers-closed", epoch=epoch, connections_closed=closed)

    async def _check_health(self, action: protocol.CheckHealth) -> None:
        ok, detail = await asyncio.to_thread(
            check_health, self.node.health_url, self.config.health.timeout_ms / 1000
        )
        log.info("health-check", epoch=action.epoch, ok=ok, detail=detail)
        self._report(events.HealthDone(action.epoch, ok, detail))

    def _not_proof(self) -> tuple[str, ...]:
        """Clients whose requests never prove a move, besides loopback (accesslog.proof knows it): the nodes
        themselves and the ignored."""
        nodes = (str(n.address) for n in self.config.nodes)
        return (*nodes, *(str(a) for a in self.config.confirm.ignore_clients))

    async def _measure_load(self, action: protocol.MeasureLoad) -> None:
        fmt = LogFormat.named(self.config.confirm.log_format)
        rate, detail = await asyncio.to_thread(
            recent_rate, self.node.access_log, fmt, str(self.config.vip.ip), self._not_proof(),
            datetime.now(UTC),
        )
        log.info("load-measured", epoch=action.epoch, per_second=rate, detail=detail)
        self._report(events.LoadMeasured(action.epoch, rate, detail))

    async def _host_check(self, action: protocol.HostCheck) -> None:
        """A dry run's checks of this host for the part it would play: reads only, changes nothing."""
        target = action.role == "target"
        found = await asyncio.to_thread(self._host_findings, target)
        vip, interface = self.config.vip.address, self.node.interface
        try:
            holds = await self.link.holds()
        except NetlinkError as err:
            found.append(check.Finding("VIP on this host", check.FAIL, f"netlink: {err}"))
        else:
            if target and holds:
                found.append(check.Finding(
                    "VIP not on this host", check.FAIL, f"{vip} is already on {interface}",
                    f"failover status shows who holds it; if it was added by hand: "
                    f"ip addr del {vip} dev {interface}"))
            elif target:
                found.append(check.Finding("VIP not on this host", check.OK, f"{vip} not on {interface}"))
            elif holds:
                found.append(check.Finding("VIP on this host", check.OK, f"{vip} on {interface}"))
            else:
                found.append(check.Finding("VIP on this host", check.FAIL, f"{vip} is not on {interface}"))
        checks = tuple(dataclasses.replace(f, node=self.node.name) for f in found)
        log.info("host-check", role=action.role, for_peer=action.peer_boot is not None,
                 failed=[c.check for c in checks if c.level == check.FAIL])
        self._report(events.HostCheckDone(action, checks))

    def _host_findings(self, target: bool) -> list[check.Finding]:
        """Blocking (files, /proc, an HTTP request): run in a thread."""
        cfg, node = self.config, self.node
        found = [check.key_finding(cfg), check.interface_finding(node.interface)]
        if target:
            ok, detail = check_health(node.health_url, cfg.health.timeout_ms / 1000)
            fix = "" if ok else f"start the web server on {node.name}, or fix nodes.{node.name}.health_url"
            found.append(check.Finding("health_url", check.OK if ok else check.FAIL, detail, fix))
            found.append(check.access_log_finding(cfg, node))
        found += check.sysctl_findings(cfg, node)
        if target:
            found.append(check.nft_finding())
        return found

    # --- journal and hooks ---------------------------------------------------------------------------

    def _journal_notice(self, notice: protocol.Notice) -> None:
        """Journal every finished or refused move and every takeover."""
        event, detail = notice.event, notice.detail
        if event in ("move-finished", "move-refused"):
            meta = self._move_meta.pop(int(detail["epoch"]), None) or {}
            self._journal({"kind": detail["move"], "node": self.node.name, **detail, **meta})
        elif event == "takeover":
            self._journal({"kind": "takeover", "node": self.node.name, "holder": self.node.name,
                           "source": self.peer.name, "target": self.node.name, **detail})
        elif event == "agent-down-host-up":
            # Once per silence: the peer's agent is down and its host up, so no takeover (history shows it).
            self._journal({"kind": "takeover", "ok": False, "node": self.node.name, "holder": None,
                           "source": self.peer.name, "target": self.node.name, "holder_host": "up", **detail})

    def _journal(self, entry: dict[str, Any]) -> None:
        # Off the loop (an fsync on a busy disk can outlast dead_after_ms), in order; _run_move waits
        # for it, so an entry is still on disk before the CLI hears the outcome.
        self._journal_writer.append(entry)

    def _hook_env(self, event: str, **extra: str | None) -> dict[str, str]:
        """The one environment of every hook and of the fence program: FAILOVER_* variables."""
        env = {
            "FAILOVER_EVENT": event,
            "FAILOVER_CLUSTER": self.config.cluster,
            "FAILOVER_NODE": self.node.name,
            "FAILOVER_PEER": self.peer.name,
            "FAILOVER_VIP": str(self.config.vip.address),
        }
        env.update({f"FAILOVER_{k.upper()}": v for k, v in extra.items() if v is not None})
        return env

    def _fire_hooks(self, action: protocol.RunHooks) -> None:
        hooks = self.config.hooks.for_event(action.event)
        if hooks:
            env = self._hook_env(
                action.event, epoch=str(action.epoch), move=action.move, source=action.source,
                target=action.target, reason=action.reason,
            )
            self._spawn(self._run_hooks(action.event, hooks, env))

    async def _run_hooks(self, event: str, hooks: tuple[tuple[str, ...], ...], env: dict[str, str]) -> None:
        async with self._hook_lock:
            ok, details = await run_all(hooks, env, self.config.hooks.timeout_ms / 1000)
        log.info("hooks", hook_event=event, ok=ok, details=details)

    async def _before_release(self, action: protocol.BeforeRelease) -> None:
        env = self._hook_env(
            "before_release", epoch=str(action.epoch), move=action.move, source=self.node.name,
            target=action.target,
        )
        # Not queued behind the notification hooks (_hook_lock): the core's budget for these runs from
        # its asking, and a slow `confirmed` hook of the last move must not spend it.
        hooks, timeout = self.config.hooks.before_release, self.config.hooks.timeout_ms / 1000
        ok, details = await run_all(hooks, env, timeout)
        log.info("hooks", hook_event="before_release", epoch=action.epoch, ok=ok, details=details)
        self._report(events.BeforeReleaseDone(action.epoch, ok, details[-1] if details else ""))

    # --- stragglers: clients still sending to us after we released -----------------------------------

    def _watch_stragglers(self, epoch: int) -> None:
        self._unwatch_stragglers(None)
        try:
            watch = StragglerWatch(self.node.interface, self.config.vip.ip, self.link.mac)
            watch.start()
        except announce.AnnounceError as err:
            log.error("straggler-watch-failed", epoch=epoch, error=str(err))
            return
        self._stragglers = (epoch, watch, asyncio.create_task(self._report_stragglers(epoch, watch)))

    async def _report_stragglers(self, epoch: int, watch: StragglerWatch) -> None:
        while True:
            await asyncio.sleep(STRAGGLER_REPORT_INTERVAL)
            # The new holder's own frames are the connection handoff at work, not a straggler.
            seen = [
                (s.mac, s.ip, watch.last_seen(s.mac) or 0.0)
                for s in watch.stragglers()
                if s.ip != str(self.peer.address)
            ]
            if seen:
                self._report(events.StragglersSeen(epoch, tuple(seen)))

    def _unwatch_stragglers(self, epoch: int | None) -> None:
        if self._stragglers is None or (epoch is not None and self._stragglers[0] != epoch):
            return
        watched, watch, task = self._stragglers
        self._stragglers = None
        task.cancel()
        watch.stop()
        log.info("straggler-watch-ended", epoch=watched, frames_seen=watch.frames_seen)

    # --- connection handoff to the draining old holder -----------------------------------------------

    async def _install_handoff(self, epoch: int) -> None:
        try:
            closed = await handoff.install(
                self.config.cluster, self.config.vip.ip, self.peer.address, self.node.interface
            )
        except (handoff.HandoffError, TimeoutError) as err:
            log.warning("handoff-unavailable", epoch=epoch, error=str(err))
            self._report(events.HandoffDone(epoch, False, str(err)))
            return
        log.info(
            "handoff-installed", epoch=epoch, to=str(self.peer.address), at=self.now(),
            time_wait_closed=closed,
        )
        self._report(events.HandoffDone(epoch, True))

    async def _remove_handoff(self, epoch: int) -> None:
        self._handoff_end = None
        install = self._handoff_install
        if install is not None and not install.done():
            # Asked for at once (a failed health check): the rule must not land after its removal.
            await asyncio.wait([install])
        try:
            handed_off = await handoff.remove(self.config.cluster, self.config.vip.family)
        except (handoff.HandoffError, TimeoutError) as err:
            log.warning("handoff-remove-failed", epoch=epoch, error=str(err))
            return
        log.info("handoff-removed", epoch=epoch, at=self.now(), segments_handed_off=handed_off)

    # --- confirmation: the access log, and canaries -------------------------------------------------

    async def _canary(self, action: protocol.Canary) -> None:
        await self._vip_ops.join()  # the core ended the drain first: its copy would answer them here
        url = canary_url(
            self.peer.health_url, self.config.vip.ip, canary_token(self.config.cluster, action.epoch)
        )
        timeout = self.config.health.timeout_ms / 1000
        results = []
        for _ in range(self.config.confirm.requests):
            _ok, detail = await asyncio.to_thread(check_health, url, timeout)
            results.append(detail)
            await asyncio.sleep(0.05)
        log.info("canary", epoch=action.epoch, url=url, results=results)

    async def _fence(self, action: protocol.Fence) -> None:
        t = self.config.takeover
        ok, detail = await run_hook(t.fence, self._hook_env("fence"), t.fence_timeout_ms / 1000)
        log.info("fence", epoch=action.epoch, ok=ok, detail=detail)
        self._report(events.FenceDone(action.epoch, ok, detail))

    async def _self_check_loop(self, every: float) -> None:
        timeout = min(self.config.health.timeout_ms / 1000, every)
        while True:
            await asyncio.sleep(every)
            ok, detail = await asyncio.to_thread(check_health, self.node.health_url, timeout)
            self._report(events.SelfCheckDone(ok, detail))

    async def _probe(self, action: protocol.Probe) -> None:
        window = action.window or self.core.setup.probe_window
        # The peer's own address, in the VIP's family (the only one its ARP / ND frames can carry).
        peer_ip, our_ip = self.peer.address, self.node.address
        ask_host = action.peer_host and peer_ip.version == our_ip.version == self.config.vip.ip.version
        try:
            # On the event loop, on sockets and frames made at the first measurement: no thread to start.
            result = await self.announcer.prober.probe(
                count=window.count,
                interval=window.interval,
                wait=window.wait,
                peer=(our_ip, peer_ip) if ask_host else None,
            )
        except announce.AnnounceError as err:
            # Without a probe we cannot tell: the core never claims on that, two holders are worse.
            log.error("probe-failed", error=str(err))
            result = announce.ProbeResult(answered_by=(), unknown=f"probe failed: {err}")
        log.info("probe", epoch=action.epoch, answered_by=list(result.answered_by),
                 unknown=result.unknown or None, frames=result.frames,
                 host_answered_by=list(result.host_answered_by) if ask_host else None,
                 window_ms=round(window.span * 1000, 3))
        self._report(
            events.ProbeDone(action.epoch, result.answered_by, result.unknown, result.host_answered_by)
        )

    async def _measure_peer(self, action: protocol.MeasurePeer) -> None:
        peer_ip, our_ip = self.peer.address, self.node.address
        rtt: float | None = None
        try:
            if peer_ip.version == our_ip.version == self.config.vip.ip.version:
                prober = self.announcer.prober
                prober.prepare(our_ip, peer_ip)  # the takeover probe's frames and filters, built now
                rtt = await prober.measure_peer(our_ip, peer_ip, action.timeout)
        except announce.AnnounceError as err:
            log.warning("peer-measure-failed", error=str(err))
        finally:
            self._measuring = False
        self._report(events.PeerMeasured(rtt))


def _summary(entry: dict[str, Any]) -> dict[str, Any]:
    keys = ("at", "kind", "epoch", "source", "target", "holder", "operator", "operator_reason")
    return {k: entry.get(k) for k in keys}


async def _main(config: ClusterConfig, node_name: str | None) -> None:
    try:
        node = own_node(config, node_name)
    except ConfigError as err:
        raise AgentError(str(err)) from None
    agent = Agent(config, node)
    await agent.run()


def run_agent(config: ClusterConfig, node_name: str | None) -> None:
    """Run the agent in the foreground until SIGTERM/SIGINT. Raises AgentError when it cannot start."""
    asyncio.run(_main(config, node_name))
