"""Replaying recorded exit handling in C (emu/engine/replay.c), so that a repeated world switch never
reaches Python.

The machine's exits arrive through one UC_HOOK_INTR. With the engine installed, that hook is C: it
looks up the *program* recorded for the exit's number and runs it. A program is two parts:

- guards: byte comparisons over the CPU context blob, guest RAM and L0 buffers, and one over the
  engine's `state` word. They must pin down everything the Python handler would read, so that
  the handler would do exactly what it did when the program was recorded;
- effects, after `commit()`: copies (from the context, guest RAM, constants recorded from the
  slow path's result), register reads/writes Unicorn does not keep in the blob (RFLAGS, DR6,
  DR7), a context restore and a TLB flush.

If a guard fails, nothing has changed and the exit goes to the Python hook as before. Programs
are built by whoever owns the semantics (svm_ext/fast_switch.py for nested SVM); this module only
runs them and keeps Python's view in step (`seq`: bumped by each replay, so Python code that
mirrors CPU-side state knows to refresh it before it looks).

The `state` word is how a chain of replays stays exact without Python: a recorder sets it to an
id of the Python-side state it left behind, each program guards on the id it was recorded from and
sets the id it leaves; the machine clears it (to 0, no program matches) whenever Python runs.
"""
from __future__ import annotations

import ctypes
import os
import struct
from typing import Callable

from unicorn import Uc
from unicorn.unicorn_const import UC_HOOK_INTR
from unicorn.x86_const import UC_X86_INS_IN

from emu.arch.vmcb import MSRPM_RANGES
from emu.engine import binding
from emu.engine.unicorn_build import loader
from emu.engine.hw_switch import CONTEXT_DATA_OFF, Context

OPCODES = ("OP_END", "OP_CMP", "OP_EQ64", "OP_COMMIT", "OP_COPY", "OP_SET64", "OP_ADD64", "OP_SAVE",
           "OP_RESTORE", "OP_FLUSH", "OP_REGREAD", "OP_REGWRITE", "OP_RDTSC", "OP_MSRPM")
OP_END, OP_CMP, OP_EQ64, OP_COMMIT, OP_COPY, OP_SET64, OP_ADD64, OP_SAVE, OP_RESTORE, OP_FLUSH, \
    OP_REGREAD, OP_REGWRITE, OP_RDTSC, OP_MSRPM = range(len(OPCODES))
N_INTNO = 0x600
PER_INTNO = 4
MASK64 = (1 << 64) - 1

_OP_SIZE = 32
_INTR_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p)
_IN_CB = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                          ctypes.c_void_p)


class _Op(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint32), ("len", ctypes.c_uint32),
                ("a", ctypes.c_uint64), ("b", ctypes.c_uint64), ("c", ctypes.c_uint64)]


FX_N_OFF = 12
FX_CPUID_SLOTS = 64
FX_MSR_SLOTS = 16
FX_EXIT_MSR = 0x17C
FX_EXIT_RDTSC = 0x16E
FX_EXIT_CPUID = 0x172
FX_EXIT_CR8_READ = 0x108
FX_EXIT_CR8_WRITE = 0x118
FX_EXIT_CR4_WRITE = 0x114
# The order of `_Fast.off`: where the C fast exits find each field in the live CPU state.
FX_OFFSETS = ("rax", "rcx", "rdx", "rbx", "eip", "hflags", "hflags2", "cs_base", "vm_vmcb", "cr4",
              "error_code", "eflags")
assert len(FX_OFFSETS) == FX_N_OFF


class _CpuidSlot(ctypes.Structure):
    _fields_ = [("leaf", ctypes.c_uint32), ("subleaf", ctypes.c_uint32),
                ("regs", ctypes.c_uint32 * 4), ("cr4", ctypes.c_uint64)]


class _MsrSlot(ctypes.Structure):
    _fields_ = [("index", ctypes.c_uint32), ("width", ctypes.c_uint32),
                ("env_off", ctypes.c_uint64)]


