"""How the lab client counts each way a keep-alive connection ends, against a scripted server on loopback.

The server answers each request on each connection as its script says: a keep-alive response, one with
``Connection: close``, a response then a FIN while idle, no answer at all (close after reading the
request), a body cut short, or an RST (SO_LINGER 0). No root, real sockets on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Sequence

import pytest

from failover.lab.client import (
    KEEPALIVE_COUNTS,
    ClosedBeforeResponse,
    Connection,
    LoadOptions,
    TruncatedResponse,
    _Load,
    _parse_response,
    failure_kind,
    reusable,
)

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nlive\n"
CLOSE = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nlive\n"
CUT = b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nlive\n"  # 5 of its 50 body bytes
HEAD_CUT = b"HTTP/1.1 200 OK\r\nContent-"


async def serve(scripts: Sequence[Sequence[str]]) -> tuple[asyncio.Server, int]:
    """Connection i follows scripts[i] (then plain keep-alive answers): one action per request."""
    connections = iter(scripts)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        script = list(next(connections, []))
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                action = script.pop(0) if script else "ok"
                if action == "no-answer":
                    break
                if action == "reset":
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    break
                writer.write(
                    {"ok": OK, "close-header": CLOSE, "fin": OK, "cut": CUT, "head-cut": HEAD_CUT}[action]
                )
                await writer.drain()
                if action in ("close-header", "cut", "head-cut", "fin"):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def drive(scripts: Sequence[Sequence[str]], requests: int) -> dict[str, int]:
    """``requests`` keep-alive requests, 50 ms apart (time for a FIN to arrive while idle)."""
    server, port = await serve(scripts)
    load = _Load(LoadOptions(target="127.0.0.1", port=port, timeout_s=2.0))
    counts = dict.fromkeys(KEEPALIVE_COUNTS, 0)
    conn: Connection | None = None
    async with server:
        for _ in range(requests):
            conn = await load.keepalive_request(reusable(conn, counts), counts)
            await asyncio.sleep(0.05)
        if conn is not None:
            conn[1].close()
    return {k: v for k, v in counts.items() if v}


@pytest.mark.parametrize(
    ("scripts", "requests", "expected"),
    [
        ([["ok", "ok", "ok"]], 3, {"requests": 3, "connects": 1}),
        # nginx's keepalive_requests cap, or an old worker finishing in-flight: orderly.
        ([["ok", "close-header"], ["ok"]], 3,
         {"requests": 3, "connects": 2, "orderly_closes": 1, "closed_by_header": 1}),
        # A FIN while idle is seen before reuse: orderly, then a fresh connection; no request fails.
        ([["fin"], ["ok"]], 2, {"requests": 2, "connects": 2, "orderly_closes": 1, "closed_while_idle": 1}),
        # The race RFC 9112 section 9.3.1 lets a client retry: reported apart, retried once, not a failure.
        ([["ok", "no-answer"], ["ok"]], 2,
         {"requests": 2, "connects": 2, "closed_before_response": 1, "retried": 1}),
        # No answer on a fresh connection is no retry case: a failure.
        ([["no-answer"]], 1, {"connects": 1, "failed": 1}),
        ([["ok", "cut"]], 2, {"requests": 1, "connects": 1, "resets": 1, "truncated": 1, "failed": 1}),
        ([["head-cut"]], 1, {"connects": 1, "resets": 1, "truncated": 1, "failed": 1}),
        ([["ok", "reset"], ["ok"]], 3, {"requests": 2, "connects": 2, "resets": 1, "failed": 1}),
    ],
    ids=["keep-alive", "connection-close", "idle-fin", "closed-before-response", "no-answer-fresh",
         "truncated", "head-truncated", "reset"],
)  # fmt: skip
def test_keepalive_outcomes(scripts: list[list[str]], requests: int, expected: dict[str, int]) -> None:
    assert asyncio.run(drive(scripts, requests)) == expected


def test_rst_while_idle_is_a_reset_though_the_request_succeeds() -> None:
    async def run() -> dict[str, int]:
        server, port = await serve([["ok"]])
        load = _Load(LoadOptions(target="127.0.0.1", port=port, timeout_s=2.0))
        counts = dict.fromkeys(KEEPALIVE_COUNTS, 0)
        with socket.create_server(("127.0.0.1", 0)) as listener:
            idle = await asyncio.open_connection("127.0.0.1", listener.getsockname()[1])
            accepted, _ = listener.accept()
            accepted.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            accepted.close()  # an RST to the idle client
        await asyncio.sleep(0.05)
        async with server:
            left = await load.keepalive_request(reusable(idle, counts), counts)
            if left is not None:
                left[1].close()
        return {k: v for k, v in counts.items() if v}

    assert asyncio.run(run()) == {"resets": 1, "resets_while_idle": 1, "requests": 1, "connects": 1}


def test_one_shot_responses_are_checked_against_their_length() -> None:
    assert _parse_response(OK) == (200, "live")
    with pytest.raises(TruncatedResponse, match="5 of 50"):
        _parse_response(CUT)
    with pytest.raises(TruncatedResponse, match="head"):
        _parse_response(HEAD_CUT)
    with pytest.raises(ClosedBeforeResponse):
        _parse_response(b"")
    assert failure_kind("TruncatedResponse") == "reset"
