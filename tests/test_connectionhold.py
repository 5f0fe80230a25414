"""The drain's lingering close on real sockets (root: a namespace of its own, a real server process).

What it proves: a server process that closes a keep-alive connection without reading a request that
came (nginx's reload does that to an idle connection) makes the kernel send RST; held by the drain's
hold, the same close ends with a FIN, also for a request that crossed the close; the hold changes
nothing while the server still has the connection, and never closes a socket another process still
has. RSTs are counted by the namespace's kernel (Tcp OutRsts), not inferred.
"""

from __future__ import annotations

import textwrap

import pytest

from tests.nsutil import NEEDS_ROOT_REASON, REPO, is_root, ns, py_in, topology

SERVER = textwrap.dedent(
    """
    import os, socket, sys, time
    srv = socket.create_server((sys.argv[1], 80))
    print("ready", flush=True)
    conns = []
    for line in sys.stdin:
        cmd, *arg = line.split()
        if cmd == "accept":
            conns.append(srv.accept()[0])
        elif cmd == "echo":
            c = conns[int(arg[0])]
            c.sendall(c.recv(100))
        elif cmd == "close":
            conns[int(arg[0])].close()
        elif cmd == "fork" and os.fork() == 0:  # a second process with the connection: it keeps it
            time.sleep(1)
            os._exit(0)
        print("ok", flush=True)
    """
)

HOLD = textwrap.dedent(
    """
    import json, socket, subprocess, sys, time
    from ipaddress import ip_address
    from failover.connectionhold import ConnectionHold
    vip, client = sys.argv[1], sys.argv[2]
    server = subprocess.Popen([sys.executable, "-c", SERVER, vip], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert server.stdout.readline().strip() == "ready"
    def ask(cmd):
        server.stdin.write(cmd + "\\n")
        server.stdin.flush()
        assert server.stdout.readline().strip() == "ok", cmd
    def connect():
        c = socket.socket()
        c.bind((client, 0))
        c.connect((vip, 80))
        ask("accept")
        c.settimeout(2.0)
        return c
    def outcome(c):
        try:
            return "fin" if c.recv(100) == b"" else "data"
        except ConnectionResetError:
            return "reset"
    def resets():
        rows = [line.split() for line in open("/proc/net/snmp") if line.startswith("Tcp:")]
        return int(rows[1][rows[0].index("OutRsts")])
    seen = {}
    hold = ConnectionHold(ip_address(vip))

    before = resets()  # without the hold: the request unread, the close is a reset
    bare = connect()
    bare.sendall(b"GET")
    time.sleep(0.05)
    ask("close 0")
    seen["no hold: unread request, close"] = [outcome(bare), resets() - before]

    before = resets()
    kept = connect()
    seen["taken"] = hold.take()
    time.sleep(hold.confirm_after)
    hold.confirm()  # the same owner on a later look: shut as soon as that owner let go
    kept.sendall(b"ping")
    ask("echo 1")
    seen["held, server still has it: echo"] = kept.recv(100).decode()
    seen["held, server still has it: gone"] = hold.gone()
    kept.sendall(b"GET")
    time.sleep(0.05)
    ask("close 1")  # the request unread
    sure, unsure = hold.gone()
    kept_inodes = hold.shut_confirmed(sure)
    seen["held: confirmed, gone after the close"] = [len(sure), len(unsure)]
    seen["held: unread request, close"] = outcome(kept)

    crossing = connect()
    hold.take()
    ask("close 2")  # nothing unread; the request comes after the server's close, before the hold's FIN
    crossing.sendall(b"GET")
    time.sleep(0.05)
    sure, unsure = hold.gone()  # not confirmed: every process is looked at before the FIN
    crossing_inodes = hold.let_go(unsure)
    seen["held: unconfirmed, gone after the close"] = [len(sure), len(unsure)]
    seen["held: request after the close"] = outcome(crossing)
    kept.close()
    crossing.close()
    time.sleep(0.05)
    seen["read to the client's FIN"] = [hold.read_away(i) for i in kept_inodes + crossing_inodes]
    seen["bytes thrown away"] = hold.discarded

    forked = connect()  # confirmed, then the server forks: the child inherits it
    hold.take()
    time.sleep(hold.confirm_after)
    hold.confirm()
    ask("fork 3")
    ask("close 3")
    sure, unsure = hold.gone()
    seen["confirmed, then forked: gone to a look at its owners"] = [len(sure), len(unsure)]
    seen["confirmed, then forked: shut"] = hold.shut_confirmed(sure)
    seen["confirmed, then forked: gone after that"] = hold.gone()  # its owner now: the child

    shared = connect()
    hold.take()
    ask("fork 4")
    ask("close 4")  # the child still has it
    sure, unsure = hold.gone()
    seen["another process has it: gone to a look at its owners"] = [len(sure), len(unsure)]
    seen["another process has it: let go"] = hold.let_go(unsure)
    seen["another process has it: gone after that"] = hold.gone()
    shared.sendall(b"x")
    forked.sendall(b"y")
    time.sleep(0.05)
    shared.close()
    forked.close()
    time.sleep(0.05)
    hold.close()
    seen["resets while held"] = resets() - before
    server.stdin.close()
    server.wait(5)
    print(json.dumps(seen))
    """
)


@pytest.mark.root
@pytest.mark.skipif(not is_root(), reason=NEEDS_ROOT_REASON)
def test_a_held_connection_closes_with_a_fin_where_the_server_would_reset_it() -> None:
    with topology(("a",)) as topo:
        a = topo["a"]
        ns(a.netns, "ip", "addr", "add", "203.0.113.100/32", "dev", "lo")
        code = (
            f"import sys; sys.path.insert(0, {REPO!r}); sys.argv[1:] = [{a.ip4!r}, '203.0.113.100']\n"
            f"SERVER = {SERVER!r}\n"
        )
        seen = py_in(a.netns, code + HOLD)
    assert seen == {
        "no hold: unread request, close": ["reset", 1],  # what the hold is for
        "taken": 1,
        "held, server still has it: echo": "ping",
        "held, server still has it: gone": [[], []],
        "held: confirmed, gone after the close": [1, 0],
        "held: unread request, close": "fin",
        "held: unconfirmed, gone after the close": [0, 1],
        "held: request after the close": "fin",
        "read to the client's FIN": [True, True],
        "bytes thrown away": 6,  # the two requests nobody read
        "confirmed, then forked: gone to a look at its owners": [1, 0],
        "confirmed, then forked: shut": [],
        "confirmed, then forked: gone after that": [[], []],
        "another process has it: gone to a look at its owners": [0, 1],
        "another process has it: let go": [],
        "another process has it: gone after that": [[], []],  # its owner now: the child
        "resets while held": 0,
    }, seen
