"""Shared by every suite: the figures tests measured (user property `figure`), shown by `pytest -q`."""

from __future__ import annotations

import pytest


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    figures = [
        (report.nodeid, value)
        for report in terminalreporter.stats.get("passed", []) + terminalreporter.stats.get("failed", [])
        for name, value in getattr(report, "user_properties", [])
        if name == "figure"
    ]
    if figures:
        terminalreporter.section("measured")
        for nodeid, value in figures:
            terminalreporter.write_line(f"{nodeid.rsplit('::', 1)[-1]}: {value}")
