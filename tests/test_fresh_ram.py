"""A kernel's bss is zero after loading: on a fresh machine without writing the pages (RAM as
mapped is zero), and on a machine whose RAM the guest or a snapshot restore dirtied."""
from __future__ import annotations

import ctypes
import mmap
import struct

from emu.core import snapshot
from emu.core.fresh_ram import FreshRam
from emu.core.machine import Machine
from emu.loader.multiboot import MBI_ADDR, parse_image
from tests.test_loader import aout

RAM = 32 << 20
LOAD = 0x100000
BSS_END = 0x800000
# Pages at least 2 MiB from every byte the loader writes: not resident even if the host backs
# the written ones with transparent huge pages.
UNTOUCHED = (0x400000, BSS_END)
PATTERN = 0xAA


def _fill_bss_guest() -> bytes:
    """32-bit code: fill [code end, BSS_END) with PATTERN, then HLT (IF is clear at entry)."""
    start = LOAD + 32 + 16
    code = (b"\xbf" + struct.pack("<I", start)                  # mov edi, start
            + b"\xb9" + struct.pack("<I", BSS_END - start)      # mov ecx, BSS_END - start
            + b"\xb0" + bytes([PATTERN])                        # mov al, PATTERN
            + b"\xf3\xaa"                                       # rep stosb
            + b"\xf4")                                          # hlt
    code += b"\x90" * (16 - len(code))
    return aout(code, load=LOAD, bss_end=BSS_END)


def _resident(machine: Machine, start: int, end: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    pages = (end - start) // mmap.PAGESIZE
    vec = (ctypes.c_ubyte * pages)()
    assert libc.mincore(ctypes.c_void_p(machine.ram_addr + start),
                        ctypes.c_size_t(end - start), vec) == 0, ctypes.get_errno()
    return sum(v & 1 for v in vec)


def _bss_is_zero(machine: Machine, image) -> bool:
    return all(not any(machine.ram[a:a + n]) for a, n in image.bss)


def test_bss_of_a_fresh_machine_is_zero_and_left_unwritten():
    image = parse_image(_fill_bss_guest(), "k", RAM)
    assert image.bss == [(LOAD + 48, BSS_END - LOAD - 48)]
    m = Machine(RAM, stdout=None)
    m.load_multiboot(image, "k")
    assert _resident(m, *UNTOUCHED) == 0
    assert _bss_is_zero(m, image)


def test_a_run_makes_ram_contents_unknown():
    image = parse_image(_fill_bss_guest(), "k", RAM)
    m = Machine(RAM, stdout=None)
    m.load_multiboot(image, "k")
    assert m.fresh_ram.written is not None
    assert m.run(timeout=30).reason == "halt"
    assert m.ram[BSS_END - 1] == PATTERN and m.ram[UNTOUCHED[0]] == PATTERN
    assert m.fresh_ram.written is None          # a later zero fill writes everything


def test_bss_is_zeroed_after_a_snapshot_restore():
    """RAM a restore filled is not known zero: a load after it writes the bss's zeros."""
    image = parse_image(_fill_bss_guest(), "k", RAM)
    dirty = Machine(RAM, stdout=None)
    dirty.load_multiboot(image, "k")
    dirty.ram[LOAD + 48:BSS_END] = bytes([PATTERN]) * (BSS_END - LOAD - 48)
    snap = snapshot.take(dirty)
    m = Machine(RAM, stdout=None)
    snapshot.restore(m, snap)
    assert m.ram[UNTOUCHED[0]] == PATTERN
    m.load_multiboot(image, "k")
    assert _bss_is_zero(m, image)


def test_bss_over_the_information_block_zeroes_it():
    """The information block is written before the kernel, so a bss over it leaves zeros there,
    as a copy of the bss would."""
    data = aout(b"\xf4", load=MBI_ADDR - 0x100, bss_end=MBI_ADDR + 0x40)
    image = parse_image(data, "low.bin", RAM)
    assert image.bss and image.bss[0][0] < MBI_ADDR
    m = Machine(RAM, stdout=None)
    m.load_multiboot(image, "k")
    assert not any(m.ram[MBI_ADDR:MBI_ADDR + 0x40])
    assert any(m.ram[MBI_ADDR + 0x40:MBI_ADDR + 0x44])        # the block's tail survives


def test_zero_writes_only_where_written_until_forgotten():
    ram = mmap.mmap(-1, 0x4000)
    fresh = FreshRam()
    ram[0x1000:0x1010] = b"\xff" * 16
    fresh.wrote(0x1000, 16)
    ram[0x3000] = 0xFF                  # written behind its back: not zeroed while fresh
    fresh.zero(ram, 0x800, 0x3000)
    assert not any(ram[0x1000:0x1010]) and ram[0x3000] == 0xFF
    fresh.forget()
    fresh.zero(ram, 0x800, 0x3000)
    assert not any(ram[0x800:0x3800])
