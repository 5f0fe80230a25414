"""One HTTP/1.1 exchange of the client load: a response parsed, how a connection ended inside one (cut
short, or closed before any byte of it), and an error's name as a record keeps it.
"""

from __future__ import annotations

import asyncio
import errno

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class TruncatedResponse(Exception):
    """The connection ended inside a response (its head, or fewer body bytes than Content-Length)."""


class ClosedBeforeResponse(Exception):
    """EOF after the request went out and before any byte of the response."""


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return None


def _parse_response(raw: bytes) -> tuple[int, str]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not raw:
        raise ClosedBeforeResponse("no response")
    if not sep:
        raise TruncatedResponse(f"{len(raw)} bytes of a response head")
    status_line = head.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/"):
        raise ValueError(f"bad status line {head[:40]!r}")
    length = _content_length(head)
    if length is not None and len(body) < length:
        raise TruncatedResponse(f"{len(body)} of {length} body bytes")
    return int(status_line[1]), body.decode(errors="replace").strip()


def error_name(exc: BaseException) -> str:
    """The exception's type, with the errno's name for an OSError (EHOSTUNREACH tells more than OSError)."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    code = exc.errno if isinstance(exc, OSError) else None
    if code:
        return f"{type(exc).__name__}({errno.errorcode.get(code, code)})"
    return type(exc).__name__


def _close(conn: Connection | None) -> Connection | None:
    """Close ``conn`` if there is one; returns None, the connection to use next."""
    if conn is not None:
        conn[1].close()
    return None


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """One GET on a keep-alive connection; whether the server keeps the connection open after it."""
    writer.write(b"GET / HTTP/1.1\r\nHost: lab\r\n\r\n")
    await writer.drain()
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            raise ClosedBeforeResponse("EOF before any response byte") from exc
        raise TruncatedResponse(f"{len(exc.partial)} bytes of a response head") from exc
    status = head.split(b"\r\n", 1)[0].split()
    if len(status) < 2 or not status[0].startswith(b"HTTP/"):
        raise ValueError(f"bad status line {head[:40]!r}")
    length = _content_length(head) or 0
    try:
        if length:
            await reader.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        raise TruncatedResponse(f"{len(exc.partial)} of {length} body bytes") from exc
    if status[1] != b"200":
        raise ValueError(f"http {status[1].decode(errors='replace')}")
    return b"connection: close" not in head.lower()
