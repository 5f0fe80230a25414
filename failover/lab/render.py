"""The bench's reports: the markdown tables, the one-line progress texts, and the files written.

Owns how figures read (fmt_*), the markdown report (render_markdown, render_unconfirmable,
render_takeover), the progress lines the scenarios print (run_text, idle_text, soak_text,
unconfirmable_text), and write_outputs (JSON and markdown).
It measures and judges nothing: every number it shows comes from a report built by scenarios.py
and figures.py.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from failover.lab import contenders as cont
from failover.lab.figures import CRASH_ROWS, METRICS, SOAK_SAMPLE_S

METRIC_TITLES = {
    "failed": "failed",
    "stalled_over_1s": "stalled ≥ 1 s",
    "max_gap_ms": "max gap (ms)",
    "first_response_ms": "action → first response from backup (ms)",
    "keepalive_resets": "keep-alive resets",
    "keepalive_closed_before_response": "keep-alive closed before response",
    "rsts_from_vip": "RSTs from the VIP",
}

MOVE_TITLES = {
    "swap": "swap",
    "unswap": "unswap",
    "all": "all moves",
    "baseline": "no move (load's own jitter)",
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


def fmt_metric(stats: Mapping[str, Any], metric: str) -> str:
    """One metric's spread; RSTs no run counted read "not counted", never "none" (which reads as zero)."""
    spread = stats.get(metric, {})
    if metric == "rsts_from_vip" and not spread.get("n"):
        return "not counted"
    return fmt_spread(spread)


