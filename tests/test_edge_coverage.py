"""The engine's AFL edge-coverage hook (emu/engine/edge_coverage.py): the C hook and its Python
twin count the same edges into the map, on a guest that runs L1 and L2."""
from __future__ import annotations

import ctypes
from pathlib import Path

import pytest

from emu.core.machine import Machine
from emu.engine import edge_coverage
from svm_ext.extension import SvmExtension
from tests.harness import image_of

ROOT = Path(__file__).resolve().parent.parent
SIZE = 1 << 16


def coverage_of(guest: str, python: bool) -> tuple[bytes, str]:
    m = Machine(128 << 20, stdout=None, extensions=[SvmExtension()])
    m.load_multiboot(image_of(ROOT / "guests" / guest), "test")
    area = (ctypes.c_ubyte * SIZE)()
    cov = edge_coverage.EdgeCoverage(m.uc, ctypes.addressof(area), SIZE, python=python)
    assert cov.in_c is not python
    result = m.run(timeout=60)
    cov.close(m.uc)
    return bytes(area), result.reason


@pytest.mark.skipif(not edge_coverage.c_hook_available(),
                    reason="the creplay extension is not built (pip install -e . builds it)")
@pytest.mark.parametrize("guest", ["svm_world_switch.S", "hello.S"])
def test_c_hook_counts_the_same_edges_as_python(guest):
    c_map, c_end = coverage_of(guest, python=False)
    py_map, py_end = coverage_of(guest, python=True)
    assert c_end == py_end
    assert sum(1 for b in c_map if b) > 10          # the run did record edges
    assert c_map == py_map


def test_map_size_must_be_a_power_of_two():
    m = Machine(16 << 20, stdout=None)
    area = (ctypes.c_ubyte * 100)()
    with pytest.raises(ValueError):
        edge_coverage.EdgeCoverage(m.uc, ctypes.addressof(area), 100)
