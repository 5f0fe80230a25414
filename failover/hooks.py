"""Operator hooks: programs run (exec, no shell) on swap and takeover events, in order, with a timeout.

Owns how a hook is run and what it is told: the environment variables `FAILOVER_EVENT`,
`FAILOVER_CLUSTER`, `FAILOVER_NODE`, `FAILOVER_PEER`, `FAILOVER_VIP`, and, when known, `FAILOVER_EPOCH`,
`FAILOVER_MOVE`, `FAILOVER_SOURCE`, `FAILOVER_TARGET`, `FAILOVER_REASON`. Which event fires when is the
protocol core's and the agent's business, not this module's.
"""

from __future__ import annotations

import asyncio
import os


async def run_hook(argv: tuple[str, ...], env: dict[str, str], timeout: float) -> tuple[bool, str]:
    """Run one program with a timeout; ok means exit status 0. The detail names it and its last line."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, **env},
        )
    except OSError as err:
        return False, f"{argv[0]}: {err.strerror or err}"
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return False, f"{argv[0]}: timed out after {timeout:.1f} s"
    tail = out.decode(errors="replace").strip().splitlines()[-1:] if out else []
    detail = f"{argv[0]}: exit {proc.returncode}" + (f": {tail[0][:200]}" if tail else "")
    return proc.returncode == 0, detail


async def run_all(
    hooks: tuple[tuple[str, ...], ...], env: dict[str, str], timeout: float
) -> tuple[bool, list[str]]:
    """Run each program in order; stop at the first failure. Returns ok and one detail per program run."""
    details: list[str] = []
    for argv in hooks:
        ok, detail = await run_hook(argv, env, timeout)
        details.append(detail)
        if not ok:
            return False, details
    return True, details
