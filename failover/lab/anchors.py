"""The bench's anchors: each contender's row, its scenarios run in one contender lab (the contenders
themselves live in ``contenders.py``). A contender that cannot run gets a row saying why, never a number.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from failover.lab import contenders as cont
from failover.lab.figures import (
    summarize_runs,
)
from failover.lab.idle_cost import sample_idle
from failover.lab.measure import BenchError, Budget, Say, measure
from failover.lab.render import idle_text, run_text


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
