"""failover's own planned moves in the bench: swap/unswap pairs in one LabCluster, and a no-move baseline."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from failover.lab import contenders as cont
from failover.lab.cluster import LabCluster
from failover.lab.figures import (
    drain_figures,
    floors,
    profile,
    summarize_runs,
    timeline,
)
from failover.lab.idle_cost import sample_idle
from failover.lab.measure import FULL_RUNS, BenchError, Budget, Say, measure
from failover.lab.rehearse import unserved_ms
from failover.lab.render import idle_text, run_text


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
