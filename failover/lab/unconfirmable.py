"""The bench's swap that cannot be confirmed: backup unreachable for clients, so the swap is rolled back.

Owns the firewall mistake that makes it so (nft rules in backup's namespace), the monitors that poll
backup's own address meanwhile, and the scenario's runs.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from failover.lab.client import ClientLoad, Request
from failover.lab.cluster import LabCluster
from failover.lab.figures import (
    monitor_figures,
    rate_lateness_ms,
    reason_figures,
    summarize_unconfirmable,
    unconfirmable_figures,
    unconfirmable_floors,
)
from failover.lab.measure import Budget, Say, measure, repeat, wait_settled
from failover.lab.netns import VIP, Lab
from failover.lab.rehearse import claim_at
from failover.lab.render import unconfirmable_text
from failover.load import WINDOW_S

# The swap that cannot be confirmed: selected with `--only unconfirmable`, run in every default bench.
UNCONFIRMABLE_NAME = "unconfirmable"
UNCONFIRMABLE_TABLE = "fo_unconfirmable"
# The load runs as long before the swap as live's rate window (failover.load.WINDOW_S), so that the rate
# live sends (in Released), and the deadline backup derives from it, are those of a site at 200 req/s.
UNCONFIRMABLE_PRE_S = WINDOW_S + 0.5
MONITOR_INTERVAL_MS = 100.0  # a monitor polls backup's own address 10 times a second
MONITORS = ("live", "client")  # where the monitors poll from: the peer node, and the clients' own address


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
