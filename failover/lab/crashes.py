"""failover's unplanned takeover in the bench: live crashed (link down, agent killed), the lab put back."""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from failover.lab import contenders as cont
from failover.lab.cluster import LabCluster
from failover.lab.figures import (
    summarize_runs,
)
from failover.lab.measure import Budget, Say, measure, repeat
from failover.lab.netns import VIP
from failover.lab.render import run_text


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
