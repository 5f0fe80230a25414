"""`failover lab bench`: failover's own swap figures, and the same moves by the anchors, side by side.

The entry point (`failover lab bench`, `python -m failover.lab.bench`) and the import path of the
bench's parts, which live in their own modules: ``scenarios.py`` runs the chosen scenarios into one
report (each scenario in a module of its own: ``own_moves.py``, ``crashes.py``, ``soak.py``,
``unconfirmable.py``, ``anchors.py``; ``measure.py`` measures one move), ``figures.py`` computes over
the measured samples, ``render.py`` writes the reports, and ``idle_cost.py`` reads a daemon's idle
CPU/RSS from /proc. The contenders themselves live in ``contenders.py``. Every figure comes from a
measured record; a contender that cannot run gets a row saying why, never a number.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from failover.lab.figures import (
    crash_ratios,
    drain_figures,
    floors,
    monitor_figures,
    move_figures,
    profile,
    rate_lateness_ms,
    ratio,
    ratios,
    reason_figures,
    spread,
    summarize_runs,
    summarize_unconfirmable,
    takeover_floors,
    timeline,
    unconfirmable_figures,
    unconfirmable_floors,
)
from failover.lab.idle_cost import sample_idle
from failover.lab.render import (
    fmt_idle,
    fmt_number,
    fmt_spread,
    render_markdown,
    render_takeover,
    render_unconfirmable,
    write_outputs,
)
from failover.lab.scenarios import (
    FULL_RUNS,
    FULL_SOAK_S,
    QUICK_SOAK_S,
    BenchError,
    Budget,
    client_block_rules,
    contender_row,
    crash_failover,
    failover_crashes,
    failover_moves,
    heartbeat_soak,
    known_names,
    measure,
    restore_after_crash,
    run_bench,
    unconfirmable_swap,
    unconfirmable_swaps,
    wait_settled,
)

__all__ = [
    "BenchError",
    "Budget",
    "bench",
    "client_block_rules",
    "contender_row",
    "crash_failover",
    "crash_ratios",
    "drain_figures",
    "failover_crashes",
    "failover_moves",
    "floors",
    "fmt_idle",
    "fmt_number",
    "fmt_spread",
    "heartbeat_soak",
    "known_names",
    "main",
    "measure",
    "monitor_figures",
    "move_figures",
    "profile",
    "rate_lateness_ms",
    "ratio",
    "ratios",
    "reason_figures",
    "render_markdown",
    "render_takeover",
    "render_unconfirmable",
    "restore_after_crash",
    "run_bench",
    "sample_idle",
    "spread",
    "summarize_runs",
    "summarize_unconfirmable",
    "takeover_floors",
    "timeline",
    "unconfirmable_figures",
    "unconfirmable_floors",
    "unconfirmable_swap",
    "unconfirmable_swaps",
    "wait_settled",
    "write_outputs",
]

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"


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
    checks += report.get("unconfirmable", {}).get("floors", {}).values()
    return 0 if all(c["met"] for c in checks) else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m failover.lab.bench", description=__doc__.split("\n")[0])
    parser.add_argument("-n", "--pairs", type=int, default=10)
    parser.add_argument(
        "--quick", action="store_true", help="2 pairs, 2 runs per contender, 5 unconfirmable swaps (<= 8 min)"
    )
    parser.add_argument("--runs", type=int, help=f"runs per contender and scenario (default {FULL_RUNS})")
    parser.add_argument("--only", action="append", choices=known_names(), help="repeatable")
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
