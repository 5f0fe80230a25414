"""The agent's health check against a backend that misbehaves, on a real loopback socket; and no task of
the agent ends with an exception unnoticed."""

from __future__ import annotations

import asyncio
import http.client
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import structlog

from failover import agent
from failover.config import load_config
from failover.health import check_health

EXAMPLE = Path(__file__).resolve().parent.parent / "configs" / "cluster.example.yaml"


@contextmanager
def backend(answer: bytes) -> Iterator[str]:
    """A TCP server on 127.0.0.1 that reads a request and answers `answer` (then closes); its URL."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    conn.recv(65536)
                    conn.sendall(answer)
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/health"
    finally:
        stop.set()
        thread.join(5)
        listener.close()


@pytest.mark.parametrize(
    "answer",
    [
        b"garbage\r\n\r\n",  # http.client.BadStatusLine
        b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 200 + b"\r\n",  # too many headers: HTTPException
        b"HTTP/1.1 2000 OK\r\n\r\n",  # a status out of range
        b"",  # closed without a word: RemoteDisconnected
        b"\xff\xfe\x00garbage",
    ],
)
def test_a_backend_answering_garbage_is_a_failed_check_not_an_exception(answer: bytes) -> None:
    with backend(answer) as url:
        ok, detail = check_health(url, 2.0)
    assert not ok
    assert url in detail and "\n" not in detail


def test_a_backend_answering_200_is_healthy() -> None:
    with backend(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") as url:
        assert check_health(url, 2.0) == (True, f"HTTP 200 from {url}")


def test_a_task_that_raises_is_logged_and_counted_not_lost() -> None:
    config = load_config(EXAMPLE)

    async def main() -> tuple[int, list[dict[str, object]]]:
        a = agent.Agent(config, config.nodes[0])

        async def broken() -> None:
            raise RuntimeError("adapter bug")

        with structlog.testing.capture_logs() as logs:
            a._spawn(broken())
            await asyncio.sleep(0.05)
        return a.task_failures, logs

    failures, logs = asyncio.run(main())
    assert failures == 1
    [line] = [entry for entry in logs if entry["event"] == "task-failed"]
    assert line["task"] == "broken" and "adapter bug" in str(line["error"])


def test_the_access_log_followers_task_is_the_agents_so_its_exception_is_logged_and_counted(
    tmp_path: Path,
) -> None:
    config = load_config(EXAMPLE)

    async def main() -> tuple[int, list[dict[str, object]]]:
        a = agent.Agent(config, config.nodes[0])
        a.fault = "task-raises:_follow"  # as FAILOVER_TEST_FAULT sets it: the follower raises at its start
        with structlog.testing.capture_logs() as logs:
            a.watcher.start(7, None)
            await asyncio.sleep(0.05)
            a.watcher.stop(7)
        return a.task_failures, logs

    failures, logs = asyncio.run(main())
    assert failures == 1
    [line] = [entry for entry in logs if entry["event"] == "task-failed"]
    assert line["task"] == "_follow" and "injected test fault" in str(line["error"])


def test_a_redirect_is_followed_to_the_answer_it_leads_to() -> None:
    with backend(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") as target:
        moved = f"HTTP/1.1 302 Found\r\nLocation: {target}\r\nContent-Length: 0\r\n\r\n".encode()
        with backend(moved) as url:
            assert check_health(url, 2.0) == (True, f"HTTP 200 from {url} (redirected to {target})")


def test_a_redirect_to_a_failing_page_or_in_a_loop_is_unhealthy() -> None:
    with backend(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n") as target:
        moved = f"HTTP/1.1 301 Moved\r\nLocation: {target}\r\nContent-Length: 0\r\n\r\n".encode()
        with backend(moved) as url:
            assert check_health(url, 2.0) == (False, f"HTTP 503 from {url} (redirected to {target})")
    with backend(b"HTTP/1.1 302 Found\r\nLocation: /health\r\nContent-Length: 0\r\n\r\n") as url:
        ok, detail = check_health(url, 2.0)
    assert not ok and "redirects" in detail


def test_a_redirect_to_a_closed_port_names_both_urls() -> None:
    with backend(b"") as target:
        pass  # nothing listens on its port now
    moved = f"HTTP/1.1 301 Moved\r\nLocation: {target}\r\nContent-Length: 0\r\n\r\n".encode()
    with backend(moved) as url:
        ok, detail = check_health(url, 1.0)
    assert not ok and detail.startswith(f"{url} (redirected to {target}): "), detail


def test_a_closed_port_is_a_failed_check_naming_the_url() -> None:
    with backend(b"") as url:
        pass  # the backend is gone: nothing listens on its port now
    ok, detail = check_health(url, 1.0)
    assert not ok and detail.startswith(f"{url}: ")


def test_an_ipv6_literal_without_a_port_is_asked_on_port_80(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[str, int | None]] = []

    class Connection:
        def __init__(self, host: str, port: int | None, timeout: float) -> None:
            asked.append((host, port))
            raise OSError("no network in this test")

    monkeypatch.setattr(http.client, "HTTPConnection", Connection)
    ok, _ = check_health("http://[2001:db8::12]/", 1.0)
    assert not ok and asked == [("2001:db8::12", 80)]


def test_an_ipv6_loopback_backend_is_healthy() -> None:
    listener = socket.create_server(("::1", 0), family=socket.AF_INET6)
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        url = f"http://[::1]:{port}/health"
        assert check_health(url, 2.0) == (True, f"HTTP 200 from {url}")
    finally:
        thread.join(5)
        listener.close()
