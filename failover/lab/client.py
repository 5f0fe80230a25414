"""Bounded HTTP client load for the lab, and the pure functions that read its records back.

Run inside the client namespace: ``python -m failover.lab.client --target 203.0.113.10 --out FILE``.
It writes ``{"records": [[t_start, t_end, ok, served_by_or_error], ...], "keepalive": {...}, "rst": {...}}``
with ``time.monotonic()`` times; CLOCK_MONOTONIC is shared by all namespaces, so records line up with
the lab's own events.

This module is the command line and the import path of the load's parts, which live in their own
modules: ``client_loop.py`` is the load itself (asyncio, inside the namespace; what it sends, how a
keep-alive connection ends), ``client_http.py`` one HTTP exchange of it, ``client_records.py`` the
records read back and summarized (pure), and ``client_process.py`` the load as a process started and
stopped from the lab side (``ClientLoad``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from failover.lab.client_http import (
    ClosedBeforeResponse,
    Connection,
    TruncatedResponse,
    _parse_response,
    error_name,
)
from failover.lab.client_loop import (
    KEEPALIVE_COUNTS,
    MAX_DURATION_S,
    MAX_IN_FLIGHT,
    MAX_REQUESTS,
    LoadOptions,
    _Load,
    reusable,
    run_load,
)
from failover.lab.client_process import ClientLoad, start_reporting
from failover.lab.client_records import (
    FAILURE_KINDS,
    LoadSummary,
    Request,
    failure_kind,
    first_served_by,
    load_records,
    load_rsts,
    rsts_between,
    summarize,
)

__all__ = [
    "FAILURE_KINDS",
    "KEEPALIVE_COUNTS",
    "MAX_DURATION_S",
    "MAX_IN_FLIGHT",
    "MAX_REQUESTS",
    "ClientLoad",
    "ClosedBeforeResponse",
    "Connection",
    "LoadOptions",
    "LoadSummary",
    "Request",
    "TruncatedResponse",
    "_Load",
    "_parse_response",
    "error_name",
    "failure_kind",
    "first_served_by",
    "load_records",
    "load_rsts",
    "main",
    "reusable",
    "rsts_between",
    "run_load",
    "start_reporting",
    "summarize",
]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m failover.lab.client", description=__doc__.split("\n")[0])
    p.add_argument("--target", required=True)
    p.add_argument("--port", type=int, default=80)
    p.add_argument("--interval-ms", type=float, default=5.0)
    p.add_argument("--timeout-ms", type=float, default=2000.0)
    p.add_argument("--duration-s", type=float, default=30.0)
    p.add_argument("--max-requests", type=int, default=20_000)
    p.add_argument(
        "--keepalive-interval-ms", type=float, action="append", default=None,
        help="one keep-alive connection asking this often; repeatable (default: one, every 50 ms)",
    )  # fmt: skip
    p.add_argument(
        "--rsts-from", action="append", default=None,
        help="count TCP RSTs from this address reaching the namespace; repeatable (default: --target)",
    )  # fmt: skip
    p.add_argument("--no-rst-count", action="store_true", help="count no RSTs (needs no CAP_NET_RAW)")
    p.add_argument("--no-keepalive", action="store_true", help="no keep-alive connection, new ones only")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--stop-file", type=Path, default=None)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    keepalive_ms = [] if args.no_keepalive else args.keepalive_interval_ms or [50.0]
    for name, value in (("interval_ms", args.interval_ms), ("timeout_ms", args.timeout_ms)):
        if value <= 0:
            raise SystemExit(f"--{name.replace('_', '-')} must be > 0")
    if any(ms <= 0 for ms in keepalive_ms):
        raise SystemExit("--keepalive-interval-ms must be > 0")
    rsts_from = () if args.no_rst_count else tuple(args.rsts_from or [args.target])
    opts = LoadOptions(
        target=args.target,
        port=args.port,
        interval_s=args.interval_ms / 1000.0,
        timeout_s=args.timeout_ms / 1000.0,
        duration_s=max(0.0, min(args.duration_s, MAX_DURATION_S)),
        max_requests=max(0, min(args.max_requests, MAX_REQUESTS)),
        keepalive_intervals_s=tuple(ms / 1000.0 for ms in keepalive_ms),
        stop_file=args.stop_file,
        rsts_from=rsts_from,
    )
    result = run_load(opts, args.out)
    failed = sum(1 for r in result["records"] if not r[2])
    print(
        f"done requests={len(result['records'])} failed={failed} keepalive={result['keepalive']} "
        f"rsts={result['rst'].get('frames')}",
        flush=True,
    )
    return 0



if __name__ == "__main__":
    raise SystemExit(main())
