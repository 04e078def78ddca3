"""The engine's fast paths for several CPUs and for cheap CPU-state changes (patches 0007-0009 of
emu/engine/unicorn_build), each against the result its slow path gives:

- 0007 (code groups): engines over one RAM drop only the translated code another engine
  overwrote, instead of all of it at every turn switch. The code a CPU runs after another CPU
  (or the emulator itself) rewrote it must be the new code, however the TLB entries and
  translations of the writer were made; and a whole SMP guest must end exactly as it does when
  every turn drops everything (RAM, clocks, RIPs, output).
- 0008 (PAUSE stays in its block): a PAUSE loop retires exactly its instructions.
- 0009 (CR0.WP without a TLB flush): a supervisor store through a read-only mapping succeeds
  with WP=0 and faults with WP=1, at every toggle, whatever the TLB held from before.
"""
from __future__ import annotations

import ctypes
import hashlib
import mmap

import pytest
from unicorn import UC_ARCH_X86, UC_MODE_64, UC_PROT_ALL, Uc
from unicorn.x86_const import (UC_X86_REG_R12, UC_X86_REG_R14, UC_X86_REG_RAX, UC_X86_REG_RBX,
                               UC_X86_REG_RCX)

from emu.core.machine import Machine
from emu.engine import code_group
from emu.engine.insn_counter import InsnCounter
from emu.loader.asm import GUESTS_DIR
from tests import harness
from tests.nested_image import EXIT_PASS
from svm_ext.extension import SvmExtension
from tests.tinyimage import BODY, asm64, gate64, handler, long_mode_image

pytestmark = pytest.mark.skipif(not code_group.available(),
                                reason="needs svmemu's engine (python -m emu.engine.unicorn_build)")

RAM = 2 << 20
CODE = 0x10000        # `mov eax, imm32`, then a jump to STOP: run by engine B
WRITER = 0x20000      # engine A's code
DATA = 0x30000
STOP = 0x40000


class Pair:
    """Two engines over one host buffer (two CPUs of a machine), in one code group."""

    def __init__(self, grouped: bool = True) -> None:
        self.ram = mmap.mmap(-1, RAM)
        self.host = ctypes.addressof(ctypes.c_char.from_buffer(self.ram))
        self.a, self.b = Uc(UC_ARCH_X86, UC_MODE_64), Uc(UC_ARCH_X86, UC_MODE_64)
        for uc in (self.a, self.b):
            uc.mem_map_ptr(0, RAM, UC_PROT_ALL, self.host)
        self.groups = ([code_group.CodeGroup(self.a, 0, self.host, RAM, None),
                        code_group.CodeGroup(self.b, 1, self.host, RAM, self.a)]
                       if grouped else None)
        # Unicorn re-translates the block holding the byte before emu_start's `until`: the
        # stop is on a page of its own, so B's block at CODE lives on between runs.
        self.put(CODE, asm64(f"mov eax, 0x1111\n jmp {STOP:#x}\n", CODE))
        self.put(STOP, b"\x90")

    def put(self, addr: int, data: bytes) -> None:
        self.ram[addr:addr + len(data)] = data

    def run_b(self, sync: bool = True) -> int:
        if sync and self.groups:
            self.groups[1].sync()
        self.b.emu_start(CODE, STOP)
        return self.b.reg_read(UC_X86_REG_RAX)

    def a_stores(self, addr: int, value: int) -> None:
        """Engine A's guest code stores a dword (through its own TLB)."""
        code = asm64("mov dword ptr [rbx], ecx\n nop\n", WRITER)
        self.put(WRITER, code)
        self.a.reg_write(UC_X86_REG_RBX, addr)
        self.a.reg_write(UC_X86_REG_RCX, value)
        if self.groups:
            self.groups[0].sync()
        self.a.emu_start(WRITER, WRITER + len(code) - 1)


def test_a_store_by_another_engine_reaches_the_code_it_overwrote():
    p = Pair()
    assert p.run_b() == 0x1111              # B translated CODE's page
    p.a_stores(CODE + 1, 0x2222)
    assert p.run_b() == 0x2222
    p.a_stores(CODE + 1, 0x3333)            # again: A's entry for the page must stay slow
    assert p.run_b() == 0x3333


def test_a_writer_whose_tlb_entry_was_clean_before_the_code_existed():
    """A stored to the page first (its TLB entry became clean: no code there then), then B
    translated code from it: A's next store must still reach B."""
    p = Pair()
    p.a_stores(CODE + 0x800, 7)             # A's entry for CODE's page: clean
    assert p.run_b() == 0x1111
    p.a_stores(CODE + 1, 0x4444)
    assert p.run_b() == 0x4444


def test_without_the_sync_the_other_engine_runs_what_it_translated():
    """What the sync does: an engine's blocks are its own, so without it B runs stale code
    (and ungrouped engines never learn of A's store at all)."""
    p = Pair()
    assert p.run_b() == 0x1111
    p.a_stores(CODE + 1, 0x2222)
    assert p.run_b(sync=False) == 0x1111
    assert p.run_b() == 0x2222
    q = Pair(grouped=False)
    assert q.run_b() == 0x1111
    q.a_stores(CODE + 1, 0x2222)
    assert q.run_b() == 0x1111


