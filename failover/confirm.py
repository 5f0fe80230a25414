"""The new holder's look at its access log during a move: which requests prove that clients followed the VIP.

Owns what one move has counted so far (the real clients' requests to the VIP, or the source's canaries
in canary mode) and how the destination of a request was known (`LogWatch`, pure), and the agent's
follower of the log for the move, with the kernel witness when the log cannot say (`LogWatcher`). The
rules of what counts are `accesslog.proof`'s; no protocol decision is made here.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

import structlog

from failover import witness
from failover.accesslog import (
    DESTINATION_LOG,
    DESTINATION_UNKNOWN,
    DESTINATION_WITNESS,
    LogEntry,
    LogFollower,
    LogFormat,
    Proof,
    proof,
)
from failover.health import CANARY_PARAM
from failover.protocol import events

log = structlog.get_logger("failover.agent")


@dataclass
class LogWatch:
    """One move's count: real clients' requests to the VIP, or (canary mode) the source's marked ones."""

    epoch: int
    follower: LogFollower
    vip: str
    exclude: tuple[str, ...]  # never proof: the nodes' own addresses, loopback, confirm.ignore_clients
    canary_token: str | None = None  # canary mode: only requests carrying it count
    witnessing: bool = False  # the kernel witness is in place: a log line counts if its client was seen
    proof: Proof = field(default_factory=lambda: Proof(DESTINATION_UNKNOWN))
    canaries: int = 0
    canary_clients: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.follower.fmt.destination_known:
            self.proof = Proof(DESTINATION_LOG)

    @property
    def count(self) -> int:
        return self.canaries if self.canary_token is not None else self.proof.counted

    @property
    def clients(self) -> tuple[str, ...]:
        return tuple(self.canary_clients) if self.canary_token is not None else self.proof.clients

    @property
    def unparsed(self) -> int:
        # Both see a line whose server field is not an address: the larger is a floor of what did not parse.
        return max(self.proof.unparsed, self.follower.stats.unparsed)

    def add(self, entries: list[LogEntry], witnessed: frozenset[str] | None = None) -> None:
        if self.canary_token is not None:
            marker = f"{CANARY_PARAM}={self.canary_token}"
            marked = [e for e in entries if e.request is not None and marker in e.request]
            self.canaries += len(marked)
            self.canary_clients += [e.client for e in marked if e.client not in self.canary_clients]
            return
        self.proof = self.proof + proof(
            entries,
            vip=self.vip,
            exclude=self.exclude,
            destination_known=self.follower.fmt.destination_known,
            witnessed=witnessed,
        )


FOLLOW_INTERVAL = 0.01  # how often the access log is read while a move waits for proof
# A burst of log is read and judged this much at a turn of the event loop (~10 ms of parsing), the next
# slice at once: one 1 MiB poll held the loop ~250 ms, about dead_after_ms, and heartbeats wait on it.
FOLLOW_BYTES = 32 * 1024
JUDGE_ENTRIES = 200  # entries judged at a turn, when the witness's answer lets many pile up
WITNESS_INTERVAL = 0.05  # how often the kernel witness is asked, while log lines wait for it


class LogWatcher:
    """The agent's side of Watch/Unwatch: follows the log, asks the witness, reports TrafficSeen.

    One move at a time; `report` hands each running count to the core, `spawn` runs each task (the
    agent's, which logs and counts an exception that ends one).
    """

    def __init__(
        self,
        *,
        cluster: str,
        vip: IPv4Address | IPv6Address,
        access_log: Path,
        log_format: str,
        exclude: tuple[str, ...],
        service_port: int,
        report: Callable[[events.TrafficSeen], None],
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]],
        now: Callable[[], float],
    ) -> None:
        self.cluster, self.vip, self.access_log, self.log_format = cluster, vip, access_log, log_format
        self.exclude, self.service_port = exclude, service_port
        self.report, self.spawn, self.now = report, spawn, now
        self.watch: LogWatch | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self, epoch: int, canary: str | None) -> None:
        """From now on, for the move of `epoch`: only what is logged from here can prove it."""
        self.stop(None)
        fmt = LogFormat.named(self.log_format)
        follower = LogFollower(self.access_log, fmt, max_bytes_per_poll=FOLLOW_BYTES)
        follower.start_at_end()
        self.watch = LogWatch(epoch, follower, str(self.vip), self.exclude, canary)
        self._task = self.spawn(self._follow(self.watch))  # the agent's: an exception in it is logged
        log.info("watching-access-log", epoch=epoch, path=str(self.access_log), canary=canary is not None)

    def stop(self, epoch: int | None) -> None:
        watch = self.watch
        if watch is None or (epoch is not None and watch.epoch != epoch):
            return
        self.watch = None
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if watch.witnessing:
            self.spawn(self._remove_witness(watch.epoch))
        watch.follower.close()
        stats = watch.follower.stats
        log.info(
            "stopped-watching-access-log",
            epoch=watch.epoch,
            counted=watch.count,
            lines=stats.lines,
            unparsed=stats.unparsed,
            error=watch.follower.last_error,
        )

    async def _follow(self, watch: LogWatch) -> None:
        if watch.canary_token is None and not watch.follower.fmt.destination_known and shutil.which("nft"):
            # The log does not say which address was asked: the kernel says which clients the VIP answered.
            try:
                await witness.install(self.cluster, self.vip, (self.service_port,))
                watch.witnessing = True
                watch.proof = Proof(DESTINATION_WITNESS)  # the weakest label a total may take from here on
            except (witness.WitnessError, TimeoutError) as err:
                log.warning("witness-unavailable", epoch=watch.epoch, error=str(err))
        unparsed, asked = 0, 0.0
        pending: list[LogEntry] = []
        while True:
            pending += watch.follower.poll()  # non-blocking reads of a regular file, FOLLOW_BYTES at most
            if pending and watch.witnessing and self.now() - asked < WITNESS_INTERVAL:
                pass  # the witness is asked at most this often: each time is one nft run
            elif pending or watch.unparsed != unparsed:
                witnessed = None
                if watch.witnessing:
                    asked = self.now()
                    try:
                        witnessed = await witness.sources(self.cluster)
                    except (witness.WitnessError, TimeoutError) as err:
                        log.warning("witness-failed", epoch=watch.epoch, error=str(err))
                        watch.witnessing = False
                for start in range(0, len(pending), JUDGE_ENTRIES):
                    if start:
                        await asyncio.sleep(0)  # the loop's other work between two slices
                    watch.add(pending[start : start + JUDGE_ENTRIES], witnessed)
                pending, unparsed = [], watch.unparsed
                how = watch.proof.destination if watch.canary_token is None else "canary"
                self.report(events.TrafficSeen(watch.epoch, watch.count, watch.clients, how, unparsed))
            await asyncio.sleep(0 if watch.follower.behind else FOLLOW_INTERVAL)

    async def _remove_witness(self, epoch: int) -> None:
        try:
            await witness.remove(self.cluster)
        except (witness.WitnessError, TimeoutError) as err:
            log.warning("witness-remove-failed", epoch=epoch, error=str(err))
