"""Interrupts while L2 runs (AMD APM vol. 2, 15.21 "Interrupt and Local APIC Support").

Physical interrupts come from the machine's APIC (emu/core/irq.py asks the router at each interrupt
point):
  * with V_INTR_MASKING=1 the host's RFLAGS.IF at VMRUN (HIF) masks them, not L2's IF, and
    L2's CR8 reaches V_TPR only (Unicorn does the CR8 part in C once HF2_VINTR is set);
    with V_INTR_MASKING=0 L2's own IF does, and L2's CR8 is the APIC's TPR (L0 intercepts it);
  * if vmcb12 intercepts INTR, the interrupt causes #VMEXIT(INTR) and stays pending in the APIC
    (GIF is then 0 until L1's STGI, after which L1 takes it through its IDT); otherwise it is
    delivered through L2's IDT.
NMIs (an APIC self-NMI) exit with #VMEXIT(NMI) when vmcb12 intercepts NMI, else go through L2's
IDT; GIF=0 holds them too.
Virtual interrupts (V_IRQ set in vmcb12 at VMRUN) are taken when GIF=1, L2's IF=1, no interrupt
shadow, and V_IGN_TPR=1 or V_INTR_PRIO > V_TPR: with the VINTR intercept as #VMEXIT(VINTR) (V_IRQ
stays set), otherwise by delivering V_INTR_VECTOR through L2's IDT and clearing V_IRQ.
#VMEXIT writes V_IRQ, V_TPR and the interrupt shadow back into vmcb12.

NMI virtualization (APM vol. 2, 15.21.10; CPUID 8000_000A EDX bit 25), with V_NMI_ENABLE set in
vmcb12 (VMRUN refuses it without the NMI intercept, checks.py): V_NMI is a virtual NMI pending
for L2 and V_NMI_MASK L2's NMI blocking. A pending V_NMI is taken when V_NMI_MASK is clear and
GIF (V_GIF with vGIF) is 1, whatever L2's IF: V_NMI clears, V_NMI_MASK sets and vector 2 goes
through L2's IDT. L2's IRET clears V_NMI_MASK: while it is set L0 intercepts IRET (unless L1
does, whose #VMEXIT then comes first), runs it alone and looks again. #VMEXIT writes both back.
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from unicorn.x86_const import UC_X86_REG_RFLAGS, UC_X86_REG_RIP

from emu.core.extension import WINDOW_NONE, WINDOW_TAKEN, WINDOW_WANTED
from emu.engine.hw_switch import (HF2_VINTR, HF_INHIBIT_IRQ, OFF_HFLAGS, OFF_HFLAGS2,
                                  OFF_INTERCEPT, OFF_V_TPR, Context)
from emu.arch.bits import RFLAGS_IF
from emu.core.cpu_models import FEATURES
from emu.core.interrupts import NMI, Event, Kind

from emu.arch.vmcb import (BITFIELDS, OFFSETS, VMEXIT_INIT, VMEXIT_INTR, VMEXIT_IRET, VMEXIT_NMI,
                           VMEXIT_SMI, VMEXIT_VINTR, Vmcb, Vmcb12Cache, intercept_misc_bit)
from svm_ext import reflect

if TYPE_CHECKING:
    from .vcpu import Vcpu

_Q = struct.Struct("<Q")
_OFF_VINTR, _OFF_INT_STATE = OFFSETS["vintr"], OFFSETS["int_state"]
_BITS = {name: (shift, width) for name, _, shift, width in BITFIELDS}
V_TPR_MASK = (1 << _BITS["v_tpr"][1]) - 1
V_IRQ_BIT = 1 << _BITS["v_irq"][0]
V_INTR_MASKING_BIT = 1 << _BITS["v_intr_masking"][0]
INTERRUPT_SHADOW = 1 << _BITS["interrupt_shadow"][0]
V_NMI_BIT = 1 << _BITS["v_nmi"][0]
V_NMI_MASK_BIT = 1 << _BITS["v_nmi_mask"][0]
V_NMI_ENABLE_BIT = 1 << _BITS["v_nmi_enable"][0]
FEATURE_VNMI = FEATURES["vnmi"][3]
FEATURE_VGIF = FEATURES["vgif"][3]
_IRET_INTERCEPT = intercept_misc_bit(VMEXIT_IRET)


def vnmi_enabled(ext: "Vcpu", c: Vmcb12Cache) -> bool:
    """V_NMI_ENABLE counts only on a CPU that reports vNMI (else the bit is ignored)."""
    return bool(c.vintr & V_NMI_ENABLE_BIT) and bool(ext.svm_features & FEATURE_VNMI)


def on_vmrun(ext: "Vcpu", c: Vmcb12Cache) -> None:
    """VMRUN step 6: take V_IRQ/V_TPR from vmcb12; let the machine look for interrupts (GIF
    is now 1, and a pending one may exit at once)."""
    st, m = ext.state, ext.machine
    vintr = c.vintr                    # one word: this runs on every VMRUN
    st.v_irq = bool(vintr & V_IRQ_BIT)
    st.v_tpr = vintr & 0xF
    shadow = c.int_state & INTERRUPT_SHADOW
    if vintr & V_INTR_MASKING_BIT or shadow:
        ctx = m.ctx.save()
        if vintr & V_INTR_MASKING_BIT:
            ctx.set_u32(OFF_HFLAGS2, ctx.u32(OFF_HFLAGS2) | HF2_VINTR)
            ctx.view[OFF_V_TPR] = st.v_tpr
        if shadow:
            # vmcb12's interrupt shadow holds off interrupts, virtual ones too, for L2's first
            # instruction (APM vol. 2, 15.21.5); the world switch entered it cleared.
            ctx.set_u32(OFF_HFLAGS, ctx.hflags | HF_INHIBIT_IRQ)
        ctx.restore()
    if not vintr & V_INTR_MASKING_BIT:
        m.claim_cr8()          # L2's CR8 is the physical TPR (an L1 intercept still wins)
    st.vnmi = vnmi_enabled(ext, c)
    if st.vnmi:
        st.v_nmi = bool(vintr & V_NMI_BIT)
        st.v_nmi_mask = bool(vintr & V_NMI_MASK_BIT)
        if st.v_nmi_mask:
            _watch_iret(ext)
    m.interrupt_check(virtual=st.v_irq or (st.vnmi and st.v_nmi))


def _watch_iret(ext: "Vcpu") -> None:
    """V_NMI_MASK is set: L0 intercepts L2's IRET, which clears it (on_iret)."""
    ctx = ext.machine.ctx.save()
    ctx.set_u64(OFF_INTERCEPT, ctx.u64(OFF_INTERCEPT) | _IRET_INTERCEPT)
    ctx.restore()


