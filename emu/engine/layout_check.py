"""The start-up proof of every offset svmemu pins in Unicorn's CPU state (emu/engine/hw_switch.py).

Each offset is found from the outside: a value goes in through Unicorn's public API (reg_write,
msr_write, a VMRUN executed by the CPU itself) and must come out of the saved-context blob, or the
live CPU state, at the pinned place. The probe runs on scratch engines, so a machine's own state
is never touched. A build with another layout is refused before any guest runs, with the fields
that moved named.

A passed probe is remembered in svmemu's cache under a key made of the library file (device,
inode, size, modification time), every pinned value and this file's text: the same library
proven against the same offsets by the same probe needs no second proof. Making and closing
the scratch engines was ~4 ms of every start.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import unicorn
from unicorn import UC_ARCH_X86, UC_HOOK_INTR, UC_MODE_64, Uc, UcError
from unicorn import x86_const as X

from emu.arch.bits import (CR0_ET, CR0_PE, CR0_PG, CR0_TS, CR4_OSFXSR, CR4_OSXSAVE, CR4_PAE,
                           CR4_PKE, CR4_PKS, PTE_P, PTE_PKEY_SHIFT, PTE_PS, PTE_RW, DR6_RESET, DR7_RESET, EFER_NXE, EFER_SVME,
                           PF_ID, PF_U)
from emu.arch.msrs import (MSR_CSTAR, MSR_EFER, MSR_KERNEL_GS_BASE, MSR_LSTAR, MSR_SFMASK,
                           MSR_STAR, MSR_SYSENTER_CS, MSR_SYSENTER_EIP, MSR_SYSENTER_ESP,
                           MSR_VM_HSAVE_PA)
from emu.arch.vmcb import (VMCB_SIZE, VMEXIT_CPUID, VMEXIT_NPF, VMEXIT_VMMCALL, VMEXIT_VMRUN, Segment,
                           Vmcb, intercept_misc_bit)
from emu.engine import binding
from emu.engine.unicorn_build import build as engine_build
from emu.engine.unicorn_build import loader as engine_loader
from emu.engine import hw_switch as H

_GPRS = (X.UC_X86_REG_RAX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX, X.UC_X86_REG_RBX, X.UC_X86_REG_RSP,
         X.UC_X86_REG_RBP, X.UC_X86_REG_RSI, X.UC_X86_REG_RDI, X.UC_X86_REG_R8, X.UC_X86_REG_R9,
         X.UC_X86_REG_R10, X.UC_X86_REG_R11, X.UC_X86_REG_R12, X.UC_X86_REG_R13, X.UC_X86_REG_R14,
         X.UC_X86_REG_R15)
_DRS = (X.UC_X86_REG_DR0, X.UC_X86_REG_DR1, X.UC_X86_REG_DR2, X.UC_X86_REG_DR3, None, None,
        X.UC_X86_REG_DR6, X.UC_X86_REG_DR7)
_DATA_SEGS = ((H.ES, X.UC_X86_REG_ES), (H.SS, X.UC_X86_REG_SS), (H.DS, X.UC_X86_REG_DS),
              (H.FS, X.UC_X86_REG_FS), (H.GS, X.UC_X86_REG_GS))

# The syscall MSRs VMLOAD/VMSAVE move, where hw_switch pins them.
_SYSCALL_MSRS = ((MSR_SYSENTER_CS, "OFF_SYSENTER_CS"), (MSR_SYSENTER_ESP, "OFF_SYSENTER_ESP"),
                 (MSR_SYSENTER_EIP, "OFF_SYSENTER_EIP"), (MSR_STAR, "OFF_STAR"),
                 (MSR_LSTAR, "OFF_LSTAR"), (MSR_CSTAR, "OFF_CSTAR"), (MSR_SFMASK, "OFF_FMASK"),
                 (MSR_KERNEL_GS_BASE, "OFF_KERNEL_GS_BASE"))

# Scratch physical layout of the probe (all inside one 64 KiB mapping).
_GDT, _HOST_CODE, _HSAVE, _VMCB, _NCR3, _GUEST_RIP = 0x1000, 0x2000, 0x3000, 0x4000, 0x5000, 0x8000
_DATA_BASE = 0x10_0000           # segment i of the GDT has base _DATA_BASE * (i + 1)
# Distinct values for the intercept words, so a field read from its neighbour's place shows.
_CR_READ, _CR_WRITE, _DR_READ, _DR_WRITE = 0x0111, 0x0122, 0x0044, 0x0088
_EXCEPTIONS = 0x0004_1002
_V_TPR = 9
_PKRU = 0x0C04_0010

_proven = False


def self_check() -> None:
    """Refuse to run on anything but the unicorn build whose layout the offsets describe."""
    global _proven
    if _proven:
        return
    if unicorn.__version__ != H.PINNED_UNICORN:
        raise H.UnsupportedUnicorn(
            f"svmemu needs unicorn=={H.PINNED_UNICORN} (found {unicorn.__version__}): "
            "its saved-context layout is part of our hardware model")
    proof = proof_path()
    if proof is not None and proof.exists():
        _proven = True
        return
    wrong = mismatches()
    if wrong:
        raise H.UnsupportedUnicorn("unicorn's CPU state layout differs from the pinned "
                                   f"{H.PINNED_UNICORN} layout: " + "; ".join(wrong))
    _proven = True
    if proof is not None:
        try:
            proof.parent.mkdir(parents=True, exist_ok=True)
            proof.touch()
        except OSError:          # a read-only cache: prove again next time
            pass


def pinned_values() -> list[tuple[str, int]]:
    """Every value the probe proves, by name."""
    names = sorted(n for n in dir(H) if n.startswith("OFF_")) + ["CONTEXT_DATA_OFF", "SEG_SIZE"]
    return [(n, getattr(H, n)) for n in names]


def proof_path() -> Path | None:
    """Where a passed probe of the loaded library is remembered (None: no library file)."""
    lib = binding.library_path()
    try:
        st = os.stat(lib) if lib else None
        probe = Path(__file__).read_bytes()
    except OSError:
        return None
    if st is None:
        return None
    h = engine_build.sha256()
    h.update(repr((os.path.realpath(lib), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
                   H.PINNED_UNICORN, pinned_values(), engine_loader.has_fix("insn-counter")))
             .encode())
    h.update(probe)
    return engine_build.cache_root() / "layout-proofs" / h.hexdigest()[:32]


class _Probe:
    def __init__(self) -> None:
        self.wrong: list[str] = []

    def expect(self, what: str, got: int, want: int) -> None:
        if got != want:
            self.wrong.append(f"{what}: read {got:#x}, expected {want:#x}")


def _descriptor(base: int, limit: int, access: int, flags: int) -> bytes:
    return struct.pack("<Q", (limit & 0xFFFF) | ((base & 0xFF_FFFF) << 16) | (access << 40)
                       | (((limit >> 16) & 0xF) << 48) | (flags << 52) | ((base >> 24) << 56))


def _peek(addr: int, fmt: str) -> int | None:
    """Read our own memory without trusting the address: a wrong offset turns a pointer into
    garbage, and /proc/self/mem answers that with an error where a dereference would crash."""
    size = struct.calcsize(fmt)
    try:
        fd = os.open("/proc/self/mem", os.O_RDONLY)
    except OSError:
        return None
    try:
        data = os.pread(fd, size, addr) if 0 < addr < 1 << 63 else b""
    except OSError:
        data = b""
    finally:
        os.close(fd)
    return struct.unpack(fmt, data)[0] if len(data) == size else None


def _cpu_and_env(uc: Uc) -> tuple[int, int]:
    """hw_switch.cpu_and_env, through _peek."""
    cpu = _peek(binding.handle_address(uc) + H.OFF_UC_CPU, "<Q") or 0
    env = (_peek(cpu + H.OFF_CPU_ENV_PTR, "<Q") or 0) if cpu else 0
    return cpu, env


def mismatches() -> list[str]:
    """Every pinned offset whose field is not where the running library keeps it."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.ctl_set_cpu_model(X.UC_CPU_X86_EPYC)
    uc.mem_map(0, 0x10000)
    p = _Probe()
    ctx = H.Context(uc)
    _registers(uc, ctx, p)
    _segments(uc, ctx, p)
    _guest_mode(uc, ctx, p)
    _features(p)
    if engine_loader.has_fix("insn-counter"):
        _insn_counter(p)
    if engine_loader.has_fix("supervisor-pkeys"):
        _pkrs(p)
    return p.wrong


