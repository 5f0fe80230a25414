"""The bench: its statistics, tables and timelines (pure), and one quick real run (root)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from failover.lab import bench, render
from failover.lab import contenders as cont
from failover.lab.client import Request

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces")
needs_tools = pytest.mark.skipif(
    any(shutil.which(t) is None for t in ("ip", "nginx", "curl", "arping")),
    reason="needs ip, nginx, curl and arping",
)


def req(start: float, end: float, ok: bool = True, who: str = "live") -> Request:
    return Request(start, end, ok, who if ok else "timeout")


# --- statistics -------------------------------------------------------------------------------------------


def test_spread_ignores_missing_values_but_counts_them() -> None:
    assert bench.spread([3, None, 1, 2]) == {"n": 3, "missing": 1, "min": 1.0, "median": 2.0, "max": 3.0}
    assert bench.spread([]) == {"n": 0, "missing": 0, "min": None, "median": None, "max": None}
    assert bench.spread([None])["missing"] == 1


def test_fmt_spread_collapses_equal_values_and_shows_missing_runs() -> None:
    assert bench.fmt_spread(bench.spread([0, 0, 0])) == "0"
    assert bench.fmt_spread(bench.spread([615.2, 616.4, 622.0])) == "615 / 616 / 622"
    assert bench.fmt_spread(bench.spread([1.25, 2.5])) == "1.2 / 1.9 / 2.5"
    assert bench.fmt_spread(bench.spread([5, None])) == "5 (1x none)"
    assert bench.fmt_spread(bench.spread([None, None])) == "none"
    assert bench.fmt_spread({}) == "-"


def test_move_figures_from_one_loads_records() -> None:
    t = 100.0
    records = [
        req(t - 0.50, t - 0.499),
        req(t - 0.01, t - 0.009),
        req(t + 0.00, t + 0.500, ok=False),  # timed out at the move
        req(t + 0.005, t + 1.100, who="backup"),  # SYN resent after 1 s: stalled
        req(t + 0.010, t + 0.030, who="backup"),  # first answer from the new holder
        req(t + 0.040, t + 0.041, who="backup"),
    ]
    fig = bench.move_figures(records, {"resets": 1, "requests": 9}, t, "backup")
    assert fig["failed"] == 1
    assert fig["stalled_over_1s"] == 1
    assert fig["first_response_ms"] == pytest.approx(30.0)
    assert fig["max_gap_ms"] == pytest.approx(1059.0)
    assert fig["max_gap_from_ms"] == pytest.approx(41.0)  # it began at the end of the last quick answer
    assert fig["keepalive_resets"] == 1
    assert fig["served_before"] == 1  # the one ending at t-0.009 started after t-0.05
    assert fig["served_by"] == {"live": 2, "backup": 3}


def test_move_figures_without_an_answer_from_the_target() -> None:
    fig = bench.move_figures([req(1.0, 1.001)], {}, 2.0, "backup")
    assert fig["max_gap_from_ms"] is None  # one answer: no gap between two
    assert fig["first_response_ms"] is None
    assert fig["keepalive_resets"] == 0


def test_summarize_runs_skips_unmeasured_runs() -> None:
    runs: list[dict[str, Any]] = [
        {
            "failed": 0,
            "stalled_over_1s": 0,
            "max_gap_ms": 10.0,
            "first_response_ms": 20.0,
            "keepalive_resets": 1,
        },
        {
            "failed": 2,
            "stalled_over_1s": 1,
            "max_gap_ms": 30.0,
            "first_response_ms": None,
            "keepalive_resets": 1,
        },
        {"error": "lab did not settle"},
    ]
    stats = bench.summarize_runs(runs)
    assert stats["runs"] == 2 and stats["errors"] == 1
    assert stats["failed"]["max"] == 2
    assert stats["max_gap_ms"]["median"] == 20.0
    assert stats["first_response_ms"]["missing"] == 1
    assert "unserved_ms" not in stats


def test_floors_and_ratios() -> None:
    ok = bench.summarize_runs(
        [{"failed": 0, "stalled_over_1s": 0, "max_gap_ms": g} for g in (8.0, 9.0, 30.0)]
    )
    assert all(check["met"] for check in bench.floors(ok).values())
    bad = bench.summarize_runs([{"failed": 1, "stalled_over_1s": 0, "max_gap_ms": 12.0}])
    verdict = bench.floors(bad)
    assert not verdict["failed"]["met"] and not verdict["median_max_gap_ms"]["met"]
    assert bench.ratio(30.0, 10.0) == 3.0
    assert bench.ratio(1.0, 0.0) is None and bench.ratio(None, 1.0) is None
    report = {"contenders": {
        "failover": {"scenarios": {"planned": {"stats": {"max_gap_ms": {"median": 12.0},
                                                         "first_response_ms": {"median": 200.0}}}}},
        "keepalived-tuned": {"scenarios": {"planned": {"stats": {"max_gap_ms": {"median": 6.0},
                                                                 "first_response_ms": {"median": 10.0}}}}},
    }}  # fmt: skip
    assert bench.ratios(report)["max_gap_ms"]["ratio"] == 2.0
    assert bench.ratios(report)["first_response_ms"]["ratio"] == 20.0
    assert bench.ratios({})["max_gap_ms"]["ratio"] is None


def test_timeline_puts_wall_clock_announcements_on_the_monotonic_clock() -> None:
    offset = 1_000_000.0  # wall = monotonic + offset
    source = [{"event": "release", "ok": True, "at": 50.010}, {"event": "release", "ok": True, "at": 10.0}]
    target = [
        {"event": "claim", "ok": True, "at": 50.012},
        {"event": "announced", "round": 0, "timestamp": "1970-01-12T13:47:30.013000Z"},  # 1_000_050.013
        {"event": "announced", "round": 1, "timestamp": "1970-01-12T13:47:30.213000Z"},
        {"event": "announced", "round": 0, "timestamp": "1970-01-12T13:40:00Z"},  # an earlier move
    ]
    tl = bench.timeline(source, target, started=50.0, ended=50.1, wall_minus_monotonic=offset)
    assert tl["release_ms"] == pytest.approx(10.0)
    assert tl["claim_ms"] == pytest.approx(12.0)
    assert tl["first_announce_ms"] == pytest.approx(13.0, abs=0.01)
    empty = bench.timeline([], [], 0.0, 1.0, 0.0)
    assert empty == {"release_ms": None, "claim_ms": None, "first_announce_ms": None}


def test_profile_collects_cli_steps() -> None:
    moves = [
        {"timeline": {"release_ms": 150.0, "claim_ms": 152.0}, "steps": [{"step": "released", "ms": 8.0}]},
        {"timeline": {"release_ms": 170.0, "claim_ms": 171.0}, "steps": [{"step": "released", "ms": 10.0}]},
    ]
    prof = bench.profile(moves)
    assert prof["release_ms"]["median"] == 160.0
    assert prof["cli_steps_ms"]["released"]["max"] == 10.0
    assert prof["first_announce_ms"]["n"] == 0


def sample_report() -> dict[str, Any]:
    stats = bench.summarize_runs(
        [{"failed": 0, "stalled_over_1s": 0, "max_gap_ms": 12.5, "first_response_ms": 200.0,
          "keepalive_resets": 1, "unserved_ms": 2.0, "cli_wall_ms": 250.0}]
    )  # fmt: skip
    return {
        "mode": "quick",
        "command": "failover lab bench -n 1",
        "finished": "now",
        "failover_moves": {"stats": {"swap": stats, "all": stats}, "floors": bench.floors(stats)},
        "contenders": {
            "failover": {
                "label": "failover swap (confirm: none)",
                "idle": {"live": {"cpu_percent": 1.5, "rss_mib": 60.0}, "backup": {"cpu_percent": 1.0,
                                                                                  "rss_mib": 59.5}},
                "scenarios": {
                    "planned": {"action": "`failover swap`", "status": "ok", "stats": stats},
                    "crash": {"action": "link down", "status": "n/a",
                              "reason": "n/a (takeover not implemented)"},
                },
            },
            "ucarp-default": {
                "label": "ucarp",
                "idle": None,
                "scenarios": {"planned": {"action": "demote", "status": "unavailable",
                                          "reason": "unavailable: ucarp could not be installed\nmore"}},
            },
        },
        "ratios": {"max_gap_ms": {"failover": 12.5, "keepalived_tuned": None, "ratio": None}},
    }  # fmt: skip


def test_markdown_has_every_row_and_never_numbers_for_unavailable_rows() -> None:
    text = bench.render_markdown(sample_report())
    assert "Command: `failover lab bench -n 1`" in text
    assert "| swap | 1 | 2 | 0 | 0 | 12 | 200 | 250 | 1 |" in text
    assert "| all moves | 1 |" in text
    assert "| failover swap (confirm: none) | crash: link down | - | n/a (takeover not implemented) |" in text
    row = next(line for line in text.splitlines() if line.startswith("| ucarp |"))
    assert "unavailable: ucarp could not be installed" in row and "more" not in row
    assert not any(ch.isdigit() for ch in row)
    assert "| failover swap (confirm: none) | 1.50 / 1.00 | 60.0 / 59.5 |" in text
    assert "median_max_gap_ms NOT met" in text
    header = next(line for line in text.splitlines() if line.startswith("| contender | scenario"))
    assert all(line.count("|") == header.count("|") for line in text.splitlines()
               if line.startswith("| failover swap") and "planned" in line)  # fmt: skip


def test_write_outputs(tmp_path: Path) -> None:
    md = bench.write_outputs(sample_report(), tmp_path / "r" / "x.json", tmp_path / "r" / "x.md")
    assert json.loads((tmp_path / "r" / "x.json").read_text())["mode"] == "quick"
    assert (tmp_path / "r" / "x.md").read_text() == md


def test_unknown_contender_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown contenders"):
        bench.run_bench(1, only=["heartbeat"])


# --- takeover: floors, rendering, the soak's rules -----------------------------------------------------


def crash_stats(first_response_ms: float) -> dict[str, Any]:
    return bench.summarize_runs(
        [{"failed": 0, "stalled_over_1s": 20, "max_gap_ms": first_response_ms, "first_response_ms":
          first_response_ms, "keepalive_resets": 1, "fault_to_claim_ms": first_response_ms - 3,
          "takeover_ms": 50.0}]
    )  # fmt: skip


def takeover_report(tuned_ms: float, takeovers: int) -> dict[str, Any]:
    def row(label: str, ms: float) -> dict[str, Any]:
        crash = {"status": "ok", "stats": crash_stats(ms)}
        return {"label": label, "idle": None, "scenarios": {"crash": crash}}

    report: dict[str, Any] = {
        "contenders": {
            "failover": row("failover default", 380.0),
            "failover-tuned": row("failover tuned", tuned_ms),
            "keepalived-tuned": row("keepalived tuned", 38.0),
        },
        "soak": {"status": "ok", "takeovers": takeovers, "holders_always_live": True, "action": "30 %",
                 "seconds": 25.0, "takeovers_refused": {"live": 0, "backup": 12}, "holders": {"live": 50},
                 "heartbeats": {"live": {"sent": 500, "lost_percent": 30.0}},
                 "nft_counters": {}, "http": {"requests": 1000, "failed": 0, "median_latency_ms": 0.7,
                                             "max_latency_ms": 5.0, "max_gap_ms": 25.0, "served_by": {}}},
    }  # fmt: skip
    report["crash_ratios"] = bench.crash_ratios(report)
    report["takeover_floors"] = bench.takeover_floors(report)
    return report


def test_takeover_floors_judge_the_tuned_crash_median_and_the_soak() -> None:
    good = takeover_report(140.0, 0)["takeover_floors"]
    assert good["crash_first_response_ms"] == {"measured": 140.0, "floor": 150.0, "met": True}
    assert good["soak_takeovers"]["met"] is True
    bad = takeover_report(160.0, 1)["takeover_floors"]
    assert not bad["crash_first_response_ms"]["met"] and not bad["soak_takeovers"]["met"]
    assert bench.takeover_floors({}) == {}


def test_crash_ratios_and_takeover_section() -> None:
    report = takeover_report(140.0, 0)
    assert report["crash_ratios"]["failover-tuned"]["first_response_ms"]["ratio"] == round(140 / 38, 2)
    assert report["crash_ratios"]["failover"]["first_response_ms"]["ratio"] == 10.0
    text = "\n".join(bench.render_takeover(report))
    assert "| failover tuned | 1 | 137 | 50 | 140 | 0 | 140 |" in text
    assert "takeovers: **0**" in text and "backup 12" in text
    assert "crash_first_response_ms 140 (floor 150) met" in text


def test_heartbeat_impairment_matches_only_the_agents_heartbeats() -> None:
    rules = cont.heartbeat_impairment_rules()
    matches = [line.strip() for line in rules.splitlines() if "udp" in line]
    assert len(matches) == 4
    assert all(m.startswith("udp sport 5405 udp dport 5405 ") for m in matches)
    assert "numgen random mod 100 < 30" in rules and "redirect to :15405" in rules
    # The peer's heartbeats untracked, so that ours start the conntrack flow the redirect needs.
    assert "udp sport 5405 udp dport 5405 notrack" in rules and "hook prerouting" in rules
    assert "tcp" not in rules and "arp" not in rules


# --- one real run -------------------------------------------------------------------------------------


def netns_names() -> set[str]:
    out = subprocess.run(["ip", "-j", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {entry["name"] for entry in json.loads(out or "[]")}


@needs_root
@needs_tools
def test_quick_bench_manual_and_one_failover_pair(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = netns_names()
    code = bench.bench(
        1,
        tmp_path / "b.json",
        runs=1,
        only=["failover", "manual"],
        md_path=tmp_path / "b.md",
        command="smoke",
    )
    report = json.loads((tmp_path / "b.json").read_text())
    # Only the bench's own labs (it names each prefix on stderr): other runs may share this machine.
    said = capsys.readouterr().err
    prefixes = set(re.findall(r"lab (fo[0-9a-f]+) up", said))
    assert prefixes, said
    assert {n for n in netns_names() - before if n.split("-")[0] in prefixes} == set()
    assert code in (0, 1)  # 1 only says a floor was missed, which this test does not judge
    assert set(report) >= {"mode", "contenders", "failover_moves", "ratios", "versions", "command"}
    swap = report["failover_moves"]["moves"]["swap"][0]
    assert not swap.get("error"), swap
    assert swap["failed"] == 0 and swap["ok"] is True
    assert swap["served_by"].get("backup", 0) > 0
    assert 0 < swap["first_response_ms"] < 5000
    assert swap["unserved_ms"] is not None and 0 <= swap["unserved_ms"] < 1000
    assert swap["timeline"]["release_ms"] <= swap["timeline"]["claim_ms"]
    manual = report["contenders"]["manual"]["scenarios"]
    assert manual["crash"]["status"] == "n/a"
    run = manual["planned"]["runs"][0]
    assert not run.get("error"), run
    assert run["served_before"] > 0 and run["served_by"].get("backup", 0) > 0
    assert 0 < run["first_response_ms"] < 2000
    for key in ("failed", "stalled_over_1s", "max_gap_ms", "first_response_ms", "keepalive_resets"):
        assert key in manual["planned"]["stats"]
    crash = report["contenders"]["failover"]["scenarios"]["crash"]
    assert crash["status"] == "ok", crash
    taken = crash["runs"][0]
    assert not taken.get("error"), taken
    assert taken["takeover"]["ok"] is True and taken["served_by"].get("backup", 0) > 0
    assert 0 < taken["fault_to_claim_ms"] <= taken["first_response_ms"] < 5000
    assert "| manual: ip del; ip add; one GARP | planned" in (tmp_path / "b.md").read_text()


# --- a swap that cannot be confirmed ---------------------------------------------------------------------

ROLLED_BACK = (
    "no client request to 203.0.113.10 reached backup in 300 ms (live served 198 req/s before the move: "
    "20 arrivals take 101 ms, at least 300 ms); rolled back to live in 3 ms"
)
UNKNOWN_RATE = (
    "no client request to 203.0.113.10 reached backup in 10000 ms (live's request rate was not known: "
    "confirm.within_s); rolled back to live in 2 ms"
)


def test_unconfirmable_figures_time_the_outage_from_the_claim() -> None:
    claim, reclaim = 100.0, 100.305
    records = [
        req(99.990, 99.991),  # live, before the claim
        req(100.001, 100.002),  # still reached live's drain copy before the client heard the claim
        req(100.010, 101.020),  # SYN dropped by backup, resent after 1 s to live: stalled, not "again"
        req(100.200, 102.200, ok=False),  # timed out
        req(100.304, 100.306),  # started before the reclaim, ended after it: live answers again
        req(100.311, 100.312),
    ]
    fig = bench.unconfirmable_figures(records, claim, reclaim, "live", "backup")
    assert fig["reclaim_ms"] == pytest.approx(305.0)
    assert fig["served_again_ms"] == pytest.approx(306.0)
    assert fig["served_by_target"] == 0
    served_by_backup = [*records, req(100.02, 100.03, who="backup")]
    assert (
        bench.unconfirmable_figures(served_by_backup, claim, reclaim, "live", "backup")["served_by_target"]
        == 1
    )
    unknown = bench.unconfirmable_figures(records, None, reclaim, "live", "backup")
    assert unknown["served_again_ms"] is None and unknown["reclaim_ms"] is None
    never = bench.unconfirmable_figures(records[:2], claim, reclaim, "live", "backup")
    assert never["served_again_ms"] is None  # live never answered again: not measured, not zero


def test_reason_figures_read_the_deadline_and_the_sources_rate() -> None:
    assert bench.reason_figures(ROLLED_BACK) == {"deadline_ms": 300.0, "source_rate": 198.0}
    assert bench.reason_figures(UNKNOWN_RATE) == {"deadline_ms": 10000.0, "source_rate": None}
    assert bench.reason_figures("") == {"deadline_ms": None, "source_rate": None}


def test_rate_lateness_compares_this_moves_release_with_its_load_measurement() -> None:
    events = [
        {"event": "release", "why": "swap", "epoch": 1, "at": 10.0, "timestamp": "2026-01-01T00:00:10.000Z"},
        {"event": "load-measured", "epoch": 1, "timestamp": "2026-01-01T00:00:09.990Z"},
        {
            "event": "claim",
            "why": "rollback",
            "epoch": 2,
            "at": 10.3,
            "timestamp": "2026-01-01T00:00:10.300Z",
        },
        {"event": "release", "why": "swap", "epoch": 3, "at": 20.0, "timestamp": "2026-01-01T00:00:20.000Z"},
        {"event": "load-measured", "epoch": 3, "timestamp": "2026-01-01T00:00:20.012Z"},
    ]
    assert bench.rate_lateness_ms(events, 9.5, 11.0) == pytest.approx(-10.0)  # in time
    assert bench.rate_lateness_ms(events, 19.5, 21.0) == pytest.approx(12.0)  # after Released had gone
    assert bench.rate_lateness_ms(events[:1], 9.5, 11.0) is None  # never measured
    assert bench.rate_lateness_ms(events, 30.0, 31.0) is None


def test_monitor_figures_count_answered_polls() -> None:
    polls = [req(1.0, 1.001, who="backup"), req(1.1, 1.101, who="backup"), req(1.2, 3.2, ok=False)]
    assert bench.monitor_figures(polls) == {"requests": 3, "served": 2, "served_by": {"backup": 2}}


def unconfirmable_run(gap_ms: float, *, vip_after: str = "live", confirmed: bool = False) -> dict[str, Any]:
    return {
        "exit_code": 0 if confirmed else 1, "rolled_back": not confirmed, "confirmed": confirmed,
        "vip_after": vip_after, "max_gap_ms": gap_ms, "served_again_ms": gap_ms - 2, "reclaim_ms": gap_ms - 8,
        "deadline_ms": 300.0, "source_rate": 198.0, "failed": 0, "stalled_over_1s": 60, "served_by_target": 0,
        "cli_wall_ms": 450.0, "reason": ROLLED_BACK, "rate_late_ms": -5.0 if gap_ms < 1000 else 12.0,
        "monitors": {"live": {"requests": 70, "served": 70}, "client": {"requests": 70, "served": 69}},
    }  # fmt: skip


def test_unconfirmable_floors() -> None:
    runs = [unconfirmable_run(g) for g in (310.0, 320.0, 10010.0)] + [{"error": "lab did not settle"}]
    stats = bench.summarize_unconfirmable(runs)
    assert stats["runs"] == 3 and stats["errors"] == 1
    assert stats["exit_codes"] == {"1": 3} and stats["rolled_back"] == 3 and stats["confirmed"] == 0
    assert stats["max_gap_ms"]["median"] == 320.0 and stats["served_again_ms"]["max"] == 10008.0
    assert stats["rate_late"] == {"runs": 1, "of": 3, "ms": bench.spread([12.0])}
    assert stats["monitors"] == {
        "live": {"requests": 210, "served": 210},
        "client": {"requests": 210, "served": 207},
    }
    floors = bench.unconfirmable_floors(stats)
    assert all(check["met"] for check in floors.values()), floors
    assert floors["median_max_gap_ms"] == {"measured": 320.0, "floor": 1000.0, "met": True}
    slow = bench.unconfirmable_floors(
        bench.summarize_unconfirmable([unconfirmable_run(g) for g in (310, 10010, 10020)])
    )
    assert not slow["median_max_gap_ms"]["met"] and not slow["median_served_again_ms"]["met"]
    moved = [unconfirmable_run(310.0), unconfirmable_run(40.0, vip_after="backup", confirmed=True)]
    verdict = bench.unconfirmable_floors(bench.summarize_unconfirmable(moved))
    assert verdict["confirmed"] == {"measured": 1, "floor": 0, "met": False}
    assert verdict["vip_on_old_holder"] == {"measured": 1, "floor": 2, "met": False}
    nothing = bench.unconfirmable_floors(bench.summarize_unconfirmable([{"error": "x"}]))
    assert not any(check["met"] for check in nothing.values())  # no measured run proves nothing


def test_unconfirmable_section_in_the_markdown() -> None:
    runs = [unconfirmable_run(g) for g in (310.0, 320.0)]
    stats = bench.summarize_unconfirmable(runs)
    report = {**sample_report(), "unconfirmable": {"action": "swap while backup drops", "status": "ok",
              "runs": runs, "stats": stats, "floors": bench.unconfirmable_floors(stats)}}  # fmt: skip
    text = bench.render_markdown(report)
    row = "| 2 | 1 (2x) | 2 | 0 | live (2x) | 310 / 315 / 320 | 308 / 313 / 318 | 302 / 307 / 312 "
    assert row + "| 300 | 198 | 0 | 60 | 0 | 450 |" in text
    assert "from client: 138 of 140 answered" in text
    assert f"The CLI's reason (first run): {ROLLED_BACK}" in text
    assert "was measured after its Released had gone in 0 of 2 runs;" in text
    assert "median_max_gap_ms 315 (floor 1000) met" in text and "confirmed 0 (floor 0) met" in text
    assert "A swap that cannot be confirmed" not in bench.render_markdown(sample_report())


def test_client_block_rules_drop_only_the_clients_tcp_to_the_vip() -> None:
    rules = bench.client_block_rules("203.0.113.100", "203.0.113.10")
    matches = [line.strip() for line in rules.splitlines() if line.endswith(" drop")]
    assert matches == ["ip saddr 203.0.113.100 ip daddr 203.0.113.10 tcp dport 80 counter name dropped drop"]
    assert "hook input priority 0" in rules and "policy accept" in rules


def test_the_unconfirmable_scenario_can_be_chosen_alone() -> None:
    assert "unconfirmable" in bench.known_names()
    assert set(cont.known_names()) < set(bench.known_names())


@needs_root
@needs_tools
def test_one_unconfirmable_swap_is_rolled_back(capsys: pytest.CaptureFixture[str]) -> None:
    before = netns_names()
    report = bench.run_bench(1, runs=1, only=["unconfirmable"], say=lambda text: print(text, file=sys.stderr))
    prefixes = set(re.findall(r"lab (fo[0-9a-f]+) up", capsys.readouterr().err))
    assert prefixes
    assert {n for n in netns_names() - before if n.split("-")[0] in prefixes} == set()
    section = report["unconfirmable"]
    run = section["runs"][0]
    assert not run.get("error"), run
    assert run["exit_code"] == 1 and run["rolled_back"] is True and run["confirmed"] is False, run["reason"]
    assert run["vip_after"] == "live"
    assert "rolled back to live" in run["reason"] and run["deadline_ms"] is not None
    # The rule held (no client request served by backup, SYNs dropped) while backup's own address kept
    # answering both monitors: what the proof must not be fooled by.
    assert run["served_by_target"] == 0 and run["dropped_by_backup"] > 0
    assert set(run["monitors"]) == {"live", "client"}
    assert all(
        m["served"] > 0 and m["served_by"] == {"backup": m["served"]} for m in run["monitors"].values()
    )
    assert 0 < run["reclaim_ms"] <= run["served_again_ms"]
    assert section["stats"]["runs"] == 1 and section["floors"]["confirmed"]["met"] is True


def test_move_figures_keep_keepalive_outcomes_apart_and_rsts_not_counted_stay_none() -> None:
    keepalive = {
        "requests": 90, "resets": 2, "truncated": 1, "orderly_closes": 3, "closed_before_response": 1,
        "failed": 2,
    }  # fmt: skip
    counted = bench.move_figures([req(1.0, 1.001)], keepalive, 2.0, "backup", rsts={"frames": 4, "drops": 0})
    assert counted["keepalive_resets"] == 2 and counted["keepalive_truncated"] == 1
    assert counted["keepalive_orderly_closes"] == 3
    assert (counted["keepalive_closed_before_response"], counted["keepalive_failed"]) == (1, 2)
    assert counted["rsts_from_vip"] == 4
    assert "RSTs from the VIP 4" in render.run_text({**counted, "unserved_ms": None})
    assert "orderly closes 3, closed before response 1" in render.run_text(counted)
    uncounted = bench.move_figures([req(1.0, 1.001)], keepalive, 2.0, "backup")
    assert uncounted["rsts_from_vip"] is None
    assert "RSTs from the VIP not counted" in render.run_text(uncounted)
    stats = bench.summarize_runs([uncounted, uncounted])
    assert render.fmt_metric(stats, "rsts_from_vip") == "not counted"
    assert render.fmt_metric(bench.summarize_runs([counted, uncounted]), "rsts_from_vip") == "4 (1x none)"


# --- drains and the 10 ms crash -------------------------------------------------------------------------


def test_drain_figures_read_the_clis_outcome() -> None:
    done = {"host": "live", "epoch": 3, "left": 0, "oldest_s": None, "after_s": 1.8, "how": "closed"}
    assert bench.drain_figures(done) == {"drain_after_ms": 1800.0, "drain_left": 0, "drain_how": "closed"}
    cut = bench.drain_figures({"host": "live", "left": 2, "after_s": 5.0, "how": "drain_max"})
    assert cut["drain_left"] == 2 and cut["drain_how"] == "drain_max"
    assert bench.drain_figures({"host": "live", "pending": True})["drain_how"] == "pending"
    assert bench.drain_figures({"host": "live", "skipped": "no nft"})["drain_how"] == "skipped"
    assert bench.drain_figures(None) == {"drain_after_ms": None, "drain_left": None, "drain_how": None}


def test_own_moves_table_shows_how_long_drains_took() -> None:
    moves = [
        {"failed": 0, "stalled_over_1s": 0, "max_gap_ms": 9.0, "first_response_ms": 50.0,
         "keepalive_resets": 0, **bench.drain_figures({"left": 0, "after_s": after, "how": "closed"})}
        for after in (0.4, 0.6, 2.0)
    ]  # fmt: skip
    moves.append({**moves[0], **bench.drain_figures({"left": None, "after_s": 5.0, "how": "not-counted"})})
    stats = bench.summarize_runs(moves)
    assert stats["drain_after_ms"]["median"] == 1300.0 and stats["drain_left"]["missing"] == 1
    assert stats["drain_how"] == {"closed": 3, "not-counted": 1}
    report = {"failover_moves": {"stats": {"all": stats}, "floors": {}}}
    text = bench.render_markdown(report)
    row = next(line for line in text.splitlines() if line.startswith("| all moves |"))
    assert row.endswith("| 400 / 1300 / 5000 | 0 (1x none) |")
    assert "`drain.how`): closed (3x), not-counted (1x)." in text
    assert "drained (closed) after 400 ms, 0 left" in render.run_text(moves[0])


def test_the_10ms_crash_has_its_ratio_its_row_and_its_40ms_floor() -> None:
    report = takeover_report(140.0, 0)
    crash = {"status": "ok", "stats": crash_stats(45.0)}
    row = {"label": "failover 10 ms", "idle": None, "scenarios": {"crash": crash}}
    report["contenders"]["crash-10ms"] = row
    report["crash_ratios"] = bench.crash_ratios(report)
    report["takeover_floors"] = bench.takeover_floors(report)
    assert report["crash_ratios"]["crash-10ms"]["first_response_ms"]["ratio"] == round(45 / 38, 2)
    assert report["takeover_floors"]["crash_10ms_first_response_ms"] == {"measured": 45.0, "floor": 40.0,
                                                                         "met": False}  # fmt: skip
    text = "\n".join(bench.render_takeover(report))
    assert "| failover 10 ms | 1 | 42 | 50 | 45 | 0 | 45 |" in text
    assert "failover 10 ms vs keepalived tuned (crash), medians:" in text
    assert "crash_10ms_first_response_ms 45 (floor 40) NOT met" in text


def test_the_soak_reports_the_datagrams_the_agents_rejected() -> None:
    before = {"rejected": {"replay": 3}}
    after = {"rejected": {"replay": 103, "sender": 2}}
    from failover.lab.scenarios import rejected_delta

    assert rejected_delta(before, after) == {"replay": 100, "sender": 2}
    assert rejected_delta(after, after) == {} and rejected_delta({}, {}) == {}
    report = takeover_report(140.0, 0)
    report["soak"]["rejected"] = {"live": {"replay": 100}, "backup": {}}
    text = "\n".join(bench.render_takeover(report))
    assert "datagrams the agents rejected, by reason: {'live': {'replay': 100}, 'backup': {}}" in text
    assert "relays' counts not read" in text
    report["soak"]["relays"] = {"live": {"received": 10, "sent": 10}}
    assert "relays {'live': {'received': 10, 'sent': 10}}" in "\n".join(bench.render_takeover(report))
