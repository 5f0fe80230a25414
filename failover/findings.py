"""One check's result, wherever it was judged: a move's rule in the core, a host setting, a kernel value.

`failover check`, a dry run's plan (both nodes' checks) and the sysctl judge all speak this one type;
on the wire it travels as rows of text (`wire.pack_findings`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Level(StrEnum):
    """How a check came out; the strings are those of the `--json` output."""

    OK = "ok"
    WARN = "warn"  # passes, worth knowing
    FAIL = "FAIL"


OK, WARN, FAIL = Level.OK, Level.WARN, Level.FAIL


@dataclass(frozen=True)
class Check:
    """One thing judged: ok, or the problem and the exact fix; `node` once we know where it was judged."""

    check: str  # what was judged, e.g. "health_url" or net.ipv4.conf.eth0.arp_ignore
    level: Level
    detail: str
    fix: str = ""
    node: str = ""

    @property
    def ok(self) -> bool:
        return self.level != FAIL

    def to_json(self) -> dict[str, Any]:
        judged = {"check": self.check, "level": str(self.level), "detail": self.detail, "fix": self.fix}
        return {"node": self.node, **judged} if self.node else judged


def failed(found: list[Check]) -> bool:
    return any(f.level == FAIL for f in found)