def _features(p: _Probe) -> None:
    """OFF_ENV_FEATURES: the words there are what CPUID returns on a fresh EPYC, and XSETBV
    follows a change to the XSAVE components (a CPU of its own: the probe changes its model)."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.ctl_set_cpu_model(X.UC_CPU_X86_EPYC)
    uc.mem_map(0, 0x10000)
    uc.reg_write(X.UC_X86_REG_CR4, uc.reg_read(X.UC_X86_REG_CR4) | CR4_OSXSAVE)

    def run(code: bytes, rax: int, rcx: int = 0) -> bool:
        uc.mem_write(_HOST_CODE, code)
        uc.reg_write(X.UC_X86_REG_RAX, rax)
        uc.reg_write(X.UC_X86_REG_RCX, rcx)
        uc.reg_write(X.UC_X86_REG_RDX, 0)
        try:
            uc.emu_start(_HOST_CODE, _HOST_CODE + len(code))
        except UcError:
            return False
        return True

    _, env = _cpu_and_env(uc)
    feature = lambda i: _peek(env + H.OFF_ENV_FEATURES + 8 * i, "<Q") if env else None  # noqa: E731
    run(b"\x0f\xa2", 7)                                          # CPUID 7.0
    p.expect("OFF_ENV_FEATURES (FEAT_7_0_EBX)", feature(H.FEAT_7_0_EBX) or 0,
             uc.reg_read(X.UC_X86_REG_RBX))
    p.expect("OFF_ENV_FEATURES (FEAT_7_0_ECX)", feature(H.FEAT_7_0_ECX) or 0,
             uc.reg_read(X.UC_X86_REG_RCX) & 0xFFFFFFFF)
    # Unicorn's CR4 write keeps PKE whatever the features say; WRPKRU then works.
    uc.reg_write(X.UC_X86_REG_CR4, uc.reg_read(X.UC_X86_REG_CR4) | CR4_PKE)
    run(b"\x0f\x01\xef", _PKRU)                                  # WRPKRU
    p.expect("OFF_PKRU", H.Context(uc).save().u32(H.OFF_PKRU), _PKRU)
    run(b"\x0f\xa2", 0xD)                                        # CPUID 0xD.0
    components = uc.reg_read(X.UC_X86_REG_RAX)
    p.expect("OFF_ENV_FEATURES (FEAT_XSAVE_COMP_LO)", feature(H.FEAT_XSAVE_COMP_LO) or 0,
             components)
    if p.wrong or components & 3 != 3:
        return
    H.set_xsave_components(uc, 3)                                  # x87 and SSE only
    p.expect("XSETBV after set_xsave_components (1: #GP for x87|SSE|AVX)",
             int(not run(b"\x0f\x01\xd1", 7)), 1)


def _pkrs(p: _Probe) -> None:
    """OFF_PKRS (svmemu's engine only): with CR4.PKS set, a read of a supervisor page whose
    key has access-disable set in the PKRS at the pinned place faults, and succeeds once that
    PKRS is cleared. One 1 GiB page with key 1 maps the scratch memory."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 0x10000)
    pml4, pdpt, key = _NCR3, _NCR3 + 0x1000, 1
    uc.mem_write(pml4, struct.pack("<Q", pdpt | PTE_P | PTE_RW))
    uc.mem_write(pdpt, struct.pack("<Q", PTE_P | PTE_RW | PTE_PS | key << PTE_PKEY_SHIFT))
    uc.reg_write(X.UC_X86_REG_CR3, pml4)
    uc.reg_write(X.UC_X86_REG_CR4, uc.reg_read(X.UC_X86_REG_CR4) | CR4_PAE | CR4_PKS)
    uc.reg_write(X.UC_X86_REG_CR0, uc.reg_read(X.UC_X86_REG_CR0) | CR0_PE | CR0_PG)
    code = b"\x48\x8b\x04\x25" + struct.pack("<I", _GUEST_RIP)     # MOV RAX, [_GUEST_RIP]
    uc.mem_write(_HOST_CODE, code)
    ctx = H.Context(uc)

    def read_with(pkrs: int) -> bool:
        ctx.save().set_u32(H.OFF_PKRS, pkrs)
        ctx.restore()
        binding.flush_tlb(uc)
        try:
            uc.emu_start(_HOST_CODE, _HOST_CODE + len(code))
        except UcError:
            return False
        return True
    p.expect("OFF_PKRS (1: a read denied by the key's access-disable)",
             int(not read_with(1 << 2 * key)), 1)
    p.expect("OFF_PKRS (1: the read allowed with PKRS clear)", int(read_with(0)), 1)


def _insn_counter(p: _Probe) -> None:
    """OFF_ENV_INSNS / OFF_ENV_INSN_DEADLINE (svmemu's engine only): eight instructions leave
    eight in the count with no deadline set, and a deadline three instructions on stops a run
    of twenty NOPs after exactly three."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 0x10000)
    code = b"\x90" * 5 + b"\x48\xff\xc0" * 3         # 5 x NOP, 3 x INC RAX
    uc.mem_write(_HOST_CODE, code)
    _, env = _cpu_and_env(uc)
    count = lambda: _peek(env + H.OFF_ENV_INSNS, "<Q") if env else None  # noqa: E731
    p.expect("OFF_ENV_INSN_DEADLINE (none at start)",
             _peek(env + H.OFF_ENV_INSN_DEADLINE, "<Q") or 0 if env else 0, (1 << 64) - 1)
    uc.emu_start(_HOST_CODE, _HOST_CODE + len(code))
    p.expect("OFF_ENV_INSNS (after 8 instructions)", count() or 0, 8)
    if p.wrong:
        return
    uc.mem_write(_HOST_CODE, b"\x90" * 20)
    H.struct_pack_into_env(env, H.OFF_ENV_INSN_DEADLINE, 8 + 3)
    uc.emu_start(_HOST_CODE, _HOST_CODE + 20)
    H.struct_pack_into_env(env, H.OFF_ENV_INSN_DEADLINE, (1 << 64) - 1)
    p.expect("OFF_ENV_INSN_DEADLINE (a run stops at it)", count() or 0, 11)
    p.expect("OFF_ENV_INSN_DEADLINE (RIP where the run stopped)",
             uc.reg_read(X.UC_X86_REG_RIP), _HOST_CODE + 3)


def _registers(uc: Uc, ctx: H.Context, p: _Probe) -> None:
    """General registers, RIP, RFLAGS, control and debug registers, EFER, VM_HSAVE_PA and the
    hidden flags CR0.TS and CR4.OSFXSR feed."""
    for i, reg in enumerate(_GPRS):
        uc.reg_write(reg, 0x5EED_0000_0000 + i)
    uc.reg_write(X.UC_X86_REG_RIP, 0x1234_5678_9ABC)
    uc.reg_write(X.UC_X86_REG_EFLAGS, 0x0020_0202)        # ID | IF | the fixed bit: no lazy flags
    uc.reg_write(X.UC_X86_REG_CR0, uc.reg_read(X.UC_X86_REG_CR0) | CR0_TS)
    uc.reg_write(X.UC_X86_REG_CR2, 0xDEAD_B000)
    uc.reg_write(X.UC_X86_REG_CR3, 0x7000)
    uc.reg_write(X.UC_X86_REG_CR4, uc.reg_read(X.UC_X86_REG_CR4) | CR4_OSFXSR)
    for i, reg in enumerate(_DRS[:4]):
        uc.reg_write(reg, 0xD000 + i)
    uc.reg_write(X.UC_X86_REG_DR6, DR6_RESET | 1)
    uc.reg_write(X.UC_X86_REG_DR7, DR7_RESET | 0x300)     # LE | GE: enable nothing
    uc.reg_write(X.UC_X86_REG_FPSW, 5 << 11)              # TOP = 5
    uc.reg_write(X.UC_X86_REG_FPTAG, 0xFFF3)              # register 1 valid, the rest empty
    uc.msr_write(MSR_EFER, uc.msr_read(MSR_EFER) | EFER_SVME | EFER_NXE)
    uc.msr_write(MSR_VM_HSAVE_PA, _HSAVE)
    for i, (msr, _) in enumerate(_SYSCALL_MSRS):
        uc.msr_write(msr, 0x5CA1_0000_0000_0000 + 0x1111 * (i + 1))
    ctx.save()
    for i, reg in enumerate(_GPRS):
        p.expect(f"register {i} at OFF_REGS", ctx.u64(H.OFF_REGS + 8 * i), uc.reg_read(reg))
    p.expect("OFF_RAX", ctx.u64(H.OFF_RAX), uc.reg_read(X.UC_X86_REG_RAX))
    p.expect("OFF_RCX", ctx.u64(H.OFF_RCX), uc.reg_read(X.UC_X86_REG_RCX))
    p.expect("OFF_RSP", ctx.u64(H.OFF_RSP), uc.reg_read(X.UC_X86_REG_RSP))
    p.expect("OFF_EIP", ctx.u64(H.OFF_EIP), 0x1234_5678_9ABC)
    p.expect("OFF_EFLAGS", ctx.u64(H.OFF_EFLAGS), 0x0020_0202)
    for n, reg in ((0, X.UC_X86_REG_CR0), (3, X.UC_X86_REG_CR3), (4, X.UC_X86_REG_CR4)):
        p.expect(f"CR{n} at OFF_CR", ctx.cr(n), uc.reg_read(reg))
    p.expect("OFF_CR2", ctx.u64(H.OFF_CR2), 0xDEAD_B000)
    for n, reg in enumerate(_DRS):
        if reg is not None:
            p.expect(f"DR{n} at OFF_DR", ctx.u64(H.OFF_DR + 8 * n), uc.reg_read(reg))
    p.expect("OFF_EFER", ctx.u64(H.OFF_EFER), uc.msr_read(MSR_EFER))
    p.expect("OFF_VM_HSAVE", ctx.u64(H.OFF_VM_HSAVE), _HSAVE)
    for msr, name in _SYSCALL_MSRS:
        off = getattr(H, name)
        width = 4 if name == "OFF_SYSENTER_CS" else 8
        got = int.from_bytes(ctx.view[off:off + width], "little")
        p.expect(f"{name} (MSR {msr:#x})", got, uc.msr_read(msr))
    p.expect("OFF_FPSTT", ctx.u32(H.OFF_FPSTT), 5)
    p.expect("OFF_FPTAGS", int.from_bytes(ctx.view[H.OFF_FPTAGS:H.OFF_FPTAGS + 8], "little"),
             0x0101_0101_0101_0001)
    hf = ctx.u32(H.OFF_HFLAGS)
    p.expect("OFF_HFLAGS (HF_TS, HF_OSFXSR)", hf & (H.HF_TS | H.HF_OSFXSR), H.HF_TS | H.HF_OSFXSR)
    uc.reg_write(X.UC_X86_REG_CR0, uc.reg_read(X.UC_X86_REG_CR0) & ~CR0_TS)
    p.expect("OFF_HFLAGS (HF_TS cleared)", ctx.save().u32(H.OFF_HFLAGS) & H.HF_TS, 0)


def _segments(uc: Uc, ctx: H.Context, p: _Probe) -> None:
    """The segment array: order, stride and the selector/base/limit/flags of each entry, loaded
    from a GDT (ES..GS) and written whole (LDTR, TR, GDTR, IDTR)."""
    access, flags = 0x93, 0xC                               # present writable data, G | D/B
    gdt = bytes(8) + b"".join(_descriptor(_DATA_BASE * (i + 1), 0xFFFFF, access, flags)
                              for i in range(len(_DATA_SEGS)))
    uc.mem_write(_GDT, gdt)
    uc.reg_write(X.UC_X86_REG_GDTR, (0, _GDT, len(gdt) - 1, 0))
    uc.reg_write(X.UC_X86_REG_LDTR, (0x30, 0x2345_6000, 0x77, 0x8200))
    uc.reg_write(X.UC_X86_REG_TR, (0x28, 0x1234_5000, 0x67, 0x8B00))
    uc.reg_write(X.UC_X86_REG_IDTR, (0, 0x4567_8000, 0x97, 0))
    for i, (_, reg) in enumerate(_DATA_SEGS):
        uc.reg_write(reg, 8 * (i + 1))
    ctx.save()
    for i, (index, _) in enumerate(_DATA_SEGS):
        seg = ctx.seg(index)
        name = H.SEG_NAMES[index]
        p.expect(f"{name} selector at OFF_SEGS", seg.selector, 8 * (i + 1))
        if index in (H.FS, H.GS):       # in long mode only FS and GS load their descriptor
            p.expect(f"{name} base at OFF_SEGS", seg.base, _DATA_BASE * (i + 1))
            p.expect(f"{name} limit at OFF_SEGS", seg.limit, 0xFFFF_FFFF)
            p.expect(f"{name} flags at OFF_SEGS", seg.flags, struct.unpack_from("<I", gdt, 8 * (i + 1) + 4)[0])
    for index, want in ((H.LDTR, (0x30, 0x2345_6000, 0x77, 0x8200)),
                        (H.TR, (0x28, 0x1234_5000, 0x67, 0x8B00)),
                        (H.GDTR, (0, _GDT, len(gdt) - 1, 0)), (H.IDTR, (0, 0x4567_8000, 0x97, 0))):
        seg = ctx.seg(index)
        got = (seg.selector, seg.base, seg.limit, seg.flags)
        if got != want:
            p.wrong.append(f"{H.SEG_NAMES[index]} at OFF_SEGS: read {got}, expected {want}")


def _guest_mode(uc: Uc, ctx: H.Context, p: _Probe) -> None:
    """The SVM state VMRUN loads and the CPU state outside the context: VMRUN a guest with
    nested paging over an empty table, and look at everything from the #NPF exit's hook, while
    the CPU is still in guest mode."""
    raw = bytearray(VMCB_SIZE)
    vm = Vmcb(raw)
    vm.intercept_cr_read, vm.intercept_cr_write = _CR_READ, _CR_WRITE
    vm.intercept_dr_read, vm.intercept_dr_write = _DR_READ, _DR_WRITE
    vm.intercept_exceptions = _EXCEPTIONS
    misc = (intercept_misc_bit(VMEXIT_CPUID) | intercept_misc_bit(VMEXIT_VMRUN)
            | intercept_misc_bit(VMEXIT_VMMCALL))
    vm.intercept_misc1, vm.intercept_misc2 = misc & 0xFFFF_FFFF, misc >> 32
    vm.guest_asid = 1
    vm.np_enable = 1
    vm.n_cr3 = _NCR3
    vm.v_tpr, vm.v_intr_masking, vm.v_irq = _V_TPR, 1, 1
    save = vm.save
    save.cs = Segment(0x10, 0xC9B, 0xFFFF_FFFF, 0)
    save.ss = save.ds = save.es = Segment(0x18, 0xC93, 0xFFFF_FFFF, 0)
    save.tr = Segment(0, 0x8B, 0xFFFF, 0)
    save.cr0 = CR0_PE | CR0_ET
    save.dr6, save.dr7 = DR6_RESET, DR7_RESET
    save.rflags = 2
    save.rip = _GUEST_RIP
    uc.mem_write(_VMCB, bytes(raw))
    # mov rax, _VMCB; vmrun; hlt
    uc.mem_write(_HOST_CODE, b"\x48\xB8" + struct.pack("<Q", _VMCB) + b"\x0F\x01\xD8\xF4")
    host_cr4, host_efer = uc.reg_read(X.UC_X86_REG_CR4), uc.msr_read(MSR_EFER)
    seen: list[int] = []

    def on_exit(uc: Uc, intno: int, _data: object) -> None:
        seen.append(intno)
        ctx.save()
        cpu, env = _cpu_and_env(uc)
        p.expect("OFF_EIP (guest)", ctx.u64(H.OFF_EIP), _GUEST_RIP)
        p.expect("OFF_VM_VMCB", ctx.u64(H.OFF_VM_VMCB), _VMCB)
        p.expect("OFF_INTERCEPT", ctx.u64(H.OFF_INTERCEPT), misc)
        crdr = struct.unpack_from("<4H", ctx.view, H.OFF_INTERCEPT_CRDR)
        p.expect("OFF_INTERCEPT_CRDR", crdr[0] | crdr[1] << 16 | crdr[2] << 32 | crdr[3] << 48,
                 _CR_READ | _CR_WRITE << 16 | _DR_READ << 32 | _DR_WRITE << 48)
        p.expect("OFF_INTERCEPT_DR_READ", struct.unpack_from("<H", ctx.view,
                                                              H.OFF_INTERCEPT_DR_READ)[0], _DR_READ)
        p.expect("OFF_INTERCEPT_DR_WRITE", struct.unpack_from("<H", ctx.view,
                                                               H.OFF_INTERCEPT_DR_WRITE)[0], _DR_WRITE)
        p.expect("OFF_INTERCEPT_EXC", ctx.u32(H.OFF_INTERCEPT_EXC), _EXCEPTIONS)
        p.expect("OFF_NESTED_CR3", ctx.u64(H.OFF_NESTED_CR3), _NCR3)
        p.expect("OFF_NESTED_PG_MODE", ctx.u32(H.OFF_NESTED_PG_MODE),
                 H.nested_pg_mode(host_cr4, host_efer))
        p.expect("OFF_V_TPR", ctx.view[H.OFF_V_TPR], _V_TPR)
        p.expect("OFF_HFLAGS (HF_GUEST)", ctx.u32(H.OFF_HFLAGS) & H.HF_GUEST, H.HF_GUEST)
        want2 = H.HF2_GIF | H.HF2_VINTR | H.HF2_NPT
        p.expect("OFF_HFLAGS2 (GIF, VINTR, NPT)", ctx.u32(H.OFF_HFLAGS2) & want2, want2)
        # A fetch through an empty nested table: not present, instruction fetch, and user,
        # since nested walks count as user accesses (APM vol. 2, 15.25.6).
        p.expect("OFF_ERROR_CODE (#NPF EXITINFO1)", ctx.u32(H.OFF_ERROR_CODE), PF_ID | PF_U)
        env_rip = _peek(env + H.OFF_EIP, "<Q") if env else None
        if env_rip != _GUEST_RIP:
            p.wrong.append("OFF_UC_CPU / OFF_CPU_ENV_PTR: the CPU state they lead to does not "
                           "hold the guest's RIP")
            uc.emu_stop()
            return
        request = _peek(cpu + H.OFF_CPU_INTERRUPT_REQUEST, "<I") or 0
        p.expect("OFF_CPU_INTERRUPT_REQUEST (V_IRQ)", request & H.CPU_INTERRUPT_VIRQ,
                 H.CPU_INTERRUPT_VIRQ)
        uc.emu_stop()
        p.expect("OFF_ENV_ICOUNT_DECR_HIGH (after emu_stop)",
                 _peek(env + H.OFF_ENV_ICOUNT_DECR_HIGH, "<H") or 0, 0xFFFF)

    hook = uc.hook_add(UC_HOOK_INTR, on_exit)
    try:
        uc.emu_start(_HOST_CODE, _HOST_CODE + 0x100, count=100)
    finally:
        uc.hook_del(hook)
    if seen[:1] != [0x100 + VMEXIT_NPF]:
        p.wrong.append(f"the probe's VMRUN ended in {[hex(i) for i in seen]}, not #NPF (0x500)")

