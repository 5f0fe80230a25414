"""The bench's scenarios put together: run_bench, which runs the chosen ones and builds the whole report.

The scenarios live in their own modules: ``measure.py`` measures one move under its own client load (and
holds the time budget), ``own_moves.py`` runs failover's own swap/unswap pairs, ``crashes.py`` its crash
takeovers, ``soak.py`` the heartbeat-loss soak, ``unconfirmable.py`` the swap that cannot be confirmed
(backup unreachable for clients, rolled back), and ``anchors.py`` each anchor's row (the contenders
themselves live in ``contenders.py``). This module is also the import path of their names. A contender
that cannot run gets a row saying why, never a number.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from failover.lab import contenders as cont
from failover.lab.anchors import contender_row
from failover.lab.crashes import crash_failover, failover_crashes, restore_after_crash
from failover.lab.figures import crash_ratios, ratios, takeover_floors
from failover.lab.measure import (
    FULL_RUNS,
    PRE_S,
    RECOVER_TIMEOUT_S,
    SETTLE_S,
    BenchError,
    Budget,
    Say,
    measure,
    repeat,
    wait_settled,
)
from failover.lab.own_moves import failover_moves
from failover.lab.soak import heartbeat_soak, rejected_delta
from failover.lab.unconfirmable import (
    MONITOR_INTERVAL_MS,
    MONITORS,
    UNCONFIRMABLE_NAME,
    UNCONFIRMABLE_PRE_S,
    UNCONFIRMABLE_TABLE,
    client_block_rules,
    unconfirmable_swap,
    unconfirmable_swaps,
)

__all__ = [
    "CRASH_FAST_CONFIG",
    "CRASH_FAST_LABEL",
    "CRASH_FAST_NAME",
    "FULL_BUDGET_S",
    "FULL_RUNS",
    "FULL_SOAK_S",
    "MONITORS",
    "MONITOR_INTERVAL_MS",
    "PRE_S",
    "QUICK_BUDGET_S",
    "QUICK_SOAK_S",
    "RECOVER_TIMEOUT_S",
    "SETTLE_S",
    "UNCONFIRMABLE_NAME",
    "UNCONFIRMABLE_PRE_S",
    "UNCONFIRMABLE_TABLE",
    "BenchError",
    "Budget",
    "Say",
    "client_block_rules",
    "contender_row",
    "crash_failover",
    "failover_crashes",
    "failover_moves",
    "heartbeat_soak",
    "known_names",
    "measure",
    "rejected_delta",
    "repeat",
    "restore_after_crash",
    "run_bench",
    "unconfirmable_swap",
    "unconfirmable_swaps",
    "wait_settled",
]

FULL_BUDGET_S = 35 * 60.0
QUICK_BUDGET_S = 8 * 60.0  # quick: ~5 min with the unconfirmable swap
FULL_SOAK_S = 300.0
QUICK_SOAK_S = 25.0
# The crash of live at the fastest timers the issue names (contenders.py: its name, label and config).
CRASH_FAST_NAME = cont.CRASH_FAST_NAME
CRASH_FAST_LABEL = cont.CRASH_FAST_LABEL
CRASH_FAST_CONFIG = cont.CRASH_FAST_CONFIG


def known_names() -> list[str]:
    """What `--only` accepts: the contenders, and the scenarios of failover's own."""
    return [*cont.known_names(), UNCONFIRMABLE_NAME, CRASH_FAST_NAME]


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
