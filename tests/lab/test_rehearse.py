"""`failover lab rehearse`: the failed-request report (pure), then the IPv6 and routed rehearsals for real.

The rehearsals run the CLI as a user would (`failover lab rehearse --ipv6 --json`, `--router drop-garp
--json`) and judge the JSON report: both moves ok, 0 failed requests, the neighbour entry that matters
(the client's, or the router's) on the new holder's MAC after each move; behind the router that drops
gratuitous ARP, the router was a straggler the old holder saw and the new holder told.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import Any

import pytest

from failover.lab.client import Request, failure_kind
from failover.lab.netns import ROUTER, _plan_host
from failover.lab.rehearse import client_report, failed_requests, format_report, rsts_by_move

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("nginx") is None, reason="needs root and nginx"
)
LIVE_MAC = _plan_host("x", "live").mac
BACKUP_MAC = _plan_host("x", "backup").mac


# --- failed requests explained (no root) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        ("timeout", "timeout"),
        ("ConnectionResetError(ECONNRESET)", "reset"),
        ("ConnectionResetError", "reset"),
        ("BrokenPipeError(EPIPE)", "reset"),
        ("IncompleteReadError", "reset"),
        ("ConnectionRefusedError(ECONNREFUSED)", "refused"),
        ("OSError(EHOSTUNREACH)", "other"),
        ("http 502", "other"),
        ("ValueError", "other"),
    ],
)
def test_failure_kind(error: str, kind: str) -> None:
    assert failure_kind(error) == kind


def test_failed_requests_belong_to_the_nearest_move() -> None:
    moves = {"swap": {"started": 10.0, "claim_at": 10.5}, "unswap": {"started": 20.0, "claim_at": None}}
    records = [
        Request(9.0, 9.01, True, "live"),
        Request(10.497, 12.497, False, "timeout"),
        Request(19.999, 20.001, False, "ConnectionResetError(ECONNRESET)"),
        Request(20.2, 20.21, True, "live"),
    ]
    failed = failed_requests(records, moves)
    assert failed == [
        {"move": "swap", "at_ms": -3.0, "took_ms": 2000.0, "error": "timeout", "detail": "timeout"},
        # No claim recorded: the time is from the move's start.
        {"move": "unswap", "at_ms": -1.0, "took_ms": 2.0, "error": "reset",
         "detail": "ConnectionResetError(ECONNRESET)"},
    ]  # fmt: skip


def _move(**extra: Any) -> dict[str, Any]:
    return {
        "ok": True, "duration_ms": 40.0, "unserved_ms": 2.0, "max_gap_ms": 9.0, "failed": 0,
        "stalled_over_1s": 0, "confirmed": True, "confirm_ms": 20.0, "reason": "",
        "router_neighbour_mac": None, **extra,
    }  # fmt: skip


def test_format_report_lists_each_failure_and_its_move() -> None:
    report = {
        "ok": False,
        "swap": _move(failed=1),
        "unswap": _move(router_neighbour_mac=LIVE_MAC, router_moved_ms_after_claim=101.5),
        "client": {"requests": 900, "failed": 1, "stalled_over_1s": 0, "max_gap_ms": 2000.0,
                   "keepalive_requests": 90, "keepalive_resets": 0},
        "served_by": {"live": 500, "backup": 400},
        "failed_requests": [
            {"move": "swap", "at_ms": -3.0, "took_ms": 2000.0, "error": "timeout", "detail": "timeout"}
        ],
    }  # fmt: skip
    text = format_report(report)
    assert "900 requests, 1 failed (1 in the swap)," in text
    assert "failed  timeout swap, started -3.0 ms from the claim, took 2000.0 ms (timeout)" in text
    assert f"router's entry for the VIP moved 101.5 ms after the claim, now {LIVE_MAC}" in text


# --- the rehearsals, for real ------------------------------------------------------------------------


def rehearse(*args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "failover", "lab", "rehearse", *args, "--json"],
        capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    try:
        report: dict[str, Any] = json.loads(done.stdout)
    except ValueError:
        pytest.fail(f"no JSON report (exit {done.returncode}):\n{done.stderr[-3000:]}")
    assert done.returncode == (0 if report["ok"] else 1)
    return report


def assert_moves_clean(report: dict[str, Any]) -> None:
    assert report["client"]["failed"] == 0, report["failed_requests"]
    assert report["failed_requests"] == []
    for move, target in (("swap", "backup"), ("unswap", "live")):
        m = report[move]
        assert m["ok"] is True and m["confirmed"] is True, m
        assert m["holder"] == target and m["failed"] == 0, m
    assert report["served_by"]["live"] > 0 and report["served_by"]["backup"] > 0
    assert report["ok"] is True


@needs_root
def test_rehearse_ipv6() -> None:
    report = rehearse("--ipv6")
    assert report["vip"] == "2001:db8:0:1::10/64"
    assert_moves_clean(report)
    assert report["swap"]["client_neighbour_mac"] == BACKUP_MAC and report["swap"]["client_neighbour_moved"]
    assert report["unswap"]["client_neighbour_mac"] == LIVE_MAC and report["unswap"]["client_neighbour_moved"]
    # The client on the segment heard the unsolicited NA: nobody was left to tell.
    assert report["swap"]["stragglers"] == [] and report["unswap"]["stragglers"] == []


@needs_root
def test_rehearse_behind_a_router_that_drops_gratuitous_arp() -> None:
    router_ip = str(_plan_host("x", ROUTER, routed=True).address)
    report = rehearse("--router", "drop-garp")
    assert report["router"] == "drop-garp" and report["vip"] == "203.0.113.10/25"
    assert_moves_clean(report)
    for move, target_mac in (("swap", BACKUP_MAC), ("unswap", LIVE_MAC)):
        m = report[move]
        assert m["router_neighbour_mac"] == target_mac and m["router_neighbour_moved"] is True, m
        assert m["client_neighbour_mac"] is None  # behind the router the client has no entry for the VIP
        # The router ignored the gratuitous ARP, so it kept sending to the old holder, which saw it...
        assert [(s["ip"], s["moved"]) for s in m["stragglers"]] == [(router_ip, True)], m["stragglers"]
        # ...and it moved only after that, at the entry change the report timed from the claim.
        changes = m["router_neighbour_changes"]
        assert changes[0][1] != target_mac and changes[0][2] == "initial", changes
        moved = [c for c in changes if c[1] == target_mac]
        assert moved and moved[0][0] == m["router_moved_ms_after_claim"], changes
        assert m["router_moved_ms_after_claim"] > 0


@needs_root
def test_routed_lab_builds_and_tears_down() -> None:
    from failover.lab.netns import Lab, _list_netns

    lab = Lab(router="drop-garp")
    with lab:
        assert sorted(n for n in _list_netns() if n.startswith(f"{lab.prefix}-")) == sorted(
            f"{lab.prefix}-{h}" for h in ("br", "live", "backup", "client", "router")
        )
        client, live = lab.host("client"), lab.host("live")
        assert (str(client.address), str(client.address6)) == ("203.0.113.228", "2001:db8:0:2::100")
        # Through the router, both families: live answers a connection to a closed port with a reset.
        reach = (
            "import socket, sys\n"
            "try: socket.create_connection((sys.argv[1], 9), 2)\n"
            "except ConnectionRefusedError: print('refused')"
        )
        for target in (str(live.address), str(live.address6)):
            assert lab.run("client", [sys.executable, "-c", reach, target]).stdout.strip() == "refused"
        drop = lab.run("router", ["sysctl", "-n", "net.ipv4.conf.all.drop_gratuitous_arp"]).stdout.strip()
        na = lab.run("router", ["sysctl", "-n", "net.ipv6.conf.eth0.drop_unsolicited_na"]).stdout.strip()
        assert (drop, na) == ("1", "1")
    assert [n for n in _list_netns() if n.startswith(f"{lab.prefix}-")] == []


def test_rsts_belong_to_the_move_they_follow_and_the_report_keeps_outcomes_apart() -> None:
    moves = {"swap": {"started": 10.0}, "unswap": {"started": 20.0}}
    rst = {
        "frames": 4,
        "drops": 0,
        "kept": [
            [5.0, "203.0.113.10", 80, 1, 4],
            [11.2, "203.0.113.10", 80, 2, 4],
            [19.9, "203.0.113.10", 80, 3, 4],
            [25.0, "203.0.113.10", 80, 4, 20],
        ],
    }
    # Before the first move: no move's; from 0.2 s before a move until 0.2 s before the next: that move's.
    assert rsts_by_move(rst, moves, until=30.0) == {"swap": 1, "unswap": 2}
    assert rsts_by_move({"frames": None}, moves, until=30.0) == {"swap": None, "unswap": None}
    keepalive = {
        "requests": 90,
        "resets": 2,
        "truncated": 1,
        "orderly_closes": 3,
        "closed_by_header": 2,
        "closed_while_idle": 1,
        "closed_before_response": 1,
        "failed": 2,
    }
    client = client_report([Request(1.0, 1.01, True, "live")], keepalive, rst)["client"]
    assert (client["keepalive_resets"], client["keepalive_orderly_closes"], client["rsts_from_vip"]) == (
        2,
        3,
        4,
    )
    report = {
        "ok": False,
        "swap": _move(rsts_from_vip=1),
        "unswap": _move(rsts_from_vip=None),
        "client": client,
        "served_by": {"live": 1, "backup": 0},
        "failed_requests": [],
    }
    text = format_report(report)
    assert (
        "keep-alive resets 2 (1 truncated), orderly closes 3 (Connection: close 2, FIN while idle 1), "
        "closed before response 1 (retried), failed 2" in text
    )
    assert "  RSTs from the VIP 4\n" in text
    assert "RSTs from the VIP 1\n" in text and "RSTs from the VIP not counted\n" in text
