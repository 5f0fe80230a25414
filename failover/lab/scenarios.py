"""The bench's scenarios: the code that drives a lab and measures what happens in it.

Owns the measurement loop (one client load per move, started on a settled lab and stopped after the
move has settled), failover's own swap/unswap pairs, its crash takeovers, the heartbeat-loss soak, the
swap that cannot be confirmed (backup unreachable for clients, rolled back), each anchor's row (the
contenders themselves live in ``contenders.py``), the time budget, and run_bench, which puts the whole
report together. A contender that cannot run gets a row saying why, never a number.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from failover.lab import contenders as cont
from failover.lab.client import ClientLoad, Request, summarize
from failover.lab.cluster import LabCluster
from failover.lab.figures import (
    SOAK_SAMPLE_S,
    crash_ratios,
    drain_figures,
    floors,
    monitor_figures,
    move_figures,
    profile,
    rate_lateness_ms,
    ratios,
    reason_figures,
    summarize_runs,
    summarize_unconfirmable,
    takeover_floors,
    timeline,
    unconfirmable_figures,
    unconfirmable_floors,
)
from failover.lab.idle_cost import sample_idle
from failover.lab.netns import VIP, Lab
from failover.lab.rehearse import claim_at, unserved_ms
from failover.lab.render import idle_text, run_text, soak_text, unconfirmable_text
from failover.load import WINDOW_S

Say = Callable[[str], None]

FULL_RUNS = 5
PRE_S = 0.5  # load before the action, to see a served client first
SETTLE_S = 1.0  # load after the client has moved
RECOVER_TIMEOUT_S = 15.0
FULL_BUDGET_S = 35 * 60.0
QUICK_BUDGET_S = 8 * 60.0  # quick: ~5 min with the unconfirmable swap
FULL_SOAK_S = 300.0
QUICK_SOAK_S = 25.0
# The swap that cannot be confirmed: selected with `--only unconfirmable`, run in every default bench.
UNCONFIRMABLE_NAME = "unconfirmable"
UNCONFIRMABLE_TABLE = "fo_unconfirmable"
# The load runs as long before the swap as live's rate window (failover.load.WINDOW_S), so that the rate
# live sends (in Released), and the deadline backup derives from it, are those of a site at 200 req/s.
UNCONFIRMABLE_PRE_S = WINDOW_S + 0.5
MONITOR_INTERVAL_MS = 100.0  # a monitor polls backup's own address 10 times a second
MONITORS = ("live", "client")  # where the monitors poll from: the peer node, and the clients' own address
# The crash of live at the fastest timers the issue names (contenders.py: its name, label and config).
CRASH_FAST_NAME = cont.CRASH_FAST_NAME
CRASH_FAST_LABEL = cont.CRASH_FAST_LABEL
CRASH_FAST_CONFIG = cont.CRASH_FAST_CONFIG


def known_names() -> list[str]:
    """What `--only` accepts: the contenders, and the scenarios of failover's own."""
    return [*cont.known_names(), UNCONFIRMABLE_NAME, CRASH_FAST_NAME]


class BenchError(RuntimeError):
    """A run could not be measured (the lab never settled, the load did not start)."""


@dataclass
class Budget:
    deadline: float
    truncated: str = ""

    def left(self) -> float:
        return self.deadline - time.monotonic()


# --- measuring one move ------------------------------------------------------------------------------


def _served_by(lab: Lab, host: str) -> bool:
    answer = lab.run("client", ["curl", "-s", "--max-time", "1", f"http://{VIP.ip}/"], check=False, timeout=3)
    return answer.stdout.strip() == host


