"""The client load itself: asyncio, run inside the client namespace by ``python -m failover.lab.client``.

Every interval it opens a new connection for one request; alongside, one keep-alive connection per
keep-alive interval asks every such interval. Meanwhile it counts the TCP RSTs from the target that
reach its namespace (``rstwatch``). It stops at the duration, the request cap, SIGTERM/SIGINT or when
the stop file appears, and writes its records atomically.

A keep-alive connection ends in one of three ways, counted apart because only one of them is harmless:
- an orderly close: a response with ``Connection: close``, or a FIN that arrived while the connection was
  idle, noticed before reuse as real clients do (urllib3's ``is_connection_dropped``), then a fresh
  connection for the next request;
- closed before response: EOF after a request went out on a reused connection and before any byte of
  the answer. RFC 9112 section 9.3.1 lets a client retry an idempotent request then, and this one retries
  once on a fresh connection, but the race cost a round trip and is reported on its own;
- a reset: ECONNRESET/EPIPE/ECONNABORTED, or a response cut short (fewer body bytes than its
  Content-Length; ``truncated`` counts those apart too).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from failover.lab.client_http import (
    ClosedBeforeResponse,
    Connection,
    TruncatedResponse,
    _close,
    _exchange,
    _parse_response,
    error_name,
)
from failover.lab.rstwatch import RstCounter

MAX_DURATION_S = 900.0
MAX_REQUESTS = 200_000
MAX_IN_FLIGHT = 8_000
_STOP_FILE_POLL_S = 0.02


@dataclass(frozen=True)
class LoadOptions:
    target: str
    port: int = 80
    interval_s: float = 0.005
    timeout_s: float = 2.0
    duration_s: float = 30.0
    max_requests: int = 20_000
    keepalive_intervals_s: tuple[float, ...] = (0.05,)
    stop_file: Path | None = None
    rsts_from: tuple[str, ...] = ()  # addresses whose RSTs are counted; () counts none


KEEPALIVE_COUNTS = (
    "requests", "connects", "resets", "resets_while_idle", "truncated", "orderly_closes",
    "closed_by_header", "closed_while_idle", "closed_before_response", "retried", "failed",
)  # fmt: skip


class _Load:
    def __init__(self, opts: LoadOptions) -> None:
        self.opts = opts
        self.records: list[list[Any]] = []
        self.keepalive_by_interval = {
            _interval_key(s): dict.fromkeys(KEEPALIVE_COUNTS, 0) for s in opts.keepalive_intervals_s
        }
        self.rst: dict[str, Any] = {"frames": None, "error": "not counted"}
        self.skipped = 0
        self.stop = asyncio.Event()

    @property
    def keepalive(self) -> dict[str, int]:
        """The keep-alive counts summed over every keep-alive connection."""
        total = dict.fromkeys(KEEPALIVE_COUNTS, 0)
        for counts in self.keepalive_by_interval.values():
            for key, n in counts.items():
                total[key] += n
        return total

    async def one_request(self) -> None:
        start = time.monotonic()
        ok, who = False, "error"
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(self.opts.timeout_s):
                reader, writer = await asyncio.open_connection(self.opts.target, self.opts.port)
                writer.write(b"GET / HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n")
                await writer.drain()
                raw = await reader.read(-1)
            status, body = _parse_response(raw)
            ok, who = status == 200, body if status == 200 else f"http {status}"
        except asyncio.CancelledError:
            who = "cancelled"
            raise
        except (
            OSError, ValueError, TimeoutError, TruncatedResponse, ClosedBeforeResponse,
        ) as exc:  # fmt: skip
            who = error_name(exc)
        finally:
            if writer is not None:
                writer.close()
            self.records.append([start, time.monotonic(), ok, who])

    async def keepalive_loop(self, interval_s: float) -> None:
        """One keep-alive connection asking every ``interval_s``; see the module docstring's outcomes."""
        counts = self.keepalive_by_interval[_interval_key(interval_s)]
        conn: Connection | None = None
        while not self.stop.is_set():
            conn = await self.keepalive_request(reusable(conn, counts), counts)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), interval_s)
        _close(conn)

    async def keepalive_request(self, conn: Connection | None, counts: dict[str, int]) -> Connection | None:
        """One request, retried once on a fresh connection when a reused one closed before the response;
        returns the connection to reuse, or None."""
        for _attempt in range(2):
            reused = conn is not None
            try:
                async with asyncio.timeout(self.opts.timeout_s):
                    if conn is None:
                        conn = await asyncio.open_connection(self.opts.target, self.opts.port)
                        counts["connects"] += 1
                    keep = await _exchange(*conn)
            except ClosedBeforeResponse:
                conn = _close(conn)
                if reused:
                    counts["closed_before_response"] += 1
                    counts["retried"] += 1
                    continue
                counts["failed"] += 1
                return None
            except TruncatedResponse:
                counts["resets"] += 1
                counts["truncated"] += 1
                counts["failed"] += 1
                return _close(conn)
            except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError):
                counts["resets"] += 1
                counts["failed"] += 1
                return _close(conn)
            except (OSError, ValueError, TimeoutError, asyncio.LimitOverrunError):
                counts["failed"] += 1
                return _close(conn)
            counts["requests"] += 1
            if not keep:
                counts["orderly_closes"] += 1
                counts["closed_by_header"] += 1
                return _close(conn)
            return conn
        counts["failed"] += 1  # closed before the response twice over
        return _close(conn)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        opts = self.opts
        begin = time.monotonic()
        deadline = begin + min(opts.duration_s, MAX_DURATION_S)
        max_requests = min(opts.max_requests, MAX_REQUESTS)
        tasks: set[asyncio.Task[None]] = set()
        counter = self.open_rst_counter(opts.duration_s + opts.timeout_s + 5.0)
        if counter is not None:
            loop.add_reader(counter.fileno(), counter.read_ready)
        keepalives = [asyncio.create_task(self.keepalive_loop(s)) for s in opts.keepalive_intervals_s]
        print(f"ready {begin:.6f}", flush=True)
        started = 0
        next_at = begin
        next_stop_check = begin
        while started < max_requests and not self.stop.is_set():
            now = time.monotonic()
            if now >= deadline:
                break
            if opts.stop_file is not None and now >= next_stop_check:
                next_stop_check = now + _STOP_FILE_POLL_S
                if opts.stop_file.exists():
                    break
            if now >= next_at:
                if len(tasks) < MAX_IN_FLIGHT:
                    task = asyncio.create_task(self.one_request())
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    started += 1
                else:
                    self.skipped += 1
                # Keep the schedule, but never burst to catch up after a stall.
                next_at = max(next_at + opts.interval_s, now)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), max(0.0, min(next_at, deadline) - time.monotonic()))
        self.stop.set()
        if tasks:
            _done, pending = await asyncio.wait(set(tasks), timeout=opts.timeout_s + 0.5)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        # The keep-alive loops see the stop within their interval, or their request's timeout.
        late: set[asyncio.Task[None]] = set()
        if keepalives:
            _done, late = await asyncio.wait(keepalives, timeout=opts.timeout_s + 0.5)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late, timeout=1.0)
        if counter is not None:
            loop.remove_reader(counter.fileno())
            counter.close()
            self.rst = counter.result()

    def open_rst_counter(self, lifetime: float) -> RstCounter | None:
        if not self.opts.rsts_from:
            return None
        try:
            return RstCounter(self.opts.rsts_from, lifetime)
        except (OSError, ValueError) as exc:
            self.rst = {"frames": None, "error": f"cannot count RSTs: {error_name(exc)} {exc}"}
            return None

    def result(self) -> dict[str, Any]:
        return {
            "records": sorted(self.records, key=lambda r: float(r[0])),
            "keepalive": self.keepalive,
            "keepalive_by_interval": self.keepalive_by_interval,
            "rst": self.rst,
            "skipped": self.skipped,
        }


def reusable(conn: Connection | None, counts: dict[str, int]) -> Connection | None:
    """``conn`` if it may carry the next request; None (counted) if the server ended it while idle: a FIN
    (orderly) or an RST (a reset, though a client just reconnects). What urllib3's
    ``is_connection_dropped`` checks before reuse; asyncio has read the FIN or RST as it came."""
    if conn is None:
        return None
    if conn[0].exception() is not None:
        counts["resets"] += 1
        counts["resets_while_idle"] += 1
        return _close(conn)
    if conn[0].at_eof():
        counts["orderly_closes"] += 1
        counts["closed_while_idle"] += 1
        return _close(conn)
    return conn


def _interval_key(interval_s: float) -> str:
    return f"{interval_s * 1000.0:g} ms"


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, MAX_IN_FLIGHT + 256) if hard != resource.RLIM_INFINITY else MAX_IN_FLIGHT + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def _write_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as out:
        json.dump(data, out, separators=(",", ":"))
    os.replace(tmp, path)


def run_load(opts: LoadOptions, out: Path) -> dict[str, Any]:
    _raise_nofile()
    load = _Load(opts)
    try:
        asyncio.run(load.run())
    finally:
        result = load.result()
        _write_atomic(out, result)
    return result
