"""`failover swap` prints how the new holder judged the move (its proof facts) on the source too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.test_cli_imports import cluster_file, run_cli, stand_in_agent

__all__ = ["stand_in_agent"]  # the fixture, used by name

WHY = "live served 198 req/s before the move: 20 arrivals take 101 ms, at least 300 ms"
REASON = f"no client request to 203.0.113.10 reached backup in 300 ms ({WHY}); rolled back to live in 4 ms"


def proof(requests: int, clients: list[str], destination: str | None) -> dict[str, Any]:
    return {"requests": requests, "clients": clients, "to": "203.0.113.10", "destination": destination,
            "canary": False, "deadline_ms": 300.0, "deadline_why": WHY}  # fmt: skip


def test_a_rollback_names_what_the_proof_counted_and_how(
    tmp_path: Path, stand_in_agent: tuple[Path, list[dict[str, Any]]]
) -> None:
    sock, replies = stand_in_agent
    outcome = {"ok": False, "holder": "live", "reason": REASON, "evidence": proof(0, [], "log field")}
    replies.append({"type": "done", "outcome": outcome})
    done, _ = run_cli(tmp_path, "swap", "-c", str(cluster_file(tmp_path, control_socket=sock)))
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"swap FAILED: {REASON}; VIP on live",
        f"  proof: 0 requests to 203.0.113.10 counted (log field); deadline 300 ms: {WHY}",
    ]


def test_a_confirmed_swap_names_the_proof_and_an_older_agents_outcome_prints_as_before(
    tmp_path: Path, stand_in_agent: tuple[Path, list[dict[str, Any]]]
) -> None:
    sock, replies = stand_in_agent
    config = str(cluster_file(tmp_path, control_socket=sock))
    confirmed = {"ok": True, "holder": "backup", "epoch": 3, "duration_ms": 40.0, "unserved_ms": None,
                 "confirmed": True, "confirm_ms": 25.0}  # fmt: skip
    replies.append({"type": "done", "outcome": {
        **confirmed, "evidence": proof(3, ["203.0.113.100"], "kernel witness")}})  # fmt: skip
    done, _ = run_cli(tmp_path, "swap", "-c", config)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1:] == [
        "  confirmed: 3 requests in backup's access log 25.0 ms after the claim, from 203.0.113.100",
        f"  proof: 3 requests to 203.0.113.10 counted (kernel witness); deadline 300 ms: {WHY}",
    ]
    older = {"requests": 3, "clients": ["203.0.113.100"]}  # an agent that predates the proof facts
    replies[:] = [{"type": "done", "outcome": {**confirmed, "evidence": older}}]
    done, _ = run_cli(tmp_path, "swap", "-c", config)
    assert done.returncode == 0 and "proof:" not in done.stdout, done.stdout
