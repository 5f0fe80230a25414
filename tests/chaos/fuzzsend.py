"""Generates and sends hostile datagrams to an agent's heartbeat port, at a bounded rate.

``python -m tests.chaos.fuzzsend --target IP --port N --key FILE --count N --rate N --seed N
--kinds a,b,...`` sends `count` datagrams, spread over the kinds, and prints a JSON object of how many of
each it sent. Every kind must be rejected by a correct agent:

- ``random``: random bytes, 0-1400 of them;  ``magic``: random bytes behind a valid magic and version;
- ``version``: a valid-looking head with another version byte;  ``oversized``: 1401-8000 bytes;
- ``wrong-key``: well-formed messages signed with another key;  ``bitflip``: real-key messages with one
  bit flipped after signing;
- ``cluster``: real key, another cluster's name;  ``sender``: real key, the receiver's own name or a
  stranger's;  ``replay``: real key, the peer's name, an old boot and old epochs (sorts before the
  peer's live stream);  ``nested``: real key, JSON nested deeper than the parser's recursion limit;
- ``hex:FILE``: each line of FILE (hex), sent as it is (captured real datagrams, replayed).

``--bind ADDR`` sends from that address (run in the peer's namespace with the peer's address, the
datagrams reach the decoder; from any other address the agent drops them before any crypto).

Bounded: at most 2,000,000 datagrams and 900 s.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import random
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

MAGIC = b"FO\x01"
MAX_COUNT = 2_000_000
MAX_SECONDS = 900.0


def _sign(key: bytes, doc: object) -> bytes:
    head = MAGIC + json.dumps(doc, separators=(",", ":")).encode()
    return head + hmac.new(key, head, hashlib.sha256).digest()


def _message(rng: random.Random, cluster: str, sender: str, boot: int) -> dict[str, object]:
    kind, body = rng.choice(
        [
            ("heartbeat", {"epoch": 0, "holds_vip": True, "held_epoch": 9_999_999, "digest": "0" * 64}),
            ("prepare", {"epoch": 1, "move": "swap", "digest": "0" * 64, "drain_ms": 0.0}),
            ("released", {"epoch": 1, "release_ms": 1.0}),
            ("claimed", {"epoch": 1, "turnaround_ms": 1.0, "claim_ms": 1.0}),
            ("hand-back", {"epoch": 1, "reason": "fuzz"}),
            ("swap-request", {"epoch": 2, "move": "swap"}),
            ("abort", {"epoch": 1, "reason": "fuzz"}),
        ]
    )
    return {"c": cluster, "s": sender, "b": boot, "n": rng.randrange(1, 1 << 40), "k": kind, "m": body}


def generators(args: argparse.Namespace, rng: random.Random) -> dict[str, Callable[[], bytes]]:
    key = Path(args.key).read_bytes()
    other = bytes(rng.randrange(256) for _ in range(len(key)))
    peer, me = args.peer, args.me

    def bitflip() -> bytes:
        data = bytearray(_sign(key, _message(rng, args.cluster, peer, 1)))
        bit = rng.randrange(len(data) * 8)
        data[bit // 8] ^= 1 << (bit % 8)
        return bytes(data)

    return {
        "random": lambda: rng.randbytes(rng.randrange(0, 1401)),
        "magic": lambda: MAGIC + rng.randbytes(rng.randrange(32, 1397)),
        "version": lambda: b"FO" + bytes([rng.choice([0, 2, 255])]) + rng.randbytes(rng.randrange(32, 600)),
        "oversized": lambda: MAGIC + rng.randbytes(rng.randrange(1398, 8000)),
        "wrong-key": lambda: _sign(other, _message(rng, args.cluster, peer, time.time_ns())),
        "bitflip": bitflip,
        "cluster": lambda: _sign(key, _message(rng, args.cluster + "-other", peer, time.time_ns())),
        "sender": lambda: _sign(
            key, _message(rng, args.cluster, rng.choice([me, "mallory"]), time.time_ns())
        ),
        "replay": lambda: _sign(key, _message(rng, args.cluster, peer, rng.randrange(0, 1_000_000))),
        "nested": lambda: _nested(key),
    }


def _nested(key: bytes) -> bytes:
    head = MAGIC + b"[" * 1300
    return head + hmac.new(key, head, hashlib.sha256).digest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    parser.add_argument("--port", type=int, default=5405)
    parser.add_argument("--key", required=True)
    parser.add_argument("--cluster", default="lab")
    parser.add_argument("--peer", default="backup", help="the name the target hears from")
    parser.add_argument("--me", default="live", help="the target's own name")
    parser.add_argument("--bind", default="", help="the source address to send from")
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=8000.0, help="datagrams per second")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--kinds", default="random,magic,version,oversized,wrong-key,bitflip,cluster,sender,replay"
    )
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    count = min(args.count, MAX_COUNT)
    makers = generators(args, rng)
    plan: list[tuple[str, Callable[[], bytes]]] = []
    for kind in args.kinds.split(","):
        if kind.startswith("hex:"):
            lines = [bytes.fromhex(x) for x in Path(kind[4:]).read_text().split()]
            plan.append(("hex", lambda lines=lines: rng.choice(lines)))
        else:
            plan.append((kind, makers[kind]))
    sent: Counter[str] = Counter()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if args.bind:
        sock.bind((args.bind, 0))
    started = time.monotonic()
    for i in range(count):
        kind, make = plan[i % len(plan)]
        sock.sendto(make(), (args.target, args.port))
        sent[kind] += 1
        if i % 50 == 49:
            ahead = started + (i + 1) / args.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            if time.monotonic() - started > MAX_SECONDS:
                break
    print(json.dumps({"sent": dict(sent), "seconds": round(time.monotonic() - started, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
