"""Kill at every step: an agent frozen right before one action of a swap, SIGKILLed, started again.

The test-only fault `stop-before:<Action>` SIGSTOPs the agent right before it carries out that action; the
test waits for its `test-fault-stopping` line, SIGKILLs it (a frozen process dies as it is) and starts it
again without the fault. Whatever the step, the pair must end with exactly one holder on eth0 that
serves the client, within 2 s of the restart plus, where the protocol has to time out first, one step
timeout (1 s in the lab) and a probe. The CLI that ran the swap must say what it knows.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import pytest

from failover.agent import FAULT_ENV
from failover.lab.client import first_served_by, summarize
from failover.lab.cluster import LabCluster
from tests.integration.conftest import client_load, events, failover_cli, restart_agent

from .conftest import HolderSampler, figure, vip_holders, wait_converged, wait_no_move

pytestmark = [pytest.mark.root, pytest.mark.chaos]

STEP_TIMEOUT_S = 1.0  # swap.step_timeout_ms in the lab
PROBE_S = 0.2  # 3 ARP probes 20 ms apart, 60 ms of listening, and room for a busy host
CONVERGE_S = 2.0
STRAGGLER_WINDOW_S = 1.0  # confirm.straggler_window_ms

# (agent frozen and killed, action it is frozen before, CLI run on, possible holders after, must time out).
# Every state of the tables is also a kill case of test_kill_states.py; these freeze before one action.
# Before its claim the target may come back while the source still resends Prepare (for one step
# timeout): the restarted agent then finishes the swap. Either ending is right if the CLI says which.
CASES = [
    ("live", "Release", "live", ("live",), False),
    ("live", "Release", "backup", ("live",), True),
    ("backup", "CheckHealth", "live", ("live", "backup"), True),
    ("backup", "Watch", "live", ("backup",), True),  # the log is followed from the claim on
    ("backup", "Claim", "live", ("live",), True),
    ("backup", "Announce", "live", ("backup",), True),
]


def run_cli_swap(cluster: LabCluster, via: str, into: dict[str, Any]) -> threading.Thread:
    """`failover swap` (human output) on via, in a thread; its exit code, stdout and stderr land in into."""

    def run() -> None:
        config = str(cluster.config_path)
        done = failover_cli(cluster, via, "swap", "-c", config, "--node", via, timeout=40)
        into.update(code=done.returncode, out=done.stdout, err=done.stderr, ended=time.monotonic())

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.parametrize(
    ("victim", "action", "via", "possible", "times_out"),
    CASES,
    ids=[
        "live-before-Release-cli-on-live",
        "live-before-Release-cli-on-backup",
        "backup-before-CheckHealth-cli-on-live",
        "backup-before-Watch-cli-on-live",
        "backup-before-Claim-cli-on-live",
        "backup-before-Announce-cli-on-live",
    ],
)
def test_kill_at_step_converges_to_one_serving_holder(
    cluster: LabCluster,
    request: pytest.FixtureRequest,
    victim: str,
    action: str,
    via: str,
    possible: tuple[str, ...],
    times_out: bool,
) -> None:
    restart_agent(cluster, victim, env={FAULT_ENV: f"stop-before:{action}"})
    load = client_load(cluster, duration_s=30)
    cli: dict[str, Any] = {}
    sampler = HolderSampler(cluster)
    try:
        time.sleep(0.3)
        mover = run_cli_swap(cluster, via, cli)
        stopping = "test-fault-stopping"
        assert cluster.lab.wait_until(lambda: events(cluster, victim, stopping), 10.0), "fault never fired"
        assert events(cluster, victim, stopping)[0]["before"] == action
        frozen_holders = vip_holders(cluster)
        cluster.stop_agent(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        cluster.start_agent(victim)
        cluster.wait_ready()
        restarted_at = time.monotonic()
        budget = CONVERGE_S + (STEP_TIMEOUT_S + PROBE_S if times_out else 0.0)
        # The move may still finish after the restart (Prepare is resent): let the CLI return first.
        mover.join(timeout=45)
        assert not mover.is_alive()
        holder, waited = wait_converged(cluster, CONVERGE_S)
        converged_at = time.monotonic()
        time.sleep(0.5)
    finally:
        load.stop()
        sampler.stop()

    records = load.records()
    expected = holder or possible[0]
    first = first_served_by(records, expected, killed_at)
    since_kill_ms = (first.end - killed_at) * 1000 if first else float("nan")
    figure(
        request,
        f"{victim} killed before {action} (VIP on {frozen_holders or 'nobody'} at the kill): one serving"
        f" holder ({holder}) {(converged_at - killed_at) * 1000:.0f} ms after the kill,"
        f" {(converged_at - restarted_at) * 1000:.0f} ms after the restart; client first served by"
        f" {expected} {since_kill_ms:.0f} ms after the kill; CLI on {via}: exit {cli.get('code')}",
    )
    assert holder in possible, (holder, vip_holders(cluster))
    # Never two holders: not in netlink samples, and no agent had to settle a double claim.
    assert sampler.doubles == [], sampler.doubles
    settles = [e for n in ("live", "backup") for e in events(cluster, n, "settle")]
    assert settles == [], settles
    # The CLI's own wait includes the old holder's straggler window (1 s) after a done move.
    assert cli["ended"] - restarted_at <= budget + STRAGGLER_WINDOW_S, cli["ended"] - restarted_at
    assert waited < CONVERGE_S
    assert vip_holders(cluster) == [expected]
    # No move left running: a target left ready by a dead source ends within its step timeout.
    statuses, _ = wait_no_move(cluster, STEP_TIMEOUT_S + 0.5)
    for name, status in zip(("live", "backup"), statuses, strict=True):
        assert status["holds_vip"] is (name == expected), status
        assert status["swap_in_progress"] is None, status
    after = summarize(records, since=converged_at)
    assert after.requests > 0 and after.failed == 0 and set(after.served_by) == {expected}, after
    assert_cli_says_what_it_knows(cli, via, victim, holder)


def assert_cli_says_what_it_knows(cli: dict[str, Any], via: str, victim: str, holder: str) -> None:
    """The CLI's exit code and words match what it could know: its own agent's answer, or its loss."""
    code, out, err = cli["code"], cli["out"], cli["err"]
    assert "Traceback" not in out + err, err
    if via == victim:
        # Its own agent died under it: it cannot know the ending, and must not guess one.
        assert code == 3, cli
        assert "the agent closed the connection" in err, cli
        assert "swap done" not in out and "FAILED" not in err, cli
    elif code == 0:
        assert holder == "backup", cli
        assert "swap done: VIP on backup" in out, cli
    else:
        assert code == 1, cli
        assert "swap FAILED: " in err and f"VIP on {holder}" in err, cli
