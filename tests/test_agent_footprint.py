"""What an idle agent holds: the heap start-up freed goes back, scapy's lookup tables are not kept."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_the_agent_trims_its_heap_after_start_wherever_it_runs() -> None:
    from failover.agent import _trim_heap

    _trim_heap()  # glibc's malloc_trim here; a libc without it is no error


def test_scapys_vendor_and_bluetooth_tables_are_not_kept() -> None:
    code = textwrap.dedent("""
        import scapy.data
        import failover.announce
        assert len(scapy.data.MANUFDB) == 0 and scapy.data.BLUETOOTH_CORE_COMPANY_IDENTIFIERS == {}
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