def repeat(
    runs: int,
    budget: Budget,
    say: Say,
    what: str,
    label: str,
    run_once: Callable[[], dict[str, Any]],
    describe: Callable[[Mapping[str, Any]], str],
    between: Callable[[], None] | None = None,
) -> list[dict[str, Any]]:
    """A scenario's runs in one lab, within the time budget; a run that fails is a result with its error."""
    results: list[dict[str, Any]] = []
    for run in range(runs):
        if budget.left() < 30:
            budget.truncated = f"{what} stopped after {run} of {runs} runs (time budget)"
            break
        try:
            result = run_once()
        except BenchError as err:
            result = {"error": str(err)}
        result["run"] = run
        results.append(result)
        say(f"  {label} {run + 1}/{runs}: {describe(result)}")
        if between is not None and run + 1 < runs:
            between()
    return results


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
    lab: Lab,
    workdir: Path,
    source: str,
    target: str,
    act: Callable[[], tuple[float, dict[str, Any]]],
    more: Callable[[Sequence[Request]], dict[str, Any]] | None = None,
    pre_s: float = PRE_S,
) -> dict[str, Any]:
    """One move under its own client load: settle check, load, action, wait for the client to move.

    `act` carries out the move and returns (monotonic time just before it, extra facts to record);
    `more`, given the load's records once it stopped, returns figures of the scenario's own; `pre_s`
    is how long the load runs before the action.
    """
    wait_settled(lab, source)
    load = ClientLoad(lab, "client", str(VIP.ip), workdir / "client", duration_s=60, max_requests=20_000)
    load.start()
    try:
        time.sleep(pre_s)
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
    records = load.records()
    figures = move_figures(records, load.keepalive(), action_at, target, rsts=load.rsts())
    figures.update(extra)
    if more is not None:
        figures.update(more(records))
    figures["recovered"] = moved
    figures["action_at"] = action_at
    figures["recovered_after_s"] = round(recovered_after, 3)
    with contextlib.suppress(OSError):
        shutil.rmtree(load.dir)
    return figures


# --- failover's own moves ----------------------------------------------------------------------------


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
        say(f"failover: lab {cluster.lab.prefix} up; idle {idle_text(row['idle'])}")
        for pair in range(pairs):
            if budget.left() < 20:
                budget.truncated = f"failover stopped after {pair} of {pairs} pairs (time budget)"
                break
            for move, source, target in (("swap", "live", "backup"), ("unswap", "backup", "live")):
                result = _failover_move(cluster, workdir, move, source, target)
                result["run"] = pair
                moves[move].append(result)
                say(f"  {move} {pair + 1}/{pairs}: {run_text(result)}")
        # The same measurement with no move at all: the load's own jitter, the floor under every gap.
        for run in range(min(pairs, FULL_RUNS)):
            if budget.left() < 20:
                break
            result = measure(cluster.lab, workdir, "live", "live", lambda: (time.monotonic(), {}))
            result["run"] = run
            moves["baseline"].append(result)
            say(f"  no move {run + 1}: {run_text(result)}")
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
    result.update(drain_figures(outcome.get("drain")))
    offset = time.time() - time.monotonic()
    tl = timeline(cluster.agent_events(source), cluster.agent_events(target), started, ended, offset)
    tl["first_response_ms"] = result.get("first_response_ms")
    tl["cli_wall_ms"] = result["cli_wall_ms"]
    result["timeline"] = tl
    return result


# --- failover's unplanned takeover -------------------------------------------------------------------


