"""What the protocol core keeps across an agent's restarts: its epochs, and whether it ever held the VIP.

Owns `state_dir/state.json`: read at start (a missing or damaged file is a fresh start), written
durably whenever the core's figures change.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from failover import journal


@dataclass(frozen=True)
class PersistentState:
    epoch: int = 0
    held_epoch: int = 0
    held_before: bool = False  # this node has held the VIP: it may take back a VIP that nobody holds


def load_state(state_dir: Path) -> PersistentState:
    try:
        doc = json.loads((state_dir / "state.json").read_text())
        held_before = doc.get("held_before") is True
        epoch, held_epoch = int(doc["epoch"]), int(doc["held_epoch"])
        return PersistentState(epoch=epoch, held_epoch=held_epoch, held_before=held_before)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return PersistentState()


def save_state(state_dir: Path, state: PersistentState) -> None:
    doc = {"epoch": state.epoch, "held_epoch": state.held_epoch, "held_before": state.held_before}
    journal.write_file_durably(state_dir / "state.json", json.dumps(doc).encode())
