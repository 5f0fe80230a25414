"""The bench's heartbeat-loss soak: heartbeats lossy and jittery, live healthy: a takeover is a false one."""

from __future__ import annotations

import contextlib
import json
import statistics
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from failover.lab import contenders as cont
from failover.lab.client import ClientLoad, summarize
from failover.lab.cluster import LabCluster
from failover.lab.figures import (
    SOAK_SAMPLE_S,
)
from failover.lab.measure import Budget, Say
from failover.lab.netns import VIP
from failover.lab.render import soak_text


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
