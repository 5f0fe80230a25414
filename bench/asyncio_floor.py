"""The floor under an idle agent's CPU: two bare processes heartbeating each other, nothing else.

Each process runs one event loop with a timer every `--interval-ms` that sends a heartbeat-sized datagram
(268 bytes) to the other over loopback, and a reader that drains its socket: the agent's wake-up pattern
(one timer and one datagram in per interval, at different moments) with no HMAC, no JSON and no
protocol. What it costs is what any asyncio agent with symmetric heartbeats pays on this machine before
doing any work. No root, no namespaces; loopback ports 47001-47002 (or `--port`).

    .venv/bin/python bench/asyncio_floor.py --seconds 30
    .venv/bin/python bench/asyncio_floor.py --seconds 30 --mode thread

`--mode thread` does the same from a thread that waits in poll() on the socket with the next send as its
timeout, the event loop idle beside it: the agent's heartbeat thread (failover/heartbeat_socket.py), with
no work either.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


async def _heartbeat(me: int, peer: int, interval: float, seconds: float) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", me))
    sock.setblocking(False)
    payload = b"x" * 268

    def tick() -> None:
        loop.call_later(interval, tick)
        sock.sendto(payload, ("127.0.0.1", peer))

    def read() -> None:
        for _ in range(64):
            try:
                sock.recvfrom(65536)
            except BlockingIOError:
                return

    loop.add_reader(sock.fileno(), read)
    loop.call_later(interval, tick)
    await asyncio.sleep(seconds)


def _heartbeat_thread(me: int, peer: int, interval: float, seconds: float) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", me))
    sock.setblocking(False)
    payload = b"x" * 268
    poll = select.poll()
    poll.register(sock.fileno(), select.POLLIN)

    def run() -> None:
        due = time.monotonic() + interval
        while True:
            wait = due - time.monotonic()
            if wait <= 0:
                sock.sendto(payload, ("127.0.0.1", peer))
                due = time.monotonic() + interval
                continue
            if poll.poll(math.ceil(wait * 1000)):
                for _ in range(64):
                    try:
                        sock.recvfrom(65536)
                    except BlockingIOError:
                        break

    threading.Thread(target=run, daemon=True).start()
    asyncio.run(asyncio.sleep(seconds))  # the event loop beside it, idle, as the agent's is


def _cpu_ticks(pid: int) -> int:
    rest = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(rest[11]) + int(rest[12])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="CPU window (1 to 600 s)")
    ap.add_argument("--interval-ms", type=int, default=10)
    ap.add_argument("--port", type=int, default=47001, help="first of the two loopback ports")
    ap.add_argument("--mode", choices=("asyncio", "thread"), default="asyncio",
                    help="heartbeats from the event loop, or from a thread waiting in poll()")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    seconds = max(1.0, min(args.seconds, 600.0))
    if args.child:
        if args.mode == "thread":
            _heartbeat_thread(*args.child, args.interval_ms / 1000, seconds + 4)
        else:
            asyncio.run(_heartbeat(*args.child, args.interval_ms / 1000, seconds + 4))
        return 0
    a, b = args.port, args.port + 1
    procs = [subprocess.Popen([sys.executable, __file__, "--seconds", str(seconds), "--interval-ms",
                               str(args.interval_ms), "--mode", args.mode, "--child", str(me), str(peer)])
             for me, peer in ((a, b), (b, a))]
    try:
        time.sleep(2)  # past the interpreter's start
        start = [_cpu_ticks(p.pid) for p in procs]
        began = time.monotonic()
        time.sleep(seconds)
        elapsed = time.monotonic() - began
        used = [(_cpu_ticks(p.pid) - s) / TICKS for p, s in zip(procs, start, strict=True)]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    figures = [round(100 * u / elapsed, 2) for u in used]
    print(f"bare heartbeat pair ({args.mode}), every {args.interval_ms} ms, over {elapsed:.0f} s: "
          f"{figures[0]} / {figures[1]} % of a core")
    if args.json:
        args.json.write_text(json.dumps({"mode": args.mode, "interval_ms": args.interval_ms,
                                         "window_s": round(elapsed, 1), "cpu_percent_of_a_core": figures},
                                        indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
