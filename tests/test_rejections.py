"""Rejected datagrams: counted, and logged at most once an interval with what happened meanwhile."""

from __future__ import annotations

from typing import Any

from failover.rejections import RejectionLog


class Lines:
    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    def warning(self, event: str, **kw: object) -> None:
        self.lines.append({"event": event, **kw})


def test_a_flood_gives_one_line_an_interval_with_every_datagram_counted() -> None:
    out = Lines()
    log = RejectionLog(out, interval=10.0)
    for i in range(100_000):
        log.drop("source", now=i * 0.0001)  # 100k datagrams in 10 s
        if i % 2:
            log.note("auth", now=i * 0.0001)
    log.note("auth", now=10.0)
    assert [line["event"] for line in out.lines] == ["datagrams-rejected"] * 2
    assert out.lines[0]["by_reason"] == {"source": 1}
    total = sum(sum(line["by_reason"].values()) for line in out.lines)
    assert total == 100_000 + 50_000 + 1  # nothing lost between two lines
    assert log.dropped == {"source": 100_000}
