"""Bounded HTTP client load for the lab, and the pure functions that read its records back.

Run inside the client namespace: ``python -m failover.lab.client --target 203.0.113.10 --out FILE``.
Every interval it opens a new connection for one request; alongside, one keep-alive connection per
keep-alive interval asks every such interval (``--keepalive-interval-ms`` repeats). Meanwhile it counts
the TCP RSTs from the target that reach its namespace (``rstwatch``). It stops at the duration, the
request cap, SIGTERM/SIGINT or when the stop file appears, and writes
``{"records": [[t_start, t_end, ok, served_by_or_error], ...], "keepalive": {...}, "rst": {...}}``
with ``time.monotonic()`` times; CLOCK_MONOTONIC is shared by all namespaces, so records line up with
the lab's own events. ``Request``, ``load_records``, ``summarize`` and ``first_served_by`` do no I/O
beyond reading that file.

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

import argparse
import asyncio
import contextlib
import errno
import itertools
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from failover.lab.netns import stop_group
from failover.lab.rstwatch import RstCounter

if TYPE_CHECKING:
    from failover.lab.netns import Lab

MAX_DURATION_S = 900.0
MAX_REQUESTS = 200_000
MAX_IN_FLIGHT = 8_000
_READ_LIMIT = 64 * 1024
_STOP_FILE_POLL_S = 0.02


# --- pure: records and their summary ------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    start: float
    end: float
    ok: bool
    served_by: str  # the body (who served) when ok, else the error


def load_records(path: Path) -> tuple[list[Request], dict[str, int]]:
    data = json.loads(Path(path).read_text())
    records = [Request(float(s), float(e), bool(ok), str(who)) for s, e, ok, who in data["records"]]
    keepalive = {str(k): int(v) for k, v in data.get("keepalive", {}).items()}
    return records, keepalive


def load_rsts(path: Path) -> dict[str, Any]:
    """The load's RST count: ``frames`` (None when it could not count, ``error`` says why), ``drops``,
    ``kept`` ([at, source, source_port, dest_port, flags, source MAC] each)."""
    rst: dict[str, Any] = json.loads(Path(path).read_text()).get("rst") or {}
    return {"frames": None, "drops": 0, "kept": [], "error": "not counted", **rst}


def rsts_between(rst: dict[str, Any], since: float, until: float) -> int | None:
    """RSTs counted in [since, until] (monotonic), None when the load did not count them."""
    if rst.get("frames") is None:
        return None
    return sum(1 for at, *_ in rst.get("kept", []) if since <= float(at) <= until)


@dataclass(frozen=True)
class LoadSummary:
    requests: int
    failed: int
    stalled_over_1s: int
    max_gap_ms: float
    served_by: dict[str, int]


def summarize(
    records: Sequence[Request], since: float | None = None, until: float | None = None
) -> LoadSummary:
    """Requests started in [since, until]; the gap is between consecutive successful response ends."""
    window = [
        r for r in records if (since is None or r.start >= since) and (until is None or r.start <= until)
    ]
    ok = [r for r in window if r.ok]
    ends = sorted(r.end for r in ok)
    max_gap = max((b - a for a, b in itertools.pairwise(ends)), default=0.0)
    return LoadSummary(
        requests=len(window),
        failed=len(window) - len(ok),
        stalled_over_1s=sum(1 for r in ok if r.end - r.start >= 1.0),
        max_gap_ms=max_gap * 1000.0,
        served_by=dict(Counter(r.served_by for r in ok)),
    )


FAILURE_KINDS = ("reset", "timeout", "refused", "other")


def failure_kind(error: str) -> str:
    """What a failed request's recorded error was, in the words an operator uses: reset (the connection
    was torn down under it), timeout (no answer in time), refused (RST to the SYN), or other."""
    if error == "timeout":
        return "timeout"
    if error.startswith("ConnectionRefusedError"):
        return "refused"
    if error.startswith(("ConnectionResetError", "ConnectionAbortedError", "BrokenPipeError")):
        return "reset"
    if error.startswith(("IncompleteReadError", "TruncatedResponse")):
        return "reset"  # the connection ended before the response did
    return "other"


def first_served_by(records: Sequence[Request], who: str, after: float) -> Request | None:
    """The first successful request served by ``who`` that ended after ``after`` (by end time)."""
    hits = [r for r in records if r.ok and r.served_by == who and r.end > after]
    return min(hits, key=lambda r: r.end, default=None)


# --- the load itself (asyncio, runs inside the client namespace) --------------------------------------


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


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class TruncatedResponse(Exception):
    """The connection ended inside a response (its head, or fewer body bytes than Content-Length)."""


class ClosedBeforeResponse(Exception):
    """EOF after the request went out and before any byte of the response."""


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return None


def _parse_response(raw: bytes) -> tuple[int, str]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not raw:
        raise ClosedBeforeResponse("no response")
    if not sep:
        raise TruncatedResponse(f"{len(raw)} bytes of a response head")
    status_line = head.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/"):
        raise ValueError(f"bad status line {head[:40]!r}")
    length = _content_length(head)
    if length is not None and len(body) < length:
        raise TruncatedResponse(f"{len(body)} of {length} body bytes")
    return int(status_line[1]), body.decode(errors="replace").strip()


def error_name(exc: BaseException) -> str:
    """The exception's type, with the errno's name for an OSError (EHOSTUNREACH tells more than OSError)."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    code = exc.errno if isinstance(exc, OSError) else None
    if code:
        return f"{type(exc).__name__}({errno.errorcode.get(code, code)})"
    return type(exc).__name__


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


