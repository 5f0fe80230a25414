"""`failover lab rehearse`: swap and unswap under client load in a fresh lab, and the report of it.

The report is measured, not believed: who holds the VIP comes from netlink in every namespace, the
client's neighbour entry from the client's own table, the unserved window from the agents' release
and claim timestamps (one monotonic clock for all namespaces), and the gaps from the client's records.
"""

from __future__ import annotations

import itertools
import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from failover.cli import drained_line
from failover.lab.client import ClientLoad, Request, failure_kind, rsts_between, summarize
from failover.lab.cluster import LabCluster
from failover.lab.netns import ROUTER, NeighbourWatch

Say = Callable[[str], None]

SETTLE_S = 1.0  # client load before, between and after the moves
MAX_FAILED_LISTED = 20  # failed requests listed one per line in the text report


def unserved_ms(
    source_events: list[dict[str, Any]], target_events: list[dict[str, Any]], started: float, ended: float
) -> float | None:
    """From the source's release to the target's claim, both confirmed by netlink, on one clock (`at`)."""

    def last_at(events: list[dict[str, Any]], name: str) -> float | None:
        found = [
            e["at"]
            for e in events
            if e.get("event") == name and e.get("ok") and started <= e.get("at", 0) <= ended
        ]
        return float(found[-1]) if found else None

    release, claim = last_at(source_events, "release"), last_at(target_events, "claim")
    if release is None or claim is None:
        return None
    return round((claim - release) * 1000.0, 3)


def claim_at(target_events: list[dict[str, Any]], started: float, ended: float) -> float | None:
    """When the target's claim of this move took effect (netlink confirmed), on the lab's one clock."""
    found = [
        float(e["at"])
        for e in target_events
        if e.get("event") == "claim" and e.get("ok") and started <= e.get("at", 0) <= ended
    ]
    return found[-1] if found else None


