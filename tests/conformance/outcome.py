"""How a kvm-unit-tests run ended, from its serial output and exit status, on either engine.

A kernel ends by writing its exit code to isa-debug-exit (port 0xF4); both QEMU and svmemu then exit
with status (code << 1) | 1, and the harness reads that status as 1 = every check passed, 3 = some
failed, 77 = skipped (the kernel writes 77 >> 1 so that the status comes out as 77).  Anything else (no write at all, a time limit, svmemu's `unsupported:` stop)
is an ending of its own, so that a test that never reached its verdict is never counted as one."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

PASS, SKIP, FAIL = "pass", "skip", "fail"
TIMEOUT, UNSUPPORTED, CRASH, INTERNAL = "timeout", "unsupported", "crash", "internal error"

# Best first: a verdict later in the list is worse.
VERDICTS = (PASS, SKIP, FAIL, TIMEOUT, UNSUPPORTED, CRASH, INTERNAL)

# Exit status after isa-debug-exit -> verdict (lib/report.c report_summary, scripts/arch-run.bash).
EXIT_STATUSES = {1: PASS, 3: FAIL, 77: SKIP}

# svmemu's own exit statuses (README, "Exit status").
SVMEMU_HALTED, SVMEMU_BAD_INPUT, SVMEMU_SHUTDOWN = 0, 2, 4
SVMEMU_UNSUPPORTED, SVMEMU_TIMEOUT, SVMEMU_INTERNAL = 6, 8, 70

_LINE = re.compile(r"^(PASS|FAIL|SKIP|XFAIL|XPASS):\s?(.*)$")
_SUMMARY = re.compile(r"^SUMMARY:\s*(.*)$")


@dataclass
class Outcome:
    verdict: str
    passes: int = 0
    fails: int = 0
    skips: int = 0
    summary: str = ""          # the kernel's SUMMARY line, without "SUMMARY: "
    detail: str = ""           # why it ended, when that was not the kernel's own verdict
    seconds: float = 0.0
    fail_lines: list[str] = field(default_factory=list)
    cpu_dropped: str = ""      # svmemu: the parts of the entry's -cpu it does not take

    def counts(self) -> str:
        return f"{self.passes}/{self.fails}/{self.skips}"

    def to_json(self) -> dict:
        return dict(verdict=self.verdict, passes=self.passes, fails=self.fails, skips=self.skips,
                    summary=self.summary, detail=self.detail, seconds=round(self.seconds, 2),
                    fail_lines=self.fail_lines, cpu_dropped=self.cpu_dropped)

    @classmethod
    def from_json(cls, d: dict) -> "Outcome":
        return cls(**d)


def parse_output(text: str) -> Outcome:
    """Count the kernel's PASS/FAIL/SKIP lines (XFAIL counts as a pass, XPASS as a failure, as the
    harness's report() does) and keep its SUMMARY; the verdict is left to the exit status."""
    out = Outcome(verdict="")
    for line in text.splitlines():
        line = line.rstrip("\r")
        m = _LINE.match(line)
        if m:
            kind = m.group(1)
            if kind in ("PASS", "XFAIL"):
                out.passes += 1
            elif kind == "SKIP":
                out.skips += 1
            else:
                out.fails += 1
                out.fail_lines.append(m.group(2)[:200])
            continue
        m = _SUMMARY.match(line)
        if m:
            out.summary = m.group(1).strip()
    return out


def _from_exit_status(out: Outcome, status: int) -> Outcome:
    if status in EXIT_STATUSES:
        out.verdict = EXIT_STATUSES[status]
    else:
        code = status >> 1
        out.verdict = CRASH
        out.detail = f"kernel exit code {code}" + (" (abort)" if code == 64 else "")
    return out


def _last_line(text: str, prefix: str) -> str:
    for line in reversed(text.splitlines()):
        if prefix in line:
            return line.strip()[:300]
    return ""


def classify_svmemu(status: int, stdout: str, stderr: str, timed_out: bool) -> Outcome:
    """svmemu's ending: odd statuses carry the kernel's exit code; the even ones are svmemu's."""
    out = parse_output(stdout)
    if timed_out or status == SVMEMU_TIMEOUT:
        out.verdict, out.detail = TIMEOUT, "time limit"
    elif status >= 0 and status & 1:
        _from_exit_status(out, status)
    elif status == SVMEMU_UNSUPPORTED:
        out.verdict = UNSUPPORTED
        out.detail = _last_line(stderr, "unsupported") or _last_line(stdout, "unsupported")
    elif status == SVMEMU_INTERNAL:
        out.verdict = INTERNAL
        out.detail = _last_line(stderr, "internal error") or "status 70"
    elif status == SVMEMU_BAD_INPUT:
        out.verdict = INTERNAL
        out.detail = "svmemu refused the run: " + (_last_line(stderr, "error") or "status 2")
    elif status == SVMEMU_SHUTDOWN:
        out.verdict, out.detail = CRASH, "shutdown (triple fault)"
    elif status == SVMEMU_HALTED:
        out.verdict, out.detail = CRASH, "halted without writing isa-debug-exit"
    else:
        out.verdict, out.detail = CRASH, f"svmemu status {status}"
    return out


def classify_qemu(status: int, stdout: str, stderr: str, timed_out: bool) -> Outcome:
    """QEMU's ending.  Status 1 is both "kernel wrote 0" and "QEMU refused its options": the
    latter prints `qemu-system-x86_64: ...` and no result line."""
    out = parse_output(stdout)
    if timed_out:
        out.verdict, out.detail = TIMEOUT, "time limit"
    elif status == 1 and _qemu_errors(stderr) and not (out.passes or out.fails or out.summary):
        out.verdict, out.detail = INTERNAL, _qemu_errors(stderr)[-1]
    elif status >= 0 and status & 1:
        _from_exit_status(out, status)
    elif status == 0:
        out.verdict, out.detail = CRASH, "QEMU ended without isa-debug-exit (shutdown)"
    else:
        out.verdict, out.detail = CRASH, f"QEMU status {status}"
    return out


def _qemu_errors(stderr: str) -> list[str]:
    """QEMU's own error lines (its warnings, e.g. a -cpu feature TCG lacks, are not errors)."""
    return [line.strip()[:300] for line in stderr.splitlines()
            if line.startswith("qemu-system") and ": warning:" not in line]


def rank(verdict: str) -> int:
    """0 is best."""
    return VERDICTS.index(verdict)
