"""The one line every run ends with on stderr (unless -q): how it ended, what ran, how long.

A hypervisor's bug often shows first as a count that is wrong (one #VMEXIT too many, an exit
code that should never occur), so the line names world switches and exits by code without any
trace. Instructions are counted only when a run counts them anyway (an instruction limit,
--snapshot-at N) or is asked to (--count-insns): counting costs a Python call per instruction.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from emu.core.machine import Machine, RunResult


def summary_line(machine: "Machine", result: "RunResult", seconds: float) -> str:
    """`svmemu: <reason> (<message>, rip R); N instructions; S world switches (...); T s`."""
    parts = [f"svmemu: {result.reason} ({result.message}, rip {result.rip:#x})"]
    if machine.insns_counted:
        parts.append(f"{machine.insns} instructions")
    else:
        parts.append("instructions not counted (--count-insns)")
    parts.append(world_switches_text(machine))
    parts.append(f"{seconds:.2f} s")
    return "; ".join(parts)


def world_switches_text(machine: "Machine") -> str:
    for ext in machine.extensions:
        counts = ext.world_switches()
        if counts is None:
            continue
        entries, exits, by_name = counts
        total = entries + exits
        text = f"{total} world switch{'es' if total != 1 else ''} ({entries} VMRUN, {exits} #VMEXIT"
        if by_name:
            text += ": " + ", ".join(f"{name} {n}" for name, n in by_name.items())
        return text + ")"
    return "0 world switches"
