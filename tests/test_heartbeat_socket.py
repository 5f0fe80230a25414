"""The heartbeat socket on loopback: a queued burst is read in bounded batches, each datagram whole."""

from __future__ import annotations

import asyncio
import itertools
import socket
from ipaddress import ip_address
from pathlib import Path

import pytest

from failover import heartbeat_socket
from failover.heartbeat_socket import BATCH, HeartbeatSocket

LOOPBACK = ip_address("127.0.0.1")


def test_a_queued_burst_is_read_a_batch_per_turn_of_the_loop_with_timers_in_between() -> None:
    burst = 5 * BATCH + 7

    async def main() -> tuple[list[bytes], list[int]]:
        got: list[bytes] = []
        seen_by_timer: list[int] = []
        hb = HeartbeatSocket.open(LOOPBACK, 0, lambda data, source: got.append(data))
        port = hb._sock.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
            for i in range(burst):
                out.sendto(i.to_bytes(4, "big"), ("127.0.0.1", port))
        loop = asyncio.get_running_loop()

        def tick() -> None:  # a timer due all along: it runs between batches, not after the burst
            seen_by_timer.append(len(got))
            if len(got) < burst:
                loop.call_soon(tick)

        loop.call_soon(tick)
        for _ in range(100):
            if len(got) == burst:
                break
            await asyncio.sleep(0.01)
        hb.close()
        return got, seen_by_timer

    got, seen_by_timer = asyncio.run(main())
    assert [int.from_bytes(d, "big") for d in got] == list(range(burst))
    # Never more than one batch between two runs of the timer.
    steps = [b - a for a, b in itertools.pairwise(seen_by_timer)]
    assert steps and max(steps) <= BATCH, seen_by_timer


def test_an_oversized_datagram_reaches_the_receiver_whole_with_its_source() -> None:
    big = b"x" * 9000

    async def main() -> list[tuple[bytes, str]]:
        got: list[tuple[bytes, str]] = []
        hb = HeartbeatSocket.open(LOOPBACK, 0, lambda data, source: got.append((data, source)))
        port = hb._sock.getsockname()[1]
        hb.sendto(big, ("127.0.0.1", port))
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.01)
        hb.close()
        hb.sendto(b"after close", ("127.0.0.1", port))  # nothing, no error: the agent is stopping
        hb.close()
        return got

    assert asyncio.run(main()) == [(big, "127.0.0.1")]


def test_the_receive_buffer_is_sized_and_a_taken_port_is_an_oserror() -> None:
    async def main() -> None:
        hb = HeartbeatSocket.open(LOOPBACK, 0, lambda data, source: None)
        try:
            # SO_RCVBUFFORCE as root, else as much of it as rmem_max allows (the kernel reports double).
            assert hb._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= min(
                heartbeat_socket.RECEIVE_BUFFER, 2 * int(Path("/proc/sys/net/core/rmem_max").read_text())
            )
            port = hb._sock.getsockname()[1]
            with pytest.raises(OSError):
                HeartbeatSocket.open(LOOPBACK, port, lambda data, source: None)
        finally:
            hb.close()

    asyncio.run(main())
