"""Zero resets across moves (issue 14): every connection open at a swap finishes cleanly.

Real nginx, real agents, real clients in the lab, the cluster file a user gets. While N swap/unswap pairs
run (``FAILOVER_ZERO_RESET_PAIRS``, 20 by default), the client namespace carries a new connection every
5 ms, a keep-alive connection asking every 10 ms, another idle 5 s between its requests, and a 20 s
rate-limited download started just before the first swap. What is counted is what a client could see:
TCP RSTs from the VIP on the client namespace's packet socket (``lab/rstwatch.py``), every request's
outcome, the download's bytes and checksum.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any

import pytest

from failover.lab.client import ClientLoad, summarize
from failover.lab.cluster import LabCluster
from failover.lab.download import Download
from failover.lab.netns import VIP6
from failover.lab.nginx import DOWNLOAD_BYTES, download_body

from .conftest import CLIENT, VIP_IP

pytestmark = pytest.mark.root

PAIRS = int(os.environ.get("FAILOVER_ZERO_RESET_PAIRS", "20"))
SETTLE_S = 1.0  # load before the first move, between the moves and after the last
KEEPALIVE_MS = (10.0, 5000.0)
NEW_CONNECTION_MS = 5.0
MOVE_BUDGET_S = 30.0  # per move, for the load's bound only; the CLI has its own timeouts


def run_moves(cluster: LabCluster, pairs: int) -> tuple[list[dict[str, Any]], dict[str, Any], ClientLoad]:
    """The pairs under the whole load; returns the moves' outcomes, the download's result, the load."""
    duration_s = min(60.0 + pairs * 2 * MOVE_BUDGET_S, 900.0)
    load = ClientLoad(
        cluster.lab, CLIENT, VIP_IP, cluster.workdir / "client",
        interval_ms=NEW_CONNECTION_MS, duration_s=duration_s,
        max_requests=int(duration_s * 1000.0 / NEW_CONNECTION_MS) + 1000,
        keepalive_interval_ms=KEEPALIVE_MS, rsts_from=[VIP_IP, str(VIP6.ip)],
    )  # fmt: skip
    load.start()
    try:
        time.sleep(SETTLE_S)
        download = Download(cluster.lab, CLIENT, VIP_IP, cluster.workdir / "download", timeout_s=90.0)
        download.start()
        moves: list[dict[str, Any]] = []
        for _ in range(pairs):
            moves.append(cluster.move("swap", via="live"))
            time.sleep(SETTLE_S)
            moves.append(cluster.move("unswap", via="live"))
            time.sleep(SETTLE_S)
        fetched = download.wait()
        time.sleep(SETTLE_S)
    finally:
        load.stop()
    return moves, fetched, load


def figures(moves: list[dict[str, Any]], fetched: dict[str, Any], load: ClientLoad) -> dict[str, Any]:
    records = load.records()
    total = summarize(records)
    keepalive = load.keepalive_by_interval()
    rst = load.rsts()
    started, ended = fetched.get("first_byte_at"), fetched.get("ended")
    drains = sorted(float(m["drain"]["after_s"]) for m in moves if (m.get("drain") or {}).get("after_s"))
    return {
        # How long the old holder drained after each move (min, median, max seconds), and what was left.
        "drain_s": [drains[0], drains[len(drains) // 2], drains[-1]] if drains else None,
        "drain_left": sorted({(m.get("drain") or {}).get("left") for m in moves}, key=str),
        "moves_failed": sum(1 for m in moves if not (m.get("ok") and m.get("exit_code") == 0)),
        "rsts_from_vip": rst["frames"],
        # Each RST seen: ms after the start of the move before it, which host sent it, flags, ports.
        "rst_seen": [
            {
                "after_move_ms": round(
                    (at - max((m["started"] for m in moves if m["started"] <= at), default=at)) * 1000, 1
                ),
                "mac": mac, "flags": flags, "ports": [sport, dport],
            }
            for at, _source, sport, dport, flags, mac in rst["kept"][:10]
        ],
        "rst_capture_drops": rst["drops"],
        "rst_capture_error": rst["error"],
        "new_connection_requests": total.requests,
        "new_connection_failed": total.failed,
        "new_connection_errors": sorted({r.served_by for r in records if not r.ok}),
        "served_by": total.served_by,
        "keepalive": keepalive,
        "keepalive_failed": sum(k["failed"] for k in keepalive.values()),
        "keepalive_truncated": sum(k["truncated"] for k in keepalive.values()),
        "download_error": fetched.get("error"),
        "download_bytes": fetched.get("bytes"),
        "download_served_by": fetched.get("served_by"),
        "download_checksum_ok": fetched.get("sha256") == hashlib.sha256(download_body()).hexdigest(),
        "download_s": None if started is None or ended is None else round(ended - started, 1),
        # The download was in flight across these moves (it exercises the handoff only if > 0).
        "moves_during_download": sum(
            1 for m in moves if started is not None and ended is not None and started < m["started"] < ended
        ),
    }


def test_no_client_sees_a_reset_across_swaps(cluster: LabCluster, record_property: Any) -> None:
    moves, fetched, load = run_moves(cluster, PAIRS)
    seen = figures(moves, fetched, load)
    record_property("figure", json.dumps(seen))
    # What makes the run a test at all: moves done, traffic really moved, each client really ran.
    assert seen["moves_failed"] == 0, [m.get("reason") for m in moves]
    assert seen["rsts_from_vip"] is not None, seen["rst_capture_error"]
    assert seen["served_by"].get("backup", 0) > 0 and seen["served_by"].get("live", 0) > 0, seen
    assert all(k["requests"] > 0 for k in seen["keepalive"].values()), seen["keepalive"]
    assert seen["moves_during_download"] >= 1, seen
    # The promise: nothing a client could see as a reset, a cut-short or a failure.
    assert {
        "rsts_from_vip": seen["rsts_from_vip"],
        "rst_capture_drops": seen["rst_capture_drops"],
        "new_connection_failed": seen["new_connection_failed"],
        "keepalive_failed": seen["keepalive_failed"],
        "keepalive_truncated": seen["keepalive_truncated"],
        "download_error": seen["download_error"],
        "download_bytes": seen["download_bytes"],
        "download_checksum_ok": seen["download_checksum_ok"],
    } == {
        "rsts_from_vip": 0,
        "rst_capture_drops": 0,
        "new_connection_failed": 0,
        "keepalive_failed": 0,
        "keepalive_truncated": 0,
        "download_error": None,
        "download_bytes": DOWNLOAD_BYTES,
        "download_checksum_ok": True,
    }, json.dumps(seen)
    # And the old holder waited for all of it: every drain ended with nothing left open.
    assert seen["drain_left"] == [0], json.dumps(seen)
