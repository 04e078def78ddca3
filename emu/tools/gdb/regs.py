"""The registers gdb sees, their order, and the target description that tells gdb so.

gdb numbers remote registers in the order of the target description; the amd64 ABI in gdb insists
on the `org.gnu.gdb.i386.core` feature holding the general registers, RIP, EFLAGS, the six
selectors and the x87 stack and control words under exactly those names, so the table below follows
that order. System state no gdb feature names (CR0/2/3/4, EFER, PAT) goes in our own feature,
marked group `system`; gdb's x86 code decides groups itself and ignores that mark, so gdb shows
them as plain registers (`info registers`, `info registers cr3`, `p/x $cr3`).

PAT is the PAT the running world sees (the machine's MSR file: gPAT while L2 runs with nested
paging under the architectural model), EFER likewise; writes go through the MSR file's own checks,
so gdb cannot store a value the guest's WRMSR would have refused.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from unicorn import UcError
from unicorn import x86_const as X

from emu.errors import SvmemuError
from emu.engine.hw_switch import flush_tlb
from emu.core.msr import MSR_EFER, MSR_PAT, GeneralProtection

if TYPE_CHECKING:
    from emu.core.machine import Machine

ARCHITECTURE = "i386:x86-64"


class RegisterError(SvmemuError):
    """gdb asked for a register that does not exist or sent a value the CPU refuses."""


@dataclass(frozen=True)
class Reg:
    name: str
    bits: int
    gdb_type: str
    feature: str
    group: str = ""
    uc_id: int | None = None     # Unicorn register, when Unicorn holds it directly


_CORE = "org.gnu.gdb.i386.core"
_SSE = "org.gnu.gdb.i386.sse"
_SEGMENTS = "org.gnu.gdb.i386.segments"
_SYS = "org.svmemu.x86.sys"

_GPR = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")


def _table() -> tuple[Reg, ...]:
    regs: list[Reg] = []
    for name in _GPR:
        kind = "data_ptr" if name in ("rbp", "rsp") else "int64"
        regs.append(Reg(name, 64, kind, _CORE, "general", getattr(X, f"UC_X86_REG_{name.upper()}")))
    regs.append(Reg("rip", 64, "code_ptr", _CORE, "general", X.UC_X86_REG_RIP))
    regs.append(Reg("eflags", 32, "int32", _CORE, "general", X.UC_X86_REG_EFLAGS))
    for seg in ("cs", "ss", "ds", "es", "fs", "gs"):
        regs.append(Reg(seg, 32, "int32", _CORE, "general", getattr(X, f"UC_X86_REG_{seg.upper()}")))
    for i in range(8):
        regs.append(Reg(f"st{i}", 80, "i387_ext", _CORE, "float", getattr(X, f"UC_X86_REG_FP{i}")))
    regs.append(Reg("fctrl", 32, "int", _CORE, "float", X.UC_X86_REG_FPCW))
    regs.append(Reg("fstat", 32, "int", _CORE, "float", X.UC_X86_REG_FPSW))
    regs.append(Reg("ftag", 32, "int", _CORE, "float", X.UC_X86_REG_FPTAG))
    # The x87 last-instruction and last-operand pointers: Unicorn exposes none of them.
    for name in ("fiseg", "fioff", "foseg", "fooff", "fop"):
        regs.append(Reg(name, 32, "int", _CORE, "float"))
    for i in range(16):
        regs.append(Reg(f"xmm{i}", 128, "vec128", _SSE, "vector", getattr(X, f"UC_X86_REG_XMM{i}")))
    regs.append(Reg("mxcsr", 32, "int", _SSE, "vector", X.UC_X86_REG_MXCSR))
    regs.append(Reg("fs_base", 64, "int64", _SEGMENTS, "system", X.UC_X86_REG_FS_BASE))
    regs.append(Reg("gs_base", 64, "int64", _SEGMENTS, "system", X.UC_X86_REG_GS_BASE))
    for n in (0, 2, 3, 4):
        regs.append(Reg(f"cr{n}", 64, "int64", _SYS, "system", getattr(X, f"UC_X86_REG_CR{n}")))
    regs.append(Reg("efer", 64, "int64", _SYS, "system"))
    regs.append(Reg("pat", 64, "int64", _SYS, "system"))
    return tuple(regs)


REGISTERS: tuple[Reg, ...] = _table()
INDEX: dict[str, int] = {r.name: i for i, r in enumerate(REGISTERS)}
RIP = INDEX["rip"]

# gdb's 128-bit vector type, as its own i386 descriptions define it (a union of lane views).
_VEC128 = """  <vector id="v4f" type="ieee_single" count="4"/>
  <vector id="v2d" type="ieee_double" count="2"/>
  <vector id="v16i8" type="int8" count="16"/>
  <vector id="v8i16" type="int16" count="8"/>
  <vector id="v4i32" type="int32" count="4"/>
  <vector id="v2i64" type="int64" count="2"/>
  <union id="vec128">
    <field name="v4_float" type="v4f"/>
    <field name="v2_double" type="v2d"/>
    <field name="v16_int8" type="v16i8"/>
    <field name="v8_int16" type="v8i16"/>
    <field name="v4_int32" type="v4i32"/>
    <field name="v2_int64" type="v2i64"/>
    <field name="uint128" type="uint128"/>
  </union>
