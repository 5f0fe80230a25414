"""The agent's access-log watch on a real file and a real event loop: a burst of log never holds the loop.

A web server under load can append megabytes between two polls (a backlog after a stall, a busy site). The
watch reads and judges it a bounded slice at a turn of the loop, the next slice at once, so the agent's
timers (its heartbeats) keep running while every line is still counted.
"""

from __future__ import annotations

import asyncio
import itertools
from ipaddress import ip_address
from pathlib import Path

from failover.accesslog import LogFollower, LogFormat
from failover.confirm import FOLLOW_BYTES, LogWatcher
from failover.protocol import events
from failover.protocol.setup import Timing

VIP = "203.0.113.10"
LINE = (
    '203.0.113.50 - - [02/Dec/2026:02:10:00 +0000] "GET /some/page?x={n} HTTP/1.1" 200 612 "-" '
    f'"curl/8.5.0" {VIP}\n'
)


def test_the_follower_says_when_a_poll_stopped_at_its_byte_budget(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    path.write_text("")
    follower = LogFollower(path, LogFormat.named("combined_server"), max_bytes_per_poll=4096)
    follower.start_at_end()
    with path.open("a") as out:
        out.write("".join(LINE.format(n=n) for n in range(200)))
    polls = []
    while True:
        entries = follower.poll()
        polls.append((len(entries), follower.behind))
        if not follower.behind:
            break
    assert sum(n for n, _ in polls) == 200
    assert all(behind for _, behind in polls[:-1]) and len(polls) >= 200 * len(LINE) // 4096
    assert follower.stats.bytes_read == path.stat().st_size


def test_a_multi_mib_burst_is_counted_whole_while_the_loops_timers_keep_running(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    path.write_text("")
    burst = "".join(LINE.format(n=n) for n in range(40_000))  # ~4.3 MiB
    lines = burst.count("\n")

    async def main() -> tuple[list[events.TrafficSeen], list[float]]:
        loop = asyncio.get_running_loop()
        reports: list[events.TrafficSeen] = []
        ticks: list[float] = []
        watcher = LogWatcher(
            cluster="lab",
            vip=ip_address(VIP),
            access_log=path,
            log_format="combined_server",  # the destination is in the log: no kernel witness (nft) asked
            exclude=("203.0.113.11", "203.0.113.12"),
            service_port=80,
            report=reports.append,
            spawn=asyncio.create_task,
            now=loop.time,
        )
        watcher.start(1, None)

        def tick() -> None:  # a heartbeat-like timer, due every 5 ms
            ticks.append(loop.time())
            if not reports or reports[-1].requests < lines:
                loop.call_later(0.005, tick)

        with path.open("a") as out:
            out.write(burst)
        loop.call_soon(tick)
        for _ in range(600):
            if reports and reports[-1].requests >= lines:
                break
            await asyncio.sleep(0.05)
        watcher.stop(1)
        return reports, ticks

    reports, ticks = asyncio.run(main())
    assert reports[-1].requests == lines, reports[-1]
    # Read and judged in slices of FOLLOW_BYTES, one report each, not in a few long polls.
    assert len(reports) >= len(burst) // FOLLOW_BYTES, len(reports)
    # The loop was never held for as long as the peer waits before it calls a holder silent.
    longest = max(b - a for a, b in itertools.pairwise(ticks))
    assert longest < Timing().dead_after, f"the loop was held {longest * 1000:.0f} ms"