class _Fast(ctypes.Structure):
    _fields_ = [("armed", ctypes.c_uint64), ("env", ctypes.c_uint64),
                ("l1_vmcb", ctypes.c_uint64), ("hf_cs64", ctypes.c_uint64),
                ("hf2_npt", ctypes.c_uint64), ("tsc", ctypes.c_uint64),
                ("tsc_step", ctypes.c_uint64), ("off_insns", ctypes.c_uint64),
                ("insns_seen", ctypes.c_uint64), ("ticks", ctypes.c_uint64),
                ("tpr", ctypes.c_uint64), ("cr8_write_ok", ctypes.c_uint64),
                ("cr8", ctypes.c_uint64), ("pm_port", ctypes.c_uint64),
                ("io_cost", ctypes.c_uint64), ("pm_read_ticks", ctypes.c_uint64),
                ("pm_hz", ctypes.c_uint64), ("tsc_hz", ctypes.c_uint64),
                ("pm_reads", ctypes.c_uint64), ("cr4_allowed", ctypes.c_uint64),
                ("cr4_pae", ctypes.c_uint64), ("cr4_pcide", ctypes.c_uint64),
                ("cr4_regid", ctypes.c_uint64), ("reg_write", ctypes.c_void_p),
                ("cr4", ctypes.c_uint64), ("deadline_by_time", ctypes.c_uint64),
                ("rdtsc", ctypes.c_uint64),
                ("cpuid", ctypes.c_uint64), ("off", ctypes.c_uint64 * FX_N_OFF),
                ("vmem_read", ctypes.c_void_p), ("n_cpuid", ctypes.c_uint64),
                ("cpuid_slots", _CpuidSlot * FX_CPUID_SLOTS),
                ("rdmsr", ctypes.c_uint64), ("n_msr", ctypes.c_uint64),
                ("msr_slots", _MsrSlot * FX_MSR_SLOTS), ("eflags_tf", ctypes.c_uint64),
                ("tsc_adjust", ctypes.c_uint64)]


SI_MAX_FIELDS = 16
# The kinds of svm_insn.h's field table: how a VMCB field and its place in the CPU state match.
SI_SEG, SI_Q, SI_Q_CANON, SI_U16_IN_U32 = 1, 2, 3, 4


class _SiField(ctypes.Structure):
    _fields_ = [("kind", ctypes.c_uint32), ("env_off", ctypes.c_uint32),
                ("vmcb_off", ctypes.c_uint64)]


class _SvmInsn(ctypes.Structure):
    """svm_insn.h's struct svm_insn: L1's VMLOAD/VMSAVE/STGI/CLGI in C (svm_ext/fast_insn.py
    owns the meaning)."""
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "enabled", "ram", "ram_size", "vmcb_size", "maxphyaddr", "hf_cs64", "off_eip", "off_rax",
        "off_hflags", "seg_selector", "seg_base", "seg_limit", "seg_flags", "vseg_selector",
        "vseg_attrib", "vseg_limit", "vseg_base", "insn_length", "exit_vmload", "exit_vmsave",
        "exit_stgi", "exit_clgi", "gif", "stgi_ok", "vmload", "vmsave", "stgi", "clgi",
        "n_fields")] + [("fields", _SiField * SI_MAX_FIELDS)]


DL_MAX_MSRS = 1024
DL_LEVELS = 4
DL_EXCEPTION, DL_SOFTWARE, DL_EXTERNAL = 0, 1, 2     # deliver_exception's kinds


