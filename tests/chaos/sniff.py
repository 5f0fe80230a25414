"""A bounded AF_PACKET sniffer for the chaos tests, run inside the lab's bridge namespace.

``python -m tests.chaos.sniff --out FILE --duration S [--arp] [--udp-port N] [--max N]`` records every
ARP frame (op, sender, target) and/or the UDP payloads to one port that enter the bridge through one of
its ports, as JSON lines with CLOCK_MONOTONIC times (shared by every namespace, so they line up with the
agents' events). Frames a port sends out (PACKET_OUTGOING) are skipped: each frame is seen once, where
it entered. It stops at the duration, the frame cap or SIGTERM, and writes each record as it comes.
``--ask IFACE VIP SRC_IP SRC_MAC --interval S --duration S`` instead broadcasts who-has for the VIP (run
in the client's namespace), so the sniffer has requests whose answers it can attribute.
"""

from __future__ import annotations

import argparse
import json
import select
import signal
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
HARD_MAX_S = 900.0


def _mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def _arp(frame: bytes) -> dict[str, object] | None:
    if len(frame) < 42 or frame[12:14] != b"\x08\x06":
        return None
    op = struct.unpack("!H", frame[20:22])[0]
    return {
        "kind": "arp",
        "op": op,
        "hwsrc": _mac(frame[22:28]),
        "psrc": socket.inet_ntoa(frame[28:32]),
        "hwdst": _mac(frame[32:38]),
        "pdst": socket.inet_ntoa(frame[38:42]),
    }


def _udp(frame: bytes, port: int) -> dict[str, object] | None:
    if len(frame) < 42 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
        return None
    ihl = (frame[14] & 0x0F) * 4
    udp = 14 + ihl
    sport, dport, length = struct.unpack("!HHH", frame[udp : udp + 6])
    if dport != port:
        return None
    payload = frame[udp + 8 : udp + length]
    return {
        "kind": "udp",
        "src": socket.inet_ntoa(frame[26:30]),
        "dst": socket.inet_ntoa(frame[30:34]),
        "sport": sport,
        "payload": payload.hex(),
    }


def ask(interface: str, vip: str, src_ip: str, src_mac: str, interval: float, duration: float) -> int:
    """Broadcast who-has for vip every interval (a client that asks often), until the duration."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind((interface, 0))
    mac = bytes.fromhex(src_mac.replace(":", ""))
    frame = (
        b"\xff" * 6
        + mac
        + b"\x08\x06"
        + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)
        + mac
        + socket.inet_aton(src_ip)
        + b"\x00" * 6
        + socket.inet_aton(vip)
    )
    deadline = time.monotonic() + min(duration, HARD_MAX_S)
    sent = 0
    while time.monotonic() < deadline:
        sock.send(frame)
        sent += 1
        time.sleep(interval)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ask", nargs=4, metavar=("IFACE", "VIP", "SRC_IP", "SRC_MAC"))
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--out", default="")
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--arp", action="store_true")
    parser.add_argument("--udp-port", type=int, default=0)
    parser.add_argument("--max", type=int, default=100_000)
    args = parser.parse_args(argv)
    if args.ask:
        return ask(*args.ask, interval=args.interval, duration=args.duration)
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    deadline = time.monotonic() + min(args.duration, HARD_MAX_S)
    seen = 0
    with open(args.out, "w", buffering=1) as out:
        out.write(json.dumps({"kind": "ready", "t": time.monotonic()}) + "\n")
        while not stop and seen < args.max and time.monotonic() < deadline:
            ready, _, _ = select.select([sock], [], [], 0.1)
            if not ready:
                continue
            frame, addr = sock.recvfrom(65535)
            ifname, pkttype = addr[0], addr[2]
            if pkttype == PACKET_OUTGOING or not ifname.startswith("v"):
                continue
            record = _arp(frame) if args.arp else None
            if record is None and args.udp_port:
                record = _udp(frame, args.udp_port)
            if record is None:
                continue
            record.update(t=time.monotonic(), port=ifname)
            out.write(json.dumps(record) + "\n")
            seen += 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
