"""The protocol as tables: every state of every machine, what it listens for, and its timeout.

One machine per role a node plays in a move: the swap's source (the holder) and its target, the rollback
that follows a failed move on either side, a takeover of a silent holder (or a reclaim of a VIP lost
behind our back), a dry run, and the drain of the old holder after its release; around that drain, the
new holder's handoff kept for it, a command waiting for its report, and the old holder's Drained sent
again with its heartbeats. Each state has one row: its timeout (in seconds, or counted in heartbeats),
and for each input it listens to, the effect (a method of that machine, named here) and the states the
effect may lead to. An input a state does not list is counted as `out-of-state` and ignored.
`failover protocol-diagram` draws these tables for the README, and a test keeps the two the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class SourceState(StrEnum):
    """The holder, moving the VIP away."""

    BEFORE_RELEASE = "before-release"
    PREPARING = "preparing"
    MEASURING = "measuring-load"
    RELEASING = "releasing"
    HANDED_OVER = "handed-over"
    PROBING = "probing"
    AWAITING_CONFIRMATION = "awaiting-confirmation"
    COLLECTING_STRAGGLERS = "collecting-stragglers"
    DONE = "done"
    FAILED = "failed"


class TargetState(StrEnum):
    """The standby, taking the VIP over."""

    REQUESTED = "requested"
    CHECKING = "checking"
    READY = "ready"
    CLAIMING = "claiming"
    CLAIMED = "claimed"
    CONFIRMING = "confirming"
    CONFIRMED = "confirmed"
    ACKNOWLEDGED = "acknowledged"
    UNACKNOWLEDGED = "unacknowledged"
    FAILED = "failed"


class RollbackState(StrEnum):
    """A failed move undone: the target hands the VIP back, the source reclaims it."""

    HANDING_BACK = "handing-back"
    HANDED_BACK = "handed-back"
    HANDING_OFF = "placing-handoff"
    RECLAIMING = "reclaiming"
    RECLAIM_RETRY = "reclaim-retry"


class TakeoverState(StrEnum):
    """The standby claiming the VIP of a silent holder, or the holder reclaiming a VIP it lost."""

    SUSPECTING = "takeover-suspecting"  # the holder silent for dead_after less the probe's window: probing
    WAITING = "takeover-waiting"  # the probe heard nobody; the holder not yet silent for dead_after
    PROBING = "takeover-probing"
    FENCING = "takeover-fencing"
    CLAIMING = "takeover-claiming"
    DONE = "done"
    FAILED = "failed"
    CLEARED = "cleared"  # the holder spoke before it was silent for dead_after: no takeover question


class DryRunState(StrEnum):
    """Every check of a move on both nodes; nothing changes."""

    CHECKING = "checking"
    PLANNED = "planned"


class DrainState(StrEnum):
    """The old holder after its release: the VIP ARP-silent on `lo` serves what clients began here."""

    SERVING = "draining"  # at least drain_ms: packets already on their way are served
    WAITING = "draining-connections"  # then until the last connection to the VIP ends, or drain_max_ms
    DRAINED = "drained"


class HandoffState(StrEnum):
    """The new holder after its claim: the handoff kept past the move's end for the old holder's drain."""

    KEPT = "handoff-kept"
    ENDED = "handoff-ended"


class DrainWaitState(StrEnum):
    """A command whose move is over, waiting for the report of the drain that follows the move."""

    WAITING = "awaiting-drain-report"
    TOLD = "drain-report-told"


class DrainedCopyState(StrEnum):
    """The old holder's last Drained, sent again with its next heartbeats: lost, it costs a handoff's life."""

    RESENDING = "resending-drained"
    RESENT = "drained-resent"


State = (
    SourceState
    | TargetState
    | RollbackState
    | TakeoverState
    | DryRunState
    | DrainState
    | HandoffState
    | DrainWaitState
    | DrainedCopyState
)
MoveState = SourceState | TargetState | RollbackState  # the states of a swap's run


class Input(StrEnum):
    """Everything a state can listen to. Datagrams carry their wire kind."""

    # datagrams from the peer, for the move of their epoch
    PREPARE = "prepare"
    PREPARED = "prepared"
    REFUSED = "refused"
    RELEASED = "released"
    CLAIMED = "claimed"
    CLAIM_FAILED = "claim-failed"
    DONE = "done"
    CONFIRMED = "confirmed"
    HAND_BACK = "hand-back"
    ACK = "ack"
    ABORT = "abort"
    TELL_STRAGGLERS = "tell-stragglers"
    CHECK_RESULT = "check-result"
    DRAINED = "drained"  # the peer's final Drained (a not-final one only reaches a waiting command)
    # what the adapters report (failover.protocol.events)
    BEFORE_RELEASE_DONE = "BeforeReleaseDone"
    HEALTH_DONE = "HealthDone"
    HANDOFF_DONE = "HandoffDone"
    RELEASE_DONE = "ReleaseDone"
    CLAIM_DONE = "ClaimDone"
    PROBE_DONE = "ProbeDone"
    FENCE_DONE = "FenceDone"
    TRAFFIC_SEEN = "TrafficSeen"
    LOAD_MEASURED = "LoadMeasured"
    STRAGGLERS_SEEN = "StragglersSeen"
    HOST_CHECK_DONE = "HostCheckDone"
    CONNECTIONS_COUNTED = "ConnectionsCounted"
    # the node itself
    PEER_HEARD = "peer heard"  # a heartbeat from the peer
    PEER_SPOKE = "peer spoke"  # any datagram from the peer, a late one too, before it is handled
    NEW_MOVE = "new move"  # another move starts on this node
    DRAIN_REPORT = "drain report"  # the drain of the move's epoch ended, or is over for the operator
    HANDOFF_PLACED = "new handoff"  # another move placed its own handoff, which replaces the kept one
    HEARTBEAT_SENT = "heartbeat sent"  # a heartbeat of ours went out
    DEADLINE = "timeout"  # the state's timeout ran out


class Timeout(StrEnum):
    """How long a state waits before its DEADLINE row fires; the seconds come from the node's setup."""

    STEP = "step_timeout"
    LOAD = "load measurement"
    HANDOFF = "handoff rule"
    STEP_AND_HOOKS = "step_timeout + before_release hooks"
    HEALTH = "step_timeout + health check"
    PROOF = "proof deadline (from the source's request rate)"
    PROOF_AND_STEP = "proof deadline + step_timeout"
    STRAGGLERS = "rest of straggler window"
    PROBE = "step_timeout + probe"
    SILENCE = "rest of dead_after"
    FENCE = "step_timeout + fence"
    CHECKS = "step_timeout + host checks"
    DRAIN_MIN = "drain_ms"
    DRAIN_MAX = "rest of drain_max_ms"
    DRAIN_AND_STEPS = "drain_max_ms of the draining node + 2 steps"
    COPIES = "3 heartbeats"  # counted in heartbeats, not seconds (timeouts.HEARTBEATS)


