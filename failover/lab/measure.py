"""Measuring one move of a bench scenario under its own client load, and the loop over a scenario's runs.

Owns the measurement (one client load per move, started on a settled lab and stopped after the move
has settled), the settle check, the repeat loop over a scenario's runs within the time budget, the
budget itself, and the error that says a run could not be measured.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from failover.lab import contenders as cont
from failover.lab.client import ClientLoad, Request
from failover.lab.figures import (
    move_figures,
)
from failover.lab.netns import VIP, Lab

Say = Callable[[str], None]

FULL_RUNS = 5
PRE_S = 0.5  # load before the action, to see a served client first
SETTLE_S = 1.0  # load after the client has moved
RECOVER_TIMEOUT_S = 15.0


class BenchError(RuntimeError):
    """A run could not be measured (the lab never settled, the load did not start)."""


@dataclass
class Budget:
    deadline: float
    truncated: str = ""

    def left(self) -> float:
        return self.deadline - time.monotonic()


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
