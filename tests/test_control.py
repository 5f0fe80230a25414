"""The control socket: mode 0600 from its first moment, and an agent removes only its own socket file."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest

from failover import control


async def _answer(request: dict[str, Any], reply: control.Reply) -> dict[str, Any]:
    return {"type": "done", "cmd": request["cmd"]}


def test_the_socket_is_0600_without_a_chmod_after_bind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chmods: list[Any] = []
    monkeypatch.setattr(os, "chmod", lambda *a, **kw: chmods.append(a))
    path = tmp_path / "agent.sock"

    async def main() -> int:
        server = await control.serve(path, _answer)
        mode = stat.S_IMODE(path.lstat().st_mode)
        server.close()
        return mode

    old = os.umask(0o022)
    try:
        assert asyncio.run(main()) == 0o600
    finally:
        os.umask(old)
    assert chmods == []
    assert os.umask(0o022) == 0o022  # the agent's own umask is back as it was
    os.umask(old)


def test_an_agent_never_removes_a_socket_that_is_not_its_own(tmp_path: Path) -> None:
    path = tmp_path / "agent.sock"

    async def main() -> list[dict[str, Any]]:
        first = await control.serve(path, _answer)
        path.unlink()  # removed by hand while the first agent runs; a second agent starts
        second = await control.serve(path, _answer)
        first.close()  # the first one stops
        assert path.exists()
        replies = await asyncio.to_thread(lambda: list(control.request(path, {"cmd": "status"}, timeout=5)))
        second.close()
        assert not path.exists()  # its own: removed
        return replies

    assert asyncio.run(main()) == [{"type": "done", "cmd": "status"}]


def test_a_live_agent_is_not_replaced_and_a_stale_file_is(tmp_path: Path) -> None:
    path = tmp_path / "agent.sock"

    async def main() -> None:
        server = await control.serve(path, _answer)
        with pytest.raises(control.ControlError, match="already running"):
            await control.serve(path, _answer)
        server.close()
        dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        dead.bind(str(path))  # an agent killed with SIGKILL leaves its file; nobody listens there
        dead.close()
        again = await control.serve(path, _answer)
        again.close()

    asyncio.run(main())