def _close(conn: Connection | None) -> Connection | None:
    """Close ``conn`` if there is one; returns None, the connection to use next."""
    if conn is not None:
        conn[1].close()
    return None


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """One GET on a keep-alive connection; whether the server keeps the connection open after it."""
    writer.write(b"GET / HTTP/1.1\r\nHost: lab\r\n\r\n")
    await writer.drain()
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            raise ClosedBeforeResponse("EOF before any response byte") from exc
        raise TruncatedResponse(f"{len(exc.partial)} bytes of a response head") from exc
    status = head.split(b"\r\n", 1)[0].split()
    if len(status) < 2 or not status[0].startswith(b"HTTP/"):
        raise ValueError(f"bad status line {head[:40]!r}")
    length = _content_length(head) or 0
    try:
        if length:
            await reader.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        raise TruncatedResponse(f"{len(exc.partial)} of {length} body bytes") from exc
    if status[1] != b"200":
        raise ValueError(f"http {status[1].decode(errors='replace')}")
    return b"connection: close" not in head.lower()


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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m failover.lab.client", description=__doc__.split("\n")[0])
    p.add_argument("--target", required=True)
    p.add_argument("--port", type=int, default=80)
    p.add_argument("--interval-ms", type=float, default=5.0)
    p.add_argument("--timeout-ms", type=float, default=2000.0)
    p.add_argument("--duration-s", type=float, default=30.0)
    p.add_argument("--max-requests", type=int, default=20_000)
    p.add_argument(
        "--keepalive-interval-ms", type=float, action="append", default=None,
        help="one keep-alive connection asking this often; repeatable (default: one, every 50 ms)",
    )  # fmt: skip
    p.add_argument(
        "--rsts-from", action="append", default=None,
        help="count TCP RSTs from this address reaching the namespace; repeatable (default: --target)",
    )  # fmt: skip
    p.add_argument("--no-rst-count", action="store_true", help="count no RSTs (needs no CAP_NET_RAW)")
    p.add_argument("--no-keepalive", action="store_true", help="no keep-alive connection, new ones only")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--stop-file", type=Path, default=None)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    keepalive_ms = [] if args.no_keepalive else args.keepalive_interval_ms or [50.0]
    for name, value in (("interval_ms", args.interval_ms), ("timeout_ms", args.timeout_ms)):
        if value <= 0:
            raise SystemExit(f"--{name.replace('_', '-')} must be > 0")
    if any(ms <= 0 for ms in keepalive_ms):
        raise SystemExit("--keepalive-interval-ms must be > 0")
    rsts_from = () if args.no_rst_count else tuple(args.rsts_from or [args.target])
    opts = LoadOptions(
        target=args.target,
        port=args.port,
        interval_s=args.interval_ms / 1000.0,
        timeout_s=args.timeout_ms / 1000.0,
        duration_s=max(0.0, min(args.duration_s, MAX_DURATION_S)),
        max_requests=max(0, min(args.max_requests, MAX_REQUESTS)),
        keepalive_intervals_s=tuple(ms / 1000.0 for ms in keepalive_ms),
        stop_file=args.stop_file,
        rsts_from=rsts_from,
    )
    result = run_load(opts, args.out)
    failed = sum(1 for r in result["records"] if not r[2])
    print(
        f"done requests={len(result['records'])} failed={failed} keepalive={result['keepalive']} "
        f"rsts={result['rst'].get('frames')}",
        flush=True,
    )
    return 0


# --- orchestration from the lab side ------------------------------------------------------------------


