"""The start-up proof of Unicorn's pinned CPU-state offsets: it passes on the pinned build, and it
catches each offset on its own when that one is wrong."""
from __future__ import annotations

import pytest

from emu.engine import hw_switch as H
from emu.engine import layout_check

PINNED = sorted(name for name in dir(H) if name.startswith("OFF_")) + ["CONTEXT_DATA_OFF", "SEG_SIZE"]


def test_pinned_build_passes() -> None:
    assert layout_check.mismatches() == []


def test_every_pinned_offset_is_proven() -> None:
    # At least the twenty-odd context offsets and the four outside it.
    assert len(PINNED) >= 27


@pytest.mark.parametrize("name", PINNED)
def test_a_wrong_offset_is_caught(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setattr(H, name, getattr(H, name) + 8)
    assert layout_check.mismatches(), f"{name} moved by 8 bytes and the probe did not notice"


def test_wrong_version_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(layout_check, "_proven", False)
    monkeypatch.setattr(H, "PINNED_UNICORN", "0.0.0")
    with pytest.raises(H.UnsupportedUnicorn, match="unicorn==0.0.0"):
        layout_check.self_check()


def test_a_passed_probe_is_remembered_for_the_same_library_and_offsets(
        monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("SVMEMU_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(layout_check, "_proven", False)
    layout_check.self_check()
    proof = layout_check.proof_path()
    assert proof is not None and proof.exists() and tmp_path in proof.parents

    def probe_again() -> list[str]:
        raise AssertionError("probed again")
    monkeypatch.setattr(layout_check, "_proven", False)
    monkeypatch.setattr(layout_check, "mismatches", probe_again)
    layout_check.self_check()            # remembered: no probe

    monkeypatch.setattr(layout_check, "_proven", False)
    monkeypatch.setattr(H, "OFF_EFER", H.OFF_EFER + 8)
    assert layout_check.proof_path() != proof
    with pytest.raises(AssertionError, match="probed again"):
        layout_check.self_check()        # another offset: another key, so a new probe
