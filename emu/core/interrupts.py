"""Exception and interrupt delivery through the guest's IDT (AMD APM vol. 2, ch. 8).

Unicorn never vectors an event through the IDT; it only reports it. Here an event becomes what
the CPU would do: gate lookup and checks, privilege change with a stack from the TSS (or an IST
stack in long mode), the frame pushed, CS:RIP and RFLAGS loaded. A fault while doing so follows
the APM's double-fault rules (Table 8-7): contributory + contributory or #PF + (contributory or
#PF) gives #DF, and a fault while delivering #DF shuts the processor down.
"""
from __future__ import annotations

from enum import Enum
from typing import Callable, Protocol

from unicorn import Uc
from unicorn.x86_const import UC_X86_REG_RFLAGS, UC_X86_REG_RIP, UC_X86_REG_RSP

from emu.arch.bits import (RFLAGS_AC, RFLAGS_IF, RFLAGS_NT,
                           RFLAGS_RF, RFLAGS_TF, RFLAGS_VM)
from emu.errors import Unsupported
from emu.arch.paging import is_canonical
from emu.engine.hw_switch import (CS, DESC_B, DESC_DPL_SHIFT, DESC_L, DESC_P, DESC_S, GDTR, HF_LMA, IDTR,
                        LDTR, SS, TR, Context, Segment, OFF_CR2)

# Vectors, as the APM names them.
DE, DB, NMI, BP, OF, BR, UD, NM, DF, TS, NP, SS_FAULT, GP, PF, MF, AC, MC, XF = (
    0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 16, 17, 18, 19)
SX = 30                    # security exception
SX_INIT_REDIRECTED = 1     # #SX error code: an INIT redirected by VM_CR.R_INIT (APM 15.29)
VECTOR_NAMES = {DE: "#DE", DB: "#DB", NMI: "NMI", BP: "#BP", OF: "#OF", BR: "#BR", UD: "#UD",
                NM: "#NM", DF: "#DF", TS: "#TS", NP: "#NP", SS_FAULT: "#SS", GP: "#GP", PF: "#PF",
                MF: "#MF", AC: "#AC", MC: "#MC", XF: "#XF", 20: "#VE", 21: "#CP", 29: "#VC", SX: "#SX"}
HAS_ERROR_CODE = frozenset({DF, TS, NP, SS_FAULT, GP, PF, AC, 21, 29, SX})
CONTRIBUTORY = frozenset({DE, TS, NP, SS_FAULT, GP})
# Fault-class exceptions: the instruction restarts, so the RFLAGS image pushed for them has RF=1
# (an instruction breakpoint on it does not fire again after IRET).  #DB is left out (svmemu
# raises it for traps: single-step, data breakpoints), and so are traps and aborts.
FAULT_CLASS = frozenset({DE, BR, UD, NM, TS, NP, SS_FAULT, GP, PF, MF, AC, XF})

GATE_TASK = 0x5
GATE_INT16, GATE_TRAP16 = 0x6, 0x7
GATE_INT, GATE_TRAP = 0xE, 0xF

ERR_EXT = 1
ERR_IDT = 2


class Kind(Enum):
    EXCEPTION = "exception"   # hardware exception: EXT=1 in nested error codes, no DPL check
    SOFTWARE = "software"     # INT n / INT3 / INTO: gate DPL checked against CPL
    EXTERNAL = "external"     # maskable interrupt / NMI


class Event:
    __slots__ = ("vector", "kind", "error_code", "cr2", "icebp", "insn_len")

    def __init__(self, vector: int, kind: Kind, error_code: int | None = None,
                 cr2: int | None = None, icebp: bool = False, insn_len: int = 0) -> None:
        self.vector = vector
        self.kind = kind
        self.error_code = error_code
        self.cr2 = cr2                  # set CR2 before delivery (page faults)
        self.icebp = icebp              # INT1: an instruction's #DB, without the gate DPL
                                        # check; exception intercepts see it as #DB
        self.insn_len = insn_len        # software events: their instruction's length; a fault
                                        # while delivering one reports the instruction itself

    def describe(self) -> str:
        name = VECTOR_NAMES.get(self.vector, f"vector {self.vector:#x}")
        if self.kind is Kind.SOFTWARE:
            name = f"INT {self.vector:#x}" if self.vector not in (BP, OF) else name
        if self.error_code is not None:
            name += f" error {self.error_code:#x}"
        if self.cr2 is not None:
            name += f" cr2 {self.cr2:#x}"
        return name


class Fault(Exception):
    """An exception raised while delivering another one, or by the memory walker."""

    def __init__(self, vector: int, error_code: int | None = None, cr2: int | None = None) -> None:
        super().__init__(VECTOR_NAMES.get(vector, str(vector)))
        self.vector = vector
        self.error_code = error_code
        self.cr2 = cr2


