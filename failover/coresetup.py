"""The protocol core's setup for one node, from the cluster file: names, keys, timings, budgets, policies.

Owns how each setting of the cluster file becomes a figure the core works with (milliseconds to seconds,
a probe's budget from its window, a drain that cannot work on this host turned off with its reason).
"""

from __future__ import annotations

from failover import protocol
from failover.config import ClusterConfig, NodeConfig


def node_setup(
    cfg: ClusterConfig, node: NodeConfig, *, keys: tuple[bytes, ...], boot: int, drain_blocker: str
) -> protocol.NodeSetup:
    """`drain_blocker`: why this host cannot drain ("off" when swap.drain_ms is 0), or "" when it can."""
    t = cfg.takeover
    probe_ms = t.probe_count * t.probe_interval_ms + t.probe_wait_ms
    return protocol.NodeSetup(
        cluster=cfg.cluster,
        name=node.name,
        peer=cfg.peer_of(node.name).name,
        home=node.home,
        digest=cfg.digest.hex(),
        keys=keys,
        timing=protocol.Timing(
            heartbeat_interval=cfg.heartbeat.interval_ms / 1000,
            dead_after=cfg.heartbeat.dead_after_ms / 1000,
            step_timeout=cfg.swap.step_timeout_ms / 1000,
            announce_schedule=tuple(ms / 1000 for ms in cfg.announce.schedule_ms),
        ),
        boot=boot,
        probe_budget=probe_ms / 1000,
        probe_window=protocol.ProbeWindow(
            t.probe_count, t.probe_interval_ms / 1e3, t.probe_wait_ms / 1e3
        ),
        measure_every=t.probe_measure_every_ms / 1000,
        fence_budget=cfg.takeover.fence_timeout_ms / 1000,
        vip=str(cfg.vip.ip),
        automatic=cfg.takeover.automatic,
        on_vip_lost=cfg.takeover.on_vip_lost,
        fence=bool(cfg.takeover.fence),
        self_check_fails=cfg.health.self_check_fails,
        confirm=cfg.confirm.mode,
        confirm_requests=cfg.confirm.requests,
        confirm_within=cfg.confirm.within_s,
        drain=0.0 if drain_blocker else cfg.swap.drain_ms / 1000,
        drain_max=0.0 if drain_blocker else cfg.swap.drain_max_ms / 1000,
        drain_off="" if not drain_blocker else (
            "swap.drain_ms is 0" if drain_blocker == "off" else drain_blocker
        ),
        straggler_window=cfg.confirm.straggler_window_ms / 1000,
        before_release=len(cfg.hooks.before_release) * cfg.hooks.timeout_ms / 1000,
        # A dry run's host checks: the health check with its timeout, then reading a few files.
        host_check_budget=cfg.health.timeout_ms / 1000 + 0.5,
    )
