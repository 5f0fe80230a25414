"""What the drain counts, on real sockets over a namespace's loopback (root): sock_diag, not a model of it."""

from __future__ import annotations

import textwrap

import pytest

from tests.nsutil import NEEDS_ROOT_REASON, REPO, is_root, ns, py_in, topology

# A server on the host's address and clients from a second address (the client side must not count):
# an open connection, one the server half-closed and still owns, one the server closed while its
# client has not (an orphaned FIN-WAIT-2, as nginx's reload leaves an idle keep-alive connection).
# Counted right away and past ORPHAN_GRACE (the clock is passed in), then once the clients closed.
COUNTS = textwrap.dedent(
    """
    import json, socket, sys, time
    from ipaddress import ip_address
    from failover.connections import ORPHAN_GRACE, ConnectionCounter
    vip, client = sys.argv[1], sys.argv[2]
    server = socket.create_server((vip, 80))
    def connect():
        c = socket.socket()
        c.bind((client, 0))
        c.connect((vip, 80))
        return c, server.accept()[0]
    counter = ConnectionCounter(ip_address(vip))
    def both(c):
        return [c.open, c.closing]
    counts = {"nothing": both(counter.count(now=0.0))}
    opened, opened_here = connect()
    half, half_here = connect()
    half_here.shutdown(socket.SHUT_WR)
    slow, slow_here = connect()
    slow_here.close()
    for _ in range(100):  # until the client's ACK of the FIN turned it into FIN-WAIT-2
        time.sleep(0.01)
        if counter.count(now=0.0).open == 3 and slow.recv(1) == b"":
            break
    counts["at once"] = both(counter.count(now=0.0))
    counts["within the grace"] = both(counter.count(now=ORPHAN_GRACE / 2))
    counts["past the grace"] = both(counter.count(now=ORPHAN_GRACE))
    slow.close()
    opened.close()
    opened_here.close()
    time.sleep(0.1)
    counts["after the clients closed"] = both(counter.count(now=ORPHAN_GRACE + 1))
    counter.close()
    print(json.dumps(counts))
    """
)


@pytest.mark.root
@pytest.mark.skipif(not is_root(), reason=NEEDS_ROOT_REASON)
def test_an_orphaned_fin_wait_2_is_told_apart_once_past_the_grace() -> None:
    with topology(("a",)) as topo:
        a = topo["a"]
        ns(a.netns, "ip", "addr", "add", "203.0.113.100/32", "dev", "lo")
        code = f"import sys; sys.path.insert(0, {REPO!r}); sys.argv[1:] = [{a.ip4!r}, '203.0.113.100']\n"
        counts = py_in(a.netns, code + COUNTS)
    assert counts == {
        "nothing": [0, 0],
        "at once": [3, 0],
        "within the grace": [3, 0],
        "past the grace": [3, 1],  # still waited for; the orphan is told apart as closing
        "after the clients closed": [1, 0],  # the half-closed one: its server may still read
    }, counts