def failover_crashes(
    name: str, overrides: Mapping[str, Any] | None, runs: int, workdir: Path, budget: Budget, say: Say
) -> dict[str, Any]:
    """`runs` crashes of live in one LabCluster, put back between runs; the crash scenario's result."""
    with LabCluster(workdir / name, overrides=overrides) as cluster:
        say(f"{name}: crash lab {cluster.lab.prefix} up")
        results = repeat(
            runs, budget, say, f"{name} crash", "crash",
            lambda: crash_failover(cluster, workdir), run_text, between=lambda: restore_after_crash(cluster),
        )
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
    seconds: float,
    overrides: Mapping[str, Any] | None,
    workdir: Path,
    budget: Budget,
    say: Say,
    name: str = "soak",
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
    with LabCluster(workdir / name, overrides=overrides) as cluster:
        lab = cluster.lab
        say(f"{name}: lab {lab.prefix} up; {action}")
        load = ClientLoad(
            lab, "client", str(VIP.ip), workdir / f"{name}-client", interval_ms=20.0,
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
        # The relays write their counts when they end (5 s after the soak); the lab's end would kill them.
        lab.wait_until(lambda: all(p.exists() for p in relay_stats.values()), timeout=10.0, interval=0.2)
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
        # Suspicions the holder cleared by speaking before dead_after: no takeover was due.
        "suspicions_cleared": {h: count(h, "suspicion-cleared") for h in cont.SERVERS},
        "probes": {h: count(h, "probe") for h in cont.SERVERS},
        "last_takeover": last,
        "holders": dict(holders),
        "holders_always_live": set(holders) == {"live"},
        "heartbeats": heartbeats,
        # Datagrams the agents refused meanwhile, by reason: a heartbeat the relay's jitter made arrive
        # after a newer one is refused as a replay, so the agents see more loss than nft dropped.
        "rejected": {h: rejected_delta(before[h], after[h]) for h in cont.SERVERS},
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
    say(f"  soak: {soak_text(result)}")
    return result


def rejected_delta(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, int]:
    """Datagrams an agent rejected between two of its statuses, by reason (`rejected` counters)."""
    old, new = before.get("rejected") or {}, after.get("rejected") or {}
    deltas = {reason: int(n) - int(old.get(reason, 0)) for reason, n in new.items()}
    return {reason: n for reason, n in deltas.items() if n}


# --- a swap that cannot be confirmed ------------------------------------------------------------------


def client_block_rules(client: str, vip: str, port: int = 80) -> str:
    """nft rules for backup's namespace, a firewall mistake: drop the client's TCP to VIP:port on input.
    The same client's packets to backup's own address pass, and so does everyone else's."""
    return (
        f"table ip {UNCONFIRMABLE_TABLE} {{\n"
        "  counter dropped {}\n"
        "  chain input {\n"
        "    type filter hook input priority 0; policy accept;\n"
        f"    ip saddr {client} ip daddr {vip} tcp dport {port} counter name dropped drop\n"
        "  }\n"
        "}\n"
    )


def unconfirmable_swaps(runs: int, workdir: Path, budget: Budget, say: Say) -> dict[str, Any]:
    """`runs` swaps in one LabCluster (the lab's cluster file as it is) that backup cannot confirm."""
    action = (
        f"`failover swap` (CLI on live) while backup drops the client's TCP to {VIP.ip}:80; monitors poll "
        f"backup's own address 10x/s from {' and '.join(MONITORS)}"
    )
    with LabCluster(workdir / UNCONFIRMABLE_NAME) as cluster:
        say(f"unconfirmable swap: lab {cluster.lab.prefix} up")
        label = "unconfirmable swap"
        results = repeat(
            runs, budget, say, label, label, lambda: unconfirmable_swap(cluster, workdir), unconfirmable_text
        )
    stats = summarize_unconfirmable(results)
    return {
        "action": action,
        "status": "ok",
        "runs": results,
        "stats": stats,
        "floors": unconfirmable_floors(stats),
    }


def unconfirmable_swap(cluster: LabCluster, workdir: Path) -> dict[str, Any]:
    """One swap to a backup that clients cannot reach, under the usual load, with both monitors on."""
    lab = cluster.lab
    backup_address = str(lab.host("backup").address)
    rules = client_block_rules(str(lab.host("client").address), str(VIP.ip))
    # A monitor opens a new connection per poll; its one keep-alive request is made once and left idle.
    monitors = {
        host: ClientLoad(
            lab,
            host,
            backup_address,
            workdir / f"monitor-{host}",
            interval_ms=MONITOR_INTERVAL_MS,
            keepalive_interval_ms=60_000.0,
            duration_s=60,
            max_requests=600,
        )
        for host in MONITORS
    }
    outcome: dict[str, Any] = {}

    def act() -> tuple[float, dict[str, Any]]:
        outcome.update(cluster.move("swap", via="live"))
        return float(outcome["started"]), {}

    def more(records: Sequence[Request]) -> dict[str, Any]:
        started, ended = float(outcome["started"]), float(outcome["ended"])
        claim = claim_at(cluster.agent_events("backup"), started, ended)
        live_events = cluster.agent_events("live")
        reclaim = claim_at(live_events, started, ended)
        figures = unconfirmable_figures(records, claim, reclaim, "live", "backup")
        figures["rate_late_ms"] = rate_lateness_ms(live_events, started, ended)
        return figures

    lab.run("backup", ["nft", "-f", "-"], input=rules, timeout=10)
    try:
        started: list[ClientLoad] = []
        try:
            for monitor in monitors.values():
                monitor.start()
                started.append(monitor)
            # The old holder is also the one the client must be back on: "moved" means rolled back.
            result = measure(lab, workdir, "live", "live", act, more, pre_s=UNCONFIRMABLE_PRE_S)
        finally:
            for monitor in started:
                monitor.stop()
        dropped = _nft_counter(lab, "backup", UNCONFIRMABLE_TABLE, "dropped")
    finally:
        lab.run("backup", ["nft", "delete", "table", "ip", UNCONFIRMABLE_TABLE], check=False, timeout=10)
    holders = cluster.holders()
    reason = str(outcome.get("reason") or outcome.get("stderr") or "")
    result.update(
        exit_code=outcome.get("exit_code"),
        rolled_back=outcome.get("rolled_back"),
        confirmed=outcome.get("confirmed"),
        reason=reason,
        **reason_figures(reason),
        cli_wall_ms=round((float(outcome["ended"]) - float(outcome["started"])) * 1000.0, 3),
        vip_after=",".join(holders) or "none",
        monitors={host: monitor_figures(m.records()) for host, m in monitors.items()},
        dropped_by_backup=dropped,
        steps=outcome.get("steps", []),
    )
    for monitor in monitors.values():
        shutil.rmtree(monitor.dir, ignore_errors=True)
    if holders != ["live"]:
        # A confirmed (or stuck) swap is a measured result; put the VIP back so the next run starts alike.
        if "backup" in holders:
            cluster.move("unswap", via="live")
        wait_settled(lab, "live")
    return result


def _nft_counter(lab: Lab, host: str, table: str, name: str) -> int | None:
    done = lab.run(host, ["nft", "-j", "list", "counter", "ip", table, name], check=False, timeout=10)
    with contextlib.suppress(ValueError, KeyError, TypeError, IndexError):
        for item in json.loads(done.stdout or "{}")["nftables"]:
            if "counter" in item:
                return int(item["counter"]["packets"])
    return None


# --- the anchors -------------------------------------------------------------------------------------


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
                say(f"  idle {idle_text(idle)}")
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
        say(f"  {scenario} {run + 1}/{runs}: {run_text(result)}")
    return {"action": action, "status": "ok", "runs": results, "stats": summarize_runs(results)}


# --- the whole bench ---------------------------------------------------------------------------------


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
    # Unless asked for a number, at least 5 even in quick mode: its floor is a median (~4 s a run).
    unconfirmable_runs = runs if runs is not None else FULL_RUNS
    runs = runs if runs is not None else (max(1, pairs) if quick else FULL_RUNS)
    chosen = list(only) if only else known_names()
    unknown = set(chosen) - set(known_names())
    if unknown:
        raise ValueError(f"unknown contenders {sorted(unknown)}; known: {known_names()}")
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
        if CRASH_FAST_NAME in chosen:
            report["contenders"][CRASH_FAST_NAME] = {
                "label": CRASH_FAST_LABEL,
                "config": CRASH_FAST_CONFIG,
                "overrides": cont.FAILOVER_FAST,
                "scenarios": {
                    "crash": failover_crashes(CRASH_FAST_NAME, cont.FAILOVER_FAST, runs, workdir, budget, say)
                },
                "idle": None,
            }
        if UNCONFIRMABLE_NAME in chosen:
            report["unconfirmable"] = unconfirmable_swaps(unconfirmable_runs, workdir, budget, say)
        for kind in cont.CONTENDERS:
            if kind.name in chosen:
                report["contenders"][kind.name] = contender_row(kind, runs, workdir, budget, missing, say)
        if cont.SOAK_NAME in chosen:
            seconds = soak_s if soak_s is not None else (QUICK_SOAK_S if quick else FULL_SOAK_S)
            report["soak"] = heartbeat_soak(seconds, cont.FAILOVER_TUNED, workdir, budget, say)
            report["soak"]["overrides"] = cont.FAILOVER_TUNED
        if cont.SOAK_FAST_NAME in chosen:
            seconds = soak_s if soak_s is not None else (QUICK_SOAK_S if quick else FULL_SOAK_S)
            fast = heartbeat_soak(seconds, cont.FAILOVER_FAST, workdir, budget, say, cont.SOAK_FAST_NAME)
            report["soak_fast"] = {**fast, "overrides": cont.FAILOVER_FAST}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report["ratios"] = ratios(report)
    report["crash_ratios"] = crash_ratios(report)
    report["takeover_floors"] = takeover_floors(report)
    report["truncated"] = budget.truncated
    report["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    return report
