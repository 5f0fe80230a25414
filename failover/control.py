"""The CLI <-> agent control protocol over a Unix socket.

One request per connection: the client sends one JSON line; the agent answers with JSON lines, zero or
more `{"type": "progress", ...}` and then exactly one ending in `{"type": "done", ...}` or
`{"type": "error", "error": "..."}`. The client reads until it sees that marker, with a timeout.
Only root (or the agent's own user) may connect: checked with SO_PEERCRED on every connection.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
from collections.abc import Awaitable, Callable

# The CLI's end, here too for the agent, the lab and the tests: one protocol.
from failover.controlclient import ControlError as ControlError
from failover.controlclient import request as request

TYPE_CHECKING = False  # typing's own flag without importing typing: the CLI imports this module
if TYPE_CHECKING:
    import asyncio
    from pathlib import Path
    from typing import Any

MAX_REQUEST = 4096
REQUEST_TIMEOUT = 5.0  # a client that connects and never speaks is dropped after this

if TYPE_CHECKING:
    Reply = Callable[[dict[str, Any]], Awaitable[None]]
    Handler = Callable[[dict[str, Any], Reply], Awaitable[dict[str, Any]]]


def encode_line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def peer_uid(sock: socket.socket) -> int:
    import struct  # here, not at the top: only the agent asks

    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def claim_socket_path(path: Path) -> None:
    """Make `path` free for a new agent: refuse if a live agent answers there, remove a stale file."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists() and not path.is_symlink():
        return
    if not stat.S_ISSOCK(path.lstat().st_mode):
        raise ControlError(f"{path}: exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)  # stale: the agent that made it is gone
        return
    except OSError as err:
        raise ControlError(f"{path}: cannot tell whether an agent is running: {err}") from None
    finally:
        probe.close()
    raise ControlError(f"{path}: another agent is already running for this cluster and node")


class Server:
    """The agent's listening socket; close() removes the socket file only while it is still ours."""

    def __init__(self, server: asyncio.AbstractServer, path: Path, identity: tuple[int, int]) -> None:
        self._server, self.path, self._identity = server, path, identity

    def close(self) -> None:
        self._server.close()
        with contextlib.suppress(OSError):
            st = self.path.lstat()
            # Another agent may have been started after the file was removed: its socket stays.
            if (st.st_dev, st.st_ino) == self._identity:
                self.path.unlink()


def _bind(path: Path) -> tuple[socket.socket, tuple[int, int]]:
    """A Unix socket bound at `path` with mode 0600 from its first moment: the umask is set around bind,
    so there is no window in which another user could connect before a chmod."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old)
    st = path.lstat()
    return sock, (st.st_dev, st.st_ino)


async def serve(path: Path, handler: Handler) -> Server:
    import asyncio  # here, not at the top: the CLI imports this module and must start fast

    claim_socket_path(path)
    own_uid = os.geteuid()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def reply(obj: dict[str, Any]) -> None:
            writer.write(encode_line(obj))
            await writer.drain()

        try:
            sock = writer.get_extra_info("socket")
            uid = peer_uid(sock)
            if uid not in (0, own_uid):
                await reply({"type": "error", "error": f"uid {uid} may not control the agent; run as root"})
                # Take in what it sent before closing: closing on unread data resets the connection,
                # and the client would see a broken pipe instead of our answer.
                with contextlib.suppress(TimeoutError, ValueError):
                    await asyncio.wait_for(reader.read(MAX_REQUEST), 1.0)
                return
            try:
                line = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT)
            except TimeoutError:
                await reply({"type": "error", "error": "no complete request line in time"})
                return
            except ValueError:
                await reply({"type": "error", "error": f"request longer than {MAX_REQUEST} bytes"})
                return
            request = _parse_request(line)
            if isinstance(request, str):
                await reply({"type": "error", "error": request})
                return
            final = await handler(request, reply)
            await reply(final)
        except (ConnectionError, BrokenPipeError):
            pass  # the CLI went away; the agent carries on
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    try:
        sock, identity = _bind(path)
    except OSError as err:
        raise ControlError(f"{path}: cannot listen: {err.strerror or err}") from None
    server = await asyncio.start_unix_server(on_client, sock=sock, limit=MAX_REQUEST)
    return Server(server, path, identity)


def _parse_request(line: bytes) -> dict[str, Any] | str:
    if not line.endswith(b"\n"):
        return "request too long or not terminated by a newline"
    try:
        request = json.loads(line)
    except ValueError:
        return "request is not JSON"
    if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
        return "request must be a JSON object with a string 'cmd'"
    return request
