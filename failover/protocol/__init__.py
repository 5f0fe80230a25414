"""The failover protocol core: one `Node` for both hosts, with no sockets, no clock and no netlink.

Adapters feed it events (`receive_datagram`, `handle_timer`, `command`, and `handle` with the results
of the actions it asked for) together with `now`, a float of seconds; it answers with actions pulled
by `pop_actions()`. `get_timer()` says when it next wants `handle_timer`.

The package, one concern a module:
- `states`: every state of every machine as one table (inputs, effects, next states, timeouts);
- `swap`, `takeover`, `dryrun`: the effects those tables name; `moves`: how a move starts;
- `node`: the `Node` (entry points, dispatch to the tables, timers); `peer`: its view of the peer
  (liveness, key rotation, silence, a VIP on nobody, settling, announcements); `host`: its view of its
  own host (claims and releases done, the VIP netlink reports, the self-check); `status`: its status;
  `timeouts`: what each timeout of the tables is in seconds;
- `actions`, `events`, `results`, `runs`, `setup`: the data that goes out, comes in, is reported,
  is remembered about a move, and is given at start;
- `diagram`: the tables drawn as mermaid state diagrams for the README.
"""

from failover.protocol.actions import (
    Action,
    Announce,
    BeforeRelease,
    Canary,
    CheckHealth,
    Claim,
    DrainReported,
    EndDrain,
    EndHandoff,
    Fence,
    Finished,
    Handoff,
    HostCheck,
    MeasureLoad,
    MeasurePeer,
    Notice,
    Planned,
    Probe,
    Progress,
    Release,
    RunHooks,
    Send,
    StartDrain,
    Started,
    StopCanary,
    StopProbe,
    Tell,
    Unwatch,
    UnwatchStragglers,
    Watch,
    WatchStragglers,
)
from failover.protocol.events import (
    BeforeReleaseDone,
    ClaimDone,
    ConnectionsCounted,
    Event,
    FenceDone,
    HandoffDone,
    HealthDone,
    HostCheckDone,
    LoadMeasured,
    PeerMeasured,
    ProbeDone,
    ReleaseDone,
    SelfCheckDone,
    StragglersSeen,
    TrafficSeen,
    VipObserved,
)
from failover.protocol.node import Node
from failover.protocol.results import FAIL, OK, WARN, Check, Level, Outcome, Plan
from failover.protocol.setup import NodeSetup, Timing
from failover.protocol.swap import MOVES, STRAGGLER_GRACE
from failover.protocol.window import ProbeWindow

__all__ = [
    "FAIL",
    "MOVES",
    "OK",
    "STRAGGLER_GRACE",
    "WARN",
    "Action",
    "Announce",
    "BeforeRelease",
    "BeforeReleaseDone",
    "Canary",
    "Check",
    "CheckHealth",
    "Claim",
    "ClaimDone",
    "ConnectionsCounted",
    "DrainReported",
    "EndDrain",
    "EndHandoff",
    "Event",
    "Fence",
    "FenceDone",
    "Finished",
    "Handoff",
    "HandoffDone",
    "HealthDone",
    "HostCheck",
    "HostCheckDone",
    "Level",
    "LoadMeasured",
    "MeasureLoad",
    "MeasurePeer",
    "Node",
    "NodeSetup",
    "Notice",
    "Outcome",
    "PeerMeasured",
    "Plan",
    "Planned",
    "Probe",
    "ProbeDone",
    "ProbeWindow",
    "Progress",
    "Release",
    "ReleaseDone",
    "RunHooks",
    "SelfCheckDone",
    "Send",
    "StartDrain",
    "Started",
    "StopCanary",
    "StopProbe",
    "StragglersSeen",
    "Tell",
    "Timing",
    "TrafficSeen",
    "Unwatch",
    "UnwatchStragglers",
    "VipObserved",
    "Watch",
    "WatchStragglers",
]
