"""Page walks read the page tables that are in memory now (patch 0015).

0015 lets the walk's physical loads reuse the host address of a page-table page instead of
translating it through the memory map at every load. The tables the walk reads must still be
the current ones: after Python rewrites an entry in the host buffer, and after the physical
pages under the tables are remapped to another host buffer (a change of the memory map)."""
from __future__ import annotations

import ctypes
import mmap
import struct

import emu  # noqa: F401  (first: chooses the Unicorn engine)
from unicorn import UC_ARCH_X86, UC_MODE_64, UC_PROT_ALL, Uc
from unicorn.x86_const import UC_X86_REG_CR0, UC_X86_REG_CR3, UC_X86_REG_CR4, UC_X86_REG_RAX

from emu.arch.bits import CR0_ET, CR0_PE, CR0_PG, CR4_PAE, EFER_LMA, EFER_LME, PTE_P, PTE_RW
from emu.arch.msrs import MSR_EFER
from tests.tinyimage import asm64

TABLES = 0x200000                  # PML4, PDPT, PD, PT: four pages of their own mapping
VA = 0x100000                      # the virtual page whose PTE the tests change
FRAME_A, FRAME_B = 0x1000, 0x2000
CODE = 0x10000
PTE_P_RW = PTE_P | PTE_RW


def _tables(frame: int) -> mmap.mmap:
    """4-level tables mapping the first 2 MiB 1:1 in 4 KiB pages, except VA -> frame."""
    buf = mmap.mmap(-1, 0x4000)
    pml4, pdpt, pd = 0, 0x1000, 0x2000
    struct.pack_into("<Q", buf, pml4, TABLES + pdpt | PTE_P_RW)
    struct.pack_into("<Q", buf, pdpt, TABLES + pd | PTE_P_RW)
    struct.pack_into("<Q", buf, pd, TABLES + 0x3000 | PTE_P_RW)
    for i in range(512):
        struct.pack_into("<Q", buf, 0x3000 + 8 * i, (i << 12) | PTE_P_RW)
    _set_pte(buf, frame)
    return buf


def _set_pte(buf: mmap.mmap, frame: int) -> None:
    struct.pack_into("<Q", buf, 0x3000 + 8 * (VA >> 12), frame | PTE_P_RW)


def _address(buf: mmap.mmap) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))


class _Paged:
    """A bare 64-bit Unicorn with paging on, whose tables are a host buffer mapped by pointer;
    `read()` runs `mov rax, [VA]` after a CR3 write (a TLB flush)."""

    def __init__(self, tables: mmap.mmap) -> None:
        self.uc = uc = Uc(UC_ARCH_X86, UC_MODE_64)
        uc.mem_map(0, 0x200000)
        uc.mem_map_ptr(TABLES, len(tables), UC_PROT_ALL, _address(tables))
        uc.mem_write(FRAME_A, struct.pack("<Q", 0xAAAA))
        uc.mem_write(FRAME_B, struct.pack("<Q", 0xBBBB))
        self.code = asm64(f"mov rax, [{VA:#x}]\n hlt\n", CODE)
        uc.mem_write(CODE, self.code)
        uc.reg_write(UC_X86_REG_CR3, TABLES)
        uc.reg_write(UC_X86_REG_CR4, CR4_PAE)
        uc.msr_write(MSR_EFER, EFER_LME | EFER_LMA)
        uc.reg_write(UC_X86_REG_CR0, CR0_PG | CR0_ET | CR0_PE)

    def read(self) -> int:
        self.uc.reg_write(UC_X86_REG_CR3, TABLES)
        self.uc.emu_start(CODE, CODE + len(self.code) - 1)
        return self.uc.reg_read(UC_X86_REG_RAX)


def test_an_entry_python_rewrites_in_the_host_buffer_is_walked():
    tables = _tables(FRAME_A)
    m = _Paged(tables)
    assert m.read() == 0xAAAA
    _set_pte(tables, FRAME_B)
    assert m.read() == 0xBBBB
    _set_pte(tables, FRAME_A)
    assert m.read() == 0xAAAA


def test_tables_remapped_to_another_host_buffer_are_walked():
    first, second = _tables(FRAME_A), _tables(FRAME_B)
    m = _Paged(first)
    assert m.read() == 0xAAAA
    m.uc.mem_unmap(TABLES, len(first))
    m.uc.mem_map_ptr(TABLES, len(second), UC_PROT_ALL, _address(second))
    assert m.read() == 0xBBBB
    m.uc.mem_unmap(TABLES, len(second))
    m.uc.mem_map_ptr(TABLES, len(first), UC_PROT_ALL, _address(first))
    assert m.read() == 0xAAAA
