"""Intercepts that Unicorn 2.1.4's SVM (a QEMU 5-era TCG) checks or reports differently from the
AMD APM, set right in our layer so that L1 sees what hardware would show it.

* INT3 (CC) and INTO (CE) reach L0 as VMEXIT_SWINT. They raise exceptions (#BP, #OF): L1's
  exception intercepts apply to them, and only INT n (CD ib) is the INTn intercept (APM vol. 2,
  15.9 and 15.12). (INT1/ICEBP, F1, is not among them: Unicorn decodes it as #UD, the machine
  makes it a #DB, and `on_exception` applies L1's ICEBP intercept before its #DB intercept.)
* INVD is checked against the WBINVD intercept bit, so L0 asks vmcb02 for WBINVD exits whenever
  L1 wants INVD and tells the two apart by opcode (0F 08 INVD, 0F 09 WBINVD).
* RDTSCP is checked against the RDTSC intercept bit; L0 intercepts both anyway, the opcode
  (0F 01 F9) says which it was.  With RDTSCP hidden from CPUID (`-rdtscp`) it is #UD, before
  any intercept; SKINIT, which no svmemu CPU has, is #UD in L2 too.
* The selective CR0 write intercept (CR0_SEL_WRITE, APM 15.9.1) does not exist there: when L1
  asks for it, L0 intercepts every CR0 write of L2 and decides per write whether bits other than
  CR0.TS and CR0.MP change.

One is not an intercept but a crash of the stock engine: Unicorn 2.1.4's nested walk
dereferences a null pointer when a nested leaf mapping one of the guest's *page tables* has NX
set (EFER.NXE on in the host). svmemu's own engine fixes it (emu/engine/unicorn_build,
0003-nested-walk-null-prot.patch) and the walk completes as the APM says. On the stock engine
`guard_nested_nx` catches the common form of it at VMRUN (the nested mapping of L2's CR3 page)
and stops with "unsupported:" instead of taking the process down; lower-level tables are not
scanned, since the guest can move them at any time.

The extra intercepts vmcb02 needs for these cases are added by intercepts.recalc. `route` gets
these exits first; it returns True/False when it decided (took the exit, or left it
to the machine), None for an exit that is not one of these cases.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from emu.arch.bits import CR0_MP, CR0_PG, CR0_TS
from emu.arch.decode import MAX_INSN_LENGTH, split_prefixes
from emu.engine.unicorn_build import loader as engine_loader
from emu.errors import Unsupported
from emu.engine.hw_switch import NPT_MODE_NXE, OFF_EIP, OFF_REGS
from emu.arch.paging import NestedFault, walk_nested
from emu.core.interrupts import BP, OF, UD

from svm_ext import decode_assists
from svm_ext.reflect import exit_handled, reflect
from emu.arch.vmcb import (VMEXIT_CR0_SEL_WRITE, VMEXIT_CR0_WRITE, VMEXIT_EXCP0,
                   VMEXIT_INVD, VMEXIT_RDTSC, VMEXIT_RDTSCP, VMEXIT_SKINIT, VMEXIT_SWINT,
                   VMEXIT_WBINVD,
                   Vmcb12Cache)

if TYPE_CHECKING:
    from .vcpu import Vcpu

_SWINT_EXCEPTION = {0xCC: BP, 0xCE: OF}
CODES = frozenset({VMEXIT_SWINT, VMEXIT_WBINVD, VMEXIT_RDTSC, VMEXIT_CR0_WRITE, VMEXIT_SKINIT})
CPUID_RDTSCP = (0x80000001, 3, 1 << 27)       # leaf, register (EDX), bit


def _decode(ext: "Vcpu") -> tuple[bytes, bytes, int]:
    """(opcode bytes after the prefixes, the legacy prefixes, REX byte or 0)."""
    m = ext.machine
    ctx = m.ctx.save()
    p = split_prefixes(m.mem.read_code(ctx.u64(OFF_EIP), MAX_INSN_LENGTH), ctx.mode_bits())
    return p.opcode, p.prefixes, p.rex


def route(ext: "Vcpu", c: Vmcb12Cache, code: int) -> bool | None:
    op, prefixes, rex = _decode(ext)
    if code == VMEXIT_SWINT:
        return _software_interrupt(ext, c, op)
    if code == VMEXIT_WBINVD:
        real = VMEXIT_INVD if op[:2] == b"\x0F\x08" else VMEXIT_WBINVD
        if exit_handled(c, real):
            reflect(ext, real, 0, 0, 0, ext.next_rip())
        else:                       # only the other one was L1's: no effect in an emulator
            _skip(ext, ext.next_rip())
        return True
    if code == VMEXIT_SKINIT:
        # svmemu's CPUs have no SKINIT (CPUID 8000_0001 ECX bit 12 is clear): #UD, which is
        # checked before instruction intercepts (APM vol. 2, 15.7), and L1's #UD intercept
        # sees it.
        ext.machine.raise_exception(UD)
        return True
    if code == VMEXIT_RDTSC and op[:3] == b"\x0F\x01\xF9":
        leaf, reg, bit = CPUID_RDTSCP
        if not ext.machine.cpuid.query(leaf, 0)[reg] & bit:       # hidden with -rdtscp
            ext.machine.raise_exception(UD)
            return True
        if exit_handled(c, VMEXIT_RDTSCP):
            reflect(ext, VMEXIT_RDTSCP, 0, 0, 0, ext.next_rip())
            return True
        return False                # the machine's RDTSC handler knows RDTSCP by opcode too
    if code == VMEXIT_CR0_WRITE and 0xF0 not in prefixes and not exit_handled(c, code):
        return _selective_cr0_write(ext, op, rex)
    return None


def _software_interrupt(ext: "Vcpu", c: Vmcb12Cache, op: bytes) -> bool:
    """INT3 and INTO: L1's exception intercepts (no NRIP, RIP at the instruction); INT n: the
    INTn intercept. False leaves delivery through L2's IDT to the machine."""
    vector = _SWINT_EXCEPTION.get(op[0]) if op else None
    if vector is None:
        return exit_handled(c, VMEXIT_SWINT) and _exit(ext, VMEXIT_SWINT, ext.next_rip())
    return exit_handled(c, VMEXIT_EXCP0 + vector) and _exit(ext, VMEXIT_EXCP0 + vector, 0)