class Shutdown(Exception):
    """Triple fault: the processor enters the shutdown state."""


class LinearMemory(Protocol):
    """Linear-address access with paging checks done as the CPU would for `cpl`."""

    def read_linear(self, va: int, size: int, cpl: int) -> bytes: ...
    def write_linear(self, va: int, data: bytes, cpl: int) -> None: ...


def _u(data: bytes) -> int:
    return int.from_bytes(data, "little")


class Deliverer:
    """Delivers events for one CPU, reading and patching its saved context."""

    def __init__(self, uc: Uc, ctx: Context, mem: LinearMemory) -> None:
        self.uc = uc
        self.ctx = ctx
        self.mem = mem

    # ---- the double-fault state machine ---------------------------------------------------------
    def deliver(self, event: Event, return_rip: int,
                intercept: "Callable[[Event, Event | None], bool] | None" = None,
                observe: "Callable[[str], None] | None" = None) -> Event | None:
        """Deliver `event`, escalating per Table 8-7. Returns the event finally delivered, or None
        when `intercept` took one of the exceptions on the way (a #VMEXIT instead of delivery).
        `observe` hears each step of the chain (the `exc` trace): every delivery attempt, the
        fault it met, the escalation to #DF, the intercept, the triple fault."""
        current = event
        outer: Event | None = None
        cr2 = event.cr2
        for attempt in range(1, 4):
            if (intercept is not None and (current.kind is Kind.EXCEPTION or current.icebp)
                    and intercept(current, outer)):
                if observe is not None:
                    observe(f"attempt {attempt}: {current.describe()} intercepted by the "
                            "hypervisor (#VMEXIT instead of delivery)")
                return None
            try:
                self._deliver_once(current, return_rip, cr2)
                return current
            except Fault as second:
                if current.kind is Kind.SOFTWARE:
                    return_rip -= current.insn_len
                outer = current
                met = Event(second.vector, Kind.EXCEPTION, second.error_code, second.cr2)
                if current.vector == DF and current.kind is Kind.EXCEPTION:
                    if observe is not None:
                        observe(f"attempt {attempt}: #DF faulted with {met.describe()}: "
                                "triple fault")
                    raise Shutdown(f"fault {VECTOR_NAMES.get(second.vector)} while delivering #DF")
                first_bad = current.kind is Kind.EXCEPTION and (
                    current.vector in CONTRIBUTORY or current.vector == PF)
                second_bad = second.vector in CONTRIBUTORY or second.vector == PF
                if first_bad and second_bad and not (current.vector in CONTRIBUTORY
                                                     and second.vector == PF):
                    nxt = Event(DF, Kind.EXCEPTION, 0)
                    why = "both contributory or page faults: double fault"
                else:
                    nxt = met
                    why = "a benign pair: the new one is delivered"
                if observe is not None:
                    observe(f"attempt {attempt}: delivering {current.describe()} raised "
                            f"{met.describe()}; {why} -> {nxt.describe()}")
                current = nxt
                if second.cr2 is not None:
                    cr2 = second.cr2
        raise Shutdown("unbounded fault during event delivery")

    # ---- one attempt ------------------------------------------------------------------------------
    def _deliver_once(self, ev: Event, return_rip: int, cr2: int | None) -> None:
        ctx = self.ctx.save()
        if cr2 is not None:
            ctx.set_u64(OFF_CR2, cr2)
        rflags = self.uc.reg_read(UC_X86_REG_RFLAGS)
        if ev.kind is Kind.EXCEPTION and ev.vector in FAULT_CLASS:
            rflags |= RFLAGS_RF
        rsp = self.uc.reg_read(UC_X86_REG_RSP)
        cr0 = ctx.cr(0)
        if not cr0 & 1:
            new_rip, new_rsp, new_rflags = self._real_mode(ev, return_rip, rsp, rflags)
        elif rflags & RFLAGS_VM:
            raise Unsupported("interrupt delivery in virtual-8086 mode")
        elif ctx.hflags & HF_LMA:
            new_rip, new_rsp, new_rflags = self._long_mode(ev, return_rip, rsp, rflags)
        else:
            new_rip, new_rsp, new_rflags = self._protected_mode(ev, return_rip, rsp, rflags)
        ctx.recompute_hflags()
        ctx.restore()
        self.uc.reg_write(UC_X86_REG_RSP, new_rsp)
        self.uc.reg_write(UC_X86_REG_RFLAGS, new_rflags)
        self.uc.reg_write(UC_X86_REG_RIP, new_rip)

    def _ext(self, ev: Event) -> int:
        return 0 if ev.kind is Kind.SOFTWARE else ERR_EXT

    def _gate(self, ev: Event, entry_size: int) -> tuple[int, int]:
        """Read the IDT entry (low, high qwords) after the limit check."""
        idtr = self.ctx.seg(IDTR)
        off = ev.vector * entry_size
        if off + entry_size - 1 > idtr.limit:
            raise Fault(GP, ev.vector * 8 + ERR_IDT + self._ext(ev))
        raw = _u(self.mem.read_linear(idtr.base + off, entry_size, 0))
        return raw & 0xFFFFFFFFFFFFFFFF, raw >> 64

    def _check_gate(self, ev: Event, lo: int, cpl: int) -> tuple[int, int]:
        gtype = (lo >> 40) & 0xF
        dpl = (lo >> 45) & 3
        err = ev.vector * 8 + ERR_IDT + self._ext(ev)
        if ev.kind is Kind.SOFTWARE and not ev.icebp and dpl < cpl:
            raise Fault(GP, err)
        if not (lo >> 47) & 1:
            raise Fault(NP, err)
        return gtype, err

    def _code_descriptor(self, ev: Event, selector: int, cpl: int) -> Segment:
        ext = self._ext(ev)
        if selector & ~3 == 0:
            raise Fault(GP, ext)
        table = self.ctx.seg(LDTR if selector & 4 else GDTR)
        index = selector & ~7
        if index + 7 > table.limit:
            raise Fault(GP, (selector & ~3) + ext)
        raw = _u(self.mem.read_linear(table.base + index, 8, 0))
        seg = Segment.from_descriptor(selector, raw)
        if not seg.flags & DESC_S or not (seg.flags >> 8) & 0x8 or seg.dpl > cpl:
            raise Fault(GP, (selector & ~3) + ext)
        if not seg.flags & DESC_P:
            raise Fault(NP, (selector & ~3) + ext)
        return seg

    @staticmethod
    def _conforming(seg: Segment) -> bool:
        return bool((seg.flags >> 8) & 0x4)

    def _push(self, sp: int, values: list[int], width: int, cpl: int, base: int = 0,
              mask: int = 0xFFFFFFFFFFFFFFFF) -> int:
        """Push `values` in order; faults become #SS/#PF as the stack access would."""
        data = b"".join(v.to_bytes(width, "little") for v in reversed(values))
        sp = (sp - len(data)) & mask
        self.mem.write_linear((base + sp) & 0xFFFFFFFFFFFFFFFF, data, cpl)
        return sp

    @staticmethod
    def _new_rflags(rflags: int, gtype: int) -> int:
        rflags &= ~(RFLAGS_TF | RFLAGS_NT | RFLAGS_RF | RFLAGS_VM)
        if gtype in (GATE_INT, GATE_INT16):
            rflags &= ~RFLAGS_IF
        return rflags

    # ---- long mode ---------------------------------------------------------------------------------
    def _long_mode(self, ev: Event, rip: int, rsp: int, rflags: int) -> tuple[int, int, int]:
        ctx = self.ctx
        cpl = ctx.cpl
        lo, hi = self._gate(ev, 16)
        gtype, gerr = self._check_gate(ev, lo, cpl)
        if gtype not in (GATE_INT, GATE_TRAP):
            raise Fault(GP, gerr)
        target = (lo & 0xFFFF) | ((lo >> 32) & 0xFFFF0000) | ((hi & 0xFFFFFFFF) << 32)
        selector = (lo >> 16) & 0xFFFF
        ist = (lo >> 32) & 7
        cs = self._code_descriptor(ev, selector, cpl)
        if not cs.flags & DESC_L or cs.flags & DESC_B:
            raise Fault(GP, (selector & ~3) + self._ext(ev))
        new_cpl = cpl if self._conforming(cs) else cs.dpl
        old_ss, old_cs = ctx.seg(SS), ctx.seg(CS)
        if ist or new_cpl < cpl:
            tss = ctx.seg(TR)
            off = 36 + 8 * (ist - 1) if ist else 4 + 8 * new_cpl
            if off + 7 > tss.limit:
                raise Fault(TS, (tss.selector & ~3) + self._ext(ev))
            sp = _u(self.mem.read_linear(tss.base + off, 8, 0))
        else:
            sp = rsp
        if not is_canonical(sp):
            raise Fault(SS_FAULT, self._ext(ev))
        sp &= ~0xF
        frame = [old_ss.selector, rsp, rflags, old_cs.selector, rip]
        if ev.error_code is not None:
            frame.append(ev.error_code)
        sp = self._push(sp, frame, 8, new_cpl)
        if not is_canonical(target):
            raise Fault(GP, self._ext(ev))
        cs.selector = (selector & ~3) | new_cpl
        ctx.set_seg(CS, cs)
        if new_cpl != cpl:
            ctx.set_seg(SS, Segment(new_cpl, 0, 0, new_cpl << DESC_DPL_SHIFT))
        return target, sp, self._new_rflags(rflags, gtype)

    # ---- 32-bit protected mode ---------------------------------------------------------------------
    def _protected_mode(self, ev: Event, eip: int, esp: int, eflags: int) -> tuple[int, int, int]:
        ctx = self.ctx
        cpl = ctx.cpl
        lo, _ = self._gate(ev, 8)
        gtype, gerr = self._check_gate(ev, lo, cpl)
        if gtype == GATE_TASK:
            raise Unsupported("task-gate interrupt delivery")
        if gtype in (GATE_INT16, GATE_TRAP16):
            raise Unsupported("16-bit interrupt gate in protected mode")
        if gtype not in (GATE_INT, GATE_TRAP):
            raise Fault(GP, gerr)
        target = (lo & 0xFFFF) | ((lo >> 32) & 0xFFFF0000)
        selector = (lo >> 16) & 0xFFFF
        cs = self._code_descriptor(ev, selector, cpl)
        new_cpl = cpl if self._conforming(cs) else cs.dpl
        old_ss, old_cs = ctx.seg(SS), ctx.seg(CS)
        frame = [eflags & 0xFFFFFFFF, old_cs.selector, eip & 0xFFFFFFFF]
        if ev.error_code is not None:
            frame.append(ev.error_code)
        if new_cpl < cpl:
            tss = ctx.seg(TR)
            if (tss.flags >> 8) & 0xF not in (0x9, 0xB):
                raise Unsupported("interrupt stack switch through a 16-bit TSS")
            off = 4 + 8 * new_cpl
            if off + 5 > tss.limit:
                raise Fault(TS, (tss.selector & ~3) + self._ext(ev))
            new_esp = _u(self.mem.read_linear(tss.base + off, 4, 0))
            ss_sel = _u(self.mem.read_linear(tss.base + off + 4, 2, 0))
            ss = self._stack_descriptor(ev, ss_sel, new_cpl, tss.selector)
            mask = 0xFFFFFFFF if ss.flags & DESC_B else 0xFFFF
            sp = self._push(new_esp, [old_ss.selector, esp & 0xFFFFFFFF] + frame, 4, new_cpl,
                            ss.base, mask)
            ctx.set_seg(SS, ss)
        else:
            mask = 0xFFFFFFFF if old_ss.flags & DESC_B else 0xFFFF
            sp = self._push(esp, frame, 4, new_cpl, old_ss.base, mask)
            sp = (esp & ~mask) | sp
        if target > cs.limit:
            raise Fault(GP, self._ext(ev))
        cs.selector = (selector & ~3) | new_cpl
        ctx.set_seg(CS, cs)
        return target, sp, self._new_rflags(eflags, gtype)

    def _stack_descriptor(self, ev: Event, selector: int, new_cpl: int, tss_sel: int) -> Segment:
        err = (selector & ~3) + self._ext(ev)
        if selector & ~3 == 0 or selector & 3 != new_cpl:
            raise Fault(TS, err)
        table = self.ctx.seg(LDTR if selector & 4 else GDTR)
        if (selector & ~7) + 7 > table.limit:
            raise Fault(TS, err)
        seg = Segment.from_descriptor(selector, _u(self.mem.read_linear(table.base + (selector & ~7), 8, 0)))
        dtype = (seg.flags >> 8) & 0xF
        if not seg.flags & DESC_S or dtype & 0x8 or not dtype & 0x2 or seg.dpl != new_cpl:
            raise Fault(TS, err)
        if not seg.flags & DESC_P:
            raise Fault(SS_FAULT, err)
        return seg

    # ---- real mode -----------------------------------------------------------------------------------
    def _real_mode(self, ev: Event, ip: int, sp: int, flags: int) -> tuple[int, int, int]:
        ctx = self.ctx
        idtr = ctx.seg(IDTR)
        if ev.vector * 4 + 3 > idtr.limit:
            raise Fault(GP, 0)
        entry = _u(self.mem.read_linear(idtr.base + ev.vector * 4, 4, 0))
        ss, cs = ctx.seg(SS), ctx.seg(CS)
        new_sp = self._push(sp & 0xFFFF, [flags & 0xFFFF, cs.selector, ip & 0xFFFF], 2, 0,
                            ss.base, 0xFFFF)
        seg_sel = entry >> 16
        ctx.set_seg(CS, Segment(seg_sel, seg_sel << 4, cs.limit, cs.flags))
        new_flags = flags & ~(RFLAGS_IF | RFLAGS_TF | RFLAGS_AC | RFLAGS_RF)
        return entry & 0xFFFF, (sp & ~0xFFFF) | new_sp, new_flags
