"""Operator hooks: programs run (exec, no shell) on swap and takeover events, in order, with a timeout.

Owns how a hook is run and what it is told: the environment variables `FAILOVER_EVENT`,
`FAILOVER_CLUSTER`, `FAILOVER_NODE`, `FAILOVER_PEER`, `FAILOVER_VIP`, and, when known, `FAILOVER_EPOCH`,
`FAILOVER_MOVE`, `FAILOVER_SOURCE`, `FAILOVER_TARGET`, `FAILOVER_REASON`, with PATH and nothing else of
the agent's environment. Each hook runs in a session (process group) of its own: on timeout the whole
group is killed, and a child it leaves in the background does not keep us waiting once it has exited.
Which event fires when is the protocol core's and the agent's business, not this module's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
OUTPUT_TAIL = 64 * 1024  # bytes of a hook's output kept for its last line
AFTER_EXIT = 0.2  # seconds to take in what a hook wrote just before it exited
# What execve cannot pass (NUL) or encode (lone surrogates); a reason may come from the peer.
_UNPASSABLE = re.compile("[\x00\ud800-\udfff]")


def hook_environment(env: dict[str, str]) -> dict[str, str]:
    """The whole environment a hook gets: `env` made passable to execve, and PATH."""
    clean = {k: _UNPASSABLE.sub("\ufffd", v) for k, v in env.items() if k and not _UNPASSABLE.search(k)}
    return {"PATH": os.environ.get("PATH") or DEFAULT_PATH, **clean}


async def _read_tail(fd: int, tail: bytearray) -> None:
    loop = asyncio.get_running_loop()
    stream = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(stream), os.fdopen(fd, "rb", buffering=0)
    )
    try:
        while chunk := await stream.read(65536):
            tail += chunk
            del tail[:-OUTPUT_TAIL]
    finally:
        transport.close()


async def run_hook(argv: tuple[str, ...], env: dict[str, str], timeout: float) -> tuple[bool, str]:
    """Run one program with a timeout; ok means exit status 0. The detail names it and its last line."""
    # Our own pipe, not asyncio's: asyncio's wait() also waits for its pipes to close, and a child the
    # hook left in the background keeps them open.
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=write_end,
            stderr=write_end,
            env=hook_environment(env),
            start_new_session=True,
        )
    except (OSError, ValueError) as err:
        os.close(read_end)
        return False, f"{argv[0]}: {getattr(err, 'strerror', None) or err}"
    finally:
        os.close(write_end)
    tail = bytearray()
    reader = asyncio.create_task(_read_tail(read_end, tail))
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the hook and all it started
        await proc.wait()
        return False, f"{argv[0]}: timed out after {timeout:.1f} s"
    finally:
        # A child left in the background may hold the pipe open for ever: read on only a moment.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(reader), AFTER_EXIT)
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    lines = bytes(tail).decode(errors="replace").strip().splitlines()[-1:]
    detail = f"{argv[0]}: exit {proc.returncode}" + (f": {lines[0][:200]}" if lines else "")
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