@dataclass(frozen=True)
class Transition:
    effect: str  # the name of the machine's method that carries it out
    next: tuple[State, ...]  # the states the effect may lead to; the first when it names none


@dataclass(frozen=True)
class Row:
    timeout: Timeout | None = None
    on: dict[Input, Transition] = field(default_factory=dict)
    finished: bool = False  # the move's outcome is out; the state may still resend or answer
    terminal: bool = False  # nothing more to send or wait for
    changes_vip: bool = False  # netlink is adding or removing the VIP: what it reports may lag


@dataclass(frozen=True)
class Machine:
    name: str
    states: type[StrEnum]
    entry: tuple[State, ...]  # where a run of this machine starts
    rows: dict[State, Row]


def _t(effect: str, *next_states: State) -> Transition:
    return Transition(effect, next_states)


S, T, R, K, D, In = SourceState, TargetState, RollbackState, TakeoverState, DryRunState, Input
DR, HO, DW, DC = DrainState, HandoffState, DrainWaitState, DrainedCopyState

def _source_answers(state: SourceState | RollbackState, done: bool = False) -> dict[Input, Transition]:
    """What every source state after the release answers: a lost Released or Done, a result to ack."""
    rows = {
        In.PREPARED: _t("answer_again", state),
        In.CLAIMED: _t("answer_again", state),
        In.CONFIRMED: _t("acknowledge", state),
        In.HAND_BACK: _t("acknowledge", state),
    }
    if not done:
        rows[In.STRAGGLERS_SEEN] = _t("note_stragglers", state)
    return rows


