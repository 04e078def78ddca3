"""VMCB fields in words: intercept vectors as the intercepts' names, flag words as their set
flags, exit codes and event fields decoded (the debugger's `monitor vmcb`).

Every number comes from vmcb.py and bits.py; this module only names the bits they define, so a
field's meaning is written down once.
"""
from __future__ import annotations

from emu.arch import bits, vmcb

# The intercept vectors, bit by bit (APM vol. 2, appendix B, table B-1).
_MISC1 = ("INTR", "NMI", "SMI", "INIT", "VINTR", None, "IDTR_READ", "GDTR_READ", "LDTR_READ",
          "TR_READ", "IDTR_WRITE", "GDTR_WRITE", "LDTR_WRITE", "TR_WRITE", "RDTSC", "RDPMC",
          "PUSHF", "POPF", "CPUID", "RSM", "IRET", "INTN", "INVD", "PAUSE", "HLT", "INVLPG",
          "INVLPGA", "IOIO_PROT", "MSR_PROT", "TASK_SWITCH", "FERR_FREEZE", "SHUTDOWN")
_MISC2 = ("VMRUN", "VMMCALL", "VMLOAD", "VMSAVE", "STGI", "CLGI", "SKINIT", "RDTSCP", "ICEBP",
          "WBINVD", "MONITOR", "MWAIT", "MWAIT_CONDITIONAL", "XSETBV", "RDPRU",
          "EFER_WRITE_TRAP")
_MISC3 = ("INVLPGB", "INVLPGB_ILLEGAL", "INVPCID", "MCOMMIT", "TLBSYNC", "BUS_LOCK", "IDLE_HLT")


def _bit_names(names: tuple[str | None, ...]) -> dict[int, str]:
    """bit -> name, each checked against the constant vmcb.py defines for it."""
    out = {}
    for n, name in enumerate(names):
        if name is not None:
            assert getattr(vmcb, f"INTERCEPT_{name}") == 1 << n, name
            out[n] = name
    return out


INTERCEPT_NAMES: dict[str, dict[int, str]] = {
    "intercept_misc1": _bit_names(_MISC1),
    "intercept_misc2": {**_bit_names(_MISC2),
                        **{vmcb.INTERCEPT_CR_WRITE_TRAP_SHIFT + n: f"CR{n}_WRITE_TRAP"
                           for n in range(16)}},
    "intercept_misc3": _bit_names(_MISC3),
}

EXCEPTION_NAMES = ("#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "CSO", "#TS",
                   "#NP", "#SS", "#GP", "#PF", None, "#MF", "#AC", "#MC", "#XF", None, "#CP",
                   None, None, None, None, None, None, "#HV", "#VC", "#SX", None)


def _flags(prefix: str) -> dict[int, str]:
    """bit -> name for the single-bit constants bits.py defines under `prefix`."""
    out = {}
    for key, value in vars(bits).items():
        if key.startswith(prefix) and isinstance(value, int) and value and not value & (value - 1):
            name = key[len(prefix):]
            if name not in ("FIXED",):
                out[value.bit_length() - 1] = name
    return out


_REGISTER_FLAGS = {"cr0": _flags("CR0_"), "cr4": _flags("CR4_"), "efer": _flags("EFER_"),
                   "rflags": _flags("RFLAGS_")}
_TLB_CONTROL = {vmcb.TLB_CONTROL_DO_NOTHING: "do nothing", vmcb.TLB_CONTROL_FLUSH_ALL: "flush all",
                vmcb.TLB_CONTROL_FLUSH_GUEST: "flush this guest's ASID",
                vmcb.TLB_CONTROL_FLUSH_GUEST_NONGLOBAL: "flush this guest's non-global entries"}
_EVENT_TYPES = {vmcb.EVENTINJ_TYPE_INTR: "external interrupt", vmcb.EVENTINJ_TYPE_NMI: "NMI",
                vmcb.EVENTINJ_TYPE_EXCEPTION: "exception",
                vmcb.EVENTINJ_TYPE_SOFT_INT: "software interrupt"}
_BITFIELDS_OF: dict[str, list[tuple[str, int, int]]] = {}
for _name, _word, _low, _width in vmcb.BITFIELDS:
    _BITFIELDS_OF.setdefault(_word, []).append((_name, _low, _width))


def _set_bits(value: int, names: dict[int, str]) -> str:
    out = [names.get(n, f"bit{n}") for n in range(64) if value >> n & 1]
    return " ".join(out) if out else "none"


def _event(value: int) -> str:
    valid, vector, type_, error = vmcb.eventinj_decode(value)
    if not valid:
        return "none (V=0)"
    kind = _EVENT_TYPES.get(type_, f"type {type_}")
    name = EXCEPTION_NAMES[vector] if type_ == vmcb.EVENTINJ_TYPE_EXCEPTION and vector < 32 else None
    text = f"{kind} vector {vector:#x}" + (f" ({name})" if name else "")
    return text + (f", error code {error:#x}" if error is not None else "")


def describe(name: str, value: int) -> str:
    """The field's value in words, or "" when the number says it all (addresses, counts)."""
    if name in INTERCEPT_NAMES:
        return _set_bits(value, INTERCEPT_NAMES[name])
    if name in ("intercept_cr_read", "intercept_cr_write"):
        return _set_bits(value, {n: f"CR{n}" for n in range(16)})
    if name in ("intercept_dr_read", "intercept_dr_write"):
        return _set_bits(value, {n: f"DR{n}" for n in range(16)})
    if name == "intercept_exceptions":
        return _set_bits(value, {n: e or f"vector{n}" for n, e in enumerate(EXCEPTION_NAMES)})
    if name in _REGISTER_FLAGS:
        if name == "rflags":
            value &= ~bits.RFLAGS_FIXED         # reads as one: says nothing
        return _set_bits(value, _REGISTER_FLAGS[name])
    if name in _BITFIELDS_OF:
        parts = []
        for field, low, width in _BITFIELDS_OF[name]:
            v = value >> low & ((1 << width) - 1)
            if v:
                parts.append(field.upper() if width == 1 else f"{field.upper()}={v:#x}")
        return " ".join(parts) if parts else "none"
    if name == "exitcode":
        return vmcb.exit_name(value)
    if name in ("eventinj", "exitintinfo"):
        return _event(value)
    if name == "tlb_control":
        return _TLB_CONTROL.get(value, "reserved")
    return ""


def field_names() -> list[str]:
    """Every field a user may ask for by name: the cache's, which splits segments into parts."""
    return list(vmcb.read_cache(bytes(vmcb.VMCB_SIZE))._asdict())
