"""The heartbeat socket on loopback, read by its thread: a queued burst is read in bounded batches with the
deadline looked at between them, each datagram whole; the deadline is kept, moved earlier from another
thread, and an exception on the thread reaches the agent."""

from __future__ import annotations

import itertools
import math
import socket
import threading
import time
from collections.abc import Callable
from ipaddress import ip_address
from pathlib import Path

import pytest

from failover import heartbeat_socket
from failover.heartbeat_socket import BATCH, HeartbeatSocket

LOOPBACK = ip_address("127.0.0.1")


def _open(
    receive: heartbeat_socket.Receiver,
    deadline: Callable[[], float] = lambda: math.inf,
    timer: Callable[[], None] = lambda: None,
    failed: Callable[[BaseException], None] = lambda err: None,
    port: int = 0,
    lock: threading.RLock | None = None,
) -> HeartbeatSocket:
    return HeartbeatSocket.open(LOOPBACK, port, receive, lock=lock or threading.RLock(), deadline=deadline,
                                timer=timer, failed=failed)


def _wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.005)
    return condition()


def test_a_queued_burst_is_read_a_batch_at_a_time_with_the_deadline_looked_at_in_between() -> None:
    burst = 5 * BATCH + 7
    got: list[bytes] = []
    seen_by_timer: list[int] = []
    # A deadline due all along: the timer runs between batches, not after the burst.
    hb = _open(lambda data, source: got.append(data), deadline=lambda: 0.0 if len(got) < burst else math.inf,
               timer=lambda: seen_by_timer.append(len(got)))
    port = hb._sock.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
        for i in range(burst):
            out.sendto(i.to_bytes(4, "big"), ("127.0.0.1", port))
    hb.start()
    assert _wait_for(lambda: len(got) == burst)
    hb.close()
    assert [int.from_bytes(d, "big") for d in got] == list(range(burst))
    steps = [b - a for a, b in itertools.pairwise(seen_by_timer)]
    assert steps and max(steps) <= BATCH, seen_by_timer


def test_an_oversized_datagram_reaches_the_receiver_whole_with_its_source() -> None:
    big = b"x" * 9000
    got: list[tuple[bytes, str]] = []
    hb = _open(lambda data, source: got.append((data, source)))
    hb.start()
    port = hb._sock.getsockname()[1]
    hb.sendto(big, ("127.0.0.1", port))
    assert _wait_for(lambda: bool(got))
    hb.close()
    assert not hb._thread.is_alive()
    hb.sendto(b"after close", ("127.0.0.1", port))  # nothing, no error: the agent is stopping
    hb.close()
    assert got == [(big, "127.0.0.1")]


def test_the_timer_runs_at_its_deadline_and_a_deadline_moved_earlier_wakes_the_thread() -> None:
    lock = threading.RLock()
    due = [time.monotonic() + 0.05]
    fired: list[float] = []

    def timer() -> None:
        fired.append(time.monotonic())
        due[0] = time.monotonic() + 3600.0  # then an hour away

    hb = _open(lambda data, source: None, deadline=lambda: due[0], timer=timer, lock=lock)
    hb.start()
    try:
        assert _wait_for(lambda: len(fired) == 1)
        time.sleep(0.05)  # the thread now waits for the hour
        with lock:
            due[0] = moved = time.monotonic()
            hb.wake_if_before(moved)
        assert _wait_for(lambda: len(fired) == 2, 2.0), "a deadline moved earlier did not wake the thread"
        assert fired[1] >= moved
    finally:
        hb.close()


def test_the_timer_never_runs_before_its_deadline() -> None:
    start = time.monotonic()
    deadlines = [start + 0.02 * i for i in range(1, 6)]
    fired: list[float] = []

    def timer() -> None:
        fired.append(time.monotonic())

    def deadline() -> float:
        return deadlines[len(fired)] if len(fired) < len(deadlines) else math.inf

    hb = _open(lambda data, source: None, deadline=deadline, timer=timer)
    hb.start()
    try:
        assert _wait_for(lambda: len(fired) == 5)
    finally:
        hb.close()
    assert all(f >= d for f, d in zip(fired, deadlines, strict=True)), (fired, deadlines)


def test_an_exception_on_the_thread_reaches_failed_and_ends_the_thread() -> None:
    failures: list[BaseException] = []

    def receive(data: bytes, source: str) -> None:
        raise ValueError("adapter bug")

    hb = _open(receive, failed=failures.append)
    hb.start()
    hb.sendto(b"x", ("127.0.0.1", hb._sock.getsockname()[1]))
    assert _wait_for(lambda: bool(failures))
    assert _wait_for(lambda: not hb._thread.is_alive())
    assert isinstance(failures[0], ValueError)
    hb.close()


def test_the_receive_buffer_is_sized_and_a_taken_port_is_an_oserror() -> None:
    hb = _open(lambda data, source: None)
    try:
        # SO_RCVBUFFORCE as root, else as much of it as rmem_max allows (the kernel reports double).
        assert hb._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= min(
            heartbeat_socket.RECEIVE_BUFFER, 2 * int(Path("/proc/sys/net/core/rmem_max").read_text())
        )
        port = hb._sock.getsockname()[1]
        with pytest.raises(OSError):
            _open(lambda data, source: None, port=port)
    finally:
        hb.close()


def test_each_datagram_and_the_timer_reach_the_agent_under_its_lock() -> None:
    lock = threading.RLock()
    owned: list[bool] = []
    due = [time.monotonic() + 0.02]

    def timer() -> None:
        owned.append(lock._is_owned())  # type: ignore[attr-defined]
        due[0] = math.inf

    hb = _open(lambda data, source: owned.append(lock._is_owned()),  # type: ignore[attr-defined]
               deadline=lambda: due[0], timer=timer, lock=lock)
    hb.start()
    try:
        hb.sendto(b"x", ("127.0.0.1", hb._sock.getsockname()[1]))
        assert _wait_for(lambda: len(owned) == 2)
    finally:
        hb.close()
    assert owned == [True, True]
