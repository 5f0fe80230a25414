"""The new holder's look at its access log during a move: which requests prove that clients followed the VIP.

Owns what one move has counted so far (the real clients' requests to the VIP, or the source's canaries
in canary mode) and how the destination of a request was known; the rules of what counts are
`accesslog.proof`'s. Reads nothing itself: the agent polls the log and hands the entries in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from failover.accesslog import DESTINATION_LOG, DESTINATION_UNKNOWN, LogEntry, LogFollower, Proof, proof

CANARY_PARAM = "failover-canary"


def canary_token(cluster: str, epoch: int) -> str:
    return f"{cluster}-{epoch}"


@dataclass
class LogWatch:
    """One move's count: real clients' requests to the VIP, or (canary mode) the source's marked ones."""

    epoch: int
    follower: LogFollower
    vip: str
    exclude: tuple[str, ...]  # never proof: the nodes' own addresses, loopback, confirm.ignore_clients
    canary_token: str | None = None  # canary mode: only requests carrying it count
    witnessing: bool = False  # the kernel witness is in place: a log line counts if its client was seen
    proof: Proof = field(default_factory=lambda: Proof(DESTINATION_UNKNOWN))
    canaries: int = 0
    canary_clients: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.follower.fmt.destination_known:
            self.proof = Proof(DESTINATION_LOG)

    @property
    def count(self) -> int:
        return self.canaries if self.canary_token is not None else self.proof.counted

    @property
    def clients(self) -> tuple[str, ...]:
        return tuple(self.canary_clients) if self.canary_token is not None else self.proof.clients

    @property
    def unparsed(self) -> int:
        # Both see a line whose server field is not an address: the larger is a floor of what did not parse.
        return max(self.proof.unparsed, self.follower.stats.unparsed)

    def add(self, entries: list[LogEntry], witnessed: frozenset[str] | None = None) -> None:
        if self.canary_token is not None:
            marker = f"{CANARY_PARAM}={self.canary_token}"
            marked = [e for e in entries if e.request is not None and marker in e.request]
            self.canaries += len(marked)
            self.canary_clients += [e.client for e in marked if e.client not in self.canary_clients]
            return
        self.proof = self.proof + proof(
            entries,
            vip=self.vip,
            exclude=self.exclude,
            destination_known=self.follower.fmt.destination_known,
            witnessed=witnessed,
        )