SWAP_SOURCE = Machine(
    "swap source",
    SourceState,
    entry=(S.BEFORE_RELEASE, S.PREPARING),
    rows={
        S.BEFORE_RELEASE: Row(
            Timeout.STEP_AND_HOOKS,
            {
                In.BEFORE_RELEASE_DONE: _t("hooks_done", S.PREPARING, S.FAILED),
                In.LOAD_MEASURED: _t("load_measured", S.BEFORE_RELEASE),
                In.DEADLINE: _t("hooks_timed_out", S.FAILED),
            },
        ),
        S.PREPARING: Row(
            Timeout.STEP,
            {
                In.PREPARED: _t("release", S.RELEASING, S.MEASURING),
                In.LOAD_MEASURED: _t("load_measured", S.PREPARING),
                In.REFUSED: _t("refused", S.FAILED),
                In.DEADLINE: _t("prepare_timed_out", S.FAILED),
            },
        ),
        S.MEASURING: Row(
            Timeout.LOAD,
            {
                In.LOAD_MEASURED: _t("release_measured", S.RELEASING),
                In.PREPARED: _t("answer_again", S.MEASURING),
                In.DEADLINE: _t("release_unmeasured", S.RELEASING),
            },
        ),
        S.RELEASING: Row(
            None,  # netlink answers within its own step_timeout
            {
                In.RELEASE_DONE: _t("released", S.HANDED_OVER, S.FAILED),
                In.LOAD_MEASURED: _t("load_measured", S.RELEASING),
                In.PREPARED: _t("answer_again", S.RELEASING),
            },
            changes_vip=True,
        ),
        S.HANDED_OVER: Row(
            Timeout.STEP,
            {
                In.CLAIMED: _t(
                    "target_claimed", S.AWAITING_CONFIRMATION, S.COLLECTING_STRAGGLERS, S.DONE, S.FAILED
                ),
                In.CLAIM_FAILED: _t("target_claim_failed", R.RECLAIMING),
                In.PREPARED: _t("answer_again", S.HANDED_OVER),
                # Its Claimed was lost, not its verdict: the target claimed, and this is how it ended.
                In.CONFIRMED: _t("confirmed", S.COLLECTING_STRAGGLERS, S.DONE),
                In.HAND_BACK: _t("handed_back", R.RECLAIMING, R.HANDING_OFF),
                In.DEADLINE: _t("probe_target", S.PROBING),
            },
        ),
        S.PROBING: Row(
            Timeout.PROBE,
            {
                In.PROBE_DONE: _t("target_probed", R.RECLAIMING, S.FAILED, S.HANDED_OVER),
                In.CLAIMED: _t(
                    "target_claimed", S.AWAITING_CONFIRMATION, S.COLLECTING_STRAGGLERS, S.DONE, S.FAILED
                ),
                In.CLAIM_FAILED: _t("target_claim_failed", R.RECLAIMING),
                In.CONFIRMED: _t("confirmed", S.COLLECTING_STRAGGLERS, S.DONE),
                In.HAND_BACK: _t("handed_back", R.RECLAIMING, R.HANDING_OFF),
                In.PREPARED: _t("answer_again", S.PROBING),
                In.STRAGGLERS_SEEN: _t("note_stragglers", S.PROBING),
                In.DEADLINE: _t("probe_timed_out", S.FAILED, S.HANDED_OVER),
            },
        ),
        S.AWAITING_CONFIRMATION: Row(
            Timeout.PROOF_AND_STEP,
            {
                In.CONFIRMED: _t("confirmed", S.COLLECTING_STRAGGLERS, S.DONE),
                In.HAND_BACK: _t("handed_back", R.RECLAIMING, R.HANDING_OFF),
                In.PREPARED: _t("answer_again", S.AWAITING_CONFIRMATION),
                In.CLAIMED: _t("answer_again", S.AWAITING_CONFIRMATION),
                In.STRAGGLERS_SEEN: _t("note_stragglers", S.AWAITING_CONFIRMATION),
                In.DEADLINE: _t("confirmation_timed_out", S.PROBING),
            },
        ),
        S.COLLECTING_STRAGGLERS: Row(
            Timeout.STRAGGLERS,
            {
                **_source_answers(S.COLLECTING_STRAGGLERS),
                In.NEW_MOVE: _t("stragglers_collected", S.DONE),
                In.DEADLINE: _t("stragglers_collected", S.DONE),
            },
        ),
        S.DONE: Row(on=_source_answers(S.DONE, done=True), finished=True, terminal=True),
        S.FAILED: Row(on=_source_answers(S.FAILED, done=True), finished=True, terminal=True),
    },
)

