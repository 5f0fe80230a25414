"""What the core reports to an operator: a check's result, a dry run's plan, a move's outcome.

Plain data with their JSON shape (the CLI's `--json`, the journal, the status): no protocol logic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from failover.findings import FAIL, OK, WARN, Check, Level

__all__ = ["FAIL", "OK", "WARN", "Check", "Level", "Outcome", "Plan"]


@dataclass(frozen=True)
class Plan:
    """What a swap or unswap would do now, and whether every check passes. Nothing was changed."""

    ok: bool
    move: str
    source: str
    target: str
    reason: str  # the first failed check, "" when all pass
    checks: tuple[Check, ...]
    steps: tuple[tuple[str, str], ...]  # (step, what happens in it), in order
    duration_ms: float

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": True,
            "ok": self.ok,
            "move": self.move,
            "source": self.source,
            "target": self.target,
            "reason": self.reason,
            "checks": [c.to_json() for c in self.checks],
            "plan": [{"step": step, "what": what} for step, what in self.steps],
            "duration_ms": round(self.duration_ms, 3),
        }


@dataclass(frozen=True)
class Outcome:
    ok: bool
    move: str
    epoch: int
    source: str
    target: str
    reason: str
    duration_ms: float
    unserved_ms: float | None
    rolled_back: bool
    steps: tuple[tuple[str, float], ...]
    holder: str | None  # who holds the VIP when the move ended, as far as this node knows
    confirmed: bool | None = None  # None: confirmation is off
    confirm_ms: float | None = None  # from the claim to the request that confirmed the move
    evidence: dict[str, Any] | None = None  # requests counted, first clients
    stragglers: tuple[dict[str, Any], ...] = ()  # {ip, mac, moved}
    # The old holder's drain after the move: {host, left, oldest_s, after_s, how}, or {host, pending}
    # while it goes on, or {host, skipped}; None when no drain follows (the VIP never left its host).
    drain: dict[str, Any] | None = None
    handoff_error: str | None = None  # the new holder passed no segments to the old one: why

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "move": self.move,
            "epoch": self.epoch,
            "source": self.source,
            "target": self.target,
            "reason": self.reason,
            "duration_ms": round(self.duration_ms, 3),
            "unserved_ms": None if self.unserved_ms is None else round(self.unserved_ms, 3),
            "rolled_back": self.rolled_back,
            "steps": [{"step": s, "ms": round(ms, 3)} for s, ms in self.steps],
            "holder": self.holder,
            "confirmed": self.confirmed,
            "confirm_ms": None if self.confirm_ms is None else round(self.confirm_ms, 3),
            "evidence": self.evidence,
            "stragglers": list(self.stragglers),
            "drain": self.drain,
            "handoff_error": self.handoff_error,
        }
