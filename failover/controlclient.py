"""The CLI's end of the control protocol (`failover.control` has the format and the agent's end).

`failover swap` is timed from exec to the new holder's first answer, so this side sends its request line
before it imports anything it does not need to send it: the socket is `_socket`'s (the C module the
`socket` module wraps: its enum classes cost ~4 ms of every start here), and the request is written with
`_json`'s string encoder, the one `json.dumps` uses. `json` itself (with `re`, ~4 ms) is imported once
the line is sent, to read the replies, while the agent is already at work.
"""

from __future__ import annotations

import _socket

TYPE_CHECKING = False  # typing's own flag without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path
    from typing import Any

try:
    from _json import encode_basestring_ascii as _string
except ImportError:  # a Python without the accelerator: json's own, the same text
    from json.encoder import py_encode_basestring_ascii as _string

ENDINGS = ("done", "error")


class ControlError(Exception):
    """The agent could not be reached or answered with an error; the message is one line."""


def request_line(req: dict[str, str | bool | float | int | None]) -> bytes:
    """`req` as one JSON line, as `json.dumps(req, separators=(",", ":"))` writes it (ASCII, escaped):
    a request holds only text, flags and numbers."""
    fields = []
    for key, value in req.items():
        if value is None:
            text = "null"
        elif value is True or value is False:
            text = "true" if value else "false"
        elif isinstance(value, str):
            text = _string(value)
        elif isinstance(value, int | float) and value == value and value not in (float("inf"), -float("inf")):
            text = repr(value)  # what json writes for a finite number
        else:
            raise TypeError(f"a request field of type {type(value).__name__}: {key}")
        fields.append(f"{_string(key)}:{text}")
    return ("{" + ",".join(fields) + "}\n").encode("ascii")


def request(path: str | Path, req: dict[str, Any], *, timeout: float) -> Iterator[dict[str, Any]]:
    """Send one request and yield every reply line; the last one yielded is the done/error marker."""
    line = request_line(req)
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except FileNotFoundError:
            raise ControlError(f"no agent socket at {path}; is `failover agent` running?") from None
        except ConnectionRefusedError:
            raise ControlError(f"stale agent socket at {path}: no agent is running") from None
        except PermissionError:
            raise ControlError(f"permission denied on {path}; run as root") from None
        except OSError as err:
            raise ControlError(f"cannot reach the agent at {path}: {err.strerror or err}") from None
        try:
            sock.sendall(line)
        except OSError as err:
            raise ControlError(f"the agent closed the connection: {err}") from None
        import json  # now: the agent has the request

        buf = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                raise ControlError(f"the agent did not answer within {timeout:.0f} s") from None
            except OSError as err:
                raise ControlError(f"the agent closed the connection: {err}") from None
            if not chunk:
                raise ControlError("the agent closed the connection without an answer")
            buf += chunk
            while b"\n" in buf:
                reply, buf = buf.split(b"\n", 1)
                obj = json.loads(reply)
                yield obj
                if obj.get("type") in ENDINGS:
                    return
    finally:
        sock.close()
