"""The VMCB layout against the APM's appendix B/C numbers, and the two generated accessors (the live
view and the one-unpack cache) against each other."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emu.arch import vmcb as V
from emu.arch.vmcb import Segment, Vmcb, Vmcb12Cache, read_cache

# Offsets typed in again from the APM's tables (absolute, save area at 0x400), independently of
# emu/arch/vmcb.py, so a slip in the one table is caught here.
APM_OFFSETS = {
    "intercept_cr_read": 0x000, "intercept_cr_write": 0x002, "intercept_dr_read": 0x004,
    "intercept_dr_write": 0x006, "intercept_exceptions": 0x008, "intercept_misc1": 0x00C,
    "intercept_misc2": 0x010, "intercept_misc3": 0x014, "pause_filter_threshold": 0x03C,
    "pause_filter_count": 0x03E, "iopm_base_pa": 0x040, "msrpm_base_pa": 0x048,
    "tsc_offset": 0x050, "guest_asid": 0x058, "tlb_control": 0x05C, "vintr": 0x060,
    "int_state": 0x068, "exitcode": 0x070, "exitinfo1": 0x078, "exitinfo2": 0x080,
    "exitintinfo": 0x088, "nested_ctl": 0x090, "avic_apic_bar": 0x098, "ghcb_pa": 0x0A0,
    "eventinj": 0x0A8, "n_cr3": 0x0B0, "virt_ext": 0x0B8, "vmcb_clean": 0x0C0, "nrip": 0x0C8,
    "insn_len": 0x0D0, "insn_bytes": 0x0D1, "avic_backing_page": 0x0E0,
    "avic_logical_table": 0x0F0, "avic_physical_table": 0x0F8, "vmsa_pa": 0x108,
    "es": 0x400, "cs": 0x410, "ss": 0x420, "ds": 0x430, "fs": 0x440, "gs": 0x450,
    "gdtr": 0x460, "ldtr": 0x470, "idtr": 0x480, "tr": 0x490, "vmpl": 0x4CA, "cpl": 0x4CB,
    "efer": 0x4D0, "cr4": 0x548, "cr3": 0x550, "cr0": 0x558, "dr7": 0x560, "dr6": 0x568,
    "rflags": 0x570, "rip": 0x578, "rsp": 0x5D8, "s_cet": 0x5E0, "ssp": 0x5E8,
    "isst_addr": 0x5F0, "rax": 0x5F8, "star": 0x600, "lstar": 0x608, "cstar": 0x610,
    "sfmask": 0x618, "kernel_gs_base": 0x620, "sysenter_cs": 0x628, "sysenter_esp": 0x630,
    "sysenter_eip": 0x638, "cr2": 0x640, "g_pat": 0x668, "dbgctl": 0x670, "br_from": 0x678,
    "br_to": 0x680, "lastexcpfrom": 0x688, "lastexcpto": 0x690, "spec_ctrl": 0x6E0,
}


def test_table_matches_apm() -> None:
    table = {name: off for name, off, _ in V.FIELDS}
    assert table == APM_OFFSETS


def test_exit_codes() -> None:
    assert (V.VMEXIT_CR0_READ, V.VMEXIT_CR0_WRITE, V.VMEXIT_DR0_READ, V.VMEXIT_DR0_WRITE) == (
        0x00, 0x10, 0x20, 0x30)
    assert V.VMEXIT_EXCP0 == 0x40 and V.VMEXIT_INTR == 0x60 and V.VMEXIT_SHUTDOWN == 0x7F
    assert [V.VMEXIT_VMRUN, V.VMEXIT_VMMCALL, V.VMEXIT_VMLOAD, V.VMEXIT_VMSAVE, V.VMEXIT_STGI,
            V.VMEXIT_CLGI, V.VMEXIT_SKINIT, V.VMEXIT_RDTSCP, V.VMEXIT_ICEBP, V.VMEXIT_WBINVD,
            V.VMEXIT_MONITOR, V.VMEXIT_MWAIT, V.VMEXIT_MWAIT_CONDITIONAL, V.VMEXIT_XSETBV,
            V.VMEXIT_RDPRU, V.VMEXIT_EFER_WRITE_TRAP] == list(range(0x80, 0x90))
    assert V.VMEXIT_CR0_WRITE_TRAP == 0x90 and V.VMEXIT_INVLPGB == 0xA0
    assert (V.VMEXIT_NPF, V.VMEXIT_AVIC_INCOMPLETE_IPI, V.VMEXIT_AVIC_NOACCEL,
            V.VMEXIT_VMGEXIT) == (0x400, 0x401, 0x402, 0x403)
    assert V.VMEXIT_INVALID == (-1) & (2**64 - 1)
    assert V.VMEXIT_BUSY == (-2) & (2**64 - 1)
    # Spot checks of the 0x60.. block, where an off-by-one is easy.
    assert (V.VMEXIT_CPUID, V.VMEXIT_HLT, V.VMEXIT_IOIO, V.VMEXIT_MSR) == (0x72, 0x78, 0x7B, 0x7C)


def test_exit_names() -> None:
    assert V.exit_name(0x72) == "CPUID"
    assert V.exit_name(0x4E) == "EXCP14"
    assert V.exit_name(0x13) == "CR3_WRITE"
    assert V.exit_name(0x9F) == "CR15_WRITE_TRAP"
    assert V.exit_name(-1) == "INVALID"
    assert V.exit_name(0x400) == "NPF"
    assert V.exit_name(0x3FF) == "0x3ff"


def test_intercept_bits() -> None:
    assert V.INTERCEPT_VMRUN == 1 and V.INTERCEPT_VMMCALL == 2
    assert V.INTERCEPT_CPUID == 1 << 18 and V.INTERCEPT_HLT == 1 << 24
    assert V.INTERCEPT_IOIO_PROT == 1 << 27 and V.INTERCEPT_MSR_PROT == 1 << 28
    assert V.INTERCEPT_SHUTDOWN == 1 << 31 and V.INTERCEPT_EFER_WRITE_TRAP == 1 << 15


def test_view_reads_what_struct_wrote() -> None:
    buf = bytearray(V.VMCB_SIZE)
    struct.pack_into("<Q", buf, 0x70, 0x7C)
    struct.pack_into("<Q", buf, 0x578, 0xFFFF_8000_0000_1234)
    struct.pack_into("<HHIQ", buf, 0x410, 0x10, 0x29B, 0xFFFF_FFFF, 0)
    vm = Vmcb(buf)
    assert vm.exitcode == 0x7C
    assert vm.save.rip == 0xFFFF_8000_0000_1234
    assert vm.save.cs == Segment(0x10, 0x29B, 0xFFFF_FFFF, 0)
    assert vm.save.cs.attrib & V.SEG_ATTR_L


def test_view_writes_land_at_apm_offsets() -> None:
    buf = bytearray(V.VMCB_SIZE)
    vm = Vmcb(buf)
    vm.save.g_pat = 0x0007_0406_0007_0406
    vm.n_cr3 = 0x1234_5000
    vm.guest_asid = 7
    vm.tlb_control = V.TLB_CONTROL_FLUSH_GUEST
    vm.save.tr = Segment(0x28, 0x8B, 0x67, 0xFFFF_8000_0010_0000)
    assert struct.unpack_from("<Q", buf, 0x668)[0] == 0x0007_0406_0007_0406
    assert struct.unpack_from("<Q", buf, 0xB0)[0] == 0x1234_5000
    assert struct.unpack_from("<IB", buf, 0x58) == (7, 3)
    assert struct.unpack_from("<HHIQ", buf, 0x490) == (0x28, 0x8B, 0x67, 0xFFFF_8000_0010_0000)


def test_view_at_offset_in_larger_buffer() -> None:
    ram = bytearray(0x4000)
    vm = Vmcb(ram, 0x2000)
    vm.save.rax = 0xABCD
    assert struct.unpack_from("<Q", ram, 0x2000 + 0x5F8)[0] == 0xABCD
    assert read_cache(ram, 0x2000).rax == 0xABCD
    assert read_cache(memoryview(ram), 0x2000).rax == 0xABCD


def test_bitfields_do_not_disturb_neighbours() -> None:
    buf = bytearray(V.VMCB_SIZE)
    vm = Vmcb(buf)
    vm.vintr = 0xFFFF_FFFF_FFFF_FFFF
    vm.v_intr_vector = 0x21
    vm.v_irq = 0
    vm.v_tpr = 0x5
    assert vm.vintr == (0xFFFF_FFFF_FFFF_FFFF & ~(0xFF << 32) & ~(1 << 8) & ~0xFF) | (0x21 << 32) | 5
    assert (vm.v_intr_vector, vm.v_irq, vm.v_tpr, vm.v_gif_enable) == (0x21, 0, 5, 1)
    vm.np_enable = 1
    vm.sev_enable = 0
    assert vm.nested_ctl == 1
    vm.interrupt_shadow = 1
    assert vm.int_state == 1
    vm.vmload_vmsave_virtualization_enable = 1
    assert vm.virt_ext == 2
    c = read_cache(buf)
    assert (c.v_intr_vector, c.v_irq, c.v_tpr, c.np_enable, c.interrupt_shadow) == (0x21, 0, 5, 1, 1)
    assert c.vmload_vmsave_virtualization_enable == 1 and c.lbr_virtualization_enable == 0


def test_vintr_bit_positions() -> None:
    bits = {name: (word, shift, width) for name, word, shift, width in V.BITFIELDS}
    assert bits["v_irq"] == ("vintr", 8, 1)
    assert bits["v_gif"] == ("vintr", 9, 1)
    assert bits["v_intr_prio"] == ("vintr", 16, 4)
    assert bits["v_ign_tpr"] == ("vintr", 20, 1)
    assert bits["v_intr_masking"] == ("vintr", 24, 1)
    assert bits["v_gif_enable"] == ("vintr", 25, 1)
    assert bits["v_intr_vector"] == ("vintr", 32, 8)
    assert bits["np_enable"] == ("nested_ctl", 0, 1)
    assert bits["sev_enable"] == ("nested_ctl", 1, 1)
    assert bits["sev_es_enable"] == ("nested_ctl", 2, 1)


class _SliceOnly:
    """A buffer with no buffer protocol: only slice reads and writes."""

    def __init__(self, size: int) -> None:
        self.data = bytearray(size)

    def __getitem__(self, key: slice) -> bytes:
        return bytes(self.data[key])

    def __setitem__(self, key: slice, value: bytes) -> None:
        self.data[key] = value


def test_view_and_cache_on_slice_only_object() -> None:
    obj = _SliceOnly(V.VMCB_SIZE)
    vm = Vmcb(obj)
    vm.exitinfo2 = 0xDEAD_BEEF
    vm.save.cr3 = 0x5000
    vm.v_irq = 1
    assert struct.unpack_from("<Q", obj.data, 0x80)[0] == 0xDEAD_BEEF
    c = read_cache(obj)
    assert (c.exitinfo2, c.cr3, c.v_irq) == (0xDEAD_BEEF, 0x5000, 1)
    vm.clear()
    assert obj.data == bytearray(V.VMCB_SIZE)


def test_clear() -> None:
    buf = bytearray(b"\xff" * V.VMCB_SIZE)
    Vmcb(buf).clear()
    assert buf == bytearray(V.VMCB_SIZE)


def test_cache_segments_and_flat_names() -> None:
    c = Vmcb12Cache.zero()._replace(ss_selector=0x18, ss_attrib=0x93, ss_limit=0xFFFFF, ss_base=7)
    assert c.ss == Segment(0x18, 0x93, 0xFFFFF, 7)
    assert c.cs == Segment(0, 0, 0, 0)


def test_cache_round_trip_bytes() -> None:
    c = Vmcb12Cache.zero()._replace(rip=0x1000, exitcode=V.VMEXIT_INVALID,
                                    insn_bytes=b"\x0f\x01\xd9" + bytes(12))
    image = c.to_bytes()
    assert len(image) == V.VMCB_SIZE
    assert read_cache(image) == c
    buf = bytearray(V.VMCB_SIZE)
    c.pack_into(buf)
    assert bytes(buf) == image


def test_cache_is_one_struct() -> None:
    # The VMRUN path must read the VMCB with one unpack; the Struct spans the control area and the
    # save area through SPEC_CTRL.
    assert V.CACHE_STRUCT.size == 0x6E8
    assert len(V.CACHE_STRUCT.unpack(bytes(V.CACHE_STRUCT.size))) == len(Vmcb12Cache._fields)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, (1 << 64) - 1))
def test_cache_agrees_with_view(seed: int) -> None:
    data = random.Random(seed).randbytes(V.VMCB_SIZE)
    buf = bytearray(data)
    c = read_cache(buf)
    vm = Vmcb(buf)
    for name, off, kind in V.FIELDS:
        view = vm.save if off >= V.SAVE_AREA else vm
        assert getattr(view, name) == getattr(c, name), name
    for name, word, _, _ in V.BITFIELDS:
        assert getattr(vm, name) == getattr(c, name), name
    # Writing the cache back reproduces every byte the table covers.
    out = bytearray(data)
    c.pack_into(out)
    for name, off, kind in V.FIELDS:
        size = 16 if kind == "seg" else struct.calcsize("<" + kind)
        assert out[off:off + size] == data[off:off + size], name


# --- MSRPM and IOPM ------------------------------------------------------------------------------

def test_msrpm_layout() -> None:
    assert V.MSRPM_SIZE == 8192 and V.IOPM_SIZE == 12288
    assert V.msrpm_bit_offset(0) == (0, 0)
    assert V.msrpm_bit_offset(3) == (0, 6)
    assert V.msrpm_bit_offset(4) == (1, 0)
    assert V.msrpm_bit_offset(0x1FFF) == (0x7FF, 6)
    assert V.msrpm_bit_offset(0x2000) is None
    assert V.msrpm_bit_offset(0xC000_0000) == (0x800, 0)
    assert V.msrpm_bit_offset(0xC000_0080) == (0x800 + 0x20, 0)     # EFER
    assert V.msrpm_bit_offset(0xC000_1FFF) == (0xFFF, 6)
    assert V.msrpm_bit_offset(0xC000_2000) is None
    assert V.msrpm_bit_offset(0xC001_0000) == (0x1000, 0)
    assert V.msrpm_bit_offset(0xC001_1FFF) == (0x17FF, 6)
    assert V.msrpm_bit_offset(0xC001_2000) is None
    assert V.msrpm_bit_offset(0xBFFF_FFFF) is None
    assert V.msrpm_bit_offset(0x277) == (0x9D, 6)                    # PAT


def test_msrpm_intercepted() -> None:
    pm = bytearray(V.MSRPM_SIZE)
    byte, bit = V.msrpm_bit_offset(0x277)  # type: ignore[misc]
    pm[byte] |= 2 << bit                    # write bit only
    assert not V.msrpm_intercepted(pm, 0x277, write=False)
    assert V.msrpm_intercepted(pm, 0x277, write=True)
    assert not V.msrpm_intercepted(pm, 0x276, write=True)
    assert V.msrpm_intercepted(pm, 0x4000_0000, write=False)       # outside every range


def _iopm_with(*ports: int) -> bytearray:
    pm = bytearray(V.IOPM_SIZE)
    for p in ports:
        pm[p >> 3] |= 1 << (p & 7)
    return pm


def test_iopm_single_and_multibyte() -> None:
    pm = _iopm_with(0x3F9)
    assert V.iopm_intercepted(pm, 0x3F9, 1)
    assert not V.iopm_intercepted(pm, 0x3F8, 1)
    assert V.iopm_intercepted(pm, 0x3F8, 2)
    assert V.iopm_intercepted(pm, 0x3F6, 4)
    assert not V.iopm_intercepted(pm, 0x3F5, 4)
    assert not V.iopm_intercepted(pm, 0x3FA, 4)
    pm = _iopm_with(0x100)                  # across a byte boundary: 0xFE..0x101
    assert V.iopm_intercepted(pm, 0xFE, 4)
    assert not V.iopm_intercepted(pm, 0xFC, 4)


def test_iopm_access_past_ffff_uses_bits_beyond_64k() -> None:
    assert not V.iopm_intercepted(_iopm_with(0), 0xFFFF, 2)         # does not wrap to port 0
    assert V.iopm_intercepted(_iopm_with(0x10000), 0xFFFF, 2)
    assert V.iopm_intercepted(_iopm_with(0x10002), 0xFFFE, 4) is False
    assert V.iopm_intercepted(_iopm_with(0x10001), 0xFFFE, 4)
    assert V.iopm_intercepted(_iopm_with(0xFFFF), 0xFFFF, 1)


@given(st.integers(0, 0xFFFF), st.sampled_from([1, 2, 4]), st.sets(st.integers(0, 0x10010), max_size=6))
def test_iopm_matches_bit_by_bit(port: int, size: int, set_bits: set[int]) -> None:
    pm = _iopm_with(*set_bits)
    expected = any((port + i) in set_bits for i in range(size))
    assert V.iopm_intercepted(pm, port, size) == expected


# --- event and IOIO encodings --------------------------------------------------------------------

def test_eventinj_encoding() -> None:
    value = V.eventinj_encode(14, V.EVENTINJ_TYPE_EXCEPTION, 0x2)
    assert value == 14 | (3 << 8) | (1 << 11) | (1 << 31) | (2 << 32)
    assert V.eventinj_decode(value) == (True, 14, 3, 2)
    assert V.eventinj_encode(0x20, V.EVENTINJ_TYPE_INTR) == 0x20 | (1 << 31)
    assert V.eventinj_decode(0x20 | (1 << 31)) == (True, 0x20, 0, None)
    assert V.EVENTINJ_TYPE_NMI == 2 and V.EVENTINJ_TYPE_SOFT_INT == 4


def test_ioio_exitinfo1() -> None:
    info = V.ioio_exitinfo1(0x3F8, 1, is_in=False, addr_size=64)
    assert info == (0x3F8 << 16) | (1 << 4) | (1 << 9)
    info = V.ioio_exitinfo1(0x60, 4, is_in=True, addr_size=32, string=True, rep=True, seg=3)
    assert info == (0x60 << 16) | 1 | (1 << 2) | (1 << 3) | (1 << 6) | (1 << 8) | (3 << 10)
    assert V.ioio_exitinfo1(0x80, 2, is_in=True, addr_size=16) & 0xFFFF == 1 | (1 << 5) | (1 << 7)


def test_tlb_control_values() -> None:
    assert (V.TLB_CONTROL_DO_NOTHING, V.TLB_CONTROL_FLUSH_ALL, V.TLB_CONTROL_FLUSH_GUEST,
            V.TLB_CONTROL_FLUSH_GUEST_NONGLOBAL) == (0, 1, 3, 7)


def test_overlapping_table_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(V, "FIELDS", V.FIELDS + (("bogus", 0x074, "I"),))
    with pytest.raises(AssertionError):
        V._check_table()


def _kind_size(kind: str) -> int:
    return 16 if kind == "seg" else struct.calcsize("<" + kind)


def test_fields_fit_their_area_and_do_not_overlap() -> None:
    """The pattern of KVM's __unused_size_checks: control fields end before the save area,
    save fields end inside the page, and no two fields share a byte."""
    owner: dict[int, str] = {}
    for name, off, kind in V.FIELDS:
        end = off + _kind_size(kind)
        if off < V.SAVE_AREA:
            assert end <= V.SAVE_AREA, name
        else:
            assert end <= V.VMCB_SIZE, name
        for byte in range(off, end):
            assert byte not in owner, f"{name} overlaps {owner.get(byte)} at {byte:#x}"
            owner[byte] = name
    assert V.SAVE_AREA == 0x400 and V.VMCB_SIZE == 0x1000


def test_bitfields_are_disjoint_within_their_word() -> None:
    sizes = {name: _kind_size(kind) * 8 for name, _, kind in V.FIELDS}
    used: dict[str, int] = {}
    for name, word, shift, width in V.BITFIELDS:
        mask = ((1 << width) - 1) << shift
        assert shift + width <= sizes[word], name
        assert not used.get(word, 0) & mask, name
        used[word] = used.get(word, 0) | mask


@pytest.mark.parametrize("word, shift, names", [
    ("misc1", 0, ["INTR", "NMI", "SMI", "INIT", "VINTR", "CR0_SEL_WRITE", "IDTR_READ", "GDTR_READ",
                  "LDTR_READ", "TR_READ", "IDTR_WRITE", "GDTR_WRITE", "LDTR_WRITE", "TR_WRITE",
                  "RDTSC", "RDPMC", "PUSHF", "POPF", "CPUID", "RSM", "IRET", "INVD", "PAUSE",
                  "HLT", "INVLPG", "INVLPGA", "TASK_SWITCH", "FERR_FREEZE", "SHUTDOWN"]),
    ("misc2", 32, ["VMRUN", "VMMCALL", "VMLOAD", "VMSAVE", "STGI", "CLGI", "SKINIT", "RDTSCP",
                   "ICEBP", "WBINVD", "MONITOR", "MWAIT", "MWAIT_CONDITIONAL", "XSETBV", "RDPRU",
                   "EFER_WRITE_TRAP"]),
])
def test_misc_intercept_bits_follow_exit_codes(word: str, shift: int, names: list[str]) -> None:
    """The word at 0x00C read as 64 bits numbers its intercepts in exit-code order; hostvm builds
    vmcb01's intercepts and svm_ext merges vmcb12's through that rule."""
    for name in names:
        code = getattr(V, f"VMEXIT_{name}")
        bit = getattr(V, f"INTERCEPT_{name}")
        assert V.intercept_misc_bit(code) == bit << shift, name
    assert V.intercept_misc_bit(V.VMEXIT_SWINT) == V.INTERCEPT_INTN
    assert V.intercept_misc_bit(V.VMEXIT_IOIO) == V.INTERCEPT_IOIO_PROT
    assert V.intercept_misc_bit(V.VMEXIT_MSR) == V.INTERCEPT_MSR_PROT
    assert V.intercept_misc_bit(V.VMEXIT_CR0_WRITE_TRAP + 3) == 1 << (32 + 16 + 3)
    with pytest.raises(ValueError):
        V.intercept_misc_bit(V.VMEXIT_NPF)


def test_vmcb01_lands_at_apm_offsets() -> None:
    """L0's own VMCB, read back with offsets typed from the APM (not from the table)."""
    from unicorn import UC_ARCH_X86, UC_MODE_64, Uc

    from emu.engine import hostvm

    host = hostvm.HostVm(Uc(UC_ARCH_X86, UC_MODE_64))
    tramp = host.enter_multiboot(entry=0x10_0000, magic=0x2BADB002, mbi=0x9000)
    vm = bytes(host.view(hostvm.VMCB01, 0x1000))
    q = lambda off: struct.unpack_from("<Q", vm, off)[0]   # noqa: E731
    assert tramp == hostvm.TRAMPOLINE
    assert struct.unpack_from("<I", vm, 0x008)[0] == 0xFFFF_FFFF        # every exception
    misc = q(0x00C)
    for code in (0x6F, 0x72, 0x7C, 0x78, 0x75, 0x7F, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87):
        assert misc >> (code - 0x60) & 1, hex(code)
    assert not misc >> (0x7B - 0x60) & 1                                 # IOIO: hooks, not IOPM
    assert struct.unpack_from("<H", vm, 0x006)[0] == 1 << 7               # DR7 writes
    assert struct.unpack_from("<HH", vm, 0x000) == (1 << 8, 1 << 8 | 1 << 4)  # CR8 r/w, CR4 write
    assert (q(0x040), q(0x048)) == (hostvm.IOPM01, hostvm.MSRPM01)
    assert struct.unpack_from("<I", vm, 0x058)[0] == 1
    assert struct.unpack_from("<HHIQ", vm, 0x410) == (0x10, 0xC9B, 0xFFFF_FFFF, 0)
    assert struct.unpack_from("<HHIQ", vm, 0x420) == (0x18, 0xC93, 0xFFFF_FFFF, 0)
    assert struct.unpack_from("<HHIQ", vm, 0x490) == (0, 0x8B, 0xFFFF, 0)
    assert (q(0x4D0), q(0x558), q(0x568), q(0x560), q(0x570)) == (0, 0x11, 0xFFFF0FF0, 0x400, 2)
    assert (q(0x578), q(0x5D8), q(0x5F8)) == (0x10_0000, 0, 0x2BADB002)
