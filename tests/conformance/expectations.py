"""The expected svmemu verdict of every test (tests/conformance/expectations.toml) and the check
that nothing does worse.  An expectation other than pass carries its reason, so a known gap is
written down where CI reads it rather than silently tolerated."""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from . import outcome as oc

EXPECTATIONS = Path(__file__).with_name("expectations.toml")


@dataclass(frozen=True)
class Expected:
    verdict: str
    reason: str = ""
    fails: int | None = None      # for an expected fail: at most this many FAIL lines


class ExpectationError(ValueError):
    pass


def parse(text: str) -> dict[str, Expected]:
    """`["svm.flat:vmrun"]` tables with verdict, and reason (+ optional fails) unless it is pass."""
    data = tomllib.loads(text)
    table = data.get("tests", data)
    result: dict[str, Expected] = {}
    for test_id, fields in table.items():
        if not isinstance(fields, dict):
            raise ExpectationError(f"{test_id}: expected a table")
        verdict = fields.get("verdict")
        if verdict not in oc.VERDICTS:
            raise ExpectationError(f"{test_id}: verdict {verdict!r} is not one of {oc.VERDICTS}")
        reason = str(fields.get("reason", "")).strip()
        if verdict != oc.PASS and not reason:
            raise ExpectationError(f"{test_id}: an expected {verdict} needs a reason")
        fails = fields.get("fails")
        if fails is not None and (verdict != oc.FAIL or not isinstance(fails, int)):
            raise ExpectationError(f"{test_id}: fails = N goes with verdict = \"fail\"")
        unknown = set(fields) - {"verdict", "reason", "fails"}
        if unknown:
            raise ExpectationError(f"{test_id}: unknown keys {sorted(unknown)}")
        result[test_id] = Expected(verdict, reason, fails)
    return result


def load(path: Path = EXPECTATIONS) -> dict[str, Expected]:
    return parse(path.read_text())


WORSE, BETTER, SAME = "worse", "better", "same"


def compare(expected: Expected | None, got: oc.Outcome) -> tuple[str, str]:
    """(worse|better|same, a line saying why).  A test with no expectation must pass.  Within an
    expected fail, more FAIL lines than recorded is worse, fewer is better."""
    want = expected.verdict if expected else oc.PASS
    if got.verdict != want:
        detail = f" ({got.detail})" if got.detail else ""
        line = f"expected {want}, got {got.verdict}{detail}"
        if not expected:
            line += " [no expectation recorded]"
        if oc.rank(got.verdict) < oc.rank(want):
            return BETTER, line
        return WORSE, line
    if want == oc.FAIL and expected and expected.fails is not None:
        if got.fails > expected.fails:
            return WORSE, f"expected at most {expected.fails} FAIL lines, got {got.fails}"
        if got.fails < expected.fails:
            return BETTER, f"expected {expected.fails} FAIL lines, got {got.fails}"
    return SAME, ""


def render(results: dict[str, oc.Outcome], old: dict[str, Expected]) -> str:
    """expectations.toml for `results`, keeping each recorded reason; a new non-pass verdict gets
    the reason "TODO: explain", which parse() accepts but review should not."""
    lines = ["# Expected svmemu verdict of every kvm-unit-tests run (tests/conformance/runner.py",
             "# --check fails on anything worse).  A verdict other than pass says why.", ""]
    for test_id in sorted(results):
        got = results[test_id]
        prev = old.get(test_id)
        lines.append(f'["{test_id}"]')
        lines.append(f'verdict = "{got.verdict}"')
        if got.verdict == oc.FAIL:
            lines.append(f"fails = {got.fails}")
        if got.verdict != oc.PASS:
            reason = prev.reason if prev and prev.reason else "TODO: explain"
            lines.append("reason = " + _toml_string(reason))
        lines.append("")
    return "\n".join(lines)


def _toml_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
