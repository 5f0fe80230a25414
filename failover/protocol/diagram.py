"""The protocol tables drawn for the README: one mermaid state diagram per machine, and the full table.

`python -m failover.protocol.diagram` prints the section; `--update README.md` rewrites the README
between its markers, `--check README.md` exits 1 when it is out of date. `tests/test_states.py` fails
when the README and the tables disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from failover.protocol.states import MACHINE_OF, MACHINES, Input, Machine, State

START: Final = "<!-- protocol:start -->"
END: Final = "<!-- protocol:end -->"
# Self-loops that only answer a duplicate datagram: in the table, not drawn.
QUIET_EFFECTS: Final = frozenset({"answer_again", "acknowledge", "answer_late_release"})


def _id(state: State) -> str:
    machine = MACHINE_OF[type(state)].name.replace(" ", "_")
    return f"{machine}_{state.value.replace('-', '_')}"


def _label(state: State, home: Machine) -> str:
    other = MACHINE_OF[type(state)]
    return state.value if other is home else f"{state.value} ({other.name})"


def _input(inp: Input, machine: Machine, state: State) -> str:
    if inp is Input.DEADLINE:
        timeout = machine.rows[state].timeout
        return f"after {timeout}" if timeout is not None else "timeout"
    return inp.value


def mermaid(machine: Machine) -> str:
    lines = ["```mermaid", "stateDiagram-v2"]
    shown: list[State] = []

    def show(state: State) -> None:
        if state not in shown:
            shown.append(state)
            lines.append(f'    state "{_label(state, machine)}" as {_id(state)}')

    for state in machine.rows:
        show(state)
    for state in machine.entry:
        lines.append(f"    [*] --> {_id(state)}")
    for state, r in machine.rows.items():
        for inp, transition in r.on.items():
            for nxt in transition.next:
                if nxt == state and transition.effect in QUIET_EFFECTS:
                    continue
                show(nxt)
                lines.append(f"    {_id(state)} --> {_id(nxt)}: {_input(inp, machine, state)}")
        if r.terminal:
            lines.append(f"    {_id(state)} --> [*]")
    lines.append("```")
    return "\n".join(lines)


def table(machine: Machine) -> str:
    lines = ["| state | timeout | input | effect | next |", "|---|---|---|---|---|"]
    for state, r in machine.rows.items():
        flags = [f for f, on in (("finished", r.finished), ("terminal", r.terminal)) if on]
        name = f"`{state.value}`" + (f" ({', '.join(flags)})" if flags else "")
        timeout = "-" if r.timeout is None else str(r.timeout)
        if not r.on:
            lines.append(f"| {name} | {timeout} | - | - | - |")
        for inp, transition in r.on.items():
            nexts = ", ".join(_label(n, machine) for n in transition.next)
            lines.append(f"| {name} | {timeout} | {inp.value} | `{transition.effect}` | {nexts} |")
            name, timeout = "", ""
    return "\n".join(lines)


def render() -> str:
    out = [
        "## The protocol, as its tables",
        "",
        "Drawn by `python -m failover.protocol.diagram --update README.md` from"
        " `failover/protocol/states.py`; do not edit by hand. Each state has one row: its timeout, and"
        " for each input it listens to, the effect and the states it may lead to. An input a state does"
        " not list is counted (`ignored: out-of-state` in `failover status --json`) and changes nothing."
        " Answers to duplicate datagrams are in the tables, not drawn.",
    ]
    for machine in MACHINES:
        out += ["", f"### {machine.name.capitalize()}", "", mermaid(machine), ""]
        out += ["<details><summary>the table</summary>", "", table(machine), "", "</details>"]
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    from failover.reference import section_main  # the README's other generated section, same markers rules

    return section_main(argv, "python -m failover.protocol.diagram", __doc__ or "", render(), (START, END))


if __name__ == "__main__":
    raise SystemExit(main())