class _Deliver(ctypes.Structure):
    """deliver.h's struct deliver: exceptions and interrupts through the IDT in C
    (emu/core/fast_deliver.py owns the meaning)."""
    _fields_ = ([(name, ctypes.c_uint64) for name in (
        "enabled", "ram", "ram_size", "off_regs", "off_eip", "off_hflags", "off_segs",
        "seg_size", "seg_selector", "seg_base", "seg_limit", "seg_flags", "off_cr", "off_efer",
        "off_error_code", "off_hflags2", "hf2_npt", "off_nested_cr3", "off_nested_pg_mode",
        "npt_long", "npt_nxe", "seg_cs", "seg_ss", "seg_ldtr", "seg_tr", "seg_gdtr",
        "seg_idtr", "hf_cpl_mask", "hf_lma", "hf_cs32", "hf_ss32", "hf_cs64", "hf_addseg",
        "desc_s", "desc_p", "desc_l", "desc_b", "desc_dpl_shift", "desc_type_shift",
        "desc_flag_mask", "desc_g", "cr0_pg", "cr0_wp", "cr4_smap", "cr4_la57", "efer_nxe",
        "cr4_pke", "cr4_pks", "off_pkru", "off_pkrs", "pte_pkey_shift", "rflags_if", "rflags_tf", "rflags_nt", "rflags_rf", "rflags_vm", "gate_int",
        "gate_trap", "pte_p", "pte_rw", "pte_us", "pte_ps", "pte_a", "pte_d", "addr_mask",
        "large_levels")]
                + [("rsvd", (ctypes.c_uint64 * DL_LEVELS) * 2),
                   ("rsvd_large", (ctypes.c_uint64 * DL_LEVELS) * 2)]
                + [(name, ctypes.c_uint64) for name in (
        "vectors", "error_code_vectors", "fault_vectors", "exit_excp0", "exit_swint", "gp",
        "rflags_regid")]
                + [(name, ctypes.c_void_p) for name in ("reg_read", "reg_write", "mem_write",
                                                        "code_written")]
                + [(name, ctypes.c_uint64) for name in (
        "pf", "pf_cr2", "off_cr2", "n_msrs")]
                + [("msrs", ctypes.c_uint32 * DL_MAX_MSRS)]
                + [(name, ctypes.c_uint64) for name in (
        "window", "delivered", "msr_gp", "swint")])
# apic_fast.h: timers_pending not looked at; the words C changed (struct apic_fast `dirty`).
APIC_TIMERS_UNKNOWN = 2
APIC_DIRTY_ISR, APIC_DIRTY_IRR, APIC_DIRTY_TMR, APIC_DIRTY_ICR, APIC_DIRTY_DEADLINE = 1, 2, 4, 8, 16


class _ApicFast(ctypes.Structure):
    """apic_fast.h's struct apic_fast: L1's x2APIC writes in C (emu/core/apic_fast.py owns the
    meaning)."""
    _fields_ = ([(name, ctypes.c_uint64) for name in ("enabled", "changed")]
                + [(name, ctypes.c_uint64 * 4) for name in ("isr", "irr", "tmr")]
                + [(name, ctypes.c_uint64) for name in (
                    "icr", "apic_id", "tsc_deadline", "deadline_mode", "lvt_timer", "deadline_ok",
                    "one_cpu", "others", "sent", "sent_vector", "sent_dest", "timers_pending",
                    "wanted_timers", "dirty",
                    "always_stop", "unbounded", "tick_ok",
                    "request_addr", "request_bit", "kick_addr", "intercept_addr", "intercept_bit",
                    "eflags_addr", "if_mask", "hflags_addr", "hflags2_addr", "hf2_gif",
                    "window_armed", "kicked", "deadline_moved", "bound_time", "msr_tpr", "msr_eoi",
                    "msr_icr",
                    "msr_self_ipi", "msr_tsc_deadline", "lvt_masked", "icr_writable",
                    "icr_mode_shift", "icr_dest_logical", "icr_shorthand_shift")]
                + [("emu_stop", ctypes.c_void_p)]
                + [(name, ctypes.c_uint64) for name in (
                    "eoi", "tpr", "icr_sent", "deadline", "exit_hlt", "hlt_ok", "hf_inhibit_irq",
                    "halted", "hlts", "fire_ok", "fired", "take_vector", "taken_now")])


L2_MSRPM_RANGES = len(MSRPM_RANGES)


class L2State(ctypes.Structure):
    """l2_msr.h's struct l2_state: what one replay state fixes of L1's intercepts."""
    _fields_ = [(name, ctypes.c_uint64) for name in ("in_l2", "msr_prot", "msrpm",
                                                     "gp_intercepted")]


class _L2Msr(ctypes.Structure):
    """l2_msr.h's struct l2_msr: L2's unknown-MSR #GP in C (svm_ext/fast_l2_msr.py owns the
    meaning)."""
    _fields_ = ([(name, ctypes.c_uint64) for name in (
        "enabled", "exit_msr", "l2_vmcb", "off_vm_vmcb", "off_rcx", "off_error_code", "off_eip",
        "msrpm_size")]
                + [("ranges", (ctypes.c_uint32 * 3) * L2_MSRPM_RANGES)]
                + [(name, ctypes.c_uint64) for name in ("n_states", "states", "msr_gp")])