SWAP_TARGET = Machine(
    "swap target",
    TargetState,
    entry=(T.REQUESTED, T.CHECKING),
    rows={
        T.REQUESTED: Row(
            Timeout.STEP_AND_HOOKS,
            {
                In.PREPARE: _t("prepare_received", T.CHECKING),
                In.REFUSED: _t("refused", T.FAILED),
                In.ABORT: _t("aborted", T.FAILED),
                In.DEADLINE: _t("request_timed_out", T.FAILED),
            },
        ),
        T.CHECKING: Row(
            Timeout.HEALTH,
            {
                In.HEALTH_DONE: _t("health_checked", T.CHECKING, T.READY, T.FAILED),
                In.HANDOFF_DONE: _t("handoff_placed", T.CHECKING, T.READY),
                In.PREPARE: _t("answer_again", T.CHECKING),
                In.ABORT: _t("aborted", T.FAILED),
                In.DEADLINE: _t("health_timed_out", T.FAILED),
            },
        ),
        T.READY: Row(
            Timeout.STEP,
            {
                In.RELEASED: _t("claim", T.CLAIMING),
                In.PREPARE: _t("answer_again", T.READY),
                In.ABORT: _t("aborted", T.FAILED),
                In.DEADLINE: _t("release_timed_out", T.FAILED),
            },
        ),
        T.CLAIMING: Row(
            None,  # netlink answers within its own step_timeout
            {
                In.CLAIM_DONE: _t("claimed", T.CLAIMED, T.CONFIRMING, T.FAILED),
                In.PREPARE: _t("answer_again", T.CLAIMING),
            },
            changes_vip=True,
        ),
        T.CLAIMED: Row(
            Timeout.STEP,
            {
                In.DONE: _t("acknowledged", T.ACKNOWLEDGED),
                In.RELEASED: _t("answer_again", T.CLAIMED),
                In.TELL_STRAGGLERS: _t("tell_stragglers", T.CLAIMED),
                In.DEADLINE: _t("unacknowledged", T.UNACKNOWLEDGED),
            },
            finished=True,
        ),
        T.CONFIRMING: Row(
            Timeout.PROOF,
            {
                In.TRAFFIC_SEEN: _t("traffic_seen", T.CONFIRMING, T.CONFIRMED),
                In.DONE: _t("source_knows", T.CONFIRMING),
                In.RELEASED: _t("answer_again", T.CONFIRMING),
                In.TELL_STRAGGLERS: _t("tell_stragglers", T.CONFIRMING),
                In.DEADLINE: _t("proof_due", T.CONFIRMING, R.HANDING_BACK),
            },
        ),
        T.CONFIRMED: Row(
            Timeout.STEP,
            {
                In.ACK: _t("acknowledged", T.ACKNOWLEDGED),
                In.RELEASED: _t("answer_again", T.CONFIRMED),
                In.TELL_STRAGGLERS: _t("tell_stragglers", T.CONFIRMED),
                In.DEADLINE: _t("unacknowledged", T.UNACKNOWLEDGED),
            },
            finished=True,
        ),
        T.ACKNOWLEDGED: Row(
            on={
                In.RELEASED: _t("answer_again", T.ACKNOWLEDGED),
                In.TELL_STRAGGLERS: _t("tell_stragglers", T.ACKNOWLEDGED),
            },
            finished=True,
            terminal=True,
        ),
        T.UNACKNOWLEDGED: Row(
            on={
                In.RELEASED: _t("answer_again", T.UNACKNOWLEDGED),
                In.TELL_STRAGGLERS: _t("tell_stragglers", T.UNACKNOWLEDGED),
            },
            finished=True,
            terminal=True,
        ),
        T.FAILED: Row(
            on={
                In.RELEASED: _t("answer_late_release", T.FAILED),
                In.PREPARE: _t("answer_again", T.FAILED),  # our Refused was lost: the source asks again
            },
            finished=True,
            terminal=True,
        ),
    },
)

