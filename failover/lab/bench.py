"""`failover lab bench`: failover's own swap figures, and the same moves by the anchors, side by side.

Owns the measurement loop (one client load per move, started on a settled lab and stopped after the
move has settled), the figures taken from the client's records and the agents' logs, their statistics,
the markdown and JSON reports, and the idle CPU/RSS samples. The contenders themselves live in
``contenders.py``. Every figure comes from a measured record; a contender that cannot run gets a row
saying why, never a number.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from failover.lab import contenders as cont
from failover.lab.client import ClientLoad, Request, first_served_by, summarize
from failover.lab.cluster import LabCluster
from failover.lab.netns import VIP, Lab
from failover.lab.rehearse import unserved_ms

Say = Callable[[str], None]

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"
FULL_RUNS = 5
PRE_S = 0.5  # load before the action, to see a served client first
SETTLE_S = 1.0  # load after the client has moved
RECOVER_TIMEOUT_S = 15.0
IDLE_SAMPLE_S = 3.0
FULL_BUDGET_S = 35 * 60.0
QUICK_BUDGET_S = 6 * 60.0
FULL_SOAK_S = 300.0
QUICK_SOAK_S = 25.0
CRASH_FLOOR_MS = 150.0  # median fault -> first response from backup, heartbeats every 50 ms
SOAK_SAMPLE_S = 0.5
FLOORS = {"failed": 0, "stalled_over_1s": 0, "median_max_gap_ms": 10.0}
METRICS = ("failed", "stalled_over_1s", "max_gap_ms", "first_response_ms", "keepalive_resets")
METRIC_TITLES = {
    "failed": "failed",
    "stalled_over_1s": "stalled ≥ 1 s",
    "max_gap_ms": "max gap (ms)",
    "first_response_ms": "action → first response from backup (ms)",
    "keepalive_resets": "keep-alive resets",
}


MOVE_TITLES = {
    "swap": "swap",
    "unswap": "unswap",
    "all": "all moves",
    "baseline": "no move (load's own jitter)",
}


class BenchError(RuntimeError):
    """A run could not be measured (the lab never settled, the load did not start)."""


# --- pure: figures of one move, statistics, tables ----------------------------------------------------------


def move_figures(
    records: Sequence[Request], keepalive: Mapping[str, int], action_at: float, target: str
) -> dict[str, Any]:
    """Figures of one move from its own load's records (the load spans just this move)."""
    total = summarize(records)
    first = first_served_by(records, target, action_at)
    before = [r for r in records if r.start < action_at - 0.05]
    return {
        "requests": total.requests,
        "failed": total.failed,
        "stalled_over_1s": total.stalled_over_1s,
        "max_gap_ms": round(total.max_gap_ms, 3),
        "first_response_ms": None if first is None else round((first.end - action_at) * 1000.0, 3),
        "keepalive_resets": int(keepalive.get("resets", 0)),
        "keepalive_requests": int(keepalive.get("requests", 0)),
        "served_by": total.served_by,
        "errors": dict(Counter(r.served_by for r in records if not r.ok)),
        # A clean start: the load was served before the action, and not by the target.
        "served_before": sum(1 for r in before if r.ok and r.served_by != target),
    }


def spread(values: Iterable[float | int | None]) -> dict[str, Any]:
    """min/median/max over the measured values; `missing` counts runs that had no value."""
    seen = list(values)
    present = [float(v) for v in seen if v is not None]
    if not present:
        return {"n": 0, "missing": len(seen), "min": None, "median": None, "max": None}
    return {
        "n": len(present),
        "missing": len(seen) - len(present),
        "min": min(present),
        "median": statistics.median(present),
        "max": max(present),
    }


def fmt_number(value: float | None) -> str:
    if value is None:
        return "-"
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.1f}" if abs(value) < 10 else f"{value:.0f}"


def fmt_spread(stats: Mapping[str, Any]) -> str:
    """`min / median / max`, one number when all three agree, and how many runs had none."""
    if not stats or stats.get("n", 0) == 0:
        return "none" if stats and stats.get("missing") else "-"
    parts = [fmt_number(stats[k]) for k in ("min", "median", "max")]
    text = parts[0] if len(set(parts)) == 1 else " / ".join(parts)
    if stats.get("missing"):
        text += f" ({stats['missing']}x none)"
    return text


