"""The boot id: what orders one run of an agent's datagrams after every earlier run's, whatever the clock.

The peer's replay guard accepts a sender's (boot, seq) only if it sorts after the last one it accepted,
so each start needs a boot id larger than every one used before on this node. The wall clock cannot
promise that (an NTP step back, an unset RTC). A counter in the state dir can: it is read, raised and
made durable (temporary file, fsync, rename, fsync of the directory) before the agent sends a byte, so a
crash right after the start can never hand the next start the same id.

The next id is max(stored + 1, wall clock in ns). The counter alone makes it grow; the clock is only a
floor, so the first start after an upgrade from agents that sent `time.time_ns()` still sorts after what
the running peer remembers, and a state dir that was lost falls back to today's behaviour.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path

from failover import journal

FILE = "boot"
BOOT_MAX = 2**63 - 1  # wire.INT_MAX: what the peer accepts


class BootIdError(Exception):
    """The boot id could not be read or made durable; the message is one line."""


def next_boot(state_dir: Path, clock_ns: Callable[[], int] = time.time_ns) -> int:
    """Raise the stored boot id and return it; it is on disk before this returns."""
    path = state_dir / FILE
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        dfd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        raise BootIdError(f"{state_dir}: cannot open the state directory: {err.strerror or err}") from None
    try:
        fcntl.flock(dfd, fcntl.LOCK_EX)  # two agents started at once for one node still get two ids
        stored = _read(path)
        boot = max(stored + 1, clock_ns())
        if boot > BOOT_MAX:
            raise BootIdError(f"{path}: boot id {stored} cannot grow any more; remove the file")
        try:
            journal.write_file_durably(path, f"{boot}\n".encode())
        except OSError as err:
            raise BootIdError(f"{path}: cannot write: {err.strerror or err}") from None
        return boot
    finally:
        os.close(dfd)


def _read(path: Path) -> int:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return 0
    except OSError as err:
        raise BootIdError(f"{path}: cannot read: {err.strerror or err}") from None
    try:
        value = int(text.strip())
    except ValueError:
        # Never echo the content: whatever is there is not ours to print.
        raise BootIdError(f"{path}: not a boot id; remove the file to start counting anew") from None
    if not 0 <= value <= BOOT_MAX:
        raise BootIdError(f"{path}: boot id out of range; remove the file to start counting anew")
    return value