def test_the_emulators_own_stores_are_logged_too():
    p = Pair()
    assert p.run_b() == 0x1111
    p.put(CODE + 1, (0x5555).to_bytes(4, "little"))
    p.groups[0].written(CODE + 1, 4)        # GuestMemory.write_phys does this on CPU 0
    assert p.run_b() == 0x5555


def test_stores_to_pages_without_code_are_not_logged():
    p = Pair()
    assert p.run_b() == 0x1111
    p.a_stores(DATA, 1)
    assert p.groups[1].sync() == 0          # nothing to look at
    p.a_stores(CODE + 1, 0x6666)
    assert p.groups[1].sync() == 1          # CODE's page, once
    assert p.run_b() == 0x6666


def test_the_writers_own_code_on_a_shared_page_is_invalidated_as_before():
    p = Pair()
    assert p.run_b() == 0x1111
    p.a.emu_start(CODE, STOP)               # A translates CODE too
    assert p.a.reg_read(UC_X86_REG_RAX) == 0x1111
    p.a_stores(CODE + 1, 0x7777)
    p.a.emu_start(CODE, STOP)
    assert p.a.reg_read(UC_X86_REG_RAX) == 0x7777
    assert p.run_b() == 0x7777


def _smp_fingerprint() -> tuple:
    m = Machine(harness.RAM, stdout=None, extensions=[SvmExtension()], cpus=4, quantum=700)
    m.load_multiboot(harness.image_of(str(GUESTS_DIR / "smp.S"), harness.RAM), "test")
    res = m.run(timeout=60)
    return (bytes(m.serial.output).decode(), res.reason, res.status, res.rip,
            hashlib.sha256(bytes(m.ram[:16 << 20])).hexdigest(),
            tuple((c.tsc, c._start, c.irq.halted) for c in m.cpu_list))


def test_an_smp_guest_ends_exactly_as_when_every_switch_drops_all_code(monkeypatch):
    """guests/smp.S (cross-modified code, IPIs, LOCKed counters, two hypervisors) with a small
    quantum: the same output, RAM, clocks and RIPs either way."""
    fast = _smp_fingerprint()
    monkeypatch.setattr(code_group, "_BOUND", False)   # no groups: every switch drops all
    slow = _smp_fingerprint()
    assert "code rewritten by CPU 1 runs as rewritten" in fast[0]
    assert fast == slow


# ---- 0008: PAUSE --------------------------------------------------------------------------------

def test_a_pause_loop_retires_exactly_its_instructions():
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, RAM, UC_PROT_ALL)
    code = asm64("mov ecx, 1000\n again:\n pause\n inc r12\n dec ecx\n jnz again\n nop\n", CODE)
    uc.mem_write(CODE, code)
    counter = InsnCounter(uc)
    before = counter.read()
    uc.emu_start(CODE, CODE + len(code) - 1)
    assert uc.reg_read(UC_X86_REG_R12) == 1000 and uc.reg_read(UC_X86_REG_RCX) == 0
    assert counter.read() - before == 1 + 4 * 1000


# ---- 0009: CR0.WP ---------------------------------------------------------------------------------

ALIAS = 0x3FE00000        # a read-only mapping of BODY's 2 MiB page (PD entry 511)
TARGET = BODY + 0x8000    # the dword stored through ALIAS
ROUNDS = 30


def test_cr0_wp_toggles_decide_every_store_through_a_read_only_mapping():
    """Each round: with WP=1 a read through the read-only alias (its TLB entry: no write),
    then a store (#PF); with WP=0 a store that succeeds; with WP=1 again a store that must
    fault although the last store through that entry succeeded; then WP=0 and a store again.
    The #PF handler counts in r14 and skips the 6-byte store."""
    via = ALIAS + TARGET - 0x200000
    body = f"""
        mov rax, {0x200000 | 0x81}
        mov rbx, {0x22000 + 511 * 8}
        mov [rbx], rax
        mov rbx, {ALIAS}
        invlpg [rbx]
        xor r14, r14
        xor r12, r12
        mov rbx, {via}
    again:
        mov rax, cr0
        bts rax, 16
        mov cr0, rax
        mov eax, [rbx]
        mov dword ptr [rbx], 0x11111111
        mov rax, cr0
        btr rax, 16
        mov cr0, rax
        mov dword ptr [rbx], r12d
        mov rax, cr0
        bts rax, 16
        mov cr0, rax
        mov dword ptr [rbx], 0x22222222
        mov rax, cr0
        btr rax, 16
        mov cr0, rax
        inc r12
        mov dword ptr [rbx], r12d
        cmp r12, {ROUNDS}
        jne again
        {EXIT_PASS}
    """
    assert len(asm64("mov dword ptr [rbx], 0x11111111", 0)) == 6
    pf = "inc r14\n add qword ptr [rsp + 8], 6\n add rsp, 8\n iretq\n"
    img = long_mode_image(body, idt={14: gate64(handler(0))}, handlers=[pf])
    m = Machine(64 << 20, stdout=None)
    m.load_multiboot(img, "cr0-wp")
    res = m.run(timeout=30)
    assert res.reason == "exit", res
    assert m.uc.reg_read(UC_X86_REG_R14) == 2 * ROUNDS
    assert int.from_bytes(m.ram[TARGET:TARGET + 4], "little") == ROUNDS
