"""The client load's records read back: who served each request, the summary a test asserts on, the RSTs.

Pure: ``Request``, ``load_records``, ``summarize`` and ``first_served_by`` do no I/O beyond reading the
load's file (``client.py`` says what is in it).
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Request:
    start: float
    end: float
    ok: bool
    served_by: str  # the body (who served) when ok, else the error


def load_records(path: Path) -> tuple[list[Request], dict[str, int]]:
    data = json.loads(Path(path).read_text())
    records = [Request(float(s), float(e), bool(ok), str(who)) for s, e, ok, who in data["records"]]
    keepalive = {str(k): int(v) for k, v in data.get("keepalive", {}).items()}
    return records, keepalive


def load_rsts(path: Path) -> dict[str, Any]:
    """The load's RST count: ``frames`` (None when it could not count, ``error`` says why), ``drops``,
    ``kept`` ([at, source, source_port, dest_port, flags, source MAC] each)."""
    rst: dict[str, Any] = json.loads(Path(path).read_text()).get("rst") or {}
    return {"frames": None, "drops": 0, "kept": [], "error": "not counted", **rst}


def rsts_between(rst: dict[str, Any], since: float, until: float) -> int | None:
    """RSTs counted in [since, until] (monotonic), None when the load did not count them."""
    if rst.get("frames") is None:
        return None
    return sum(1 for at, *_ in rst.get("kept", []) if since <= float(at) <= until)


@dataclass(frozen=True)
class LoadSummary:
    requests: int
    failed: int
    stalled_over_1s: int
    max_gap_ms: float
    served_by: dict[str, int]
    max_gap_from: float | None = None  # the response end (monotonic) the largest gap began at


def summarize(
    records: Sequence[Request], since: float | None = None, until: float | None = None
) -> LoadSummary:
    """Requests started in [since, until]; the gap is between consecutive successful response ends."""
    window = [
        r for r in records if (since is None or r.start >= since) and (until is None or r.start <= until)
    ]
    ok = [r for r in window if r.ok]
    ends = sorted(r.end for r in ok)
    gap_from, max_gap = max(((a, b - a) for a, b in itertools.pairwise(ends)), key=lambda g: g[1],
                            default=(None, 0.0))
    return LoadSummary(
        requests=len(window),
        failed=len(window) - len(ok),
        stalled_over_1s=sum(1 for r in ok if r.end - r.start >= 1.0),
        max_gap_ms=max_gap * 1000.0,
        served_by=dict(Counter(r.served_by for r in ok)),
        max_gap_from=gap_from,
    )


FAILURE_KINDS = ("reset", "timeout", "refused", "other")


def failure_kind(error: str) -> str:
    """What a failed request's recorded error was, in the words an operator uses: reset (the connection
    was torn down under it), timeout (no answer in time), refused (RST to the SYN), or other."""
    if error == "timeout":
        return "timeout"
    if error.startswith("ConnectionRefusedError"):
        return "refused"
    if error.startswith(("ConnectionResetError", "ConnectionAbortedError", "BrokenPipeError")):
        return "reset"
    if error.startswith(("IncompleteReadError", "TruncatedResponse")):
        return "reset"  # the connection ended before the response did
    return "other"


def first_served_by(records: Sequence[Request], who: str, after: float) -> Request | None:
    """The first successful request served by ``who`` that ended after ``after`` (by end time)."""
    hits = [r for r in records if r.ok and r.served_by == who and r.end > after]
    return min(hits, key=lambda r: r.end, default=None)
