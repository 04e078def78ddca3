"""The C replay engine and replay.py agree on every struct layout and opcode, and a library
that disagrees is refused instead of run."""
from __future__ import annotations

import pytest

from emu.engine import replay

pytestmark = pytest.mark.skipif(not replay.available(), reason="C replay engine not built")


def test_built_engine_reports_this_modules_abi() -> None:
    replay.check_abi(replay._LIB)
    reported = replay._LIB.replay_abi().decode().split()
    assert {word.split("=")[0] for word in reported} == set(replay.expected_abi())
    assert "OP_REGWRITE=11" in reported and "sizeof(op)=32" in reported


@pytest.mark.parametrize("name, value", [("PER_INTNO", 5), ("N_INTNO", 0x500),
                                         ("OPCODES", replay.OPCODES[1:] + replay.OPCODES[:1])])
def test_disagreement_is_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: object) -> None:
    monkeypatch.setattr(replay, name, value)
    with pytest.raises(replay.ReplayAbiMismatch, match="rebuild"):
        replay.check_abi(replay._LIB)