def fmt_idle(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


# --- the markdown report -----------------------------------------------------------------------------


def render_markdown(report: Mapping[str, Any]) -> str:
    lines = [f"### failover lab bench — {report.get('mode', '?')} run, {report.get('finished', '')}", ""]
    lines += [f"Command: `{report.get('command', '')}`", ""]
    own = report.get("failover_moves", {})
    if own:
        lines += ["#### failover's own moves (each under its own client load)", ""]
        lines += [
            "| move | runs | unserved (ms, agents' logs) | failed | stalled ≥ 1 s | max gap (ms) "
            "| action → first response (ms) | CLI wall (ms) | keep-alive resets "
            "| keep-alive closed before response | RSTs from the VIP | old holder drained after (ms) "
            "| connections left at the drain's end |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
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
                f"| {fmt_spread(stats.get('cli_wall_ms', {}))} | {fmt_spread(stats['keepalive_resets'])} "
                f"| {fmt_spread(stats.get('keepalive_closed_before_response', {}))} "
                f"| {fmt_metric(stats, 'rsts_from_vip')} | {fmt_spread(stats.get('drain_after_ms', {}))} "
                f"| {fmt_spread(stats.get('drain_left', {}))} |"
            )
        checks = own.get("floors", {})
        if checks:
            verdict = ", ".join(
                f"{name} {'met' if check['met'] else 'NOT met'}" for name, check in checks.items()
            )
            lines += ["", f"Floors (0 failed, 0 stalled, median max gap ≤ 10 ms): {verdict}."]
        ended = own.get("stats", {}).get("all", {}).get("drain_how")
        if ended:
            lines += ["", f"How the drains ended (all moves; the CLI's JSON `drain.how`): {_counts(ended)}."]
        lines.append("")
    lines += render_unconfirmable(report)
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
            cells = " | ".join(fmt_metric(stats, m) for m in METRICS)
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
        (name, rows[name]) for name in CRASH_ROWS
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
    for key, title in (("soak", "Heartbeat-loss soak"), ("soak_fast", "Heartbeat-loss soak, 10 ms / 30 ms")):
        soak = report.get(key)
        if not soak:
            continue
        lines += ["", f"#### {title} ({soak.get('action', '')})", ""]
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
                f"- heartbeats lost (peer's received vs sent): {lost}; nft counters {soak['nft_counters']}"
                f"{_soak_extras(soak)}",
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


def _soak_extras(soak: Mapping[str, Any]) -> str:
    """What else the soak counted about its heartbeats: the agents' rejections, the relays' counts."""
    text = f"; datagrams the agents rejected, by reason: {soak['rejected']}" if soak.get("rejected") else ""
    relays = soak.get("relays")
    return text + (f"; relays {relays}" if relays else "; relays' counts not read")


def render_unconfirmable(report: Mapping[str, Any]) -> list[str]:
    """The swap backup cannot confirm: how the CLI ended, where the VIP went, clients' unserved time."""
    section = report.get("unconfirmable")
    if not section:
        return []
    stats = section["stats"]
    lines = [
        "#### A swap that cannot be confirmed (rolled back)",
        "",
        f"{section.get('action', '')}. min / median / max over runs.",
        "",
        "| runs | CLI exit | rolled back | confirmed | VIP afterwards | max gap (ms) "
        "| backup's claim → first request served again by live (ms) "
        "| claim → live's reclaim (ms, agents' logs) "
        "| proof deadline (ms) | live's rate before (req/s) | failed | stalled ≥ 1 s | served by backup "
        "| CLI wall (ms) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {stats['runs']}{_errors(stats)} | {_counts(stats['exit_codes'])} | {stats['rolled_back']} "
        f"| {stats['confirmed']} | {_counts(stats['vip_after'])} | {fmt_spread(stats['max_gap_ms'])} "
        f"| {fmt_spread(stats['served_again_ms'])} | {fmt_spread(stats['reclaim_ms'])} "
        f"| {fmt_spread(stats['deadline_ms'])} | {fmt_spread(stats['source_rate'])} "
        f"| {fmt_spread(stats['failed'])} "
        f"| {fmt_spread(stats['stalled_over_1s'])} | {fmt_spread(stats['served_by_target'])} "
        f"| {fmt_spread(stats['cli_wall_ms'])} |",
    ]
    monitors = stats.get("monitors", {})
    if monitors:
        polled = ", ".join(
            f"from {h}: {m['served']} of {m['requests']} answered" for h, m in monitors.items()
        )
        lines += ["", f"Monitors polling backup's own address meanwhile (all runs): {polled}."]
    late = stats.get("rate_late", {})
    if late.get("of"):
        lines += [
            "",
            f"live's request rate (read from its access log, sent in Released) was measured after its "
            f"Released had gone in {late['runs']} of {late['of']} runs"
            + (f", by {fmt_spread(late['ms'])} ms" if late["runs"] else "")
            + "; the target then knows no rate and waits confirm.within_s.",
        ]
    reasons = [r["reason"] for r in section.get("runs", []) if r.get("reason")]
    if reasons:
        lines += ["", f"The CLI's reason (first run): {reasons[0]}"]
    checks = section.get("floors", {})
    if checks:
        verdict = ", ".join(
            f"{name} {fmt_number(c['measured'])} (floor {fmt_number(c['floor'])}) "
            f"{'met' if c['met'] else 'NOT met'}"
            for name, c in checks.items()
        )
        lines += ["", f"Floors: {verdict}."]
    return [*lines, ""]


def _counts(counts: Mapping[str, int]) -> str:
    """`{"1": 5}` as `1 (5x)`; several values side by side."""
    return ", ".join(f"{value} ({n}x)" for value, n in sorted(counts.items())) or "-"


def _errors(stats: Mapping[str, Any]) -> str:
    return f" (+{stats['errors']} not measured)" if stats.get("errors") else ""


def write_outputs(report: Mapping[str, Any], json_path: Path, md_path: Path) -> str:
    markdown = render_markdown(report)
    for path in (json_path, md_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    md_path.write_text(markdown)
    return markdown


# --- progress lines ----------------------------------------------------------------------------------


def run_text(r: Mapping[str, Any]) -> str:
    if r.get("error") and "failed" not in r:
        return f"NOT MEASURED: {r['error']}"
    text = (
        f"failed {r['failed']}, stalled {r['stalled_over_1s']}, max gap {fmt_number(r['max_gap_ms'])} ms, "
        f"first response {fmt_number(r['first_response_ms'])} ms, ka resets {r['keepalive_resets']}"
    )
    if r.get("keepalive_orderly_closes") is not None:
        text += (
            f" (orderly closes {r['keepalive_orderly_closes']}, "
            f"closed before response {r['keepalive_closed_before_response']})"
        )
    text += f", RSTs from the VIP {_rsts(r)}"
    if r.get("unserved_ms") is not None:
        text += f", unserved {fmt_number(r['unserved_ms'])} ms"
    if r.get("drain_how") is not None:
        text += (
            f", drained ({r['drain_how']}) after {fmt_number(r.get('drain_after_ms'))} ms, "
            f"{fmt_number(r.get('drain_left'))} left"
        )
    if r.get("error"):
        text += f" — {r['error']}"
    return text


def _rsts(r: Mapping[str, Any]) -> str:
    """The RST count, "not counted" when the load did not count, with the capture's drops if any."""
    if r.get("rsts_from_vip") is None:
        return "not counted"
    drops = r.get("rst_capture_drops")
    return f"{r['rsts_from_vip']}" + (f" (+{drops} frames the capture dropped)" if drops else "")


def unconfirmable_text(r: Mapping[str, Any]) -> str:
    if r.get("error"):
        return f"NOT MEASURED: {r['error']}"
    monitors = ", ".join(f"{h} {m['served']}/{m['requests']}" for h, m in r.get("monitors", {}).items())
    return (
        f"exit {r['exit_code']}, rolled back {r['rolled_back']}, confirmed {r['confirmed']}, VIP on "
        f"{r['vip_after']}; max gap {fmt_number(r['max_gap_ms'])} ms, claim -> served again "
        f"{fmt_number(r['served_again_ms'])} ms, reclaim {fmt_number(r['reclaim_ms'])} ms, deadline "
        f"{fmt_number(r['deadline_ms'])} ms; failed {r['failed']}, stalled {r['stalled_over_1s']}, "
        f"served by backup {r['served_by_target']}; monitors served {monitors}; live's rate measured "
        f"{fmt_number(r.get('rate_late_ms'))} ms after its release"
    )


def idle_text(idle: Mapping[str, Any]) -> str:
    return ", ".join(f"{h} {v['cpu_percent']}% CPU {v['rss_mib']} MiB" for h, v in idle.items())


def soak_text(r: Mapping[str, Any]) -> str:
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
