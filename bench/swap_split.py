"""Where a swap's time goes: from the bench's spawn of `failover swap` to the new holder's first answer.

Builds the lab the bench builds (root: `failover.lab.cluster.LabCluster`, torn down on exit), runs N
swap/unswap pairs the way `failover lab bench` does (`_failover_move`: each under its own client load,
the CLI spawned on live), and puts every agent log line of the move on the bench's clock, in ms after the
spawn: the JSON logs' wall-clock `timestamp` less the host's wall-minus-monotonic offset (the same in
every process), the CLI's own steps (`preflight` is the core's start of the move; the other steps are
relative to it). Prints each move, then medians of each point over the moves:

    sudo .venv/bin/python bench/swap_split.py -n 3
    sudo .venv/bin/python bench/swap_split.py -n 5 --json /tmp/split.json

A log line is written when the thing it reports is done (`health-check`, `handoff-installed`,
`load-measured`, `release` and `claim` after netlink confirmed them), so each point is an upper bound of
when it happened. `preflight` after the spawn is found as the target's `handoff-installed` or
`health-check` (whichever logged `healthy`/`target-ready` last) less that step's ms: on this machine
kind the CLI steps and the logs agree within a ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from failover.lab import own_moves
from failover.lab.cluster import LabCluster

EVENTS = ("health-check", "handoff-installed", "load-measured", "release", "claim", "announced")
ALL_EVENTS = False  # --all-events: every agent log line, not only EVENTS


def _wall(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


def split(cluster: LabCluster, workdir: Path, move: str, source: str, target: str) -> dict[str, Any]:
    marks = {h: len(cluster.agent_events(h)) for h in (source, target)}
    result = own_moves._failover_move(cluster, workdir, move, source, target)
    offset = time.time() - time.monotonic()
    started = float(result["action_at"])
    points: dict[str, float] = {}
    for host, side in ((source, "source"), (target, "target")):
        for event in cluster.agent_events(host)[marks[host]:]:
            name = str(event.get("event"))
            at = (_wall(event) - offset - started) * 1000.0
            if (ALL_EVENTS or name in EVENTS) and -50.0 < at < 2000.0:
                points.setdefault(f"{side} {name}", round(at, 1))  # the first of each
    steps = {str(s["step"]): float(s["ms"]) for s in result.get("steps", [])}
    ready = steps.get("target-ready", steps.get("healthy"))
    last_check = max(
        (points[k] for k in ("target handoff-installed", "target health-check") if k in points), default=None
    )
    if ready is not None and last_check is not None:
        points["preflight (core starts the move)"] = round(last_check - ready, 1)
    for step, ms in steps.items():
        if "preflight (core starts the move)" in points and step != "preflight":
            points[f"step {step}"] = round(points["preflight (core starts the move)"] + ms, 1)
    points["first response"] = result.get("first_response_ms")
    return {"move": move, "points": points, "error": result.get("error")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--pairs", type=int, default=3, help="swap/unswap pairs (default 3)")
    ap.add_argument("--json", type=Path, help="write every move's points here")
    ap.add_argument("--all-events", action="store_true", help="every agent log line of the move")
    args = ap.parse_args()
    global ALL_EVENTS
    ALL_EVENTS = args.all_events
    moves = []
    with tempfile.TemporaryDirectory(prefix="failover-split-") as tmp:
        workdir = Path(tmp)
        with LabCluster(workdir / "failover") as cluster:
            for _ in range(args.pairs):
                for move, source, target in (("swap", "live", "backup"), ("unswap", "backup", "live")):
                    one = split(cluster, workdir, move, source, target)
                    moves.append(one)
                    order = sorted(one["points"].items(), key=lambda kv: kv[1] if kv[1] is not None else 1e9)
                    print(f"{move}: " + ", ".join(f"{k} {v}" for k, v in order), flush=True)
    names = sorted({k for m in moves for k in m["points"]})
    print("\nmedians over the moves (ms after the spawn; n):")
    rows = []
    for name in names:
        values = [float(m["points"][name]) for m in moves if m["points"].get(name) is not None]
        rows.append((statistics.median(values), name, min(values), max(values), len(values)))
    for median, name, low, high, n in sorted(rows):
        print(f"  {name:<34} {low:7.1f} / {median:7.1f} / {high:7.1f}  ({n})")
    if args.json:
        args.json.write_text(json.dumps(moves, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
