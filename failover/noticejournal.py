"""Which of the core's notices become journal entries on this host, and what each entry carries.

Owns the journal's entries: every finished or refused move, with the operator, reason and where the
VIP came from as the command gave them (kept from the command until the core names its epoch), and
every takeover or takeover not taken. Writing a line durably, off the loop, is `journal.Writer`'s.
"""

from __future__ import annotations

from typing import Any

import structlog

from failover import journal, protocol
from failover.config import ClusterConfig, NodeConfig

log = structlog.get_logger("failover.agent")


class NoticeJournal:
    def __init__(self, config: ClusterConfig, node: NodeConfig) -> None:
        self.node = node
        self.peer = config.peer_of(node.name)
        self._command_meta: dict[int, dict[str, Any]] = {}  # command -> operator, reason, came_from
        self._move_meta: dict[int, dict[str, Any]] = {}  # epoch -> the same, once the core named it
        self._journal_writer = journal.Writer(
            node.journal, on_error=lambda err: log.error("journal-failed", error=str(err))
        )

    def command(self, cid: int, meta: dict[str, Any]) -> None:
        """Journaled with the move once the core says which epoch it is (its Started action)."""
        self._command_meta[cid] = meta

    def started(self, action: protocol.Started) -> None:
        meta = self._command_meta.pop(action.command, None)
        if meta is not None:
            self._move_meta[action.epoch] = meta

    async def flushed(self) -> None:
        """Every entry so far is on disk."""
        await self._journal_writer.flushed()

    def notice(self, notice: protocol.Notice) -> None:
        """Journal every finished or refused move and every takeover."""
        event, detail = notice.event, notice.detail
        if event in ("move-finished", "move-refused"):
            meta = self._move_meta.pop(int(detail["epoch"]), None) or {}
            self._journal({"kind": detail["move"], "node": self.node.name, **detail, **meta})
        elif event == "takeover":
            self._journal({"kind": "takeover", "node": self.node.name, "holder": self.node.name,
                           "source": self.peer.name, "target": self.node.name, **detail})
        elif event == "agent-down-host-up":
            # Once per silence: the peer's agent is down and its host up, so no takeover (history shows it).
            self._journal({"kind": "takeover", "ok": False, "node": self.node.name, "holder": None,
                           "source": self.peer.name, "target": self.node.name, "holder_host": "up", **detail})

    def _journal(self, entry: dict[str, Any]) -> None:
        # Off the loop (an fsync on a busy disk can outlast dead_after_ms), in order; _run_move waits
        # for it, so an entry is still on disk before the CLI hears the outcome.
        self._journal_writer.append(entry)
