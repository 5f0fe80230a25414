"""A slow `confirmed` hook does not use up the next move's `before_release` budget.

Hooks of one node run one after another; `before_release` is the exception, because the core gives it
a budget (timeout x hooks) from the moment it asks: waiting behind a notification hook of the previous
move would spend that budget and refuse a move that nothing was wrong with.
"""

from __future__ import annotations

import pytest

from tests.integration.conftest import client_load, lab_cluster

pytestmark = [pytest.mark.root, pytest.mark.chaos]

HOOKS = {
    # Slow, each killed at its timeout: 6 s of notification hooks queued on backup by the swap.
    "after_claim": [["/bin/sh", "-c", "sleep 30"]],
    "confirmed": [["/bin/sh", "-c", "sleep 30"]],
    "before_release": [["/bin/true"]],
    "timeout_ms": 3000,
}


def test_slow_confirmed_hook_leaves_the_next_before_release_its_budget() -> None:
    with lab_cluster({"hooks": HOOKS}) as cluster:
        load = client_load(cluster, duration_s=40)
        try:
            swap = cluster.move("swap", via="backup")
            assert swap["ok"], swap  # backup's confirmed hook now sleeps
            unswap = cluster.move("unswap", via="live")  # backup, the source, runs before_release now
        finally:
            load.stop()
        assert unswap["ok"], unswap
        assert cluster.holders() == ["live"]
