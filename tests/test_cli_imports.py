"""`failover swap|unswap|status` reach the agent with nothing heavy imported, at the socket the loader names.

Each CLI runs as a real subprocess. An audit hook (``sys.addaudithook``, run by the interpreter itself on
every ``socket.connect``) writes down the modules loaded at the moment the CLI connects to its agent and
the address it connects to. Each test has its own lookup cache (`failover.agentsocket.CACHE`): the first
run reads the cluster file with PyYAML and remembers its sockets, later runs of the same bytes do not even
import PyYAML. A stand-in agent (a Unix socket in the test's directory, speaking the control
protocol's line format) answers where a test needs an answer; the real agent is exercised by
tests/integration/test_cli.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from failover import agentsocket
from failover.config import load_config

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("failover.config", "failover.check", "failover.lab", "failover.netlink", "failover.announce",
         "failover.agent", "failover.logs", "scapy", "pyroute2", "structlog", "prometheus_client",
         "asyncio", "dataclasses", "typing", "pathlib", "argparse", "failover.cliparser")
# Once the cache knows the file: not PyYAML either, nor the stdlib's slower starts (~4 ms each here, PyYAML
# needs re): those come once the request is sent, if at all.
CACHED_HEAVY = (*HEAVY, "yaml", "socket", "json", "re", "enum", "contextlib", "failover.control",
                "encodings.utf_8_sig")

BAD_HEARTBEAT = "  dead_after_ms: fast\n"  # line 9 of cluster_file()

HOOK = """
import sys
SEEN = sys.argv[1]
def hook(event, args):
    if event == "socket.connect" and isinstance(args[1], str):
        modules = sorted(sys.modules)  # before this hook imports json to write them down
        import json
        with open(SEEN, "x") as out:  # the first connect only: a second one fails here, loudly
            json.dump({"address": args[1], "modules": modules}, out)
sys.addaudithook(hook)
sys.argv = ["failover", *sys.argv[2:]]
from failover.cli import main
raise SystemExit(main())
"""
LAUNCHER = REPO / "scripts" / "failover"  # what installing the project puts on PATH as `failover`
# The hook, then the launcher's own text run as the interpreter runs a script (compile and exec are
# builtins: nothing imported that the launcher would not import itself).
HOOK_THEN_LAUNCHER = HOOK.split("from failover.cli")[0] + (
    f"exec(compile(open({str(LAUNCHER)!r}).read(), 'failover', 'exec'), {{'__name__': '__main__'}})\n"
)


def cluster_file(tmp_path: Path, *, control_socket: Path | None, extra: str = "") -> Path:
    # One node address is loopback, so `--node` can be left out and the CLI finds its node by binding.
    sock = "" if control_socket is None else f"    control_socket: {control_socket}\n"
    text = f"""\
cluster: clitest-{tmp_path.name[-8:].replace("_", "-")}
vip:
  address: 203.0.113.10/24
  interface: eth0
auth:
  key_file: {tmp_path / "key"}
