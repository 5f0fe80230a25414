"""Two small tools for the handoff tests, each run inside the client's namespace.

``python -m tests.integration.handoff_probe sniff VIP... --duration S`` counts, on eth0, the TCP frames
that come from one of the VIPs and how many of them carry RST, until SIGTERM or the duration; it prints
``ready`` once its packet socket is open, and the counts as one JSON line when it stops.

``python -m tests.integration.handoff_probe keepalive VIP [--port N]`` opens one HTTP/1.1 connection to
VIP:80 (from source port N, if given) and,
for each line on stdin, sends one request on it and prints ``{"body": ...}`` or ``{"error": ...}`` (the
body names the host that served it). It stops at end of input or at the first error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import select
import signal
import socket
import sys
import time
from ipaddress import ip_address
from typing import Any

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
HARD_MAX_S = 300.0
TCP_RST = 0x04


def tcp_from(frame: bytes) -> tuple[str, int] | None:
    """(source address, TCP flags) of an Ethernet frame carrying TCP over IPv4 or IPv6, else None."""
    ethertype = frame[12:14]
    if ethertype == b"\x08\x00" and len(frame) >= 34 and frame[23] == 6:
        tcp = 14 + (frame[14] & 0x0F) * 4
        if len(frame) >= tcp + 14:
            return socket.inet_ntop(socket.AF_INET, frame[26:30]), frame[tcp + 13]
    if ethertype == b"\x86\xdd" and len(frame) >= 74 and frame[20] == 6:  # no extension headers here
        return socket.inet_ntop(socket.AF_INET6, frame[22:38]), frame[54 + 13]
    return None


def sniff(vips: list[str], duration: float) -> int:
    wanted = {str(ip_address(v)) for v in vips}
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("eth0", 0))
    print("ready", flush=True)
    counts = {"tcp": 0, "rst": 0}

    def count(frame: bytes, addr: tuple[Any, ...]) -> None:
        seen = tcp_from(frame) if addr[2] != PACKET_OUTGOING else None
        if seen is not None and seen[0] in wanted:
            counts["tcp"] += 1
            counts["rst"] += bool(seen[1] & TCP_RST)

    deadline = time.monotonic() + min(duration, HARD_MAX_S)
    while not stop and time.monotonic() < deadline:
        ready, _, _ = select.select([sock], [], [], 0.1)
        if ready:
            count(*sock.recvfrom(65535))
    # What is queued when told to stop was seen before it: a busy sniffer lags behind the client,
    # whose reset is already in this queue when its error tells the test to stop (CI counted 0 RSTs).
    sock.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while True:
            count(*sock.recvfrom(65535))
    print(json.dumps(counts), flush=True)
    return 0


def _response(sock: socket.socket) -> str:
    data = b""
    while b"\r\n\r\n" not in data:
        data += _recv(sock)
    head, body = data.split(b"\r\n\r\n", 1)
    fields = dict(line.split(b":", 1) for line in head.split(b"\r\n")[1:])
    length = int({name.strip().lower(): value for name, value in fields.items()}[b"content-length"])
    while len(body) < length:
        body += _recv(sock)
    return body.decode().strip()


def _recv(sock: socket.socket) -> bytes:
    chunk = sock.recv(4096)
    if not chunk:
        raise ConnectionAbortedError("closed by the server")
    return chunk


def keepalive(vip: str, port: int = 0) -> int:
    family = socket.AF_INET6 if ip_address(vip).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(3.0)
    if port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
    sock.connect((vip, 80))
    for _ in sys.stdin:
        try:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: lab\r\n\r\n")
            print(json.dumps({"body": _response(sock)}), flush=True)
        except (OSError, KeyError) as err:
            print(json.dumps({"error": type(err).__name__}), flush=True)
            return 1
    sock.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="tool", required=True)
    counting = sub.add_parser("sniff")
    counting.add_argument("vips", nargs="+")
    counting.add_argument("--duration", type=float, default=60.0)
    asking = sub.add_parser("keepalive")
    asking.add_argument("vip")
    asking.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    if args.tool == "sniff":
        return sniff(args.vips, args.duration)
    return keepalive(args.vip, args.port)


if __name__ == "__main__":
    sys.exit(main())
