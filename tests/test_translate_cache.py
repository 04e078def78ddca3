"""GuestMemory.translate remembers an L1 translation with the page-table entries it read (as it
did for nested ones): exception and interrupt delivery translate the IDT, GDT and stack at each
event. The remembered answer must be the walk's answer whenever it is used: after the tables
change, after an A or D bit is cleared (the walk sets it again), and for every access kind."""
from __future__ import annotations

import struct

import pytest

from emu.arch import paging
from emu.core.machine import Machine
from emu.core.memory import MAXPHYADDR
from emu.core.interrupts import Fault
from tests.tinyimage import BODY, long_mode_image

PD = 0x22000                 # tinyimage's page directory: 2 MiB pages, identity
VA = 0x40000000 - 0x200000   # PD entry 511
PDE = PD + 511 * 8
PTE_A, PTE_D = 1 << 5, 1 << 6


@pytest.fixture
def m() -> Machine:
    machine = Machine(64 << 20, stdout=None)
    machine.load_multiboot(long_mode_image("spin:\n hlt\n jmp spin\n"), "translate")
    machine.run(max_insns=200)
    machine.ctx.save()
    return machine


def _walk(m: Machine, va: int, **access) -> int:
    """The slow path: a fresh walk of the tables as they are (committing A/D like translate)."""
    return paging.walk(m.mem.read_u64, m.mem.regs(), va, paging.Access(**access),
                       read_u32=m.mem.read_u32, maxphyaddr=MAXPHYADDR).pa


def _pde(m: Machine) -> int:
    return struct.unpack_from("<Q", m.ram, PDE)[0]


def _set_pde(m: Machine, value: int) -> None:
    struct.pack_into("<Q", m.ram, PDE, value)


@pytest.mark.parametrize("access", [{}, {"write": True}, {"fetch": True}])
def test_a_remembered_translation_is_the_walks(m, access):
    for va in (BODY + 0x123, VA + 0x456, 0x5000):
        first = m.mem.translate(va, **access)
        assert m.mem.translate(va, **access) == first == _walk(m, va, **access)


def test_changed_tables_are_walked_again(m):
    assert m.mem.translate(VA + 8) == 0x3FE00008
    _set_pde(m, 0x00400000 | 0x83 | PTE_A | PTE_D)       # now 4 MiB
    assert m.mem.translate(VA + 8) == 0x00400008
    _set_pde(m, 0)
    with pytest.raises(Fault):
        m.mem.translate(VA + 8)


def test_a_cleared_accessed_or_dirty_bit_is_set_again(m):
    m.mem.translate(VA, write=True)
    assert _pde(m) & (PTE_A | PTE_D) == PTE_A | PTE_D
    _set_pde(m, _pde(m) & ~(PTE_A | PTE_D))
    m.mem.translate(VA)
    assert _pde(m) & (PTE_A | PTE_D) == PTE_A            # a read sets A only
    m.mem.translate(VA, write=True)
    assert _pde(m) & (PTE_A | PTE_D) == PTE_A | PTE_D


def test_a_write_through_a_read_only_mapping_faults_though_a_read_was_remembered(m):
    _set_pde(m, (_pde(m) & ~2) | PTE_A | PTE_D)          # read-only, CR0.WP=1 (tinyimage)
    assert m.mem.translate(VA) == 0x3FE00000
    with pytest.raises(Fault):
        m.mem.translate(VA, write=True)
