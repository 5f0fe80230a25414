"""The shared authentication key(s): read from files that only root (or we) can have written.

Also the one careful file read of the package (`read_regular`): regular files only, never blocking on a
FIFO, the stat of the file actually read.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Final

from failover.config.schema import AuthConfig, ConfigError

KEY_MIN_BYTES: Final = 32


def read_regular(path: Path, limit: int) -> tuple[bytes, os.stat_result] | None:
    """The content (at most `limit` bytes) and stat of the regular file at `path`; None when it is not
    one. Never blocks: a FIFO is opened non-blocking and refused by its fstat, never read."""
    import errno  # here, not at the top: the imports there are kept minimal for a fast CLI start

    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        st = os.fstat(fd)  # of the file we read, not of whatever the path names a moment later
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))  # as open() says it
        if not stat.S_ISREG(st.st_mode):
            return None
        chunks, size = [], 0
        while size < limit and (chunk := os.read(fd, min(65536, limit - size))):
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks), st
    finally:
        os.close(fd)


def load_key(path: Path, *, field: str = "auth.key_file") -> bytes:
    """Read a shared key: a regular file owned by root or by us, no group/other permission bits, at
    least 32 bytes.

    The content is used as raw bytes; a single trailing newline (as editors add) is not part of the key.
    """
    shown = os.fspath(path)
    try:
        found = read_regular(path, 64 * 1024)
        if found is None:
            raise ConfigError("not a regular file", file=shown, field=field)
        key, st = found
        if st.st_uid not in (0, os.geteuid()):
            # Whoever owns it can replace it with a key of their choosing.
            raise ConfigError(
                f"owned by uid {st.st_uid}, not root or uid {os.geteuid()}; chown root {shown}",
                file=shown, field=field,
            )
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise ConfigError(
                f"mode {mode:04o} is group/other-accessible; chmod 600 {shown}", file=shown, field=field
            )
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror or e}", file=shown, field=field) from None
    except ValueError as e:  # e.g. an embedded NUL in the path
        raise ConfigError(f"cannot read: {e}", file=shown, field=field) from None
    if key.endswith(b"\n"):
        key = key[:-1]
    if len(key) < KEY_MIN_BYTES:
        raise ConfigError(
            f"key is {len(key)} bytes, need at least {KEY_MIN_BYTES}", file=shown, field=field
        )
    return key


def keys_for(auth: AuthConfig) -> tuple[bytes, ...]:
    """The keys to accept: the current one first, then the previous one while a rotation is under way."""
    keys = [load_key(auth.key_file)]
    if auth.previous_key_file is not None:
        keys.append(load_key(auth.previous_key_file, field="auth.previous_key_file"))
    return tuple(keys)