heartbeat:
  interval_ms: 50
{extra}nodes:
  live:
    address: 127.0.0.1
    home: true
    health_url: http://127.0.0.1/
    access_log: {tmp_path / "live.log"}
{sock}  backup:
    address: 203.0.113.12
    health_url: http://203.0.113.12/
    access_log: {tmp_path / "backup.log"}
{sock}"""
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    return path


def run_cli(
    tmp_path: Path, *args: str, cache: str | None = None, hook: str = HOOK
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any] | None]:
    seen = tmp_path / "seen.json"
    seen.unlink(missing_ok=True)
    argv = [sys.executable, "-c", hook, str(seen), *args]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO),
           "FAILOVER_CLI_CACHE": str(tmp_path / "cache" / "cli.cache") if cache is None else cache}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False, cwd=REPO, env=env)
    return done, json.loads(seen.read_text()) if seen.exists() else None


def heavy_modules(seen: dict[str, Any], heavy: tuple[str, ...]) -> list[str]:
    return [m for m in seen["modules"] if m in heavy or m.startswith(tuple(f"{h}." for h in heavy))]


@pytest.fixture
def stand_in_agent(tmp_path: Path) -> Iterator[tuple[Path, list[dict[str, Any]]]]:
    """A Unix socket answering each request line with one `done` reply; yields (path, replies to send)."""
    path = tmp_path / "agent.sock"
    replies: list[dict[str, Any]] = []
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(4)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                request = b""
                while not request.endswith(b"\n"):
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    request += chunk
                for reply in replies:
                    conn.sendall(json.dumps(reply).encode() + b"\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield path, replies
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


@pytest.mark.parametrize("args", [("status",), ("status", "--json"), ("swap",), ("unswap", "--json"),
                                  ("swap", "--dry-run"), ("status", "--node", "backup")])
@pytest.mark.parametrize("explicit_socket", [True, False])
def test_agent_commands_connect_with_nothing_heavy_imported(
    tmp_path: Path, args: tuple[str, ...], explicit_socket: bool
) -> None:
    config = cluster_file(tmp_path, control_socket=tmp_path / "none.sock" if explicit_socket else None)
    node = load_config(config).node("backup" if "backup" in args else "live")
    # First with the file unknown to the cache (PyYAML reads it), then known (not even PyYAML).
    for heavy in (HEAVY, CACHED_HEAVY):
        done, seen = run_cli(tmp_path, *args, "-c", str(config))
        assert seen is not None, done.stderr
        assert heavy_modules(seen, heavy) == []
        # The socket it went to is the one the full loader names for that node: one rule, not two.
        assert seen["address"] == str(node.control_socket)
        # Nobody listens there: the agent is unreachable (3), with the documented one-line message.
        assert done.returncode == 3, done.stderr
        assert done.stderr.strip().splitlines() == [f"failover: no agent socket at {node.control_socket}; "
                                                    "is `failover agent` running?"]


@pytest.mark.parametrize("args", [("swap",), ("status", "--json")])
def test_the_failover_command_connects_with_nothing_heavy_imported(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    # The launcher itself, not only failover.cli: pip's console-script template imported `re` (with
    # `enum`) before our first line, 5-8 ms of every start here.
    config = cluster_file(tmp_path, control_socket=tmp_path / "none.sock")
    for heavy in (HEAVY, CACHED_HEAVY):  # the file unknown to the cache, then known
        done, seen = run_cli(tmp_path, *args, "-c", str(config), hook=HOOK_THEN_LAUNCHER)
        assert seen is not None, done.stderr
        assert heavy_modules(seen, heavy) == []
        assert seen["address"] == str(tmp_path / "none.sock")
        assert done.returncode == 3, done.stderr


def test_the_installed_failover_command_is_the_launcher() -> None:
    installed = Path(sys.executable).with_name("failover")
    if not installed.exists():
        pytest.skip("no failover script beside this interpreter (not installed with pip)")
    first, _, rest = installed.read_text().partition("\n")
    # pip put this venv's interpreter in the first line (`python` or `python3`, whichever ran pip) and
    # kept the rest: what the test above ran.
    named = Path(first.removeprefix("#!"))
    assert first.startswith("#!") and named.parent == Path(sys.executable).parent
    assert named.samefile(sys.executable)
    assert rest == LAUNCHER.read_text().partition("\n")[2]


@pytest.mark.parametrize("written", ["{sock}/", "{dir}//none.sock", "{dir}/./none.sock"])
def test_a_socket_path_written_unlike_the_loaders_goes_where_the_loader_says(
    tmp_path: Path, written: str
) -> None:
    # The agent binds the loader's Path, which drops a trailing "/" and collapses "//" and "/./".
    sock = tmp_path / "none.sock"
    config = cluster_file(tmp_path, control_socket=sock)
    config.write_text(config.read_text().replace(str(sock), written.format(sock=sock, dir=tmp_path)))
    assert load_config(config).node("live").control_socket == sock
    for _ in range(2):  # unknown to the cache, then (if it kept anything) known
        done, seen = run_cli(tmp_path, "status", "-c", str(config))
        assert seen is not None and seen["address"] == str(sock), done.stderr
        assert done.returncode == 3, done.stderr
        assert done.stderr.strip() == f"failover: no agent socket at {sock}; is `failover agent` running?"


def test_a_file_that_begins_with_a_byte_order_mark_is_read_as_the_loader_reads_it(tmp_path: Path) -> None:
    sock = tmp_path / "agent.sock"
    config = cluster_file(tmp_path, control_socket=sock)
    config.write_bytes(b"\xef\xbb\xbf" + config.read_bytes())
    assert load_config(config).node("live").control_socket == sock
    for _ in range(2):  # unknown to the cache, then known
        done, seen = run_cli(tmp_path, "status", "-c", str(config))
        assert seen is not None and seen["address"] == str(sock), done.stderr
        assert done.returncode == 3, done.stderr


def test_an_edited_file_is_read_again(tmp_path: Path) -> None:
    config = cluster_file(tmp_path, control_socket=tmp_path / "one.sock")
    done, seen = run_cli(tmp_path, "status", "-c", str(config))
    assert seen is not None and seen["address"] == str(tmp_path / "one.sock"), done.stderr
    # Same length, same mtime: only the bytes differ, and they are what the cache compares.
    stat = config.stat()
    config.write_text(config.read_text().replace("one.sock", "two.sock"))
    os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    done, seen = run_cli(tmp_path, "status", "-c", str(config))
    assert seen is not None and seen["address"] == str(tmp_path / "two.sock"), done.stderr
    assert "yaml" in seen["modules"]
    done, seen = run_cli(tmp_path, "status", "-c", str(config))
    assert seen is not None and seen["address"] == str(tmp_path / "two.sock"), done.stderr
    assert "yaml" not in seen["modules"]


@pytest.mark.parametrize("forged_mode", [0o600, 0o622])
def test_a_cache_others_could_write_is_never_trusted(tmp_path: Path, forged_mode: int) -> None:
    config = cluster_file(tmp_path, control_socket=tmp_path / "agent.sock")
    run_cli(tmp_path, "status", "-c", str(config))
    cache = tmp_path / "cache" / "cli.cache"
    entries = agentsocket._decoded(cache.read_bytes())
    for row in entries[str(config)]["nodes"]:
        row[-1] = str(tmp_path / "elsewhere.sock")
    forged = agentsocket._encoded(entries)
    assert forged is not None
    cache.write_bytes(forged)
    cache.chmod(forged_mode)
    done, seen = run_cli(tmp_path, "status", "-c", str(config))
    assert seen is not None, done.stderr
    # Ours alone (0600): believed, as the file it stands for. Writable by others: ignored, file read again.
    trusted = forged_mode == 0o600
    assert seen["address"] == str(tmp_path / ("elsewhere.sock" if trusted else "agent.sock"))
    assert ("yaml" in seen["modules"]) is not trusted


def _good_cache(config: Path) -> bytes:
    nodes = [["live", "127.0.0.1", "/x.sock"], ["backup", "203.0.113.12", "/x.sock"]]
    entry = {"text": config.read_text(), "nodes": nodes}
    data = agentsocket._encoded({str(config): entry})
    assert data is not None
    return data


@pytest.mark.parametrize("damage", [
    lambda good: b"", lambda good: b"garbage", lambda good: good[:-1], lambda good: good[: len(good) // 2],
    lambda good: good.replace(b"cache 2", b"cache 9"), lambda good: good.replace(b"live", b"\xff\xfe"),
    lambda good: good + b"one\0more\0", lambda good: b'{"version": 1, "entries": {}}',  # the JSON of before
    # A marshal cache (the format for a while) that asks for 2**31 list items: read as what it is, no cache.
    lambda good: b"\xfb\xda\x07version[" + (0x7FFFFFFF).to_bytes(4, "little"),
], ids=["empty", "garbage", "no-end", "half", "format", "not-utf8", "extra", "json", "marshal"])
def test_a_broken_cache_is_read_past(tmp_path: Path, damage: Callable[[bytes], bytes]) -> None:
    config = cluster_file(tmp_path, control_socket=tmp_path / "agent.sock")
    cache = tmp_path / "cache" / "cli.cache"
    cache.parent.mkdir(mode=0o700)
    content = damage(_good_cache(config))
    cache.write_bytes(content)
    cache.chmod(0o600)
    done, seen = run_cli(tmp_path, "status", "-c", str(config))
    assert seen is not None and seen["address"] == str(tmp_path / "agent.sock"), done.stderr
    assert done.returncode == 3
    # Replaced by a good one, naming the socket the file names.
    rewritten = agentsocket._decoded(cache.read_bytes())
    assert rewritten[str(config)]["nodes"][0][2] == str(tmp_path / "agent.sock")


def test_no_cache_when_turned_off(tmp_path: Path) -> None:
    config = cluster_file(tmp_path, control_socket=tmp_path / "agent.sock")
    for _ in range(2):
        done, seen = run_cli(tmp_path, "status", "-c", str(config), cache="")
        assert seen is not None and seen["address"] == str(tmp_path / "agent.sock"), done.stderr
        assert "yaml" in seen["modules"]
    assert not (tmp_path / "cache").exists()


def test_other_commands_still_load_the_whole_file_first(tmp_path: Path) -> None:
    config = cluster_file(tmp_path, control_socket=tmp_path / "none.sock", extra="  dead_after_ms: 1\n")
    done, _ = run_cli(tmp_path, "history", "-c", str(config))
    assert done.returncode == 2
    assert "heartbeat.dead_after_ms" in done.stderr


@pytest.mark.parametrize(
    ("args", "answering"),
    [(("status",), False), (("status", "--json"), False), (("swap",), False), (("swap", "--dry-run"), False),
     (("status", "--json"), True), (("unswap", "--dry-run"), True)],
)
def test_a_bad_file_is_exit_2_naming_file_line_and_field(
    tmp_path: Path, stand_in_agent: tuple[Path, list[dict[str, Any]]], args: tuple[str, ...], answering: bool
) -> None:
    # With no agent, or for a command that changes nothing, exactly as before: the file's error and exit 2.
    sock, replies = stand_in_agent
    replies.append({"type": "done"})
    target = sock if answering else tmp_path / "none.sock"
    config = cluster_file(tmp_path, control_socket=target, extra=BAD_HEARTBEAT)
    done, seen = run_cli(tmp_path, *args, "-c", str(config))
    assert seen is not None and seen["address"] == str(target)  # the agent was tried first
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.splitlines() == [f"failover: {config}:9: heartbeat.dead_after_ms: "
                                        "expected an integer, got string 'fast'"]


def test_a_move_refused_by_the_agent_for_a_bad_file_is_exit_2(
    tmp_path: Path, stand_in_agent: tuple[Path, list[dict[str, Any]]]
) -> None:
    # The agent loads the file the CLI names before it moves anything (tests/integration/test_cli.py).
    sock, replies = stand_in_agent
    error = "/etc/failover/x.yaml:9: heartbeat.dead_after_ms: expected an integer, got string 'fast'"
    replies.append({"type": "error", "error": error, "config_error": True})
    config = cluster_file(tmp_path, control_socket=sock, extra=BAD_HEARTBEAT)
    done, _ = run_cli(tmp_path, "swap", "--json", "-c", str(config))
    assert (done.returncode, done.stdout) == (2, ""), done.stderr
    assert done.stderr.splitlines() == [f"failover: {error}"]


def test_a_good_file_moves_quietly(tmp_path: Path, stand_in_agent: tuple[Path, list[dict[str, Any]]]) -> None:
    sock, replies = stand_in_agent
    replies.append({"type": "done", "outcome": {"ok": False, "holder": "live", "reason": "peer not alive"}})
    config = cluster_file(tmp_path, control_socket=sock)
    done, _ = run_cli(tmp_path, "swap", "-c", str(config))
    assert done.returncode == 1
    assert done.stderr.splitlines() == ["swap FAILED: peer not alive; VIP on live"]


def test_the_cache_reads_back_what_was_written_and_refuses_what_it_cannot_hold() -> None:
    entries = {
        "/etc/failover/cluster.yaml": {"text": "cluster: web\n# ünïcode ✓\n", "nodes": [
            ["web1", "203.0.113.11", "/run/failover/web.sock"], ["web2", "2001:db8::12", "/run/b.sock"]]},
        "/srv/\udcff-not-utf8.yaml": {"text": "", "nodes": [["a", "::1", "/a"], ["b", "127.0.0.1", "/b"]]},
    }
    data = agentsocket._encoded(entries)
    assert data is not None
    assert agentsocket._decoded(data) == entries
    # A NUL would split a field in two: such a file is not cached (read with PyYAML each time).
    entries["/etc/failover/cluster.yaml"]["text"] = "cluster: web\0\n"
    assert agentsocket._encoded(entries) is None
