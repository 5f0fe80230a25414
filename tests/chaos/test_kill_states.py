"""Kill in every state of the state table: an agent frozen as its move enters a state, SIGKILLed, restarted.

The cases come from `failover.protocol.states`: every state of the swap-source, swap-target and
rollback machines is a case, unless `NOT_REACHED` says why a plain or rolled-back swap never enters it,
so a new state is tested (or explained) without anyone adding a case by hand. The test-only fault
`stop-entering:<state>` SIGSTOPs the agent the moment its move enters that state, before any action of
that transition is carried out (for `handed-over`: the VIP is gone from the interface, Released not yet
sent). The agent is SIGKILLed and started again after 0.5 s or 3 s. Within the stated bound, exactly one
host must hold the VIP and serve the client, never two at any sample, and both agents say no move is
in progress.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import pytest

from failover.agent import FAULT_ENV
from failover.lab.cluster import LabCluster
from failover.protocol.states import ROLLBACK, SWAP_SOURCE, SWAP_TARGET, Machine, State
from tests.integration.conftest import client_load, events, failover_cli, lab_cluster

from .conftest import HolderSampler, figure, vip_holders, wait_converged, wait_no_move

pytestmark = [pytest.mark.root, pytest.mark.chaos]

# After the restart: the ready window or a step timeout runs out (1 s), a probe (0.2 s), then a VIP left
# on nobody is taken back after 2 x step_timeout + dead_after (2.25 s), then its probe; room for a busy host.
BOUND_S = 6.0
STEP_TIMEOUT_S = 1.0  # swap.step_timeout_ms (the default, as in the lab)

# States no swap of these scenarios enters, and why; every other state of the three machines is a case.
NOT_REACHED: dict[State, str] = {
    SWAP_SOURCE.states("before-release"): "only with before_release hooks (none in the lab's file)",
    SWAP_SOURCE.states("probing"): "only when the target's answer is lost or late",
    SWAP_SOURCE.states("measuring-load"): "only when live reads its log slower than backup gets ready",
    SWAP_SOURCE.states("failed"): "the end of a failed move: the rollback cases end there",
    SWAP_TARGET.states("claimed"): "only with confirm.mode none (the lab's file proves moves by traffic)",
    SWAP_TARGET.states("failed"): "the end of a refused or expired move, covered by the kills before it",
    SWAP_TARGET.states("unacknowledged"): "only when the source's Done is lost",
    ROLLBACK.states("reclaim-retry"): "only when the reclaim's netlink add fails",
}

# The scenario that enters each machine's states, and whose agent the state belongs to.
SCENARIOS: dict[str, tuple[str, str]] = {  # machine -> (victim, scenario)
    SWAP_SOURCE.name: ("live", "swap"),
    SWAP_TARGET.name: ("backup", "swap"),
}
ROLLBACK_VICTIM = {
    "handing-back": "backup", "handed-back": "backup", "placing-handoff": "live", "reclaiming": "live"
}


def cases() -> list[tuple[str, str, str, str]]:
    """(victim, state, scenario, CLI on) for every state reached; `requested` needs the CLI on backup."""
    found = []
    for machine in (SWAP_SOURCE, SWAP_TARGET, ROLLBACK):
        for state in machine.rows:
            if state in NOT_REACHED:
                continue
            if machine is ROLLBACK:
                found.append((ROLLBACK_VICTIM[state.value], state.value, "rollback", "live"))
                continue
            victim, scenario = SCENARIOS[machine.name]
            via = "backup" if state.value == "requested" else "live"
            found.append((victim, state.value, scenario, via))
    return found


def test_every_state_is_a_kill_case_or_says_why_not() -> None:
    covered = {(v, s) for v, s, _, _ in cases()}
    machines: tuple[Machine, ...] = (SWAP_SOURCE, SWAP_TARGET, ROLLBACK)
    for machine in machines:
        for state in machine.rows:
            assert state in NOT_REACHED or any(s == state.value for _, s in covered), state


def run_cli_swap(cluster: LabCluster, via: str, into: dict[str, Any]) -> threading.Thread:
    def run() -> None:
        done = failover_cli(cluster, via, "swap", "-c", str(cluster.config_path), "--node", via, timeout=40)
        into.update(code=done.returncode, out=done.stdout, err=done.stderr, ended=time.monotonic())

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.parametrize("down_s", [0.5, 3.0], ids=["restart-0.5s", "restart-3s"])
@pytest.mark.parametrize(
    ("victim", "state", "scenario", "via"), cases(), ids=[f"{v}-in-{s}" for v, s, _, _ in cases()]
)
def test_kill_in_state_ends_with_one_serving_holder(
    request: pytest.FixtureRequest, victim: str, state: str, scenario: str, via: str, down_s: float
) -> None:
    with lab_cluster() as cluster:
        if scenario == "rollback":
            # backup's web server answers but logs nowhere the agent looks: the move must be undone.
            doc = cluster.document()
            doc["nodes"]["backup"]["access_log"] = str(cluster.workdir / "backup" / "not-the-access.log")
            cluster.write_config(doc)
            for name in ("live", "backup"):  # the same file on both, or the move is refused
                cluster.stop_agent(name)
                cluster.start_agent(name)
        cluster.stop_agent(victim)
        cluster.start_agent(victim, env={FAULT_ENV: f"stop-entering:{state}"})
        cluster.wait_ready()
        load = client_load(cluster, duration_s=40)
        sampler = HolderSampler(cluster)
        cli: dict[str, Any] = {}
        try:
            time.sleep(0.3)
            mover = run_cli_swap(cluster, via, cli)
            stopping = "test-fault-stopping"
            assert cluster.lab.wait_until(lambda: events(cluster, victim, stopping), 15.0), "never entered"
            assert events(cluster, victim, stopping)[0]["entering"] == state
            frozen_holders = vip_holders(cluster)
            cluster.stop_agent(victim, signal.SIGKILL)
            killed_at = time.monotonic()
            time.sleep(down_s)
            cluster.start_agent(victim)
            cluster.wait_ready()
            restarted_at = time.monotonic()
            holder, waited = wait_converged(cluster, BOUND_S)
            converged_at = time.monotonic()
            # The move's command ends too (the source may wait out its proof deadline first).
            mover.join(timeout=45)
            assert not mover.is_alive()
            # Settled, not passing through: the same holder afterwards, and no move left running.
            still = vip_holders(cluster)
        finally:
            load.stop()
            sampler.stop()
        figure(
            request,
            f"{victim} killed entering {state} ({scenario}; VIP on {frozen_holders or 'nobody'} at the kill),"
            f" back after {down_s} s: one serving holder ({holder})"
            f" {(converged_at - restarted_at) * 1000:.0f} ms after the restart;"
            f" CLI on {via}: exit {cli.get('code')}",
        )
        holders = vip_holders(cluster)
        assert holder is not None, f"no one serving holder {BOUND_S} s after the restart: {holders}"
        assert still == [holder]
        assert sampler.doubles == [], sampler.doubles
        # No move left running: a target left ready by a dead source ends within its step timeout.
        statuses, _ = wait_no_move(cluster, STEP_TIMEOUT_S + 0.5)
        for name, status in zip(("live", "backup"), statuses, strict=True):
            assert status["holds_vip"] is (name == holder), status
            assert status["swap_in_progress"] is None, status
        assert "Traceback" not in cli["out"] + cli["err"], cli
        assert cli["code"] in (0, 1, 3), cli
        if via == victim:
            assert cli["code"] == 3, cli  # its own agent died under it: it cannot know the ending
        assert waited < BOUND_S
        assert killed_at < restarted_at