def _exit(ext: "Vcpu", code: int, nrip: int) -> bool:
    reflect(ext, code, decode_assists.exit_info1(ext, code), 0, 0, nrip)
    return True


def _selective_cr0_write(ext: "Vcpu", op: bytes, rex: int) -> bool:
    """A CR0 write L1 watches only selectively: exit if it changes more than TS and MP, else
    perform it for L2 (it then changes nothing but those two flags).  LMSW is the exception:
    under the selective intercept it exits whenever it changes any of the four bits it writes,
    TS and MP included (KVM's nested SVM and kvm-unit-tests' sel_cr0_lmsw_intercept agree)."""
    m = ext.machine
    ctx = m.ctx.save()
    old = ctx.cr(0)
    free = CR0_TS | CR0_MP
    if op[:2] == b"\x0F\x22" and len(op) > 2 and op[2] >> 6 == 3:
        value = ctx.u64(OFF_REGS + 8 * ((op[2] & 7) | (rex & 1) << 3))
        new = value if ctx.mode_bits() == 64 else value & 0xFFFFFFFF
    elif op[:2] == b"\x0F\x06":                                 # CLTS
        new = old & ~CR0_TS
    elif op[:2] == b"\x0F\x01" and len(op) > 2 and op[2] >> 3 & 7 == 6 and op[2] >> 6 == 3:
        src = ctx.u64(OFF_REGS + 8 * ((op[2] & 7) | (rex & 1) << 3))   # LMSW reg
        new = (old & ~0xE) | (src & 0xF) | (old & 1)
        free = 0
    else:
        raise Unsupported(f"unsupported: CR0 write {op[:4].hex()} under L1's selective CR0 "
                          "intercept (only MOV CR0, reg, CLTS and LMSW reg are decoded)")
    nrip = ext.next_rip()
    if (old ^ new) & ~free:
        return _exit(ext, VMEXIT_CR0_SEL_WRITE, nrip)
    ctx.load_control_hflags(new, ctx.cr(4), ctx.efer, ctx.cpl)
    ctx.restore()
    ext.machine.retire(nrip)
    return True


def _skip(ext: "Vcpu", nrip: int) -> None:
    ext.machine.retire(nrip)




# The engine's nested walk survives NX nested leaves over guest page tables (patched engine).
_ENGINE_WALKS_NX = engine_loader.has_fix("nested-walk-nx")


def guard_nested_nx(ext: "Vcpu", c: Vmcb12Cache, host_mode: int,
                    npt: bool) -> tuple[tuple[int, int], ...] | None:
    """Stop before stock Unicorn 2.1.4 would crash (see module doc): L2 pages with its own tables
    under nested paging, the host has EFER.NXE, and the nested leaf over L2's CR3 page is NX.
    Nothing to guard on svmemu's engine, whose walk completes.

    Returns the nested entries (host-physical address, value) the verdict rests on, so a replay
    of this VMRUN (fast_switch.py) can require them unchanged; None when it rests on more (the
    walk faulted)."""
    m = ext.machine
    if not npt or not c.cr0 & CR0_PG or not host_mode & NPT_MODE_NXE or _ENGINE_WALKS_NX:
        return ()
    mem = m.mem
    try:
        t = walk_nested(mem.read_u64, c.n_cr3 & ~0xFFF, c.cr3 & ~0xFFF, host=mem.host_regs(host_mode))
    except (NestedFault, ValueError, Unsupported):
        return None     # not mapped: the walk itself ends in #NPF, which Unicorn survives
    if t.nx:
        raise Unsupported(f"nested paging maps L2's page-table root (GPA {c.cr3 & ~0xFFF:#x}) "
                          "no-execute; Unicorn 2.1.4 crashes walking guest tables through an NX "
                          "nested mapping (map guest page tables executable in the nested table)")
    return tuple((step.addr, step.value) for step in t.walk)