def summarize_runs(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    measured = [r for r in runs if not r.get("error")]
    out: dict[str, Any] = {m: spread(r.get(m) for r in measured) for m in METRICS}
    for extra in ("unserved_ms", "cli_duration_ms", "cli_wall_ms", "fault_to_claim_ms", "takeover_ms"):
        if any(extra in r for r in measured):
            out[extra] = spread(r.get(extra) for r in measured)
    out["runs"] = len(measured)
    out["errors"] = len(runs) - len(measured)
    return out


def ratio(ours: float | None, theirs: float | None) -> float | None:
    if ours is None or theirs is None or theirs == 0:
        return None
    return round(ours / theirs, 2)


def ratios(report: Mapping[str, Any]) -> dict[str, Any]:
    """failover swap vs keepalived tuned (stop master): medians of max gap and of time to first response."""
    return _ratios(report, cont.FAILOVER_NAME, "planned")


def _median(report: Mapping[str, Any], row: str, scenario: str, metric: str) -> float | None:
    rows = report.get("contenders", {})
    stats = rows.get(row, {}).get("scenarios", {}).get(scenario, {}).get("stats", {})
    value = stats.get(metric, {}).get("median")
    return None if value is None else float(value)


def _ratios(report: Mapping[str, Any], row: str, scenario: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for metric in ("max_gap_ms", "first_response_ms"):
        a = _median(report, row, scenario, metric)
        b = _median(report, "keepalived-tuned", scenario, metric)
        out[metric] = {"failover": a, "keepalived_tuned": b, "ratio": ratio(a, b)}
    return out


def crash_ratios(report: Mapping[str, Any]) -> dict[str, Any]:
    """failover's crash rows (default and tuned timers) vs keepalived tuned's crash row, medians."""
    return {row: _ratios(report, row, "crash") for row in (cont.FAILOVER_NAME, cont.FAILOVER_TUNED_NAME)}


def takeover_floors(report: Mapping[str, Any]) -> dict[str, Any]:
    """Crash of live -> first response from backup <= 150 ms (median, tuned); the soak: 0 takeovers."""
    out: dict[str, Any] = {}
    rows = report.get("contenders", {})
    if cont.FAILOVER_TUNED_NAME in rows:
        crash = _median(report, cont.FAILOVER_TUNED_NAME, "crash", "first_response_ms")
        out["crash_first_response_ms"] = {
            "measured": crash,
            "floor": CRASH_FLOOR_MS,
            "met": crash is not None and crash <= CRASH_FLOOR_MS,
        }
    soak = report.get("soak")
    if soak:
        takeovers = soak.get("takeovers")
        out["soak_takeovers"] = {
            "measured": takeovers,
            "floor": 0,
            "met": soak.get("status") == "ok" and takeovers == 0 and soak.get("holders_always_live") is True,
        }
    return out


def floors(stats: Mapping[str, Any]) -> dict[str, Any]:
    """failover's own moves against the floors: 0 failed, 0 stalled, median max gap <= 10 ms."""
    failed = stats.get("failed", {}).get("max")
    stalled = stats.get("stalled_over_1s", {}).get("max")
    gap = stats.get("max_gap_ms", {}).get("median")
    return {
        "failed": {"worst": failed, "floor": FLOORS["failed"], "met": failed == 0},
        "stalled_over_1s": {"worst": stalled, "floor": FLOORS["stalled_over_1s"], "met": stalled == 0},
        "median_max_gap_ms": {
            "measured": gap,
            "floor": FLOORS["median_max_gap_ms"],
            "met": gap is not None and gap <= FLOORS["median_max_gap_ms"],
        },
    }


def profile(moves: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Where a swap's time goes, medians over the moves, every point relative to the CLI's start."""
    keys = ("release_ms", "claim_ms", "first_announce_ms", "first_response_ms", "cli_wall_ms")
    out: dict[str, Any] = {k: spread(m.get("timeline", {}).get(k) for m in moves) for k in keys}
    steps: dict[str, list[float]] = {}
    for move in moves:
        for step in move.get("steps", []):
            steps.setdefault(str(step["step"]), []).append(float(step["ms"]))
    out["cli_steps_ms"] = {name: spread(values) for name, values in steps.items()}
    return out


def timeline(
    events_source: Sequence[Mapping[str, Any]],
    events_target: Sequence[Mapping[str, Any]],
    started: float,
    ended: float,
    wall_minus_monotonic: float,
) -> dict[str, float | None]:
    """Release (source), claim and first announce (target) of one move, in ms after the CLI started.

    `announced` carries only its wall-clock log timestamp (taken once the frames are out); it is put
    on the monotonic clock with the host's wall-minus-monotonic offset, the same in every process.
    """

    def last(events: Sequence[Mapping[str, Any]], name: str) -> Mapping[str, Any] | None:
        found = [
            e
            for e in events
            if e.get("event") == name and e.get("ok") and started <= float(e.get("at", 0.0)) <= ended + 1.0
        ]
        return found[-1] if found else None

    def ms(at: float) -> float:
        return round((at - started) * 1000.0, 3)

    release = last(events_source, "release")
    claim = last(events_target, "claim")
    announces = [
        w - wall_minus_monotonic
        for e in events_target
        if e.get("event") == "announced"
        and (w := _wall(e)) is not None
        and started <= w - wall_minus_monotonic <= ended + 1.0
    ]
    return {
        "release_ms": None if release is None else ms(float(release["at"])),
        "claim_ms": None if claim is None else ms(float(claim["at"])),
        "first_announce_ms": ms(min(announces)) if announces else None,
    }


def _wall(event: Mapping[str, Any]) -> float | None:
    try:
        return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()
    except (KeyError, ValueError):
        return None


def render_markdown(report: Mapping[str, Any]) -> str:
    lines = [f"### failover lab bench — {report.get('mode', '?')} run, {report.get('finished', '')}", ""]
    lines += [f"Command: `{report.get('command', '')}`", ""]
    own = report.get("failover_moves", {})
    if own:
        lines += ["#### failover's own moves (each under its own client load)", ""]
        lines += [
            "| move | runs | unserved (ms, agents' logs) | failed | stalled ≥ 1 s | max gap (ms) "
            "| action → first response (ms) | CLI wall (ms) | keep-alive resets |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for move in ("swap", "unswap", "all", "baseline"):
            stats = own.get("stats", {}).get(move)
            if not stats:
                continue
            lines.append(
                f"| {MOVE_TITLES[move]} | {stats['runs']}{_errors(stats)} "
                f"| {fmt_spread(stats.get('unserved_ms', {}))} "
                f"| {fmt_spread(stats['failed'])} | {fmt_spread(stats['stalled_over_1s'])} "
                f"| {fmt_spread(stats['max_gap_ms'])} | {fmt_spread(stats['first_response_ms'])} "
                f"| {fmt_spread(stats.get('cli_wall_ms', {}))} | {fmt_spread(stats['keepalive_resets'])} |"
            )
        checks = own.get("floors", {})
        if checks:
            verdict = ", ".join(
                f"{name} {'met' if check['met'] else 'NOT met'}" for name, check in checks.items()
            )
            lines += ["", f"Floors (0 failed, 0 stalled, median max gap ≤ 10 ms): {verdict}."]
        lines.append("")
    lines += ["#### Side by side (same topology, same load; min / median / max over runs)", ""]
    lines += [
        "| contender | scenario | runs | " + " | ".join(METRIC_TITLES[m] for m in METRICS) + " |",
        "|---|---|---|" + "---|" * len(METRICS),
    ]
    for row in report.get("contenders", {}).values():
        for scenario, result in row.get("scenarios", {}).items():
            action = result.get("action", "")
            head = f"| {row['label']} | {scenario}{': ' + action if action else ''} "
            if result.get("status") != "ok":
                reason = str(result.get("reason", "")).splitlines()[0] if result.get("reason") else ""
                lines.append(head + f"| - | {reason} |" + " |" * (len(METRICS) - 1))
                continue
            stats = result["stats"]
            cells = " | ".join(fmt_spread(stats[m]) for m in METRICS)
            lines.append(head + f"| {stats['runs']}{_errors(stats)} | {cells} |")
    lines += [
        "",
        "Idle cost of the daemon on each host (~3 s idle sample; keepalived counts all its processes):",
        "",
        "| contender | CPU % (live / backup) | RSS MiB (live / backup) |",
        "|---|---|---|",
    ]
    for row in report.get("contenders", {}).values():
        idle = row.get("idle")
        if not idle:
            continue
        cpu = " / ".join(fmt_idle(idle.get(h, {}).get("cpu_percent"), 2) for h in cont.SERVERS)
        rss = " / ".join(fmt_idle(idle.get(h, {}).get("rss_mib"), 1) for h in cont.SERVERS)
        lines.append(f"| {row['label']} | {cpu} | {rss} |")
    rat = report.get("ratios", {})
    if rat:
        lines += ["", "failover swap vs keepalived tuned (stop master), medians:"]
        for metric, r in rat.items():
            lines.append(
                f"- {METRIC_TITLES[metric]}: failover {fmt_number(r['failover'])}, keepalived tuned "
                f"{fmt_number(r['keepalived_tuned'])}, ratio {fmt_number(r['ratio'])}"
            )
    lines += render_takeover(report)
    if report.get("truncated"):
        lines += ["", f"**Truncated**: {report['truncated']}"]
    return "\n".join(lines) + "\n"


def render_takeover(report: Mapping[str, Any]) -> list[str]:
    """The crash rows against keepalived tuned's, the takeover floors, and the heartbeat-loss soak."""
    lines: list[str] = []
    rows = report.get("contenders", {})
    crash_rows = [
        (name, rows[name]) for name in (cont.FAILOVER_NAME, cont.FAILOVER_TUNED_NAME)
        if rows.get(name, {}).get("scenarios", {}).get("crash", {}).get("status") == "ok"
    ]  # fmt: skip
    if crash_rows:
        lines += [
            "",
            "#### Unplanned takeover: crash of live (link down + SIGKILL of its agent)",
            "",
            "| setting | runs | fault → backup's claim (ms, its log) | silence noticed → claim (ms) "
            "| fault → first response from backup (ms) | failed | max gap (ms) |",
            "|---|---|---|---|---|---|---|",
        ]
        for _, row in crash_rows:
            stats = row["scenarios"]["crash"]["stats"]
            lines.append(
                f"| {row['label']} | {stats['runs']}{_errors(stats)} "
                f"| {fmt_spread(stats.get('fault_to_claim_ms', {}))} "
                f"| {fmt_spread(stats.get('takeover_ms', {}))} "
                f"| {fmt_spread(stats['first_response_ms'])} | {fmt_spread(stats['failed'])} "
                f"| {fmt_spread(stats['max_gap_ms'])} |"
            )
        for name, by_metric in report.get("crash_ratios", {}).items():
            if name not in dict(crash_rows):
                continue
            lines += ["", f"{rows[name]['label']} vs keepalived tuned (crash), medians:"]
            for metric, r in by_metric.items():
                lines.append(
                    f"- {METRIC_TITLES[metric]}: failover {fmt_number(r['failover'])}, keepalived tuned "
                    f"{fmt_number(r['keepalived_tuned'])}, ratio {fmt_number(r['ratio'])}"
                )
    soak = report.get("soak")
    if soak:
        lines += ["", f"#### Heartbeat-loss soak ({soak.get('action', '')})", ""]
        if soak.get("status") != "ok":
            lines.append(f"Not run: {soak.get('reason')}.")
        else:
            http = soak["http"]
            lost = ", ".join(
                f"{h} → peer {fmt_number(v['lost_percent'])} % of {v['sent']}"
                for h, v in soak["heartbeats"].items()
            )
            refused = ", ".join(f"{h} {n}" for h, n in soak["takeovers_refused"].items())
            lines += [
                f"- takeovers: **{soak['takeovers']}** (agents' `takeover` log events and `last_takeover`); "
                f"VIP holders sampled every {SOAK_SAMPLE_S} s: {soak['holders']}",
                f"- takeovers refused because live answered the probe: {refused}",
                f"- heartbeats lost (peer's received vs sent): {lost}; nft counters {soak['nft_counters']}",
                f"- HTTP meanwhile: {http['requests']} requests, {http['failed']} failed, median "
                f"{fmt_number(http['median_latency_ms'])} ms, max {fmt_number(http['max_latency_ms'])} ms, "
                f"max gap {fmt_number(http['max_gap_ms'])} ms, served by {http['served_by']}",
            ]
    checks = report.get("takeover_floors", {})
    if checks:
        verdict = ", ".join(
            f"{name} {fmt_number(c['measured'])} (floor {fmt_number(c['floor'])}) "
            f"{'met' if c['met'] else 'NOT met'}"
            for name, c in checks.items()
        )
        lines += ["", f"Takeover floors: {verdict}."]
    return lines


def fmt_idle(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _errors(stats: Mapping[str, Any]) -> str:
    return f" (+{stats['errors']} not measured)" if stats.get("errors") else ""


# --- idle cost ----------------------------------------------------------------------------------------


def _process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    for _ in range(1000):
        if not todo:
            break
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def sample_idle(pids: Mapping[str, int], seconds: float = IDLE_SAMPLE_S) -> dict[str, Any]:
    """CPU % (of one core) and RSS of each daemon and its children over `seconds` of idling."""
    tick = os.sysconf("SC_CLK_TCK")
    trees = {host: _process_tree(pid) for host, pid in pids.items()}

    def ticks() -> dict[str, int]:
        out = {}
        for host, tree in trees.items():
            total = 0
            for pid in tree:
                with contextlib.suppress(OSError, ValueError, IndexError):
                    total += _cpu_ticks(pid)
            out[host] = total
        return out

    before, t0 = ticks(), time.monotonic()
    time.sleep(seconds)
    after, elapsed = ticks(), time.monotonic() - t0
    result: dict[str, Any] = {}
    for host, tree in trees.items():
        rss = 0
        for pid in tree:
            with contextlib.suppress(OSError, ValueError):
                rss += _rss_kib(pid)
        result[host] = {
            "cpu_percent": round(100.0 * (after[host] - before[host]) / tick / elapsed, 2),
            "rss_mib": round(rss / 1024.0, 1),
            "processes": len(tree),
            "seconds": round(elapsed, 2),
        }
    return result


# --- measuring one move -------------------------------------------------------------------------------


@dataclass
class Budget:
    deadline: float
    truncated: str = ""

    def left(self) -> float:
        return self.deadline - time.monotonic()


def _served_by(lab: Lab, host: str) -> bool:
    answer = lab.run("client", ["curl", "-s", "--max-time", "1", f"http://{VIP.ip}/"], check=False, timeout=3)
    return answer.stdout.strip() == host


def wait_settled(lab: Lab, holder: str, timeout: float = 10.0) -> None:
    """Until only `holder` has the VIP on eth0 and the client reaches it there (bounded)."""
    other = "backup" if holder == "live" else "live"
    mac = lab.host(holder).mac

    def settled() -> bool:
        return (
            cont.vip_on_eth0(lab, holder)
            and not cont.vip_on_eth0(lab, other)
            and _served_by(lab, holder)
            and lab.neighbour_mac("client", str(VIP.ip)) == mac
        )

    if not lab.wait_until(settled, timeout=timeout, interval=0.1):
        raise BenchError(
            f"lab did not settle on {holder} within {timeout:.0f} s "
            f"(VIP on eth0: live={cont.vip_on_eth0(lab, 'live')}, "
            f"backup={cont.vip_on_eth0(lab, 'backup')})"
        )


def measure(
    lab: Lab, workdir: Path, source: str, target: str, act: Callable[[], tuple[float, dict[str, Any]]]
) -> dict[str, Any]:
    """One move under its own client load: settle check, load, action, wait for the client to move.

    `act` carries out the move and returns (monotonic time just before it, extra facts to record).
    """
    wait_settled(lab, source)
    load = ClientLoad(lab, "client", str(VIP.ip), workdir / "client", duration_s=60, max_requests=20_000)
    load.start()
    try:
        time.sleep(PRE_S)
        if target != source and cont.vip_on_eth0(lab, target):
            raise BenchError(f"{target} took the VIP before the action (split brain)")
        action_at, extra = act()
        mac = lab.host(target).mac
        moved = lab.wait_until(
            lambda: cont.vip_on_eth0(lab, target) and lab.neighbour_mac("client", str(VIP.ip)) == mac,
            timeout=RECOVER_TIMEOUT_S, interval=0.02,
        )  # fmt: skip
        recovered_after = time.monotonic() - action_at
        time.sleep(SETTLE_S)
    finally:
        load.stop()
    figures = move_figures(load.records(), load.keepalive(), action_at, target)
    figures.update(extra)
    figures["recovered"] = moved
    figures["action_at"] = action_at
    figures["recovered_after_s"] = round(recovered_after, 3)
    with contextlib.suppress(OSError):
        shutil.rmtree(load.dir)
    return figures


# --- failover's own moves -----------------------------------------------------------------------------


def failover_moves(
    pairs: int, workdir: Path, budget: Budget, say: Say
) -> tuple[dict[str, Any], dict[str, Any]]:
    """N swap/unswap pairs in one LabCluster; returns (moves report, side-by-side row)."""
    row: dict[str, Any] = {
        "label": cont.FAILOVER_LABEL,
        "config": cont.FAILOVER_CONFIG,
        "scenarios": {},
        "idle": None,
    }
    moves: dict[str, list[dict[str, Any]]] = {"swap": [], "unswap": [], "baseline": []}
    with LabCluster(workdir / "failover") as cluster:
        row["idle"] = sample_idle({h: p.pid for h, p in cluster.agents.items()})
        say(f"failover: lab {cluster.lab.prefix} up; idle {_idle_text(row['idle'])}")
        for pair in range(pairs):
            if budget.left() < 20:
                budget.truncated = f"failover stopped after {pair} of {pairs} pairs (time budget)"
                break
            for move, source, target in (("swap", "live", "backup"), ("unswap", "backup", "live")):
                result = _failover_move(cluster, workdir, move, source, target)
                result["run"] = pair
                moves[move].append(result)
                say(f"  {move} {pair + 1}/{pairs}: {_run_text(result)}")
        # The same measurement with no move at all: the load's own jitter, the floor under every gap.
        for run in range(min(pairs, FULL_RUNS)):
            if budget.left() < 20:
                break
            result = measure(cluster.lab, workdir, "live", "live", lambda: (time.monotonic(), {}))
            result["run"] = run
            moves["baseline"].append(result)
            say(f"  no move {run + 1}: {_run_text(result)}")
    stats = {move: summarize_runs(runs) for move, runs in moves.items()}
    stats["all"] = summarize_runs(moves["swap"] + moves["unswap"])
    all_ok = [m for m in moves["swap"] + moves["unswap"] if not m.get("error")]
    report = {
        "moves": moves,
        "stats": stats,
        "floors": floors(stats["all"]),
        "profile": profile(all_ok),
    }
    row["scenarios"]["planned"] = {
        "action": cont.FAILOVER_ACTIONS["planned"],
        "status": "ok",
        "runs": moves["swap"],
        "stats": stats["swap"],
    }
    return report, row


# --- failover's unplanned takeover --------------------------------------------------------------------


def failover_crashes(
    name: str, overrides: Mapping[str, Any] | None, runs: int, workdir: Path, budget: Budget, say: Say
) -> dict[str, Any]:
    """`runs` crashes of live in one LabCluster, put back between runs; the crash scenario's result."""
    results: list[dict[str, Any]] = []
    with LabCluster(workdir / name, overrides=overrides) as cluster:
        say(f"{name}: crash lab {cluster.lab.prefix} up")
        for run in range(runs):
            if budget.left() < 30:
                budget.truncated = f"{name} crash stopped after {run} of {runs} runs (time budget)"
                break
            try:
                result = crash_failover(cluster, workdir)
            except BenchError as err:
                result = {"error": str(err)}
            result["run"] = run
            results.append(result)
            say(f"  crash {run + 1}/{runs}: {_run_text(result)}")
            if run + 1 < runs:
                restore_after_crash(cluster)
    return {
        "action": cont.FAILOVER_ACTIONS["crash"],
        "status": "ok",
        "runs": results,
        "stats": summarize_runs(results),
    }


def crash_failover(cluster: LabCluster, workdir: Path) -> dict[str, Any]:
    """Live's link down in its namespace, then SIGKILL of live's agent; measured like any crash."""

    def act() -> tuple[float, dict[str, Any]]:
        started = time.monotonic()
        cont.link_down(cluster.lab, "live")
        cluster.stop_agent("live", signal.SIGKILL)
        return started, {}

    result = measure(cluster.lab, workdir, "live", "backup", act)
    # measure() returns once backup holds and the client follows: backup's own account of it.
    action_at = result["action_at"]
    claims = [
        e for e in cluster.agent_events("backup")
        if e.get("event") == "claim" and e.get("ok") and e.get("why") == "takeover"
        and float(e.get("at", 0.0)) >= action_at
    ]  # fmt: skip
    takeover = cluster.status("backup").get("last_takeover") or {}
    result["fault_to_claim_ms"] = round((float(claims[0]["at"]) - action_at) * 1000.0, 3) if claims else None
    result["takeover_ms"] = takeover.get("duration_ms") if takeover.get("ok") else None
    result["takeover"] = takeover
    if not claims:
        result["error"] = f"backup did not claim by takeover: {takeover.get('reason')}"
    return result


def restore_after_crash(cluster: LabCluster) -> None:
    """Back to the lab's start: agents stopped, live's link up, the VIP on live only, fresh agents."""
    lab = cluster.lab
    for name in cont.SERVERS:
        cluster.stop_agent(name)
    cont.link_up(lab, "live")
    for name in cont.SERVERS:
        for dev in ("eth0", "lo"):
            lab.run(name, ["ip", "address", "del", str(VIP), "dev", dev], check=False, timeout=5)
        shutil.rmtree(cluster.workdir / name / "state", ignore_errors=True)
    # The client's entry still names backup's MAC; the next request resolves the VIP afresh.
    lab.run("client", ["ip", "neigh", "del", str(VIP.ip), "dev", "eth0"], check=False, timeout=5)
    lab.run("live", ["ip", "address", "add", str(VIP), "dev", "eth0"], timeout=5)
    for name in cont.SERVERS:
        cluster.start_agent(name)
    cluster.wait_ready()


def heartbeat_soak(
    seconds: float, overrides: Mapping[str, Any] | None, workdir: Path, budget: Budget, say: Say
) -> dict[str, Any]:
    """Heartbeats lossy and jittery for `seconds` with live healthy: any takeover is a false one.

    Counts takeovers from both agents' JSON logs (`takeover`) and their `last_takeover`, samples the
    VIP's holders every 0.5 s, and runs a client load (a new connection every 20 ms) to show that the
    HTTP path is untouched.
    """
    action = (
        f"{cont.SOAK_LOSS_PERCENT} % loss, {cont.SOAK_DELAY_MS:.0f} ± {cont.SOAK_JITTER_MS:.0f} ms "
        f"on UDP {cont.HEARTBEAT_PORT} (both servers), {seconds:.0f} s"
    )
    if budget.left() < seconds + 40:
        budget.truncated = f"soak of {seconds:.0f} s not run (time budget)"
        return {"status": "not run", "action": action, "reason": "time budget"}
    with LabCluster(workdir / "soak", overrides=overrides) as cluster:
        lab = cluster.lab
        say(f"soak: lab {lab.prefix} up; {action}")
        load = ClientLoad(
            lab, "client", str(VIP.ip), workdir / "soak-client", interval_ms=20.0,
            duration_s=seconds + 30, max_requests=int(seconds * 50) + 2000,
        )  # fmt: skip
        before = {h: cluster.status(h) for h in cont.SERVERS}
        relay_stats = cont.start_heartbeat_impairment(lab, workdir, seconds + 5)
        started = time.monotonic()
        load.start()
        holders: Counter[str] = Counter()
        try:
            for _ in range(int(seconds / SOAK_SAMPLE_S) + 2):
                holders[",".join(cluster.holders()) or "none"] += 1
                if time.monotonic() - started >= seconds:
                    break
                time.sleep(SOAK_SAMPLE_S)
        finally:
            load.stop()
            nft = cont.stop_heartbeat_impairment(lab)
        elapsed = time.monotonic() - started
        after = {h: cluster.status(h) for h in cont.SERVERS}
        events = {h: cluster.agent_events(h) for h in cont.SERVERS}
        records = load.records()
    relays: dict[str, Any] = {}
    for host, path in relay_stats.items():
        with contextlib.suppress(OSError, ValueError):
            relays[host] = json.loads(path.read_text())

    def count(host: str, event: str) -> int:
        return sum(1 for e in events[host] if e.get("event") == event)

    def delta(host: str, side: str) -> int:
        return int(after[host][side].get("heartbeat", 0)) - int(before[host][side].get("heartbeat", 0))

    total = summarize(records)
    latencies = sorted((r.end - r.start) * 1000.0 for r in records if r.ok)
    takeovers = sum(count(h, "takeover") for h in cont.SERVERS)
    last = {h: after[h].get("last_takeover") for h in cont.SERVERS}
    heartbeats: dict[str, dict[str, Any]] = {
        h: {"sent": delta(h, "sent"), "received": delta(h, "received")} for h in cont.SERVERS
    }
    for host in cont.SERVERS:
        peer = "backup" if host == "live" else "live"
        sent, got = heartbeats[host]["sent"], heartbeats[peer]["received"]
        heartbeats[host]["lost_percent"] = round(100.0 * (1 - got / sent), 1) if sent else None
    result: dict[str, Any] = {
        "status": "ok",
        "action": action,
        "seconds": round(elapsed, 1),
        # The logs are the count; a last_takeover that says ok is one too, should a log line be lost.
        "takeovers": max(takeovers, sum(1 for t in last.values() if t and t.get("ok"))),
        "takeovers_refused": {h: count(h, "takeover-refused") for h in cont.SERVERS},
        "probes": {h: count(h, "probe") for h in cont.SERVERS},
        "last_takeover": last,
        "holders": dict(holders),
        "holders_always_live": set(holders) == {"live"},
        "heartbeats": heartbeats,
        "nft_counters": nft,
        "relays": relays,
        "http": {
            "requests": total.requests,
            "failed": total.failed,
            "stalled_over_1s": total.stalled_over_1s,
            "max_gap_ms": round(total.max_gap_ms, 3),
            "median_latency_ms": round(statistics.median(latencies), 3) if latencies else None,
            "max_latency_ms": round(latencies[-1], 3) if latencies else None,
            "served_by": total.served_by,
        },
    }
    say(f"  soak: {_soak_text(result)}")
    return result


def _soak_text(r: Mapping[str, Any]) -> str:
    if r.get("status") != "ok":
        return f"not run: {r.get('reason')}"
    http = r["http"]
    lost = ", ".join(f"{h}->peer {v['lost_percent']} %" for h, v in r["heartbeats"].items())
    refused = sum(r["takeovers_refused"].values())
    return (
        f"{r['seconds']} s, takeovers {r['takeovers']}, refused (probe answered) {refused}, "
        f"holders {r['holders']}, heartbeats lost {lost}; HTTP {http['requests']} requests, "
        f"failed {http['failed']}, median {fmt_number(http['median_latency_ms'])} ms, "
        f"max gap {fmt_number(http['max_gap_ms'])} ms"
    )


def _failover_move(cluster: LabCluster, workdir: Path, move: str, source: str, target: str) -> dict[str, Any]:
    outcome: dict[str, Any] = {}

    def act() -> tuple[float, dict[str, Any]]:
        # unswap runs on live too (the target asks the holder to hand over), as `lab rehearse` does.
        outcome.update(cluster.move(move, via="live"))
        return float(outcome["started"]), {}

    try:
        result = measure(cluster.lab, workdir, source, target, act)
    except BenchError as err:
        return {"error": str(err)}
    started, ended = float(outcome["started"]), float(outcome["ended"])
    result["ok"] = bool(outcome.get("ok")) and outcome.get("exit_code") == 0
    if not result["ok"]:
        result["error"] = f"{move} failed: {outcome.get('reason') or outcome.get('stderr')}"
    result["unserved_ms"] = unserved_ms(
        cluster.agent_events(source), cluster.agent_events(target), started, ended
    )
    result["cli_duration_ms"] = outcome.get("duration_ms")
    result["cli_wall_ms"] = round((ended - started) * 1000.0, 3)
    result["steps"] = outcome.get("steps", [])
    offset = time.time() - time.monotonic()
    tl = timeline(cluster.agent_events(source), cluster.agent_events(target), started, ended, offset)
    tl["first_response_ms"] = result.get("first_response_ms")
    tl["cli_wall_ms"] = result["cli_wall_ms"]
    result["timeline"] = tl
    return result


# --- the anchors --------------------------------------------------------------------------------------


def contender_row(
    kind: type[cont.Contender], runs: int, workdir: Path, budget: Budget, missing: Mapping[str, str], say: Say
) -> dict[str, Any]:
    row: dict[str, Any] = {"label": kind.label, "config": cont.describe(kind), "scenarios": {}, "idle": None}
    absent = [f"{tool}: {missing[tool]}" for tool in kind.needs if tool in missing]
    for scenario in cont.SCENARIOS:
        action = kind.actions.get(scenario, "")
        if scenario in kind.unsupported:
            row["scenarios"][scenario] = {
                "action": action,
                "status": "n/a",
                "reason": kind.unsupported[scenario],
            }
        elif absent:
            row["scenarios"][scenario] = {
                "action": action,
                "status": "unavailable",
                "reason": "unavailable: " + "; ".join(absent),
            }
    todo = [s for s in cont.SCENARIOS if s not in row["scenarios"]]
    if not todo:
        return row
    with cont.contender_lab(workdir / kind.name) as lab:
        contender = kind(lab, workdir / kind.name)
        say(f"{kind.name}: lab {lab.prefix} up")
        for scenario in todo:
            row["scenarios"][scenario] = _scenario(contender, scenario, runs, workdir, budget, say, row)
            if row["scenarios"][scenario]["status"] == "unavailable":
                break
        for scenario in todo:
            row["scenarios"].setdefault(
                scenario,
                {
                    "action": kind.actions.get(scenario, ""),
                    "status": "unavailable",
                    "reason": "not run: an earlier scenario failed to start",
                },
            )
    row["scenarios"] = {s: row["scenarios"][s] for s in cont.SCENARIOS}
    return row


def _scenario(
    contender: cont.Contender,
    scenario: str,
    runs: int,
    workdir: Path,
    budget: Budget,
    say: Say,
    row: dict[str, Any],
) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    action = contender.actions.get(scenario, "")
    for run in range(runs):
        if budget.left() < 30:
            budget.truncated = f"{contender.name} {scenario} stopped after {run} of {runs} runs (time budget)"
            break
        try:
            contender.start()
            if row["idle"] is None and contender.daemon_pids():
                idle = sample_idle(contender.daemon_pids())
                row["idle"] = idle
                say(f"  idle {_idle_text(idle)}")
            result = measure(contender.lab, workdir, "live", "backup", lambda: (contender.act(scenario), {}))
        except cont.Unavailable as err:
            contender.reset()
            say(f"  {contender.name} unavailable: {err}")
            return {"action": action, "status": "unavailable", "reason": f"unavailable: {err}"}
        except BenchError as err:
            result = {"error": str(err)}
        finally:
            contender.reset()
        result["run"] = run
        results.append(result)
        say(f"  {scenario} {run + 1}/{runs}: {_run_text(result)}")
    return {"action": action, "status": "ok", "runs": results, "stats": summarize_runs(results)}


def _run_text(r: Mapping[str, Any]) -> str:
    if r.get("error") and "failed" not in r:
        return f"NOT MEASURED: {r['error']}"
    text = (
        f"failed {r['failed']}, stalled {r['stalled_over_1s']}, max gap {fmt_number(r['max_gap_ms'])} ms, "
        f"first response {fmt_number(r['first_response_ms'])} ms, ka resets {r['keepalive_resets']}"
    )
    if r.get("unserved_ms") is not None:
        text += f", unserved {fmt_number(r['unserved_ms'])} ms"
    if r.get("error"):
        text += f" — {r['error']}"
    return text


def _idle_text(idle: Mapping[str, Any]) -> str:
    return ", ".join(f"{h} {v['cpu_percent']}% CPU {v['rss_mib']} MiB" for h, v in idle.items())


# --- the whole bench ----------------------------------------------------------------------------------


def run_bench(
    pairs: int,
    *,
    runs: int | None = None,
    only: Sequence[str] | None = None,
    say: Say = print,
    command: str = "",
    soak_s: float | None = None,
) -> dict[str, Any]:
    quick = pairs <= 2
    runs = runs if runs is not None else (max(1, pairs) if quick else FULL_RUNS)
    chosen = list(only) if only else cont.known_names()
    unknown = set(chosen) - set(cont.known_names())
    if unknown:
        raise ValueError(f"unknown contenders {sorted(unknown)}; known: {cont.known_names()}")
    budget = Budget(time.monotonic() + (QUICK_BUDGET_S if quick else FULL_BUDGET_S))
    needed = [tool for kind in cont.CONTENDERS if kind.name in chosen for tool in kind.needs]
    missing = cont.ensure_tools(say) if needed else {}
    report: dict[str, Any] = {
        "mode": "quick" if quick else "full",
        "command": command,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "pairs": pairs,
        "runs_per_contender": runs,
        "timing": {
            "pre_s": PRE_S,
            "settle_s": SETTLE_S,
            "recover_timeout_s": RECOVER_TIMEOUT_S,
            "load": "new connection every 5 ms, 2 s timeout, one keep-alive connection every 50 ms",
        },
        "versions": cont.environment_versions(),
        "unavailable_tools": dict(missing),
        "contenders": {},
    }
    workdir = Path(tempfile.mkdtemp(prefix="failover-bench-")).resolve()
    try:
        if cont.FAILOVER_NAME in chosen:
            own, row = failover_moves(max(1, pairs), workdir, budget, say)
            report["failover_moves"] = own
            row["scenarios"]["crash"] = failover_crashes(cont.FAILOVER_NAME, None, runs, workdir, budget, say)
            report["contenders"][cont.FAILOVER_NAME] = row
        if cont.FAILOVER_TUNED_NAME in chosen:
            report["contenders"][cont.FAILOVER_TUNED_NAME] = {
                "label": cont.FAILOVER_TUNED_LABEL,
                "config": cont.FAILOVER_TUNED_CONFIG,
                "overrides": cont.FAILOVER_TUNED,
                "scenarios": {
                    "crash": failover_crashes(
                        cont.FAILOVER_TUNED_NAME, cont.FAILOVER_TUNED, runs, workdir, budget, say
                    )
                },
                "idle": None,
            }
        for kind in cont.CONTENDERS:
            if kind.name in chosen:
                report["contenders"][kind.name] = contender_row(kind, runs, workdir, budget, missing, say)
        if cont.SOAK_NAME in chosen:
            seconds = soak_s if soak_s is not None else (QUICK_SOAK_S if quick else FULL_SOAK_S)
            report["soak"] = heartbeat_soak(seconds, cont.FAILOVER_TUNED, workdir, budget, say)
            report["soak"]["overrides"] = cont.FAILOVER_TUNED
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report["ratios"] = ratios(report)
    report["crash_ratios"] = crash_ratios(report)
    report["takeover_floors"] = takeover_floors(report)
    report["truncated"] = budget.truncated
    report["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    return report


def write_outputs(report: Mapping[str, Any], json_path: Path, md_path: Path) -> str:
    markdown = render_markdown(report)
    for path in (json_path, md_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    md_path.write_text(markdown)
    return markdown


def bench(
    pairs: int,
    json_path: Path | None,
    *,
    runs: int | None = None,
    only: Sequence[str] | None = None,
    md_path: Path | None = None,
    command: str | None = None,
    soak_s: float | None = None,
) -> int:
    """Entry point of `failover lab bench`; returns 0 when failover met its floors, 1 otherwise."""

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    command = command or "failover lab bench " + " ".join(sys.argv[3:] if len(sys.argv) > 3 else [])
    report = run_bench(pairs, runs=runs, only=only, say=say, command=command.strip(), soak_s=soak_s)
    markdown = write_outputs(report, json_path or RESULTS / "latest.json", md_path or RESULTS / "latest.md")
    print(markdown)
    checks = [*report.get("failover_moves", {}).get("floors", {}).values()]
    checks += report.get("takeover_floors", {}).values()
    return 0 if all(c["met"] for c in checks) else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m failover.lab.bench", description=__doc__.split("\n")[0])
    parser.add_argument("-n", "--pairs", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="2 pairs, 2 runs per contender (<= 6 min)")
    parser.add_argument("--runs", type=int, help=f"runs per contender and scenario (default {FULL_RUNS})")
    parser.add_argument("--only", action="append", choices=cont.known_names(), help="repeatable")
    parser.add_argument(
        "--soak-s",
        type=float,
        help=f"heartbeat-loss soak (default {FULL_SOAK_S:.0f} s, quick {QUICK_SOAK_S:.0f} s)",
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument("--md", type=Path)
    args = parser.parse_args(argv)
    pairs = 2 if args.quick else args.pairs
    shown = "python -m failover.lab.bench " + " ".join(argv if argv is not None else sys.argv[1:])
    return bench(
        pairs,
        args.json,
        runs=args.runs,
        only=args.only,
        md_path=args.md,
        command=shown.strip(),
        soak_s=args.soak_s,
    )


if __name__ == "__main__":
    raise SystemExit(main())