class _Engine(ctypes.Structure):
    _fields_ = [("uc", ctypes.c_void_p), ("ctx", ctypes.c_void_p),
                ("save", ctypes.c_void_p), ("restore", ctypes.c_void_p),
                ("reg_read", ctypes.c_void_p), ("reg_write", ctypes.c_void_p),
                ("ctl", ctypes.c_void_p), ("flush_control", ctypes.c_int64),
                ("fallback", ctypes.c_void_p),
                ("enabled", ctypes.c_uint64), ("replays", ctypes.c_uint64),
                ("fallbacks", ctypes.c_uint64), ("seq", ctypes.c_uint64),
                ("state", ctypes.c_uint64), ("fx", _Fast),
                ("programs", (ctypes.c_void_p * PER_INTNO) * N_INTNO),
                ("exit_cost", ctypes.c_uint32 * N_INTNO),
                ("in_fallback", ctypes.c_void_p), ("svm", _SvmInsn), ("dl", _Deliver),
                ("apic", _ApicFast), ("l2", _L2Msr)]


_OP = struct.Struct("<IIQQQ")      # struct op, packed in one call per op (ctypes fields cost more)
assert ctypes.sizeof(_Op) == _OP_SIZE == _OP.size


class ReplayAbiMismatch(RuntimeError):
    """The built engine and this module disagree on a struct layout or an opcode."""


def expected_abi() -> dict[str, int]:
    """What replay.c's replay_abi() must report: this module's ctypes layouts and numbers."""
    abi = {"sizeof(op)": ctypes.sizeof(_Op), "sizeof(engine)": ctypes.sizeof(_Engine),
           "N_INTNO": N_INTNO, "PER_INTNO": PER_INTNO, "sizeof(fast)": ctypes.sizeof(_Fast),
           "sizeof(cpuid_slot)": ctypes.sizeof(_CpuidSlot), "FX_N_OFF": FX_N_OFF,
           "FX_CPUID_SLOTS": FX_CPUID_SLOTS, "FX_EXIT_RDTSC": FX_EXIT_RDTSC,
           "FX_EXIT_CPUID": FX_EXIT_CPUID, "FX_EXIT_CR8_READ": FX_EXIT_CR8_READ,
           "FX_EXIT_CR8_WRITE": FX_EXIT_CR8_WRITE, "FX_EXIT_CR4_WRITE": FX_EXIT_CR4_WRITE,
           "sizeof(svm_insn)": ctypes.sizeof(_SvmInsn), "sizeof(si_field)": ctypes.sizeof(_SiField),
           "sizeof(apic_fast)": ctypes.sizeof(_ApicFast), "APIC_TIMERS_UNKNOWN": APIC_TIMERS_UNKNOWN,
           "APIC_DIRTY_ISR": APIC_DIRTY_ISR, "APIC_DIRTY_IRR": APIC_DIRTY_IRR,
           "APIC_DIRTY_TMR": APIC_DIRTY_TMR, "APIC_DIRTY_ICR": APIC_DIRTY_ICR,
           "APIC_DIRTY_DEADLINE": APIC_DIRTY_DEADLINE,
           "sizeof(msr_slot)": ctypes.sizeof(_MsrSlot), "FX_MSR_SLOTS": FX_MSR_SLOTS,
           "FX_EXIT_MSR": FX_EXIT_MSR, "SI_MAX_FIELDS": SI_MAX_FIELDS, "SI_SEG": SI_SEG, "SI_Q": SI_Q,
           "SI_Q_CANON": SI_Q_CANON, "SI_U16_IN_U32": SI_U16_IN_U32,
           "sizeof(deliver)": ctypes.sizeof(_Deliver), "DL_MAX_MSRS": DL_MAX_MSRS,
           "DL_LEVELS": DL_LEVELS, "DL_EXCEPTION": DL_EXCEPTION, "DL_SOFTWARE": DL_SOFTWARE,
           "DL_EXTERNAL": DL_EXTERNAL, "sizeof(l2_msr)": ctypes.sizeof(_L2Msr),
           "sizeof(l2_state)": ctypes.sizeof(L2State), "L2_MSRPM_RANGES": L2_MSRPM_RANGES}
    for prefix, struct_type in (("op", _Op), ("engine", _Engine), ("fast", _Fast),
                                ("svm_insn", _SvmInsn), ("si_field", _SiField),
                                ("deliver", _Deliver), ("apic_fast", _ApicFast),
                                ("l2_msr", _L2Msr), ("l2_state", L2State)):
        for name, _ in struct_type._fields_:
            abi[f"{prefix}.{name}"] = getattr(struct_type, name).offset
    abi.update({name: value for value, name in enumerate(OPCODES)})
    return abi


