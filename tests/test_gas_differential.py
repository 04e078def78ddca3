"""svmemu's assembler against GNU as: every bundled guest and bench guest assembles to the same
bytes with both (the image GNU as + ld + objcopy make with svmemu's section layout)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from emu.loader.asm import GUESTS_DIR, assemble_text
from tests.gnu_as import HAVE_BINUTILS, gnu_image

ROOT = Path(__file__).resolve().parents[1]
BENCH_GUESTS = ROOT / "bench" / "guests"

pytestmark = pytest.mark.skipif(not HAVE_BINUTILS, reason="GNU binutils (as, ld, objcopy) not installed")


def _first_difference(a: bytes, b: bytes) -> str:
    k = next((i for i in range(min(len(a), len(b))) if a[i] != b[i]), min(len(a), len(b)))
    return f"first difference at +{k:#x}: svmemu {a[k:k + 8].hex()} GNU as {b[k:k + 8].hex()}"


@pytest.mark.parametrize("path", sorted(GUESTS_DIR.glob("*.S")) + sorted(BENCH_GUESTS.glob("*.S")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_guest_bytes_equal_gnu_as(path, tmp_path):
    # bench guests carry @NAME@ placeholders that bench/workloads.py fills in
    text = re.sub(r"@[A-Z0-9_]+@", "1000", path.read_text())
    dirs = [str(path.parent), str(GUESTS_DIR)]
    ours = assemble_text(text, str(path), dirs).image
    theirs = gnu_image(text, tmp_path, dirs)
    assert len(ours) > 1000
    assert ours == theirs, _first_difference(ours, theirs)