def failed_requests(records: list[Request], moves: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each failed request, given to the move whose claim (else start) is nearest its start, with its
    start relative to that claim, how long it took, and what went wrong (reset/timeout/refused/other)."""
    anchors = {
        name: outcome.get("claim_at") or outcome["started"] for name, outcome in moves.items() if outcome
    }
    failed = []
    for r in records:
        if r.ok:
            continue
        move = min(anchors, key=lambda name: abs(r.start - anchors[name])) if anchors else None
        failed.append(
            {
                "move": move,
                "at_ms": round((r.start - anchors[move]) * 1000.0, 1) if move else None,
                "took_ms": round((r.end - r.start) * 1000.0, 1),
                "error": failure_kind(r.served_by),
                "detail": r.served_by,
            }
        )
    return failed


def rsts_by_move(
    rst: dict[str, Any], moves: dict[str, dict[str, Any]], until: float
) -> dict[str, int | None]:
    """RSTs from the VIP given to each move: from just before it starts to just before the next one starts
    (or ``until``), so the RSTs of a drain that ends after the CLI returned count with their move."""
    starts = sorted((outcome["started"] - 0.2, name) for name, outcome in moves.items() if outcome)
    ends = [at for at, _ in starts[1:]] + [until]
    return {name: rsts_between(rst, at, end) for (at, name), end in zip(starts, ends, strict=True)}


def move_report(
    outcome: dict[str, Any], records: list[Request], rsts_from_vip: int | None = None
) -> dict[str, Any]:
    started, ended = outcome["started"], outcome["ended"]
    window = summarize(records, since=started - 0.2, until=ended + SETTLE_S / 2)
    # Gaps between responses that *arrived* around the move (a stalled request arrives a second later).
    ends = sorted(r.end for r in records if r.ok and started - 0.2 <= r.end <= ended + SETTLE_S / 2)
    max_gap_ms = max((b - a for a, b in itertools.pairwise(ends)), default=0.0) * 1000.0
    report = {
        "ok": bool(outcome.get("ok")) and outcome.get("exit_code") == 0,
        "duration_ms": outcome.get("duration_ms"),
        "unserved_ms": outcome.get("lab_unserved_ms"),
        "unserved_ms_estimated_by_agents": outcome.get("unserved_ms"),
        "confirmed": outcome.get("confirmed"),
        "confirm_ms": outcome.get("confirm_ms"),
        "evidence": outcome.get("evidence"),
        "stragglers": outcome.get("stragglers"),
        "holder": outcome.get("holder_by_netlink"),
        "client_neighbour_mac": outcome.get("client_neighbour_mac"),
        "client_neighbour_moved": outcome.get("client_neighbour_moved"),
        "router_neighbour_mac": outcome.get("router_neighbour_mac"),
        "router_neighbour_moved": outcome.get("router_neighbour_moved"),
        "router_moved_ms_after_claim": outcome.get("router_moved_ms_after_claim"),
        "router_neighbour_changes": outcome.get("router_neighbour_changes"),
        "failed": window.failed,
        "stalled_over_1s": window.stalled_over_1s,
        "max_gap_ms": round(max_gap_ms, 3),
        "rsts_from_vip": rsts_from_vip,
        "drain": outcome.get("drain"),
        "reason": outcome.get("reason", ""),
        "steps": outcome.get("steps", []),
    }
    return report


def client_report(
    records: list[Request], keepalive: dict[str, int], rst: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The report's `client` and `served_by` parts, over the whole rehearsal. Keep-alive resets (RST,
    EPIPE, a response cut short) apart from orderly closes (`Connection: close`, a FIN while idle) and from
    closes before the response (the retry case); RSTs from the VIP as the client namespace saw them."""
    total = summarize(records)
    rst = rst or {"frames": None, "drops": 0, "error": "not counted"}
    return {
        "client": {
            "requests": total.requests,
            "failed": total.failed,
            "stalled_over_1s": total.stalled_over_1s,
            "max_gap_ms": round(total.max_gap_ms, 3),
            "keepalive_requests": keepalive.get("requests", 0),
            "keepalive_resets": keepalive.get("resets", 0),
            "keepalive_truncated": keepalive.get("truncated", 0),
            "keepalive_orderly_closes": keepalive.get("orderly_closes", 0),
            "keepalive_closed_by_header": keepalive.get("closed_by_header", 0),
            "keepalive_closed_while_idle": keepalive.get("closed_while_idle", 0),
            "keepalive_closed_before_response": keepalive.get("closed_before_response", 0),
            "keepalive_failed": keepalive.get("failed", 0),
            "rsts_from_vip": rst.get("frames"),
            "rst_capture_drops": rst.get("drops"),
            "rst_capture_error": rst.get("error"),
        },
        "served_by": {"live": total.served_by.get("live", 0), "backup": total.served_by.get("backup", 0)},
    }


def parse_outcome(stdout: str, stderr: str, exit_code: int, started: float, ended: float) -> dict[str, Any]:
    """What `failover swap|unswap --json` printed, with its exit code and when it ran."""
    try:
        outcome: dict[str, Any] = json.loads(stdout)
    except ValueError:
        outcome = {"ok": False, "reason": (stderr or stdout).strip()}
    outcome.update(exit_code=exit_code, started=started, ended=ended, stderr=stderr.strip())
    return outcome


def do_move(cluster: LabCluster, move: str, via: str, source: str, target: str) -> dict[str, Any]:
    """Run the move; then read who holds the VIP, the neighbour entries that should have moved, the
    old holder's stragglers. In a routed lab the router's entry for the VIP is watched throughout."""
    vip = str(cluster.vip.ip)
    target_mac = cluster.lab.host(target).mac
    routed = cluster.lab.router is not None
    watch = NeighbourWatch(cluster.lab, ROUTER, vip).start() if routed else None
    try:
        outcome = cluster.move(move, via=via)
        if watch is not None:
            # The router may move only once the straggler remediation reaches it: wait for it, bounded.
            cluster.lab.wait_until(
                lambda: watch.first_at(target_mac, outcome["started"]) is not None, timeout=5.0, interval=0.02
            )
    finally:
        if watch is not None:
            watch.stop()
    source_events, target_events = cluster.agent_events(source), cluster.agent_events(target)
    started, ended = outcome["started"], outcome["ended"]
    outcome["lab_unserved_ms"] = unserved_ms(source_events, target_events, started, ended)
    claimed = outcome["claim_at"] = claim_at(target_events, started, ended)
    holders = cluster.holders()
    outcome["holder_by_netlink"] = holders[0] if len(holders) == 1 else holders
    if watch is None:
        mac = cluster.lab.neighbour_mac("client", vip)
        outcome["client_neighbour_mac"] = mac
        outcome["client_neighbour_moved"] = mac == target_mac
    else:
        # Behind a router the client has no entry for the VIP; the router's is the one that must move.
        mac = cluster.lab.neighbour_mac(ROUTER, vip)
        outcome["client_neighbour_mac"] = outcome["client_neighbour_moved"] = None
        outcome["router_neighbour_mac"] = mac
        outcome["router_neighbour_moved"] = mac == target_mac
        moved_at = watch.first_at(target_mac, started)
        zero = claimed if claimed is not None else started
        moved_ms = None if moved_at is None else round((moved_at - zero) * 1000.0, 1)
        outcome["router_moved_ms_after_claim"] = moved_ms
        outcome["router_neighbour_changes"] = [
            [round((at - zero) * 1000.0, 1), seen, state] for at, seen, state in watch.changes()
        ]
    outcome["stragglers"] = source_stragglers(cluster, source, outcome.get("epoch"))
    return outcome


def source_stragglers(cluster: LabCluster, source: str, epoch: Any, wait_s: float = 3.0) -> list[Any] | None:
    """The old holder's straggler report for that move: it completes when its watch window closes."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        status = cluster.status(source)
        last = status.get("last_move") or {}
        if last.get("epoch") == epoch and not status.get("swap_in_progress"):
            stragglers: list[Any] = last.get("stragglers", [])
            return stragglers
        time.sleep(0.05)
    return None


def rehearse(
    say: Say,
    *,
    keep_workdir: bool = False,
    workdir: Path | None = None,
    ipv6: bool = False,
    router: str | None = None,
) -> dict[str, Any]:
    """``ipv6``: the VIP, the agents and the client all on IPv6; ``router``: the client behind a router
    namespace (``"drop-garp"``: one that ignores gratuitous ARP and unsolicited NA)."""
    t0 = time.monotonic()

    def step(text: str) -> None:
        say(f"[{(time.monotonic() - t0):6.2f} s] {text}")

    with LabCluster(workdir, keep_workdir=keep_workdir, ipv6=ipv6, router=router) as cluster:
        vip = str(cluster.vip.ip)
        where = f", client behind a {router} router" if router else ""
        step(
            f"lab up: namespaces {cluster.lab.prefix}-*, VIP {cluster.vip}{where}, nginx on live and backup, "
            "agents heard each other"
        )
        load = ClientLoad(cluster.lab, "client", vip, cluster.workdir / "client", duration_s=120)
        load.start()
        step("client load started: a new connection to the VIP every 5 ms, plus one keep-alive connection")
        time.sleep(SETTLE_S)
        swap = do_move(cluster, "swap", via="live", source="live", target="backup")
        step(f"swap (run on live): {_verdict(swap)}")
        time.sleep(SETTLE_S)
        # unswap from the other side: the non-holder asks the holder to hand over.
        unswap = do_move(cluster, "unswap", via="live", source="backup", target="live")
        step(f"unswap (run on live, the target): {_verdict(unswap)}")
        time.sleep(SETTLE_S)
        load.stop()
        records = load.records()
        keepalive = load.keepalive()
        rst = load.rsts()
        rsts = rsts_by_move(rst, {"swap": swap, "unswap": unswap}, until=time.monotonic())
        report: dict[str, Any] = {
            "ok": False,
            "lab": cluster.lab.prefix,
            "workdir": str(cluster.workdir) if keep_workdir else None,
            "vip": str(cluster.vip),
            "router": router,
            "swap": move_report(swap, records, rsts["swap"]),
            "unswap": move_report(unswap, records, rsts["unswap"]),
            **client_report(records, keepalive, rst),
            "failed_requests": failed_requests(records, {"swap": swap, "unswap": unswap}),
        }
    moved = "router_neighbour_moved" if router else "client_neighbour_moved"
    report["ok"] = bool(
        report["swap"]["ok"]
        and report["unswap"]["ok"]
        and report["swap"][moved]
        and report["unswap"][moved]
        and report["client"]["failed"] == 0
        and report["served_by"]["backup"] > 0
    )
    step("lab torn down")
    return report


def _count(value: int | None) -> str:
    return "not counted" if value is None else str(value)


def _verdict(outcome: dict[str, Any]) -> str:
    if outcome.get("ok") and outcome.get("exit_code") == 0:
        unserved = outcome.get("lab_unserved_ms")
        if outcome.get("router_neighbour_mac") is not None:
            moved = (
                f"router's entry moved: {outcome['router_neighbour_moved']} "
                f"({outcome.get('router_moved_ms_after_claim')} ms after the claim)"
            )
        else:
            moved = f"client's neighbour entry moved: {outcome['client_neighbour_moved']}"
        return (
            f"ok in {outcome.get('duration_ms', 0):.1f} ms, VIP on {outcome['holder_by_netlink']}, "
            f"on no host for {unserved} ms, {moved}, "
            f"confirmed by the access log {outcome.get('confirm_ms')} ms after the claim "
            f"({(outcome.get('evidence') or {}).get('requests')} requests)"
        )
    return f"FAILED: {outcome.get('reason')}"


def format_report(report: dict[str, Any]) -> str:
    lines = ["", f"rehearsal {'PASSED' if report['ok'] else 'FAILED'}"]
    for move in ("swap", "unswap"):
        m = report[move]
        lines.append(
            f"  {move:<7} ok={m['ok']!s:<5} duration {m['duration_ms']} ms  unserved {m['unserved_ms']} ms  "
            f"client max gap {m['max_gap_ms']} ms  failed {m['failed']}  stalled {m['stalled_over_1s']}  "
            f"confirmed {m['confirmed']} in {m['confirm_ms']} ms  "
            f"RSTs from the VIP {_count(m.get('rsts_from_vip'))}"
        )
        if m.get("router_neighbour_mac") is not None:
            lines.append(
                f"          router's entry for the VIP moved {m['router_moved_ms_after_claim']} ms after the "
                f"claim, now {m['router_neighbour_mac']}"
            )
        drain = m.get("drain")
        if drain:
            lines.append(f"          {drained_line(drain)}")
        if not m["ok"]:
            lines.append(f"          reason: {m['reason']}")
    c = report["client"]
    failed = report.get("failed_requests", [])
    by_move = ", ".join(
        f"{n} in the {move}" for move, n in Counter(f["move"] for f in failed).items() if move is not None
    )
    lines.append(
        f"  client  {c['requests']} requests, {c['failed']} failed{f' ({by_move})' if by_move else ''}, "
        f"{c['stalled_over_1s']} stalled >= 1 s, max gap {c['max_gap_ms']} ms; "
        f"keep-alive {c['keepalive_requests']} requests, {c['keepalive_resets']} resets"
    )
    if "keepalive_orderly_closes" in c:
        truncated = c["keepalive_truncated"]
        lines.append(
            f"  keep-alive resets {c['keepalive_resets']}{f' ({truncated} truncated)' if truncated else ''}, "
            f"orderly closes {c['keepalive_orderly_closes']} "
            f"(Connection: close {c['keepalive_closed_by_header']}, "
            f"FIN while idle {c['keepalive_closed_while_idle']}), "
            f"closed before response {c['keepalive_closed_before_response']} (retried), "
            f"failed {c['keepalive_failed']}"
        )
        drops = c.get("rst_capture_drops")
        lines.append(
            f"  RSTs from the VIP {_count(c.get('rsts_from_vip'))}"
            + (f" (the capture dropped {drops} frames: maybe more)" if drops else "")
            + (f" ({c['rst_capture_error']})" if c.get("rsts_from_vip") is None else "")
        )
    for f in failed[:MAX_FAILED_LISTED]:
        lines.append(
            f"  failed  {f['error']:<7} {f['move']}, started {f['at_ms']:+.1f} ms from the claim, "
            f"took {f['took_ms']} ms ({f['detail']})"
        )
    if len(failed) > MAX_FAILED_LISTED:
        lines.append(f"  failed  ... and {len(failed) - MAX_FAILED_LISTED} more (all in the JSON report)")
    lines.append(f"  served  live {report['served_by']['live']}, backup {report['served_by']['backup']}")
    return "\n".join(lines)
