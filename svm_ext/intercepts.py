"""L1's intercepts: one predicate per intercept class (APM vol. 2, 15.9-15.13), and the merge
with L0's own that decides what the CPU intercepts while L2 runs.

The predicates answer "does L1 want this exit" for reflect.exit_handled, for every exit that
reaches L0 while L2 runs: True means reflect it to L1 as a #VMEXIT; False means L0 handles it for
L2 as the hardware would with no hypervisor watching. ``recalc`` is the merge (KVM's
recalc_intercepts): VMRUN writes its result into vmcb02 and the CPU context.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

from emu.arch.vmcb import (INTERCEPT_CR0_SEL_WRITE, INTERCEPT_INVD, INTERCEPT_IOIO_PROT,
                           INTERCEPT_MSR_PROT, INTERCEPT_WBINVD, VMEXIT_DR0_READ, VMEXIT_EXCP0,
                           VMEXIT_INTR, VMEXIT_MSR, VMEXIT_NPF, VMEXIT_VMRUN, Vmcb12Cache,
                           iopm_intercepted, msrpm_intercepted)
from emu.engine.hostvm import L0_DR_WRITE_INTERCEPTS

ReadPhys = Callable[[int, int], bytes]


def cr_access(c: Vmcb12Cache, code: int) -> bool:
    n = code & 0xF
    return bool((c.intercept_cr_write if code & 0x10 else c.intercept_cr_read) >> n & 1)


def dr_access(c: Vmcb12Cache, code: int) -> bool:
    n = code & 0xF
    return bool((c.intercept_dr_write if code & 0x10 else c.intercept_dr_read) >> n & 1)


def exception(c: Vmcb12Cache, vector: int) -> bool:
    return bool(c.intercept_exceptions >> vector & 1)


def misc(c: Vmcb12Cache, code: int) -> bool:
    """Exit codes 0x60-0x9F map one-to-one onto the two misc intercept vectors."""
    bit = code - VMEXIT_INTR
    word = c.intercept_misc1 if bit < 32 else c.intercept_misc2
    return bool(word >> (bit % 32) & 1)


def msr(c: Vmcb12Cache, index: int, write: bool, read_phys: ReadPhys) -> bool:
    """MSR_PROT plus L1's permission map; MSRs outside the map's ranges always exit."""
    if not c.intercept_misc1 & INTERCEPT_MSR_PROT:
        return False
    return msrpm_intercepted(_MapReader(read_phys, c.msrpm_base_pa & ~0xFFF), index, write)


def ioio(c: Vmcb12Cache, port: int, size: int, read_phys: ReadPhys) -> bool:
    """IOIO_PROT plus L1's IOPM: the bit of every port byte the access touches."""
    if not c.intercept_misc1 & INTERCEPT_IOIO_PROT:
        return False
    return iopm_intercepted(_MapReader(read_phys, c.iopm_base_pa & ~0xFFF), port, size)


def l1_wants(c: Vmcb12Cache, code: int, info1: int, msr_index: int,
             read_phys: ReadPhys) -> bool:
    if code < VMEXIT_DR0_READ:
        return cr_access(c, code)
    if code < VMEXIT_EXCP0:
        return dr_access(c, code)
    if code < VMEXIT_INTR:
        return exception(c, code - VMEXIT_EXCP0)
    if code == VMEXIT_MSR:
        return msr(c, msr_index, info1 == 1, read_phys)
    if code == VMEXIT_NPF:
        return bool(c.np_enable)
    if code < VMEXIT_VMRUN + 32:
        return misc(c, code)
    return True


class Merged(NamedTuple):
    """The intercept vectors the CPU enforces while L2 runs (misc as one 64-bit word)."""
    cr_read: int
    cr_write: int
    dr_read: int
    dr_write: int
    exceptions: int
    misc: int


L0_EXCEPTIONS = 0xFFFF_FFFF      # L0 delivers every exception itself (emu/engine/hostvm.py)


def recalc(c: Vmcb12Cache, l0_misc: int) -> Merged:
    """L1's intercepts (vmcb12), L0's own (vmcb01's misc word `l0_misc`, every exception, DR7
    writes), and what the hw_quirks.py workarounds must see:

    * WBINVD when L1 intercepts INVD: Unicorn reports INVD as a WBINVD exit, so the pair is
      watched together and hw_quirks.route tells them apart by opcode;
    * CR0 writes when L1 asks for the selective CR0 write intercept, which Unicorn does not
      implement: hw_quirks decides per write whether bits other than TS and MP change.
    """
    extra_misc = INTERCEPT_WBINVD << 32 if c.intercept_misc1 & INTERCEPT_INVD else 0
    extra_cr_write = 1 if c.intercept_misc1 & INTERCEPT_CR0_SEL_WRITE else 0
    return Merged(c.intercept_cr_read, c.intercept_cr_write | extra_cr_write,
                  c.intercept_dr_read, c.intercept_dr_write | L0_DR_WRITE_INTERCEPTS,
                  L0_EXCEPTIONS,
                  l0_misc | c.intercept_misc1 | (c.intercept_misc2 << 32) | extra_misc)


class _MapReader:
    """Byte-indexable view of a permission map in L1 memory, read on demand."""

    def __init__(self, read_phys: ReadPhys, base: int) -> None:
        self.read_phys = read_phys
        self.base = base

    def __getitem__(self, i: int) -> int:
        return self.read_phys(self.base + i, 1)[0]
