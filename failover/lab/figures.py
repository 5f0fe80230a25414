"""The bench's figures: pure computations over measured samples, no lab, no clock, no output.

Owns the figures of one move (from its client load's records), min/median/max spreads and their
summary over runs, the ratios against keepalived tuned, the floors failover's moves and takeovers are
held to, where a swap's time goes (profile), one move's timeline from the agents' logs, and the
figures and floors of a swap that cannot be confirmed (the target unreachable for clients).
Every figure comes from a measured record; a value that was not measured stays None.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from failover.lab import contenders as cont
from failover.lab.client import Request, first_served_by, summarize

CRASH_FLOOR_MS = 150.0  # median fault -> first response from backup, heartbeats every 50 ms
# median fault -> first response from backup, heartbeats every 10 ms, dead after 30 ms, with the witness
CRASH_FAST_FLOOR_MS = 40.0
SOAK_SAMPLE_S = 0.5  # how often the soak samples the VIP's holders; its report says so
FLOORS = {"failed": 0, "stalled_over_1s": 0, "median_max_gap_ms": 10.0}
METRICS = (
    "failed", "stalled_over_1s", "max_gap_ms", "first_response_ms", "keepalive_resets",
    "keepalive_closed_before_response", "rsts_from_vip",
)  # fmt: skip
# A swap to a target that clients cannot reach: clients unserved until the rollback, at most this (median).
UNCONFIRMABLE_FLOOR_MS = 1000.0
UNCONFIRMABLE_METRICS = (
    "max_gap_ms", "served_again_ms", "reclaim_ms", "deadline_ms", "source_rate", "failed",
    "stalled_over_1s", "served_by_target", "cli_wall_ms",
)  # fmt: skip
_DEADLINE = re.compile(r"reached \S+ in (\d+(?:\.\d+)?) ms")
_RATE = re.compile(r"served (\d+(?:\.\d+)?) req/s before the move")


# --- one move ----------------------------------------------------------------------------------------


def move_figures(
    records: Sequence[Request],
    keepalive: Mapping[str, int],
    action_at: float,
    target: str,
    rsts: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Figures of one move from its own load's records (the load spans just this move); ``rsts``, the
    load's RST count (``ClientLoad.rsts()``), gives ``rsts_from_vip``, else it stays None (not measured).
    Keep-alive outcomes apart: resets (RST, EPIPE, a cut-short response), orderly closes (``Connection:
    close``, a FIN while idle), closed before response (the retry case, not orderly)."""
    total = summarize(records)
    first = first_served_by(records, target, action_at)
    before = [r for r in records if r.start < action_at - 0.05]
    return {
        "requests": total.requests,
        "failed": total.failed,
        "stalled_over_1s": total.stalled_over_1s,
        "max_gap_ms": round(total.max_gap_ms, 3),
        # Where in the run the largest gap began, from the action: a move's, or something else's.
        "max_gap_from_ms": None if total.max_gap_from is None else round(
            (total.max_gap_from - action_at) * 1000.0, 1),
        "first_response_ms": None if first is None else round((first.end - action_at) * 1000.0, 3),
        "keepalive_resets": int(keepalive.get("resets", 0)),
        "keepalive_requests": int(keepalive.get("requests", 0)),
        "keepalive_truncated": int(keepalive.get("truncated", 0)),
        "keepalive_orderly_closes": int(keepalive.get("orderly_closes", 0)),
        "keepalive_closed_before_response": int(keepalive.get("closed_before_response", 0)),
        "keepalive_failed": int(keepalive.get("failed", 0)),
        "rsts_from_vip": None if rsts is None else rsts.get("frames"),
        "rst_capture_drops": None if rsts is None else rsts.get("drops"),
        "served_by": total.served_by,
        "errors": dict(Counter(r.served_by for r in records if not r.ok)),
        # A clean start: the load was served before the action, and not by the target.
        "served_before": sum(1 for r in before if r.ok and r.served_by != target),
    }