ROLLBACK = Machine(
    "rollback",
    RollbackState,
    entry=(),  # entered from a swap's source or target, never on its own
    rows={
        R.HANDING_BACK: Row(
            None,  # netlink answers within its own step_timeout
            {
                In.RELEASE_DONE: _t("released_back", R.HANDED_BACK, T.FAILED),
                In.RELEASED: _t("answer_again", R.HANDING_BACK),
            },
            changes_vip=True,
        ),
        R.HANDED_BACK: Row(
            Timeout.STEP,
            {
                In.ACK: _t("acknowledged", T.ACKNOWLEDGED),
                In.RELEASED: _t("answer_again", R.HANDED_BACK),
                In.DEADLINE: _t("unacknowledged", T.UNACKNOWLEDGED),
            },
            finished=True,
        ),
        R.HANDING_OFF: Row(
            Timeout.HANDOFF,
            {
                **_source_answers(R.HANDING_OFF),
                In.HANDOFF_DONE: _t("reclaim_with_handoff", R.RECLAIMING),
                In.DEADLINE: _t("reclaim_with_handoff", R.RECLAIMING),
            },
        ),
        R.RECLAIMING: Row(
            None,  # netlink answers within its own step_timeout
            {
                **_source_answers(R.RECLAIMING),
                In.CLAIM_DONE: _t("reclaimed", S.FAILED, R.RECLAIM_RETRY),
            },
            changes_vip=True,
        ),
        R.RECLAIM_RETRY: Row(
            Timeout.STEP,
            {
                **_source_answers(R.RECLAIM_RETRY),
                In.DEADLINE: _t("reclaim_again", R.RECLAIMING, S.FAILED),
            },
        ),
    },
)

TAKEOVER = Machine(
    "takeover",
    TakeoverState,
    # A silent holder's takeover starts suspecting: its probe runs in the last stretch of dead_after, so
    # that the verdict is in when the silence has lasted dead_after. A reclaim or a recovery probes at once.
    entry=(K.SUSPECTING, K.PROBING),
    rows={
        K.SUSPECTING: Row(
            Timeout.SILENCE,
            {
                # An answer (or an unknown) refuses as in takeover-probing; a verdict of another probe is
                # ignored (the state stays).
                In.PROBE_DONE: _t("probed_early", K.WAITING, K.FAILED, K.SUSPECTING),
                # Whatever it says (a heartbeat, a late one, a Prepare): before it is acted on.
                In.PEER_SPOKE: _t("suspicion_cleared", K.CLEARED),
                In.DEADLINE: _t("holder_silent", K.PROBING, K.CLEARED),
            },
        ),
        K.WAITING: Row(
            Timeout.SILENCE,
            {
                In.PEER_SPOKE: _t("suspicion_cleared", K.CLEARED),
                In.DEADLINE: _t("silent_for_dead_after", K.FENCING, K.CLAIMING, K.CLEARED),
            },
        ),
        K.PROBING: Row(
            Timeout.PROBE,
            {
                In.PROBE_DONE: _t("probed", K.FENCING, K.CLAIMING, K.FAILED, K.PROBING),
                In.PEER_HEARD: _t("peer_heard", K.PROBING, K.FAILED),
                In.DEADLINE: _t("probe_timed_out", K.FAILED),
            },
        ),
        K.FENCING: Row(
            Timeout.FENCE,
            {
                In.FENCE_DONE: _t("fenced", K.CLAIMING, K.FAILED),
                In.PEER_HEARD: _t("peer_heard", K.FENCING, K.FAILED),
                In.DEADLINE: _t("fence_timed_out", K.FAILED),
            },
        ),
        K.CLAIMING: Row(
            None,  # netlink answers within its own step_timeout
            {In.CLAIM_DONE: _t("claimed", K.DONE, K.FAILED)},
            changes_vip=True,
        ),
        K.DONE: Row(finished=True, terminal=True),
        K.FAILED: Row(finished=True, terminal=True),
        K.CLEARED: Row(finished=True, terminal=True),
    },
)

