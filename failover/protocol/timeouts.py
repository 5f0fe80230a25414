"""What each timeout of the tables is in seconds, for one record, from the node's setup.

A state's row names its timeout (`states.Timeout`); this is where a name becomes a figure: a step,
a step and the hooks' budget, the proof window worked out from the move's facts, the drain's bounds;
or, for the few in `HEARTBEATS`, how many heartbeats of ours.
"""

from __future__ import annotations

from typing import assert_never

from failover.protocol.runs import (
    DrainRun,
    DrainWait,
    KeptHandoff,
    Record,
    SourceRun,
    TakeoverRun,
    TargetRun,
)  # fmt: skip
from failover.protocol.setup import NodeSetup
from failover.protocol.states import Timeout
from failover.protocol.swap import proof_deadline

LOAD_WAIT = 0.25  # seconds the source waits for its own rate before it releases anyway
HANDOFF_WAIT = 0.1  # seconds a rollback waits for its handoff rule before it reclaims anyway
DRAINED_COPIES = 3  # Drained goes out again with this many heartbeats: a lost one costs a handoff's life
# The timeouts counted in heartbeats of ours rather than in seconds: how many.
HEARTBEATS: dict[Timeout, int] = {Timeout.COPIES: DRAINED_COPIES}


def seconds(timeout: Timeout, setup: NodeSetup, record: Record, now: float) -> float:
    s, step = setup, setup.timing.step_timeout
    match timeout:
        case Timeout.STEP:
            return step
        case Timeout.HANDOFF:
            return min(HANDOFF_WAIT, step / 4)  # the VIP is on nobody meanwhile: not long
        case Timeout.LOAD:
            # Well inside the target's ready window (step_timeout), which runs while we wait.
            return min(LOAD_WAIT, step / 4)
        case Timeout.STEP_AND_HOOKS:
            return step + s.before_release
        case Timeout.HEALTH | Timeout.CHECKS:
            return step + s.host_check_budget
        case Timeout.PROOF:
            assert isinstance(record, TargetRun)
            return record.proof_deadline
        case Timeout.PROOF_AND_STEP:
            # The target's deadline, worked out from the same facts, and a step for its answer.
            assert isinstance(record, SourceRun)
            rate, canary = record.rate, record.canary
            return proof_deadline(s.confirm_within, s.confirm_requests, s.name, rate, canary)[0] + step
        case Timeout.STRAGGLERS:
            assert isinstance(record, SourceRun) and record.straggler_until is not None
            return max(0.0, record.straggler_until - now)
        case Timeout.PROBE:
            return step + s.probe_budget
        case Timeout.SILENCE:
            # Until the holder has been silent for dead_after, counted from its last datagram.
            assert isinstance(record, TakeoverRun) and record.heard is not None
            return max(0.0, record.heard + s.timing.dead_after - now)
        case Timeout.FENCE:
            return step + s.fence_budget
        case Timeout.DRAIN_MIN:
            return s.drain
        case Timeout.DRAIN_MAX:
            assert isinstance(record, DrainRun)
            return max(0.0, record.released_at + s.drain_max - now)
        case Timeout.DRAIN_AND_STEPS:
            # The drain ends by drain_max_ms after its release, a moment before now; its report may need
            # a step to come, and another to be resent.
            assert isinstance(record, KeptHandoff | DrainWait)
            return record.drain_max + 2 * step
        case Timeout.COPIES:
            raise ValueError(f"{timeout} is counted in heartbeats (HEARTBEATS), not seconds")
        case _:
            assert_never(timeout)
