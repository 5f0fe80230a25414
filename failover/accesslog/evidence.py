"""Which access-log entries are evidence that clients reach the VIP on this host: `proof`, and its `Proof`.

A pure judgement of entries, fed batch by batch; what the counts mean for a move is the caller's.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Final

from failover.accesslog.lines import LogEntry, canonical_address, canonical_client

# What the agents put in the User-Agent of their own requests (health checks, canaries): never proof.
OWN_USER_AGENT_PREFIX: Final = "failover/"
# Why an entry did not count, in the order they are tried: each rejected entry is counted under the first.
REJECT_REASONS: Final = ("unparsed", "own-request", "loopback", "excluded", "not-to-vip", "not-witnessed")
DESTINATION_LOG: Final = "log field"
DESTINATION_WITNESS: Final = "kernel witness"
DESTINATION_UNKNOWN: Final = "client address only"
_MAX_CLIENTS: Final = 10


@dataclass(frozen=True, slots=True)
class Proof:
    """What a batch of log entries proves about clients reaching the VIP on this host.

    `counted` entries are evidence; `clients` are the first (at most 10) distinct clients among them, in
    order; `rejected` maps each reason of `REJECT_REASONS` that occurred to how many entries it rejected.
    `destination` says how the address a request arrived at was known: `DESTINATION_LOG` (the format has
    the server address), `DESTINATION_WITNESS` (the client was seen by the kernel witness) or
    `DESTINATION_UNKNOWN` (only the client address: a request to this node's own address from the same
    client cannot be told from one to the VIP). Proofs of successive batches add up with `+`.
    """

    destination: str
    counted: int = 0
    clients: tuple[str, ...] = ()
    rejected: tuple[tuple[str, int], ...] = ()  # (reason, entries), in REJECT_REASONS order, none zero

    @property
    def destination_known(self) -> bool:
        return self.destination != DESTINATION_UNKNOWN

    @property
    def unparsed(self) -> int:
        """Entries whose client or server field is not an address: a log that stopped parsing shows here."""
        return dict(self.rejected).get("unparsed", 0)

    def __add__(self, other: Proof) -> Proof:
        if not isinstance(other, Proof):
            return NotImplemented
        clients = list(self.clients)
        clients += [c for c in other.clients if c not in clients]
        totals = dict(self.rejected)
        for reason, n in other.rejected:
            totals[reason] = totals.get(reason, 0) + n
        # A sum is only as strong as its weakest part.
        strength = (DESTINATION_UNKNOWN, DESTINATION_WITNESS, DESTINATION_LOG)
        weakest = min(self.destination, other.destination, key=strength.index)
        return Proof(
            destination=weakest,
            counted=self.counted + other.counted,
            clients=tuple(clients[:_MAX_CLIENTS]),
            rejected=tuple((r, totals[r]) for r in REJECT_REASONS if totals.get(r)),
        )

    def to_json(self) -> dict[str, object]:
        return {
            "destination": self.destination,
            "destination_known": self.destination_known,
            "counted": self.counted,
            "clients": list(self.clients),
            "rejected": dict(self.rejected),
        }


def proof(
    entries: Iterable[LogEntry],
    *,
    vip: object,
    exclude: Collection[object],
    destination_known: bool,
    witnessed: Collection[object] | None = None,
    marker: str = OWN_USER_AGENT_PREFIX,
) -> Proof:
    """Which of `entries` prove that clients reach `vip` here; pure, so the caller may feed batch by batch.

    `destination_known` is the format's (`LogFormat.destination_known`): then an entry counts only if its
    server address is the VIP, and an entry without one is `unparsed`. `witnessed`, for a format without the
    server address, is the kernel witness's set of clients the VIP answered since the claim: an entry counts
    only if its client is in it. Never counted, whatever the format: a User-Agent starting with `marker`
    (the agents' own health checks and canaries), a client in `exclude` (the nodes' own addresses and
    `confirm.ignore_clients`), loopback (127.0.0.0/8, ::1, IPv4-mapped loopback) or the VIP itself as client
    (the host asking itself), and a client that is not an address (nothing above could be checked).
    Addresses compare in canonical form: IPv6 compressed, IPv4-mapped as IPv4.
    """
    vip_text = canonical_address(vip)
    if vip_text is None:
        raise ValueError(f"the VIP {vip!r} is not an IP address")
    excluded = {a for a in map(canonical_address, exclude) if a is not None}
    seen = None if witnessed is None else {a for a in map(canonical_address, witnessed) if a is not None}
    if destination_known:
        destination = DESTINATION_LOG
    else:
        destination = DESTINATION_UNKNOWN if seen is None else DESTINATION_WITNESS
    counted = 0
    clients: list[str] = []
    rejected = dict.fromkeys(REJECT_REASONS, 0)
    for entry in entries:
        reason = _rejection(entry, vip_text, excluded, seen, destination_known, marker)
        if reason is not None:
            rejected[reason] += 1
            continue
        counted += 1
        client = canonical_client(entry.client)
        if len(clients) < _MAX_CLIENTS and client not in clients:
            clients.append(client)
    return Proof(
        destination=destination,
        counted=counted,
        clients=tuple(clients),
        rejected=tuple((r, n) for r, n in rejected.items() if n),
    )


@functools.lru_cache(maxsize=4096)
def _is_loopback(client: str) -> bool:
    # Pure, and a log repeats the same few clients: a source's reading of its rate (failover.load) asks
    # this for every line of its last seconds, ~half of that reading's CPU unremembered.
    return ipaddress.ip_address(client).is_loopback


def _rejection(
    entry: LogEntry,
    vip: str,
    excluded: set[str],
    witnessed: set[str] | None,
    destination_known: bool,
    marker: str,
) -> str | None:
    client = canonical_address(entry.client)
    if client is None or (destination_known and entry.server is None):
        return "unparsed"
    if marker and entry.user_agent is not None and entry.user_agent.startswith(marker):
        return "own-request"
    if _is_loopback(client) or client == vip:
        return "loopback"
    if client in excluded:
        return "excluded"
    if destination_known and canonical_address(entry.server) != vip:
        return "not-to-vip"
    if not destination_known and witnessed is not None and client not in witnessed:
        return "not-witnessed"
    return None