DRY_RUN = Machine(
    "dry run",
    DryRunState,
    entry=(D.CHECKING, D.PLANNED),
    rows={
        D.CHECKING: Row(
            Timeout.CHECKS,
            {
                In.HOST_CHECK_DONE: _t("local_checks", D.CHECKING, D.PLANNED),
                In.CHECK_RESULT: _t("peer_checks", D.CHECKING, D.PLANNED),
                In.DEADLINE: _t("checks_timed_out", D.PLANNED),
            },
        ),
        D.PLANNED: Row(finished=True, terminal=True),
    },
)

DRAIN = Machine(
    "drain",
    DrainState,
    entry=(DR.SERVING,),  # when a release with a drain copy on lo is done, whatever move it served
    rows={
        DR.SERVING: Row(
            Timeout.DRAIN_MIN,
            {
                In.CONNECTIONS_COUNTED: _t("counted", DR.SERVING),
                In.CLAIM_DONE: _t("claimed_again", DR.DRAINED, DR.SERVING),
                In.DEADLINE: _t("served_minimum", DR.WAITING, DR.DRAINED),
            },
        ),
        DR.WAITING: Row(
            Timeout.DRAIN_MAX,
            {
                In.CONNECTIONS_COUNTED: _t("counted_waiting", DR.WAITING, DR.DRAINED),
                In.CLAIM_DONE: _t("claimed_again", DR.DRAINED, DR.WAITING),
                In.DEADLINE: _t("bound_reached", DR.DRAINED),
            },
        ),
        DR.DRAINED: Row(finished=True, terminal=True),
    },
)

KEPT_HANDOFF = Machine(
    "kept handoff",
    HandoffState,
    entry=(HO.KEPT,),  # the new holder's claim is done and the old holder's drain not yet reported
    rows={
        HO.KEPT: Row(
            Timeout.DRAIN_AND_STEPS,
            {
                In.DRAINED: _t("peer_drained_final", HO.ENDED),
                In.HANDOFF_PLACED: _t("handoff_replaced", HO.ENDED),
                In.DEADLINE: _t("handoff_unreported", HO.ENDED),
            },
        ),
        HO.ENDED: Row(finished=True, terminal=True),
    },
)

DRAIN_WAIT = Machine(
    "drain wait",
    DrainWaitState,
    entry=(DW.WAITING,),  # a command's move is over with its drain still going, on either node
    rows={
        DW.WAITING: Row(
            Timeout.DRAIN_AND_STEPS,
            {
                In.DRAIN_REPORT: _t("tell_report", DW.TOLD),
                In.DEADLINE: _t("no_report", DW.TOLD),
            },
        ),
        DW.TOLD: Row(finished=True, terminal=True),
    },
)

RESEND_DRAINED = Machine(
    "drained copies",
    DrainedCopyState,
    entry=(DC.RESENDING,),  # a Drained went out; a newer one starts its copies afresh
    rows={
        DC.RESENDING: Row(
            Timeout.COPIES,
            {
                In.HEARTBEAT_SENT: _t("resend_drained", DC.RESENDING),
                In.DEADLINE: _t("copies_sent", DC.RESENT),
            },
        ),
        DC.RESENT: Row(finished=True, terminal=True),
    },
)

MACHINES = (
    SWAP_SOURCE, SWAP_TARGET, ROLLBACK, TAKEOVER, DRY_RUN, DRAIN, KEPT_HANDOFF, DRAIN_WAIT, RESEND_DRAINED
)
MACHINE_OF: dict[type[StrEnum], Machine] = {m.states: m for m in MACHINES}


def row(state: State) -> Row:
    """The row of `state`, from its own machine's table."""
    return MACHINE_OF[type(state)].rows[state]
