"""What an idle agent holds: the heap start-up freed goes back, scapy's lookup tables are not kept."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path


def test_the_agent_trims_its_heap_after_start_wherever_it_runs() -> None:
    # In a process of its own: freezing this one would hide pytest's heap from the collector.
    code = textwrap.dedent("""
        import gc
        import failover.agent, failover.announce
        failover.agent._trim_heap()  # glibc's malloc_trim here; a libc without it is no error
        # What start-up made is out of the collector's walk: a full collection now walks almost nothing.
        assert gc.get_freeze_count() > 10_000, gc.get_freeze_count()
        assert len(gc.get_objects()) < 1_000, len(gc.get_objects())
        cycle = [0]
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1  # what the agent makes from now on is still collected
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_scapys_vendor_and_bluetooth_tables_are_not_kept() -> None:
    code = textwrap.dedent("""
        import scapy.data
        import failover.announce
        assert len(scapy.data.MANUFDB) == 0 and scapy.data.BLUETOOTH_CORE_COMPANY_IDENTIFIERS == {}
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def _lean_run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120)


def test_an_agent_whose_health_urls_are_http_runs_without_ssl_and_unittest() -> None:
    out = _lean_run("""
        import sys
        from failover import lean
        lean.lean_agent(["http://203.0.113.11/health", "http://203.0.113.12/health"])
        import asyncio, http.client
        import failover.agent
        from failover.health import check_health
        from failover.pyroute2_parts import AsyncIPRoute
        assert sys.modules["ssl"] is None and "unittest" not in sys.modules, sorted(sys.modules)
        maps = open("/proc/self/maps").read()
        assert "libssl" not in maps and "_ssl." not in maps
        assert not hasattr(http.client, "HTTPSConnection")
        try:
            import ssl
        except ImportError:
            pass
        else:
            raise AssertionError("ssl imported")

        async def loopback_addresses():
            async with AsyncIPRoute() as ipr:
                return [m.get("IFA_ADDRESS") async for m in await ipr.addr("dump")]
        assert "127.0.0.1" in asyncio.run(loopback_addresses())  # real netlink, read only
        # pyroute2's synchronous socket takes the stand-in sink where it had a Mock.
        from pyroute2.netlink.rtnl.iprsocket import IPRSocket
        IPRSocket().close()
        import unittest.mock  # the real one, for whoever asks later
        assert hasattr(unittest.mock.Mock(), "assert_called_once")
        print("ok")
    """)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_an_https_health_url_keeps_ssl() -> None:
    out = _lean_run("""
        import sys
        from failover import lean
        lean.lean_agent(["http://203.0.113.11/health", " HTTPS://203.0.113.12/health"])
        import http.client
        import failover.agent
        import ssl
        assert sys.modules["ssl"] is ssl and hasattr(ssl, "SSLContext")
        assert hasattr(http.client, "HTTPSConnection")
        print("ok")
    """)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_a_test_or_tool_importing_the_agent_keeps_every_module() -> None:
    out = _lean_run("""
        import sys
        import failover.agent
        import ssl
        assert hasattr(ssl, "SSLContext") and sys.modules["unittest.mock"].Mock.__module__ == "unittest.mock"
        print("ok")
    """)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_stand_ins_leave_sys_modules_as_they_were_when_an_import_fails() -> None:
    out = _lean_run("""
        import sys
        from failover import lean
        lean.lean_agent([])
        try:
            with lean.pyroute2_stand_ins():
                assert sys.modules["ssl"] is not None and "unittest.mock" in sys.modules
                import no_such_module_here
        except ImportError:
            pass
        assert sys.modules["ssl"] is None
        assert "unittest" not in sys.modules and "unittest.mock" not in sys.modules
        print("ok")
    """)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_scapys_vendor_tables_are_never_built_and_its_cache_is_left_alone(tmp_path: Path) -> None:
    # scapy keeps its tables pickled under $XDG_CACHE_HOME/scapy: a file that is there must not be read
    # (scapy deletes one it cannot unpickle), and none may be written (another scapy user would read ours).
    cache = tmp_path / "scapy"
    cache.mkdir()
    (cache / "manufdb.pickle").write_bytes(b"not a pickle")
    out = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import sys
        import failover.announce
        import scapy.data, scapy.main
        assert len(scapy.data.MANUFDB) == 0 and scapy.data.BLUETOOTH_CORE_COMPANY_IDENTIFIERS == {}
        assert "scapy.libs.manuf" not in sys.modules and "scapy.libs.bluetoothids" not in sys.modules
        assert scapy.main.SCAPY_CACHE_FOLDER is not None  # as scapy found it, for whoever asks later
        from scapy.libs.manuf import DATA  # the real table, for whoever asks for it
        assert len(DATA) > 100_000
        print("ok")
    """)], capture_output=True, text=True, timeout=120, env={**os.environ, "XDG_CACHE_HOME": str(tmp_path)})
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    assert sorted(p.name for p in cache.iterdir()) == ["manufdb.pickle"]
    assert (cache / "manufdb.pickle").read_bytes() == b"not a pickle"


def test_a_lean_agent_still_speaks_tls_where_a_health_check_is_redirected_to_https() -> None:
    # The health URL is http://; its answer redirects to https:// on a loopback port whose server answers
    # in plain text: the check fails on the TLS handshake, which proves TLS was spoken.
    out = _lean_run("""
        import sys
        from failover import lean
        lean.lean_agent(["http://127.0.0.1/health"])
        import http.server, socket, threading
        import failover.agent
        from failover.health import check_health
        assert sys.modules["ssl"] is None

        plain = socket.create_server(("127.0.0.1", 0))
        def answer_in_plain_text():
            for _ in range(2):
                conn, _ = plain.accept()
                conn.sendall(b"HTTP/1.0 200 OK\\r\\n\\r\\n")
                conn.close()
        threading.Thread(target=answer_in_plain_text, daemon=True).start()
        class Redirect(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(301)
                self.send_header("Location", f"https://127.0.0.1:{plain.getsockname()[1]}/health")
                self.end_headers()
            def log_message(self, *args):
                pass
        server = http.server.HTTPServer(("127.0.0.1", 0), Redirect)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        ok, why = check_health(f"http://127.0.0.1:{server.server_port}/health", 5.0)
        assert not ok and "SSL" in why, why
        import http.client, ssl
        assert hasattr(ssl, "SSLContext")  # imported now, in this agent only
        assert not hasattr(http.client, "HTTPSConnection")  # what was imported without it is as it was
        ok, why = check_health(f"https://127.0.0.1:{plain.getsockname()[1]}/health", 5.0)
        assert not ok and "SSL" in why, why
        print("ok")
    """)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_an_agent_with_metrics_keeps_ssl_for_prometheus_client() -> None:
    out = _lean_run("""
        import sys
        from failover import lean
        lean.lean_agent(["http://127.0.0.1/health"], metrics=True)
        import failover.agent
        import failover.metrics  # prometheus_client imports ssl and urllib.request's HTTPS handler
        assert hasattr(sys.modules["ssl"], "SSLContext")
        print("ok")
    """)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_pyroute2_imported_first_in_a_lean_agent_leaves_asyncio_without_the_ssl_stand_in() -> None:
    out = _lean_run("""
        import sys
        from failover import lean
        lean.lean_agent([])
        import failover.pyroute2_parts
        import asyncio.sslproto
        assert asyncio.sslproto.ssl is None and sys.modules["ssl"] is None
        from pyroute2.netlink.rtnl import probe_msg
        assert not hasattr(probe_msg.ssl, "SSLContext")  # the stand-in: absent, not an error
        print("ok")
    """)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