def drain_figures(drain: Mapping[str, Any] | None) -> dict[str, Any]:
    """The old holder's drain as the move's CLI JSON outcome reports it (``drain``: {host, left, after_s,
    how, ...}): how long it took after the release (in ms, as the other figures), connections left at
    its end, how it ended. None where the outcome did not say (no drain, still pending, skipped)."""
    drain = drain or {}
    after, left, how = drain.get("after_s"), drain.get("left"), drain.get("how")
    if how is None and drain:
        how = "skipped" if drain.get("skipped") else "pending" if drain.get("pending") else None
    return {
        "drain_after_ms": None if after is None else round(float(after) * 1000.0, 3),
        "drain_left": None if left is None else int(left),
        "drain_how": how,
    }


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


# --- statistics over runs ----------------------------------------------------------------------------


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


def summarize_runs(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    measured = [r for r in runs if not r.get("error")]
    out: dict[str, Any] = {m: spread(r.get(m) for r in measured) for m in METRICS}
    extras = (
        "unserved_ms", "cli_duration_ms", "cli_wall_ms", "fault_to_claim_ms", "takeover_ms",
        "drain_after_ms", "drain_left",
    )  # fmt: skip
    for extra in extras:
        if any(extra in r for r in measured):
            out[extra] = spread(r.get(extra) for r in measured)
    if any("drain_how" in r for r in measured):
        out["drain_how"] = dict(Counter(str(r.get("drain_how")) for r in measured))
    out["runs"] = len(measured)
    out["errors"] = len(runs) - len(measured)
    return out


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


# --- ratios and floors -------------------------------------------------------------------------------


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


CRASH_ROWS = (cont.FAILOVER_NAME, cont.FAILOVER_TUNED_NAME, cont.CRASH_FAST_NAME)


def crash_ratios(report: Mapping[str, Any]) -> dict[str, Any]:
    """failover's crash rows (default, tuned and 10 ms timers) vs keepalived tuned's crash row, medians."""
    return {row: _ratios(report, row, "crash") for row in CRASH_ROWS}


def takeover_floors(report: Mapping[str, Any]) -> dict[str, Any]:
    """Crash of live -> first response from backup (median): <= 150 ms tuned (50 ms heartbeats), <= 40 ms
    at 10 ms heartbeats with the witness (crash-10ms); each soak: 0 takeovers."""
    out: dict[str, Any] = {}
    rows = report.get("contenders", {})
    for row, name, floor in (
        (cont.FAILOVER_TUNED_NAME, "crash_first_response_ms", CRASH_FLOOR_MS),
        (cont.CRASH_FAST_NAME, "crash_10ms_first_response_ms", CRASH_FAST_FLOOR_MS),
    ):
        if row in rows:
            crash = _median(report, row, "crash", "first_response_ms")
            out[name] = {"measured": crash, "floor": floor, "met": crash is not None and crash <= floor}
    for key, name in (("soak", "soak_takeovers"), ("soak_fast", "soak_fast_takeovers")):
        soak = report.get(key)
        if soak:
            takeovers = soak.get("takeovers")
            live = soak.get("holders_always_live") is True
            out[name] = {
                "measured": takeovers,
                "floor": 0,
                "met": soak.get("status") == "ok" and takeovers == 0 and live,
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


# --- a swap that cannot be confirmed -----------------------------------------------------------------


def unconfirmable_figures(
    records: Sequence[Request], claim_at: float | None, reclaim_at: float | None, source: str, target: str
) -> dict[str, Any]:
    """Figures of one swap whose target clients cannot reach, from the client load's records and the
    target's claim and the source's reclaim (the agents' `at`, on the records' clock).

    served_again_ms: the target's claim to the end of the first request the source served after its
    reclaim (every request started in between went to the target and was dropped). reclaim_ms: the
    claim to the source's reclaim, i.e. the proof's deadline plus the hand-back.
    """
    again = None if reclaim_at is None else first_served_by(records, source, reclaim_at)

    def since_claim(at: float | None) -> float | None:
        return None if at is None or claim_at is None else round((at - claim_at) * 1000.0, 3)

    return {
        "served_again_ms": since_claim(None if again is None else again.end),
        "reclaim_ms": since_claim(reclaim_at),
        "served_by_target": sum(1 for r in records if r.ok and r.served_by == target),
    }


def rate_lateness_ms(
    source_events: Sequence[Mapping[str, Any]], started: float, ended: float
) -> float | None:
    """How long after its release (which sends Released, carrying the rate) the source logged this
    move's `load-measured`, in ms of wall clock; negative when the rate was ready in time."""
    releases = [
        e for e in source_events
        if e.get("event") == "release" and e.get("why") == "swap"
        and started <= float(e.get("at", 0.0)) <= ended
    ]  # fmt: skip
    if not releases:
        return None
    release = releases[-1]
    measured = [
        e
        for e in source_events
        if e.get("event") == "load-measured" and e.get("epoch") == release.get("epoch")
    ]
    released_wall, measured_wall = _wall(release), _wall(measured[-1]) if measured else None
    if released_wall is None or measured_wall is None:
        return None
    return round((measured_wall - released_wall) * 1000.0, 3)


def monitor_figures(records: Sequence[Request]) -> dict[str, Any]:
    """A monitor's polls: how many, how many answered, by whom."""
    total = summarize(records)
    return {"requests": total.requests, "served": total.requests - total.failed, "served_by": total.served_by}


def reason_figures(reason: str) -> dict[str, float | None]:
    """What a rollback's reason names: the proof deadline ("... reached backup in 300 ms"), in ms, and
    the source's request rate it was derived from ("live served 198 req/s before the move")."""
    deadline, rate = _DEADLINE.search(reason or ""), _RATE.search(reason or "")
    return {
        "deadline_ms": float(deadline.group(1)) if deadline else None,
        "source_rate": float(rate.group(1)) if rate else None,
    }


def summarize_unconfirmable(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """min/median/max of each figure over the measured runs, and how the runs ended (counts)."""
    measured = [r for r in runs if not r.get("error")]
    out: dict[str, Any] = {m: spread(r.get(m) for r in measured) for m in UNCONFIRMABLE_METRICS}
    out["runs"] = len(measured)
    out["errors"] = len(runs) - len(measured)
    out["exit_codes"] = dict(Counter(str(r.get("exit_code")) for r in measured))
    out["rolled_back"] = sum(1 for r in measured if r.get("rolled_back") is True)
    out["confirmed"] = sum(1 for r in measured if r.get("confirmed") is True)
    late = [float(r["rate_late_ms"]) for r in measured if r.get("rate_late_ms") is not None]
    out["rate_late"] = {
        "runs": sum(1 for v in late if v > 0),
        "of": len(late),
        "ms": spread(v for v in late if v > 0),
    }
    out["vip_after"] = dict(Counter(str(r.get("vip_after") or "none") for r in measured))
    monitors: dict[str, dict[str, int]] = {}
    for run in measured:
        for host, seen in run.get("monitors", {}).items():
            total = monitors.setdefault(host, {"requests": 0, "served": 0})
            total["requests"] += int(seen.get("requests", 0))
            total["served"] += int(seen.get("served", 0))
    out["monitors"] = monitors
    return out


def unconfirmable_floors(stats: Mapping[str, Any], source: str = "live") -> dict[str, Any]:
    """Median unserved <= 1 s (both the longest gap and claim -> served again), the VIP back on the
    old holder after every run, no run confirmed."""
    runs = int(stats.get("runs", 0))
    out: dict[str, Any] = {}
    for metric in ("max_gap_ms", "served_again_ms"):
        median = stats.get(metric, {}).get("median")
        out[f"median_{metric}"] = {
            "measured": median,
            "floor": UNCONFIRMABLE_FLOOR_MS,
            "met": median is not None and median <= UNCONFIRMABLE_FLOOR_MS,
        }
    on_source = int(stats.get("vip_after", {}).get(source, 0))
    out["vip_on_old_holder"] = {"measured": on_source, "floor": runs, "met": runs > 0 and on_source == runs}
    confirmed = int(stats.get("confirmed", 0))
    out["confirmed"] = {"measured": confirmed, "floor": 0, "met": runs > 0 and confirmed == 0}
    return out