def start_reporting(
    lab: Lab, host: str, argv: Sequence[str], stderr_path: Path, word: str, timeout: float
) -> tuple[subprocess.Popen[bytes], float | None]:
    """Start ``argv`` (a module of this package) in host's namespace and wait, at most ``timeout``, for
    its first line ``<word> <monotonic time>``; returns the process and that time (None if it never came:
    the caller stops the process and says why)."""
    package_root = str(Path(__file__).resolve().parents[2])
    paths = [package_root, *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    with stderr_path.open("wb") as err:
        proc = lab.popen(host, argv, stdout=subprocess.PIPE, stderr=err, env=env)
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    deadline = time.monotonic() + timeout
    buf = b""
    for _ in range(int(timeout / 0.01) + 1):
        with contextlib.suppress(BlockingIOError):
            buf += proc.stdout.read() or b""
        if b"\n" in buf:
            said, _, stamp = buf.split(b"\n", 1)[0].decode().partition(" ")
            return proc, float(stamp) if said == word else None
        if proc.poll() is not None or time.monotonic() >= deadline:
            break
        time.sleep(0.01)
    return proc, None


class ClientLoad:
    """The load as a process in one lab host's namespace; its files live in a fresh dir under workdir."""

    def __init__(
        self,
        lab: Lab,
        host: str,
        target: str,
        workdir: Path,
        *,
        port: int = 80,
        interval_ms: float = 5.0,
        timeout_ms: float = 2000.0,
        duration_s: float = 30.0,
        max_requests: int = 20_000,
        keepalive_interval_ms: float | Sequence[float] = 50.0,
        rsts_from: Sequence[str] | None = None,
    ) -> None:
        """``keepalive_interval_ms``: one keep-alive connection per value (``()``: none); ``rsts_from``: the
        addresses whose RSTs the load counts in its namespace (None: the target; empty: none)."""
        self.lab = lab
        self.host = host
        self.target = target
        Path(workdir).mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix=f"load-{host}-", dir=workdir)).resolve()
        self.out = self.dir / "load.json"
        self.stop_file = self.dir / "stop"
        self.stderr_path = self.dir / "stderr.log"
        self.timeout_s = timeout_ms / 1000.0
        self.argv = [
            sys.executable, "-m", "failover.lab.client",
            "--target", target, "--port", str(port),
            "--interval-ms", str(interval_ms), "--timeout-ms", str(timeout_ms),
            "--duration-s", str(duration_s), "--max-requests", str(max_requests),
            "--out", str(self.out), "--stop-file", str(self.stop_file),
        ]  # fmt: skip
        intervals = (
            [keepalive_interval_ms]
            if isinstance(keepalive_interval_ms, float | int)
            else keepalive_interval_ms
        )
        for ms in intervals:
            self.argv += ["--keepalive-interval-ms", str(ms)]
        if not intervals:
            self.argv.append("--no-keepalive")
        sources = [target] if rsts_from is None else list(rsts_from)
        self.argv += [arg for source in sources for arg in ("--rsts-from", source)] or ["--no-rst-count"]
        self.started_at: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, ready_timeout: float = 10.0) -> float:
        """Start the load and return once it is issuing requests; returns its monotonic start time."""
        proc, stamp = start_reporting(
            self.lab, self.host, self.argv, self.stderr_path, "ready", ready_timeout
        )
        if stamp is None:
            self._reap(proc, ())
            raise RuntimeError(f"client load on {self.host} did not start:\n{self._stderr_tail()}")
        self._proc, self.started_at = proc, stamp
        return stamp

    def stop(self) -> Path:
        """Touch the stop file, wait (bounded) for the results, return the out path."""
        self.stop_file.touch()
        proc, self._proc = self._proc, None
        if proc is not None:
            # In-flight requests may take up to the timeout after the stop file is seen.
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=self.timeout_s + 5.0)
            self._reap(proc, (signal.SIGTERM,))
        if not self.out.exists():
            raise RuntimeError(f"client load on {self.host} wrote no results:\n{self._stderr_tail()}")
        return self.out

    def records(self) -> list[Request]:
        return load_records(self.out)[0]

    def keepalive(self) -> dict[str, int]:
        return load_records(self.out)[1]

    def keepalive_by_interval(self) -> dict[str, dict[str, int]]:
        data = json.loads(self.out.read_text())
        by_interval: dict[str, dict[str, int]] = data.get("keepalive_by_interval", {})
        return by_interval

    def rsts(self) -> dict[str, Any]:
        return load_rsts(self.out)

    def _reap(self, proc: subprocess.Popen[bytes], signals: Sequence[signal.Signals]) -> None:
        stop_group(proc, signals, self.timeout_s + 3.0)
        if proc.stdout is not None:
            proc.stdout.close()

    def _stderr_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.stderr_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(no stderr: {exc})"


if __name__ == "__main__":
    raise SystemExit(main())
