"""pyflakes over the whole tree: an undefined name or a forgotten import is a bug a test may
never reach (INVLPGA once called a function it never imported). A line marked
`# noqa` (an intended re-export or availability probe) is exempt."""
from __future__ import annotations

from pathlib import Path

import pytest

pyflakes_api = pytest.importorskip("pyflakes.api")
from pyflakes import reporter as pyflakes_reporter  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("emu", "svm_ext", "svmemu", "examples", "tests", "bench")


class _Collect(pyflakes_reporter.Reporter):
    def __init__(self) -> None:
        self.found: list[str] = []

    def unexpectedError(self, filename, msg) -> None:
        self.found.append(f"{filename}: {msg}")

    def syntaxError(self, filename, msg, lineno, offset, text) -> None:
        self.found.append(f"{filename}:{lineno}: {msg}")

    def flake(self, message) -> None:
        line = Path(message.filename).read_text().splitlines()[message.lineno - 1]
        if "noqa" not in line:
            self.found.append(str(message))


def test_pyflakes_finds_nothing():
    rep = _Collect()
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            pyflakes_api.checkPath(str(path), rep)
    assert not rep.found, "\n".join(rep.found)


def test_slow_tests_still_run_in_ci() -> None:
    """`slow` marks a long test for people who deselect it by hand; CI and README's command must
    not deselect it, or the long property tests would silently stop running."""
    ci = (ROOT / ".ci" / "run").read_text()
    config = (ROOT / "pyproject.toml").read_text()
    for text in (ci, config):
        assert "not slow" not in text
    assert "pytest -q" in ci
