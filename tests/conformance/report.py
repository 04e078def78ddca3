"""docs/conformance.md: the verdicts of both engines side by side, their totals, and for each
difference which engine is right and why.  The "why" is written by hand in notes.toml (keyed by
test id) and only copied here: a generated judgement would be no judgement."""
from __future__ import annotations

import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from . import outcome as oc
from .engines import Run

NOTES = Path(__file__).with_name("notes.toml")
SVMEMU, QEMU = "svmemu", "QEMU TCG"


@dataclass(frozen=True)
class Note:
    right: str        # "svmemu", "qemu", "both" (a harmless difference) or "neither"
    why: str


def load_notes(path: Path = NOTES) -> dict[str, Note]:
    if not path.exists():
        return {}
    data = tomllib.loads(path.read_text())
    return {k: Note(str(v.get("right", "")), str(v.get("why", "")).strip())
            for k, v in data.items()}


def cell(o: oc.Outcome | None) -> str:
    """`pass 12/0/1` (PASS/FAIL/SKIP lines) or `unsupported: ...`."""
    if o is None:
        return "not run"
    text = f"**{o.verdict}** {o.counts()}" if o.verdict != oc.PASS else f"pass {o.counts()}"
    if o.detail and o.verdict not in (oc.PASS, oc.FAIL, oc.SKIP):
        text += ": " + _md(o.detail.replace("svmemu: ", "")[:140])
    if o.cpu_dropped:
        text += f" (without `{o.cpu_dropped}`)"
    return text


def _md(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def _secs(o: oc.Outcome | None) -> str:
    return "" if o is None else f"{o.seconds:.1f}"


def differs(a: oc.Outcome | None, b: oc.Outcome | None) -> bool:
    if a is None or b is None:
        return False
    return a.verdict != b.verdict or (a.verdict == b.verdict == oc.FAIL and a.fails != b.fails)


def totals(ids: list[str], results: dict[str, oc.Outcome]) -> tuple[Counter, Counter]:
    verdicts: Counter = Counter()
    lines: Counter = Counter()
    for i in ids:
        o = results.get(i)
        if o is None:
            continue
        verdicts[o.verdict] += 1
        lines["PASS"] += o.passes
        lines["FAIL"] += o.fails
        lines["SKIP"] += o.skips
    return verdicts, lines


def totals_line(ids: list[str], results: dict[str, oc.Outcome]) -> str:
    verdicts, lines = totals(ids, results)
    parts = [f"{verdicts[v]} {v}" for v in oc.VERDICTS if verdicts[v]]
    return (", ".join(parts) or "none") + \
        f" (lines: {lines['PASS']} PASS, {lines['FAIL']} FAIL, {lines['SKIP']} SKIP)"


def render(groups: list[tuple[str, list[Run]]], svm: dict[str, oc.Outcome],
           qemu: dict[str, oc.Outcome], excluded: list[tuple[str, str]], notes: dict[str, Note],
           header: list[str]) -> str:
    out: list[str] = ["# Conformance: kvm-unit-tests on svmemu and QEMU TCG", ""]
    out += header + [""]
    out += ["## Totals", "",
            f"| set | {SVMEMU} | {QEMU} |", "| --- | --- | --- |"]
    for title, runs in groups:
        ids = [r.id for r in runs]
        out.append(f"| {title} ({len(ids)} runs) | {totals_line(ids, svm)} | "
                   f"{totals_line(ids, qemu)} |")
    out.append("")

    for title, runs in groups:
        out += [f"## {title}", "",
                f"| test | `-append` | {SVMEMU} | s | {QEMU} | s |",
                "| --- | --- | --- | ---: | --- | ---: |"]
        for r in runs:
            a, b = svm.get(r.id), qemu.get(r.id)
            mark = " ≠" if differs(a, b) else ""
            out.append(f"| `{r.id}`{mark} | {_md(r.append) or ''} | {cell(a)} | {_secs(a)} | "
                       f"{cell(b)} | {_secs(b)} |")
        out.append("")

    out += ["## Differences", "",
            "Each run whose verdict (or number of FAIL lines) differs between the engines, "
            "marked ≠ above; *right* and *why* are kept by hand in "
            "`tests/conformance/notes.toml`.", ""]
    any_diff = False
    for _, runs in groups:
        for r in runs:
            a, b = svm.get(r.id), qemu.get(r.id)
            if not differs(a, b):
                continue
            any_diff = True
            note = notes.get(r.id)
            head = f"- `{r.id}`: {SVMEMU} {cell(a)}, {QEMU} {cell(b)}."
            if note:
                out.append(f"{head} Right: **{note.right}**. {_md(note.why)}")
            else:
                out.append(f"{head} *Not yet analysed.*")
    if not any_diff:
        out.append("None.")
    out.append("")

    out += ["## Entries not run", "",
            "Entries of x86/unittests.cfg that do not apply to one AMD x86-64 CPU without KVM:", "",
            "| entry | why |", "| --- | --- |"]
    out += [f"| `{name}` | {_md(why)} |" for name, why in excluded]
    out.append("")
    return "\n".join(out)