def check_abi(lib: ctypes.CDLL) -> None:
    """Refuse a library whose struct layouts or opcodes are not this module's."""
    try:
        lib.replay_abi.restype = ctypes.c_char_p
    except AttributeError:
        raise ReplayAbiMismatch("emu/engine/creplay predates replay_abi(); rebuild it with "
                                "`pip install -e .`") from None
    reported = dict(word.split("=") for word in lib.replay_abi().decode().split())
    got = {name: int(value) for name, value in reported.items()}
    want = expected_abi()
    if got != want:
        diff = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
        raise ReplayAbiMismatch(
            "emu/engine/creplay was built from a replay.c that disagrees with replay.py on "
            + ", ".join(f"{k} (C {got.get(k)}, Python {want.get(k)})" for k in diff)
            + "; rebuild it with `pip install -e .`")


def _load() -> ctypes.CDLL | None:
    if os.environ.get("SVMEMU_REPLAY", "1") == "0":
        return None
    try:
        from emu.engine import creplay  # built by setup.py (pip install)
    except ImportError:
        return None
    lib = ctypes.CDLL(creplay.__file__)
    check_abi(lib)
    lib.replay_intr.restype = None
    return lib


_LIB = _load()


def deliver_function() -> "ctypes._CFuncPtr | None":
    """deliver.c's deliver_exception, for Python callers inside a hook (emu/core/fast_deliver.py)."""
    if _LIB is None:
        return None
    f = _LIB.deliver_exception
    f.restype = ctypes.c_int
    f.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_int,
                  ctypes.c_int, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_int, ctypes.c_uint64]
    return f


def available() -> bool:
    """Whether the C engine was built (pip install builds it; without it svmemu runs the same,
    with every exit in Python)."""
    return _LIB is not None


_MSRPM_RANGES: ctypes.Array | None = None


def _msrpm_ranges_address() -> int:
    """replay.c's struct msrpm_ranges, built once from vmcb.MSRPM_RANGES."""
    global _MSRPM_RANGES
    if _MSRPM_RANGES is None:
        words = [len(MSRPM_RANGES)] + [w for r in MSRPM_RANGES for w in r]
        _MSRPM_RANGES = (ctypes.c_uint32 * len(words))(*words)
    return ctypes.addressof(_MSRPM_RANGES)