def on_iret(ext: "Vcpu", c: Vmcb12Cache) -> None:
    """An L2 IRET reached L0 and L1 does not intercept it: it ends the virtual NMI's blocking.
    The machine then runs the IRET alone with the intercept lifted (Machine._exit_iret), and the
    interrupt point after it takes a V_NMI still pending."""
    st = ext.state
    if st.vnmi and st.v_nmi_mask:
        st.v_nmi_mask = False
        if st.v_nmi:
            ext.machine.interrupt_check(virtual=True)


def store(ext: "Vcpu", ctx: Context, vm: Vmcb) -> None:
    """#VMEXIT: V_IRQ still pending, V_TPR as L2 left it, and the interrupt shadow."""
    st = ext.state
    c = st.vmcb12
    if c is not None and c.vintr & V_INTR_MASKING_BIT:
        st.v_tpr = ctx.view[OFF_V_TPR] & 0xF
    # On the world-switch path: two packed words rather than three read-modify-write properties.
    buf, base = vm.location
    vintr = _Q.unpack_from(buf, base + _OFF_VINTR)[0] & ~(V_TPR_MASK | V_IRQ_BIT)
    if st.vnmi:
        vintr = (vintr & ~(V_NMI_BIT | V_NMI_MASK_BIT) | (V_NMI_BIT if st.v_nmi else 0)
                 | (V_NMI_MASK_BIT if st.v_nmi_mask else 0))
    _Q.pack_into(buf, base + _OFF_VINTR, vintr | st.v_tpr | (V_IRQ_BIT if st.v_irq else 0))
    _Q.pack_into(buf, base + _OFF_INT_STATE,
                 INTERRUPT_SHADOW if ctx.hflags & HF_INHIBIT_IRQ else 0)


