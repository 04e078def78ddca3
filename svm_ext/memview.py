"""How L1 and L2 translate and type memory, for memory-type queries and `--trace mem`.

The machine knows one CPU context and one PAT; which world that context belongs to, where the
other world's control registers are kept, which PAT each world's page tables index (hPAT,
gPAT or the one shared PAT, per PAT model) and whether L2 runs under nested paging is
svm_ext's knowledge. It answers through the `Extension.world_paging` entry point.

Which PAT L2 uses (APM vol. 2, 15.25.8 and the seed series): with nested paging on, its own
gPAT under the architectural and swap models, the one PAT under shared; without nested paging
always the one PAT it shares with L1. While L1 runs, "L2" means the L2 that vmcb12 describes,
as it would be entered again (its state as the last #VMEXIT saved it, g_pat for its PAT).
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Optional

from emu.core.extension import WorldPaging
from emu.arch.bits import CR4_SMEP
from emu.engine.hw_switch import OFF_CR, OFF_EFER, nested_pg_mode
from emu.core.memory import GuestMemory
from emu.arch.paging import PagingRegs

from svm_ext import checks
from emu.arch.vmcb import Vmcb12Cache, read_cache

if TYPE_CHECKING:
    from .vcpu import Vcpu

_Q = struct.Struct("<Q")


def _blob_regs(blob: bytes) -> PagingRegs:
    """Paging registers out of a saved CPU context (L1's, kept by VMRUN)."""
    def u64(off: int) -> int:
        return _Q.unpack_from(blob, off)[0]
    return PagingRegs(cr0=u64(OFF_CR), cr3=u64(OFF_CR + 24), cr4=u64(OFF_CR + 32),
                      efer=u64(OFF_EFER))


def _cpu_regs(ext: "Vcpu") -> PagingRegs:
    ext.machine.ctx.save()
    return ext.machine.mem.regs()


def _nested_host(l1: PagingRegs) -> PagingRegs:
    """The paging mode the nested table is walked in: the host's (L1's) at VMRUN (15.25.5).
    The host's CR4.SMEP comes along: a nested walk's accesses are all user accesses, so SMEP
    never refuses one, but with SMEP on a fetch's #NPF reports I/D even when EFER.NXE is 0, as
    the walker does for a native #PF (paging._id_bit) and as AMD parts do (kvm-unit-tests'
    svm_npt_rsvd_bits_test checks every host NX/SMEP combination)."""
    host = GuestMemory.host_regs(nested_pg_mode(l1.cr4, l1.efer))
    return host.replace(cr4=host.cr4 | (l1.cr4 & CR4_SMEP))


def world_paging(ext: "Vcpu", world: str) -> Optional[WorldPaging]:
    st, model = ext.state, ext.pat
    l1 = _blob_regs(st.l1_host) if st.in_l2 else _cpu_regs(ext)
    if world == "L1":
        return WorldPaging("L1", l1, model.hpat(), "hPAT")
    if world != "L2":
        return None
    c: Optional[Vmcb12Cache]
    if st.in_l2:
        c = st.vmcb12
        regs = _cpu_regs(ext)
    elif st.vmcb12 is not None:
        c = read_cache(ext.machine.mem.view, st.vmcb12_pa)
        regs = PagingRegs(cr0=c.cr0, cr3=c.cr3, cr4=c.cr4, efer=c.efer)
    else:
        return None              # L1 has never entered an L2
    assert c is not None
    npt = checks.nested_paging_enabled(c, ext.caps)
    if st.in_l2:
        pat = model.rdmsr()      # exactly what L2's RDMSR(PAT) returns now
        own = model.gpat_valid
    else:
        own = npt and model.checks_g_pat
        pat = c.g_pat if own else model.hpat()
    name = "gPAT" if own else "PAT (shared with L1)"
    if not npt:
        return WorldPaging("L2", regs, pat, name)
    host = _nested_host(l1).replace(gmet=checks.gmet_enabled(c, ext.caps))
    return WorldPaging("L2", regs, pat, name, ncr3=c.n_cr3, host_regs=host,
                       host_pat=model.hpat(), host_cr0=l1.cr0)