class Program:
    """A program under construction. Addresses are absolute host addresses (see Engine.ram)."""

    def __init__(self) -> None:
        self._ops: list[tuple[int, int, int, int, int]] = []
        self._consts = bytearray()             # the bytes ops compare with or copy from ...
        self._const_ops: list[int] = []        # ... for these ops, whose b is an offset in it
        self._committed = False

    def _add(self, code: int, length: int = 0, a: int = 0, b: int = 0, c: int = 0) -> "Program":
        if code in (OP_CMP, OP_EQ64) and self._committed:
            raise ValueError("a guard after commit() could fail after effects")
        self._ops.append((code, length, a & MASK64, b & MASK64, c & MASK64))
        return self

    def _add_const(self, code: int, addr: int, data: bytes) -> "Program":
        self._const_ops.append(len(self._ops))
        self._add(code, len(data), addr, len(self._consts))
        self._consts += data
        return self

    # guards
    def same(self, addr: int, expected: bytes) -> "Program":
        """The len(expected) bytes at addr still equal `expected`."""
        return self._add_const(OP_CMP, addr, expected) if expected else self

    def eq64(self, addr: int, value: int, mask: int = MASK64) -> "Program":
        return self._add(OP_EQ64, 0, addr, value & mask, mask)

    def msrpm(self, msrpm: int, msr: int, write: bool) -> "Program":
        """The MSR in the u32 at `msr` is intercepted, for a read or a write, by the MSR
        permission map at host address `msrpm` (its ranges: emu/arch/vmcb.py MSRPM_RANGES)."""
        return self._add(OP_MSRPM, int(write), msrpm, msr, _msrpm_ranges_address())

    def commit(self) -> "Program":
        self._committed = True
        return self._add(OP_COMMIT)

    # effects
    def copy(self, dst: int, src: int, n: int) -> "Program":
        return self._add(OP_COPY, n, dst, src)

    def write(self, dst: int, data: bytes) -> "Program":
        return self._add_const(OP_COPY, dst, data) if data else self

    def set64(self, dst: int, value: int) -> "Program":
        return self._add(OP_SET64, 0, dst, value)

    def add64(self, dst: int, inc: int) -> "Program":
        return self._add(OP_ADD64, 0, dst, inc)

    def save(self) -> "Program":
        return self._add(OP_SAVE)

    def restore(self) -> "Program":
        return self._add(OP_RESTORE)

    def flush_tlb(self) -> "Program":
        return self._add(OP_FLUSH)

    def reg_read(self, dst: int, reg: int) -> "Program":
        return self._add(OP_REGREAD, 0, dst, reg)

    def reg_write(self, src: int, reg: int) -> "Program":
        return self._add(OP_REGWRITE, 0, src, reg)

    def rdtsc(self, tsc_offset: int, tsc_ratio: int = 0) -> "Program":
        """RDTSC with this TSC offset and TSC ratio (8.32 fixed point; 0: not scaled), on the
        live CPU state (emu/core/fast_exits.py); only after a guard that the fast exits are
        armed."""
        return self._add(OP_RDTSC, 0, 0, tsc_offset, tsc_ratio)

    def build(self) -> "_Built":
        if not self._committed:
            raise ValueError("a program needs commit() between its guards and its effects")
        consts = ctypes.create_string_buffer(bytes(self._consts), len(self._consts) or 1)
        base, ops = ctypes.addressof(consts), list(self._ops)
        for i in self._const_ops:
            code, length, a, b, c = ops[i]
            ops[i] = (code, length, a, base + b, c)
        array = (_Op * (len(ops) + 1))()
        ctypes.memmove(array, b"".join([_OP.pack(*op) for op in ops]), _OP_SIZE * len(ops))
        return _Built(array, consts)


class _Built:
    def __init__(self, ops: ctypes.Array, consts: ctypes.Array) -> None:
        self.ops, self.consts = ops, consts        # kept alive while C may read them
        self.address = ctypes.addressof(ops)