"""


def target_xml() -> str:
    """One self-contained document (no xi:include), so qXfer serves a single annex."""
    out = ['<?xml version="1.0"?>', '<!DOCTYPE target SYSTEM "gdb-target.dtd">', "<target>",
           f"  <architecture>{ARCHITECTURE}</architecture>"]
    feature = None
    for num, r in enumerate(REGISTERS):
        if r.feature != feature:
            if feature is not None:
                out.append("</feature>")
            feature = r.feature
            out.append(f'<feature name="{feature}">')
            if feature == _SSE:
                out.append(_VEC128.rstrip("\n"))
        group = f' group="{r.group}"' if r.group else ""
        out.append(f'  <reg name="{r.name}" bitsize="{r.bits}" type="{r.gdb_type}" '
                   f'regnum="{num}"{group}/>')
    out += ["</feature>", "</target>"]
    return "\n".join(out) + "\n"


class RegisterFile:
    """Reads and writes the table's registers on a stopped machine."""

    def __init__(self, machine: "Machine") -> None:
        self.m = machine
        self._special: dict[str, tuple[Callable[[], int], Callable[[int], None]]] = {
            "efer": (lambda: self.m.ctx.save().efer, lambda v: self._wrmsr(MSR_EFER, v)),
            "pat": (lambda: self.m.msrs.rdmsr(MSR_PAT), lambda v: self._wrmsr(MSR_PAT, v)),
        }

    def read(self, num: int) -> int:
        r = self._reg(num)
        if r.name in self._special:
            return self._special[r.name][0]()
        if r.uc_id is None:
            return 0
        value = self.m.uc.reg_read(r.uc_id)
        if isinstance(value, tuple):          # x87: (mantissa, sign and exponent)
            mantissa, exponent = value
            return (mantissa & ((1 << 64) - 1)) | ((exponent & 0xFFFF) << 64)
        return value & ((1 << r.bits) - 1)

    def write(self, num: int, value: int) -> None:
        r = self._reg(num)
        value &= (1 << r.bits) - 1
        if r.name in self._special:
            self._special[r.name][1](value)
            return
        if r.uc_id is None:
            if value:
                raise RegisterError(f"{r.name} is not modelled (always 0)")
            return
        if r.bits == 80:
            uc_value: object = (value & ((1 << 64) - 1), value >> 64)
        else:
            uc_value = value
        try:
            self.m.uc.reg_write(r.uc_id, uc_value)
        except UcError as e:
            raise RegisterError(f"the CPU refused {r.name} = {value:#x}: {e}")
        if r.name in ("cr0", "cr3", "cr4"):
            flush_tlb(self.m.uc)

    def read_bytes(self, num: int) -> bytes:
        r = self._reg(num)
        return self.read(num).to_bytes(r.bits // 8, "little")

    def write_bytes(self, num: int, data: bytes) -> None:
        r = self._reg(num)
        if len(data) != r.bits // 8:
            raise RegisterError(f"{r.name} takes {r.bits // 8} bytes, not {len(data)}")
        self.write(num, int.from_bytes(data, "little"))

    def _reg(self, num: int) -> Reg:
        if not 0 <= num < len(REGISTERS):
            raise RegisterError(f"no register number {num}")
        return REGISTERS[num]

    def _wrmsr(self, index: int, value: int) -> None:
        try:
            self.m.msrs.wrmsr(index, value)
        except GeneralProtection as e:
            raise RegisterError(str(e))
        flush_tlb(self.m.uc)


def all_bytes(regs: RegisterFile) -> bytes:
    return b"".join(regs.read_bytes(i) for i in range(len(REGISTERS)))


def sizes() -> list[int]:
    return [r.bits // 8 for r in REGISTERS]
