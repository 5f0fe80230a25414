"""The web server's access log: how the new holder proves that clients followed the VIP.

After the VIP moves, the agent counts requests from real clients in the access log on the new holder.
`LogFollower` starts at the end of the log at a chosen moment and hands back every complete line appended
since, parsed by a `LogFormat`; `proof` decides which of those entries are evidence that clients reach the
VIP here. Nothing here makes a protocol decision: `proof` is a pure judgement of entries, the caller decides
what the counts mean for the move.

One job a module:
- `lines`: one line's fields (`LogEntry`), its time (`parse_time`) and the formats (`LogFormat`, presets);
- `evidence`: which entries prove clients reach the VIP (`proof`, `Proof`, the reasons one does not);
- `follower`: the file followed across rotation and truncation, in bounded reads (`LogFollower`).
"""

from failover.accesslog.evidence import (
    DESTINATION_LOG,
    DESTINATION_UNKNOWN,
    DESTINATION_WITNESS,
    OWN_USER_AGENT_PREFIX,
    REJECT_REASONS,
    Proof,
    proof,
)
from failover.accesslog.follower import FollowerStats, LogFollower
from failover.accesslog.lines import (
    APACHE_COMBINED_SERVER,
    NGINX_COMBINED_SERVER,
    PRESETS,
    LogEntry,
    LogFormat,
    log_format_problem,
    parse_time,
)

__all__ = [
    "APACHE_COMBINED_SERVER",
    "DESTINATION_LOG",
    "DESTINATION_UNKNOWN",
    "DESTINATION_WITNESS",
    "NGINX_COMBINED_SERVER",
    "OWN_USER_AGENT_PREFIX",
    "PRESETS",
    "REJECT_REASONS",
    "FollowerStats",
    "LogEntry",
    "LogFollower",
    "LogFormat",
    "Proof",
    "log_format_problem",
    "parse_time",
    "proof",
]
