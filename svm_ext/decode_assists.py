"""Decode assists (AMD APM vol. 2, chapter 15, "Decode Assists"; CPUID 8000_000A EDX bit 7):
what the CPU tells the hypervisor about the intercepted instruction so it need not decode it.

* MOV to/from CRn (and the selective CR0 write): EXITINFO1 bit 63 set and bits 3:0 the GPR
  number; CLTS, LMSW and SMSW leave EXITINFO1 0 (bit 63 clear: no register to name).
* MOV to/from DRn: EXITINFO1 bits 3:0 the GPR number.
* INTn: EXITINFO1 the vector (the immediate byte).
* INVLPG: EXITINFO1 the linear address the instruction names.
* #PF and #NPF intercepts: the guest's instruction bytes at CS:RIP, up to 15, in the VMCB (byte
  count at 0xD0, bytes from 0xD1); fewer, or none, where the fetch itself cannot complete.

Without the feature reported (`-decodeassists`) every one of these is 0 and the bytes are not
written, as on a CPU without it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from emu.arch.decode import MAX_INSN_LENGTH, decoder, split_prefixes
from emu.arch.paging import NestedFault
from emu.arch.vmcb import (VMEXIT_CR0_READ, VMEXIT_CR0_SEL_WRITE, VMEXIT_DR0_READ, VMEXIT_EXCP0,
                           VMEXIT_INVLPG, VMEXIT_SWINT, Vmcb)
from emu.core.cpu_models import FEATURES
from emu.engine.hw_switch import OFF_EIP

from svm_ext import npf

if TYPE_CHECKING:
    from .vcpu import Vcpu

FEATURE = FEATURES["decodeassists"][3]
CR_GPR_VALID = 1 << 63           # EXITINFO1: bits 3:0 name the GPR of a MOV CRn
_MOV_CR = (b"\x0F\x20", b"\x0F\x22")
_MOV_DR = (b"\x0F\x21", b"\x0F\x23")
_REX_B = 1


def enabled(ext: "Vcpu") -> bool:
    return bool(ext.svm_features & FEATURE)


def exit_info1(ext: "Vcpu", code: int) -> int:
    """EXITINFO1 for the instruction intercept `code` at L2's RIP (0 where none is defined)."""
    if not enabled(ext):
        return 0
    if VMEXIT_CR0_READ <= code < VMEXIT_DR0_READ or code == VMEXIT_CR0_SEL_WRITE:
        op, rex = _opcode(ext)
        return CR_GPR_VALID | _rm(op, rex) if op[:2] in _MOV_CR and len(op) > 2 else 0
    if VMEXIT_DR0_READ <= code < VMEXIT_EXCP0:
        op, rex = _opcode(ext)
        return _rm(op, rex) if op[:2] in _MOV_DR and len(op) > 2 else 0
    if code == VMEXIT_SWINT:
        op, _ = _opcode(ext)
        return op[1] if op[:1] == b"\xCD" and len(op) > 1 else 0
    if code == VMEXIT_INVLPG:
        return _invlpg_address(ext)
    return 0


def _opcode(ext: "Vcpu") -> tuple[bytes, int]:
    m = ext.machine
    ctx = m.ctx.save()
    p = split_prefixes(m.mem.read_code(ctx.u64(OFF_EIP), MAX_INSN_LENGTH), ctx.mode_bits())
    return p.opcode, p.rex


def _rm(op: bytes, rex: int) -> int:
    """The register operand of MOV CRn/DRn: ModRM.rm, extended by REX.B."""
    return (op[2] & 7) | (8 if rex & _REX_B else 0)


def _invlpg_address(ext: "Vcpu") -> int:
    m = ext.machine
    ctx = m.ctx.save()
    bits = ctx.mode_bits()
    rip = ctx.u64(OFF_EIP)
    insn = next(decoder(bits, detail=True).disasm(m.mem.read_code(rip, MAX_INSN_LENGTH), rip, 1),
                None)
    if insn is None:
        return 0
    address = next(npf.operand_addresses(m, ctx, insn, bits), 0)
    return address & ((1 << 64) - 1 if bits == 64 else 0xFFFFFFFF)


def fetch_bytes(ext: "Vcpu") -> bytes | None:
    """L2's instruction bytes at CS:RIP for a #PF or #NPF exit, read before the world switch;
    None without the feature."""
    if not enabled(ext):
        return None
    m = ext.machine
    try:
        return bytes(m.mem.read_code(m.ctx.save().u64(OFF_EIP), MAX_INSN_LENGTH))
    except NestedFault:           # the fetch itself faults in the nested walk: no bytes
        return b""


def store_bytes(ext: "Vcpu", code: bytes | None) -> None:
    """After the #VMEXIT: the bytes fetch_bytes read go into vmcb12 (count, then the bytes)."""
    if code is None:
        return
    vm = Vmcb(ext.machine.mem.view, ext.state.vmcb12_pa)
    vm.insn_len = len(code)
    vm.insn_bytes = code.ljust(MAX_INSN_LENGTH, b"\0")

