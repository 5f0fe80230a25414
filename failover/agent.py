"""The agent daemon: the one place that reads the clock and wires the adapters to the protocol core.

It owns the asyncio loop: the netlink watcher, the control socket, and the tasks that carry out the
core's actions: the one dispatch of every action (`_carry_out`). It makes no protocol decisions of its
own. Heartbeats and swap messages come in on the heartbeat socket's thread, which also waits for
`Node.get_timer()`: it hands the datagram and the timer to the core itself (under `_core_lock`, which
everyone holds around the core), sends what the core sends, and wakes the loop only when the core asks
for more than datagrams (`_after_core_on_thread`): an idle agent's loop sleeps through its heartbeats.
The adapters it wires: `vipchanges` (the VIP's netlink queue), `handoffrule`, `stragglerreports`,
`hookruns`, `hostchecks`, `noticejournal`, `controlcommands`; the core's setup is `coresetup`'s, what
it keeps across restarts `persisted`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import threading
from collections.abc import Coroutine
from datetime import UTC, datetime
from ipaddress import ip_address
from typing import TYPE_CHECKING, Any, assert_never

import structlog

from failover import (
    announce,
    bootid,
    control,
    prober,
    protocol,
    sdnotify,
)
from failover.accesslog import LogFormat
from failover.agentcontext import AgentContext
from failover.config import ClusterConfig, ConfigError, NodeConfig, keys_for
from failover.confirm import LogWatcher
from failover.connectionhold import raise_descriptor_limit
from failover.controlcommands import ControlCommands
from failover.coresetup import node_setup
from failover.handoffrule import HandoffRule
from failover.health import canary_token, service_port
from failover.heartbeat_socket import HeartbeatSocket
from failover.hookruns import HookRuns
from failover.hostchecks import HostChecks
from failover.load import recent_rate
from failover.localnode import own_node
from failover.netlink import NetlinkError, VipLink
from failover.noticejournal import NoticeJournal
from failover.persisted import PersistentState, StateSaver, load_state
from failover.protocol import events
from failover.rejections import RejectionLog
from failover.stragglerreports import StragglerReports
from failover.sysctl import drain_blocker
from failover.vipchanges import VipChanges

if TYPE_CHECKING:
    from failover.metrics import MetricsServer  # imported when metrics are on: prometheus_client is ~3 MiB

log = structlog.get_logger("failover.agent")

# Test-only fault injection (the chaos and rollback tests): never set in production.
FAULT_ENV = "FAILOVER_TEST_FAULT"


class AgentError(Exception):
    """The agent cannot start; the message is one line."""


METRICS_STATUS_TIMEOUT = 2.0  # a scrape waits this long for the event loop to hand over the status
class Agent:
    def __init__(self, config: ClusterConfig, node: NodeConfig) -> None:
        self.config = config
        self.node = node
        self.peer = config.peer_of(node.name)
        self._peer_ip = str(self.peer.address)  # compared with every datagram's source: made once
        self.fault = os.environ.get(FAULT_ENV, "")
        self._fault_seen: tuple[int, str] | None = None
        self.loop = asyncio.get_running_loop()
        self._core_lock = threading.RLock()  # the core, and what the heartbeat thread shares with the loop
        self._handed: list[protocol.Action] = []  # popped on the heartbeat thread, for the loop, in order
        self._pump_asked = False  # a _pump is on its way to the loop for them
        self._carrying = 0  # the loop is carrying out actions it popped (pumps nest): the thread sends none
        self._datagram_failures = 0  # datagrams whose handling raised (counted on the heartbeat thread)
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self._ended_by: str | None = None  # a task the agent cannot run without ended: why it stopped
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
        self.context = AgentContext(config, node, report=self._report, spawn=self._spawn, now=self.now)
        self.handoff_rule = HandoffRule(self.context)
        self.announced = 0
        self._measuring = False  # a MeasurePeer is under way
        self._probes: dict[int, asyncio.Task[None]] = {}  # Probe.serial -> its task, until it answers
        self.hooks = HookRuns(self.context, before_drain=lambda epoch: self.vip_changes.held(epoch))
        self.rejections = RejectionLog(log)
        self.task_failures = 0  # tasks that ended with an exception (each logged as task-failed)
        self.journal = NoticeJournal(config, node)

    def now(self) -> float:
        return self.loop.time()

    def _task_failed(self) -> None:
        self.task_failures += 1

    # --- start and stop --------------------------------------------------------------------------

    async def run(self) -> None:
        cfg, node = self.config, self.node
        keys = keys_for(cfg.auth)  # first: an unreadable key file stops the start before anything changes
        try:
            self.link = await VipLink.open(node.interface, cfg.vip.address)
        except NetlinkError as err:
            raise AgentError(f"{cfg.source}: nodes.{node.name}.interface: {err}") from None
        self.vip_changes = VipChanges(
            self.context, self.link, fault=self.fault, failed=self._task_failed,
            durable=lambda epoch: self.state_saver.durable(epoch),
        )  # fmt: skip
        self.host_checks = HostChecks(self.context, self.link, vip_changes_done=self.vip_changes.done)
        self.stragglers = StragglerReports(self.context, self.link.mac)
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
            await self.handoff_rule.remove_stale()  # left by an agent that died mid-swap
        state = load_state(node.state_dir)
        self._persisted = state
        self.state_saver = StateSaver(
            node.state_dir, state, on_error=lambda err: log.error("state-save-failed", error=str(err))
        )
        try:
            boot = bootid.next_boot(node.state_dir)  # grows at every start, whatever the clock did
        except bootid.BootIdError as err:
            raise AgentError(str(err)) from None
        setup = node_setup(cfg, node, keys=keys, boot=boot, drain_blocker=self.drain_blocker)
        # An agent never claims at start; it keeps what netlink says it holds.
        self.core = protocol.Node(
            setup,
            holds=holds,
            held_epoch=state.held_epoch,
            epoch=state.epoch,
            now=self.now(),
            held_before=state.held_before,
        )
        self.commands = ControlCommands(
            cfg, node, self.core, self.journal, lock=self._core_lock, now=self.now, pump=self._pump,
            status=self.status,
        )
        try:
            # Before binding anything: a second agent for this node must hear "already running".
            control.claim_socket_path(node.control_socket)
        except control.ControlError as err:
            raise AgentError(str(err)) from None
        try:
            self.transport = HeartbeatSocket.open(
                node.address, cfg.heartbeat.port, self._heard, lock=self._core_lock,
                deadline=self.core.get_timer, timer=self._timer_due, failed=self._heartbeats_failed,
            )  # fmt: skip
        except OSError as err:
            where = f"{node.address}:{cfg.heartbeat.port}"
            raise AgentError(f"cannot bind heartbeat socket {where}: {err}") from None
        self.peer_addr = (str(self.peer.address), cfg.heartbeat.port)
        metrics = self._start_metrics()
        try:
            server = await control.serve(node.control_socket, self.commands.on_control)
        except control.ControlError as err:
            raise AgentError(str(err)) from None
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self._stop.set)
        watcher = self._spawn(self._watch_vip(), essential=True)
        self._spawn(self.vip_changes.carry_out(), essential=True)
        if cfg.health.self_check_every_ms:
            every = cfg.health.self_check_every_ms / 1000
            self._spawn(self.host_checks.self_check_loop(every), essential=True)
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
        self.transport.start()
        _trim_heap()
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
            self.stragglers.unwatch(None)
            await self.handoff_rule.stop()
            with self._core_lock:
                self._stopping = True  # the heartbeat thread hands the core nothing more
            server.close()  # and its socket file, unless another agent's replaced it
            self.transport.close()
            if metrics is not None:
                metrics.close()
            for task in self._tasks:
                task.cancel()
            # Ended before their sockets close: a probe or measurement must not wake on a closed one.
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self.announcer.close()
            await self.journal.flushed()  # what the core journalled is on disk before we exit
            await self.state_saver.flushed()  # and the epochs
            await self.link.close()
            with self._core_lock:
                holds = self.core.holds
            log.info("agent-stopped", node=node.name, holds_vip=holds)
        if self._ended_by is not None:
            raise AgentError(f"stopped: {self._ended_by}; the VIP stays where it is, a restart is safe")

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

    def _heard(self, data: bytes, source: str) -> None:
        """On the heartbeat thread (lock held): a datagram in, stamped with the time it came."""
        if self._stopping:
            return
        if source.partition("%")[0] != self._peer_ip:
            # Only the peer's address is worth an HMAC: a flood from anywhere else costs one comparison.
            self.rejections.drop("source", self.now())
            return
        try:
            self.core.receive_datagram(data, self.now())
        except Exception as err:
            # A bug the datagram found, not the datagram's fault: logged and counted, and the agent
            # goes on hearing its peer (stopping would cost the peer a takeover's question). A bug in
            # the timer's path stops the thread instead (`_heartbeats_failed`): without it no heartbeat
            # goes out, and an agent that cannot heartbeat must not look alive.
            self._datagram_failures += 1  # this thread's own count: task_failures is the loop's
            log.error("datagram-failed", error=f"{type(err).__name__}: {err}", exc_info=err)
        self._after_core_on_thread()

    def _timer_due(self) -> None:
        """On the heartbeat thread (lock held): the core's deadline came."""
        if self._stopping:
            return
        self.core.handle_timer(self.now())
        self._after_core_on_thread()

    def _after_core_on_thread(self) -> None:
        """On the heartbeat thread, lock held: datagrams the core sends go out from here, and only when
        the core asks for more (any other action, a state to keep) is the loop woken, to carry out all
        of it in the core's order."""
        if self.fault.startswith("stop-entering:"):
            self._stop_if_entering(self.fault.partition(":")[2])
        actions = self.core.pop_actions()
        sends = [a for a in actions if isinstance(a, protocol.Send)]
        # Never ahead of a datagram the loop has yet to send: the peer would take the older as late, and
        # drop it. (So `stop-before:Send`, a test fault, sees only the loop's sends.)
        quiet = not self._handed and not self._carrying
        if quiet and len(sends) == len(actions) and not self._state_moved():
            for send in sends:
                self.transport.sendto(send.data, self.peer_addr)
            return
        self._handed += actions
        if not self._pump_asked:
            self._pump_asked = True
            self.loop.call_soon_threadsafe(self._pump)

    def _heartbeats_failed(self, err: BaseException) -> None:
        """On the heartbeat thread: it stopped with an exception. The agent stops rather than run deaf."""
        log.error("task-failed", task="heartbeats", error=f"{type(err).__name__}: {err}", exc_info=err)

        def stop() -> None:
            if not (self._stopping or self._stop.is_set()):
                self.task_failures += 1
                self._ended_by = f"task heartbeats ended ({type(err).__name__}: {err})"
                log.error("agent-stopping", reason=self._ended_by)
                self._stop.set()

        with contextlib.suppress(RuntimeError):  # the loop is closed: the agent is gone already
            self.loop.call_soon_threadsafe(stop)

    def _report(self, event: events.Event) -> None:
        """An adapter's result goes to the core, stamped with the time it came in."""
        with self._core_lock:
            self.core.handle(event, self.now())
        self._pump()

    async def _watch_vip(self) -> None:
        try:
            async for held in self.link.watch_vip():
                self._report(events.VipObserved(held))
        except NetlinkError as err:
            log.error("vip-watch-failed", error=str(err))

    async def status(self) -> dict[str, Any]:
        with self._core_lock:
            status = self.core.status(self.now())
        try:
            status["holds_vip_netlink"] = await self.link.holds()
        except NetlinkError as err:
            status["holds_vip_netlink"] = None
            status["netlink_error"] = str(err)
        status["rejected"] = {**status["rejected"], **self.rejections.dropped_counts()}
        status["task_failures"] = self.task_failures + self._datagram_failures
        status.update(
            cluster=self.config.cluster,
            vip=str(self.config.vip.address),
            interface=self.node.interface,
            announcements_sent=self.announced,
        )
        return status

    # --- actions out ---------------------------------------------------------------------------------

    def _pump(self) -> None:
        """On the loop: what the core asked for (the heartbeat thread's share first: it came first) is
        carried out, the epochs are kept, and the thread hears of a deadline moved earlier."""
        if self._stopping:
            return  # sockets are closing; the VIP stays as it is
        with self._core_lock:
            self._pump_asked = False
            if self.fault.startswith("stop-entering:"):
                self._stop_if_entering(self.fault.partition(":")[2])
            actions, self._handed = self._handed + self.core.pop_actions(), []
            self._carrying += 1
        try:
            for action in actions:
                self._carry_out(action)
        finally:
            with self._core_lock:
                self._carrying -= 1
        with self._core_lock:
            if self._state_moved():
                core = self.core
                state = PersistentState(core.epoch_to_keep(), core.held_epoch, core.held_before)
                self._persisted = state
                self.state_saver.put(state)  # off the loop; a claim waits for its epoch (VipChanges)
            self.transport.wake_if_before(self.core.get_timer())

    def _state_moved(self) -> bool:
        """Lock held: the core's epochs differ from the ones last given to the state saver."""
        core, kept = self.core, self._persisted
        # Compared field by field: a look per datagram (a heartbeat every 10 ms) makes no state to compare.
        return (core.epoch_to_keep(), core.held_epoch, core.held_before) != (
            kept.epoch, kept.held_epoch, kept.held_before
        )  # fmt: skip

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
                self.vip_changes.put(action)
            case protocol.CheckHealth():
                self._spawn(self.host_checks.ready_check(action))
            case protocol.MeasureLoad():
                self._spawn(self._measure_load(action))
            case protocol.BeforeRelease():
                self._spawn(self.hooks.before_release(action))
            case protocol.RunHooks():
                self.hooks.fire(action)
            case protocol.Probe():
                probe = self._spawn(self._probe(action))
                if action.serial:
                    self._probes[action.serial] = probe
                    probe.add_done_callback(lambda _: self._probes.pop(action.serial, None))
            case protocol.StopProbe():
                # Cancelled, its listener is shut and its lock free: the next probe need not wait for it.
                stopped = self._probes.pop(action.serial, None)
                if stopped is not None:
                    stopped.cancel()
            case protocol.MeasurePeer():
                if not self._measuring:  # one at a time: a slow answer does not pile up frames
                    self._measuring = True
                    self._spawn(self._measure_peer(action))
            case protocol.Fence():
                self._spawn(self.hooks.fence(action))
            case protocol.Handoff():
                self.handoff_rule.install(action.epoch)
            case protocol.EndHandoff():
                self.handoff_rule.end_after(action.epoch, action.after)
            case protocol.WatchStragglers():
                self.stragglers.watch(action.epoch)
            case protocol.UnwatchStragglers():
                self.stragglers.unwatch(action.epoch)
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
                self._spawn(self.host_checks.canary(action))
            case protocol.StopCanary():
                self.host_checks.stop_canary(action)
            case protocol.HostCheck():
                self._spawn(self.host_checks.host_check(action))
            case protocol.Started():
                self.journal.started(action)
            case protocol.Progress() | protocol.Finished() | protocol.Planned() | protocol.DrainReported():
                self.commands.deliver(action)
            case protocol.Notice():
                if action.event != "datagram-rejected":
                    log.info(action.event, **action.detail)
                else:
                    self.rejections.note(str(action.detail.get("reason")), self.now())
                self.journal.notice(action)
            case _:
                assert_never(action)

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

    def _spawn(self, coro: Coroutine[Any, Any, None], *, essential: bool = False) -> asyncio.Task[None]:
        """Every task of the agent starts here, so none can end with an exception unnoticed.

        An `essential` task runs for the agent's life (the VIP's watch and queue, the self-check): if it
        ends, the agent stops with an error rather than run blind, and its supervisor restarts it.
        """
        name = str(getattr(coro, "__name__", "task"))
        if self.fault == f"task-raises:{name}":
            coro.close()  # test only: the task raises at once, as an adapter bug would
            coro = _injected_failure(name)
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._essential_done if essential else self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        # No adapter exception may end a task unnoticed: it is logged with its traceback and counted.
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        self.task_failures += 1
        err = task.exception()
        log.error("task-failed", task=task.get_name(), error=f"{type(err).__name__}: {err}", exc_info=err)

    def _essential_done(self, task: asyncio.Task[None]) -> None:
        self._task_done(task)
        if task.cancelled() or self._stopping or self._stop.is_set():
            return
        err = task.exception()
        self._ended_by = f"task {task.get_name()} ended" + (f" ({type(err).__name__}: {err})" if err else "")
        log.error("agent-stopping", reason=self._ended_by)
        self._stop.set()

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
            result = prober.ProbeResult(answered_by=(), unknown=f"probe failed: {err}")
        log.info("probe", epoch=action.epoch, answered_by=list(result.answered_by),
                 unknown=result.unknown or None, frames=result.frames,
                 host_answered_by=list(result.host_answered_by) if ask_host else None,
                 window_ms=round(window.span * 1000, 3))
        self._report(
            events.ProbeDone(
                action.epoch, result.answered_by, result.unknown, result.host_answered_by, action.serial
            )
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


def _trim_heap() -> None:
    """Hand back to the kernel the heap that start-up freed (scapy's vendor table above all), and take
    what start-up left (modules, scapy's layers, the config: ~40,000 objects, all kept for good) out of
    the collector's sight."""
    import ctypes
    import gc

    gc.collect()  # the import-time cycles first: the arenas they held can go back with the heap
    # Frozen, a full collection walks only what the agent made since, not these: 8-15 ms each here, a
    # pause of the heartbeats and of a move wherever one fell. They are rare (an idle agent at 10 ms
    # heartbeats made 1-2 young collections in 40 s and no full one), so this is about pauses, not CPU.
    gc.freeze()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)  # glibc's; elsewhere there is nothing to trim this way


async def _injected_failure(name: str) -> None:
    raise RuntimeError(f"injected test fault: {name} raised")


async def _main(config: ClusterConfig, node_name: str | None) -> None:
    try:
        node = own_node(config, node_name)
    except ConfigError as err:
        raise AgentError(str(err)) from None
    agent = Agent(config, node)
    await agent.run()


def run_agent(config: ClusterConfig, node_name: str | None) -> None:
    """Run the agent in the foreground until SIGTERM/SIGINT. Raises AgentError when it cannot start."""
    raise_descriptor_limit()  # a drain holds one descriptor per connection (connectionhold)
    asyncio.run(_main(config, node_name))
