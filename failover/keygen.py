"""`failover keygen PATH`: a new shared key for the heartbeats, written once, readable by its owner only.

Owns making the key file: 32 random bytes from the OS, mode 0600 from the moment the file exists (created
with that mode, never chmod-ed afterwards), and never replacing an existing file, which may be the key the
peer already has. The bytes are written as 64 hex digits and a newline: raw bytes could end in a newline,
which the loader strips as an editor's (a 1-in-256 short key), and text survives copy and paste between
hosts. Imports nothing outside the standard library.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path
from typing import Final

# Random bytes per key; the file holds twice as many hex digits, at least the loader's minimum
# (config.KEY_MIN_BYTES; tests/test_keygen.py holds the two together).
KEY_BYTES: Final = 32
MODE: Final = 0o600


class KeygenError(Exception):
    """One line naming the path and what stopped the key from being written."""


def write_key(path: Path) -> int:
    """Write a new key file at `path`, mode 0600; returns the number of bytes written."""
    key = (secrets.token_hex(KEY_BYTES) + "\n").encode()
    shown = os.fspath(path)
    try:
        # O_EXCL: an existing file (or a symlink planted there) is refused, never truncated or followed.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, MODE)
    except FileExistsError:
        raise KeygenError(f"{shown}: already exists; not overwritten (the peer may have this key)") from None
    except OSError as err:
        raise KeygenError(f"{shown}: cannot create: {err.strerror or err}") from None
    try:
        # The umask may have taken bits away from MODE, never added any; make it exactly 0600 on the fd.
        os.fchmod(fd, MODE)
        written = 0
        while written < len(key):
            written += os.write(fd, key[written:])
        os.fsync(fd)
    except OSError as err:
        os.close(fd)
        os.unlink(path)
        raise KeygenError(f"{shown}: cannot write: {err.strerror or err}") from None
    os.close(fd)
    return written


def run(path: Path) -> int:
    """The `failover keygen PATH` command: 0 written, 2 (bad usage, as in the CLI) refused."""
    try:
        write_key(path)
    except KeygenError as err:
        print(f"failover: {err}", file=sys.stderr)
        return 2
    print(f"{path}: new key written (mode 0600); copy this same file to the peer")
    return 0