def physical_if(ext: "Vcpu") -> bool | None:
    st = ext.state
    c = st.vmcb12
    if st.in_l2 and c is not None and c.v_intr_masking:
        return bool(st.l1_rflags & RFLAGS_IF)
    return None


def on_interrupt(ext: "Vcpu", vector: int) -> bool:
    return _exit_if_intercepted(ext, VMEXIT_INTR)


def on_nmi(ext: "Vcpu") -> bool:
    return _exit_if_intercepted(ext, VMEXIT_NMI)


def on_smi(ext: "Vcpu") -> bool:
    return _exit_if_intercepted(ext, VMEXIT_SMI)


def on_init(ext: "Vcpu") -> bool:
    return _exit_if_intercepted(ext, VMEXIT_INIT)


def _exit_if_intercepted(ext: "Vcpu", code: int) -> bool:
    """INTR, NMI, SMI and INIT while L2 runs: #VMEXIT(code) if L1 intercepts it (the event stays pending)."""
    st = ext.state
    c = st.vmcb12
    if st.in_l2 and c is not None and reflect.exit_handled(c, code):
        reflect.reflect(ext, code)
        return True
    return False


def window(ext: "Vcpu") -> int:
    """A virtual interrupt for L2, if one is pending and can be taken now."""
    st, m = ext.state, ext.machine
    c = st.vmcb12
    if not st.in_l2 or c is None:
        return WINDOW_NONE
    if st.vnmi and st.v_nmi and not st.v_nmi_mask and _virtual_gif(ext, c):
        st.v_nmi, st.v_nmi_mask = False, True
        _watch_iret(ext)
        m.deliver_event(Event(NMI, Kind.EXTERNAL), m.uc.reg_read(UC_X86_REG_RIP))
        return WINDOW_TAKEN
    if not st.v_irq:
        return WINDOW_NONE
    ctx = m.ctx.save()
    v_tpr = ctx.view[OFF_V_TPR] & 0xF if c.v_intr_masking else st.v_tpr
    if not c.v_ign_tpr and c.v_intr_prio <= v_tpr:
        return WINDOW_NONE
    if not _virtual_gif(ext, c):
        return WINDOW_NONE      # V_GIF=0 holds virtual interrupts (APM vol. 2, 15.33); STGI looks again
    if not m.uc.reg_read(UC_X86_REG_RFLAGS) & RFLAGS_IF or ctx.hflags & HF_INHIBIT_IRQ:
        return WINDOW_WANTED
    if reflect.exit_handled(c, VMEXIT_VINTR):
        reflect.reflect(ext, VMEXIT_VINTR)
        return WINDOW_TAKEN
    st.v_irq = False
    m.deliver_event(Event(c.v_intr_vector, Kind.EXTERNAL), m.uc.reg_read(UC_X86_REG_RIP))
    return WINDOW_TAKEN


def vgif_enabled(ext: "Vcpu", c: Vmcb12Cache) -> bool:
    """V_GIF_ENABLE counts only on a CPU that reports vGIF (else the bit is ignored)."""
    return bool(c.v_gif_enable) and bool(ext.svm_features & FEATURE_VGIF)


def virtual_event_pending(ext: "Vcpu") -> bool:
    """A V_IRQ or a V_NMI waits for L2 (what STGI and the window look for)."""
    st = ext.state
    return st.in_l2 and (st.v_irq or (st.vnmi and st.v_nmi))


def _virtual_gif(ext: "Vcpu", c: Vmcb12Cache) -> bool:
    """GIF as L2's virtual interrupts see it: V_GIF when vGIF is on, else 1 (L2 runs)."""
    return (not vgif_enabled(ext, c)
            or bool(Vmcb(ext.machine.mem.view, ext.state.vmcb12_pa).v_gif))