class Engine:
    """The C hook, its programs and the buffers they use. One per machine."""

    def __init__(self, uc: Uc, ctx: Context, ram_addr: int, ram_size: int,
                 python_hook: Callable[[int, int, int], None]) -> None:
        """`python_hook(uc_handle, intno, user)` gets every exit no program took (called
        from C through ctypes: it must not raise)."""
        assert _LIB is not None
        self.uc, self.ram, self.ram_size = uc, ram_addr, ram_size
        e = self._e = _Engine()
        e.uc = binding.handle_address(uc)
        e.ctx = ctx.address
        e.save = binding.c_function("uc_context_save")
        e.restore = binding.c_function("uc_context_restore")
        e.reg_read = binding.c_function("uc_reg_read")
        e.reg_write = binding.c_function("uc_reg_write")
        e.ctl = binding.c_function("uc_ctl")
        e.flush_control = binding.TLB_FLUSH_CONTROL
        self._fallback = _INTR_CB(python_hook)
        e.fallback = ctypes.cast(self._fallback, ctypes.c_void_p).value
        e.enabled = 1
        self._programs: dict[int, list[_Built]] = {}
        self.blob = ctx.address + CONTEXT_DATA_OFF    # the CPU state inside the context
        self._state = ctypes.c_uint64.from_address(ctypes.addressof(e) + _Engine.state.offset)
        # The two words Python checks on every entry (Machine.replay_sync), as direct handles.
        self.seq_word = ctypes.c_uint64.from_address(ctypes.addressof(e) + _Engine.seq.offset)
        self.state_word = self._state
        self.hook = binding.add_hook_raw(uc, UC_HOOK_INTR,
                                         ctypes.cast(_LIB.replay_intr, ctypes.c_void_p).value,
                                         ctypes.addressof(e))

    def hook_deadline(self) -> bool:
        """Let C take the TSC-deadline timer's interrupt where the run reaches its instruction
        deadline (replay.c `replay_deadline`, engine patch 0028), instead of ending emu_start
        there. False: this engine has no such callback (the stop stays)."""
        if not loader.has_fix("deadline-callback"):
            return False
        hook = binding.LIB.uc_svmemu_deadline_hook
        hook.restype = None
        hook(
            ctypes.c_void_p(binding.handle_address(self.uc)),
            ctypes.c_void_p(ctypes.cast(_LIB.replay_deadline, ctypes.c_void_p).value),
            ctypes.c_void_p(ctypes.addressof(self._e)))
        return True

    # the engine's words
    @property
    def enabled(self) -> bool:
        return bool(self._e.enabled)

    @enabled.setter
    def enabled(self, on: bool) -> None:
        self._e.enabled = 1 if on else 0

    @property
    def seq(self) -> int:
        return self._e.seq

    def hook_in(self, python_in: Callable[[int, int, int, int], int]) -> int:
        """Put the C IN hook (replay.c `replay_in`) in front of `python_in(uc_handle, port,
        size, user) -> value`, which gets every read C does not answer (it must not raise).
        Returns the hook handle."""
        self._in_fallback = _IN_CB(python_in)
        self._e.in_fallback = ctypes.cast(self._in_fallback, ctypes.c_void_p).value
        return binding.add_insn_hook_raw(self.uc, ctypes.cast(_LIB.replay_in, ctypes.c_void_p).value,
                                         ctypes.addressof(self._e), UC_X86_INS_IN)

    def set_exit_costs(self, costs: list[int]) -> None:
        """What each exit a program or fast exit handles adds to the TSC, by hook number
        (emu/core/timebase.py holds the table)."""
        assert len(costs) == N_INTNO
        self._e.exit_cost[:] = costs

    @property
    def fast(self) -> "_Fast":
        """The fast-exit words (emu/core/fast_exits.py owns their meaning)."""
        return self._e.fx

    @property
    def svm_insn(self) -> "_SvmInsn":
        """The words of L1's VMLOAD/VMSAVE/STGI/CLGI in C (svm_ext/fast_insn.py owns them)."""
        return self._e.svm

    @property
    def deliver(self) -> "_Deliver":
        """The words of L1's exception delivery in C (emu/core/fast_deliver.py owns them)."""
        return self._e.dl

    @property
    def apic(self) -> "_ApicFast":
        """The words of L1's x2APIC writes in C (emu/core/apic_fast.py owns them)."""
        return self._e.apic

    @property
    def l2_msr(self) -> "_L2Msr":
        """The words of L2's unknown-MSR #GP in C (svm_ext/fast_l2_msr.py owns them)."""
        return self._e.l2

    @property
    def replays(self) -> int:
        return self._e.replays

    @property
    def fallbacks(self) -> int:
        return self._e.fallbacks

    def add_program(self, intno: int, program: Program) -> None:
        """Try `program` first for exit `intno`; the oldest of PER_INTNO is forgotten."""
        kept = self._programs.setdefault(intno, [])
        kept.insert(0, program.build())
        del kept[PER_INTNO:]
        self._publish(intno)

    def _publish(self, intno: int) -> None:
        kept = self._programs.get(intno, [])
        slots = self._e.programs[intno]
        for i in range(PER_INTNO):
            slots[i] = kept[i].address if i < len(kept) else None

    def clear(self) -> None:
        for intno in list(self._programs):
            del self._programs[intno]
            self._publish(intno)
        self.state = 0

    # addresses for programs
    def ram_addr(self, pa: int, n: int) -> int | None:
        """Host address of guest-physical [pa, pa+n), or None outside RAM."""
        return self.ram + pa if 0 <= pa and pa + n <= self.ram_size else None

    @staticmethod
    def buffer(n: int) -> tuple[ctypes.Array, int]:
        """A buffer programs may read and write; the caller keeps the array alive."""
        buf = (ctypes.c_ubyte * n)()
        return buf, ctypes.addressof(buf)

    @property
    def state(self) -> int:
        return self._state.value

    @state.setter
    def state(self, value: int) -> None:
        self._state.value = value

    @property
    def state_addr(self) -> int:
        return ctypes.addressof(self._state)
