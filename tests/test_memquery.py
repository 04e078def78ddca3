"""Memory-type queries (emu/tools/memquery.py) on real machines: L1 alone, L2 without and with nested
paging, under each PAT model, queried while L2 runs and after it exited; and `svmemu memtype`
on a snapshot. Expected types come from the APM tables as transcribed in tests/test_memtype.py,
not from the implementation.

Layout: L1's identity tables at 0x20000 (2 MiB pages) double as the nested table. L2 has its
own tables at 0x30000 mapping VA 0x600000 -> GPA 0x600000 with the guest bits under test; L1's
PDE for 0x600000 carries the host bits (PWT: hPAT entry 1)."""
from __future__ import annotations

import struct

import pytest

from emu.arch import memtype
from emu.cli.main import main
from emu.errors import OptionError
from emu.core.machine import Machine
from emu.tools.memquery import NotMapped, effective_memtype
from emu.core import snapshot
from svm_ext.extension import SvmExtension
from tests.nested_image import EXIT_PASS, nested_image, vmcb12
from tests.test_memtype import GUEST_X_HOST, PAT_X_MTRR, parse
from tests.tinyimage import long_mode_image

P, RW, US, PWT, PCD, PS, PAT_LARGE = 1, 2, 4, 8, 0x10, 0x80, 1 << 12
VA = 0x600000
HOST_BITS = PWT                 # hPAT entry 1
GUEST_BITS = PAT_LARGE | PCD    # entry 6
HPAT = 0x0007040600070406       # [1] = WT, [6] = UC-
GPAT_BASE = 0x0600060606060606  # [6] set per test
MTRR_DEF_WB = (1 << 11) | memtype.WB   # MTRRs enabled, default WB

PM = {(p, m): v for p, m, v in parse(PAT_X_MTRR)}
GH = {(g, h): v for g, h, v in parse(GUEST_X_HOST)}

L1_SETUP = f"""
    mov ecx, 0x2FF
    mov eax, {MTRR_DEF_WB}
    xor edx, edx
    wrmsr
    mov ecx, 0x277
    mov eax, {HPAT & 0xFFFFFFFF}
    mov edx, {HPAT >> 32}
    wrmsr
"""


def with_tables(img):
    """L1's PDE for VA gets the host bits; L2's own tables at 0x30000 the guest bits."""
    segs = []
    for addr, blob in img.segments:
        if addr == 0x22000:
            blob = bytearray(blob)
            struct.pack_into("<Q", blob, 8 * (VA >> 21), VA | P | RW | US | PS | HOST_BITS)
            blob = bytes(blob)
        segs.append((addr, blob))
    pd = b"".join(struct.pack("<Q", (i << 21) | P | RW | US | PS) for i in range(512))
    pd = bytearray(pd)
    struct.pack_into("<Q", pd, 8 * (VA >> 21), VA | P | RW | US | PS | GUEST_BITS)
    segs += [(0x30000, struct.pack("<Q", 0x31000 | 7)), (0x31000, struct.pack("<Q", 0x32000 | 7)),
             (0x32000, bytes(pd))]
    img.segments = segs
    return img


def machine(model: str, img) -> Machine:
    m = Machine(64 << 20, stdout=None, extensions=[SvmExtension(pat_model=model)])
    m.load_multiboot(img, "memquery")
    res = m.run(timeout=20)
    assert res.reason == "exit", res
    return m


STOP_IN_L2 = "mov al, 0\n out 0xf4, al\n"     # isa-debug-exit while L2 runs: stops in L2


def l2_machine(model: str, npt: bool, gtype: int = memtype.WC, stop_in_l2: bool = True):
    gpat = GPAT_BASE | (gtype << 48)
    fields = dict(cr3=0x30000, g_pat=gpat)
    if npt:
        fields.update(nested_ctl=1, n_cr3=0x20000)
    l1 = L1_SETUP + "mov rax, rdi\n vmrun\n" + EXIT_PASS
    l2 = STOP_IN_L2 if stop_in_l2 else "vmmcall\n"
    m = machine(model, with_tables(nested_image(l1, l2, vmcb12(**fields))))
    assert m.level() == ("L2" if stop_in_l2 else "L1")
    return m, gpat


def test_l1_alone_every_pat_type():
    for t in sorted(memtype.PAT_TYPES):
        pat = HPAT & ~(0xFF << 8) | (t << 8)
        body = L1_SETUP.replace(f"mov eax, {HPAT & 0xFFFFFFFF}",
                                f"mov eax, {pat & 0xFFFFFFFF}") + EXIT_PASS
        m = Machine(64 << 20, stdout=None, extensions=[SvmExtension()])
        m.load_multiboot(with_tables(long_mode_image(body)), "l1")
        assert m.run(timeout=20).reason == "exit"
        r = effective_memtype(m, VA + 0x123)
        assert (r.world, r.pa, r.spa, r.nested) == ("L1", VA + 0x123, VA + 0x123, False)
        assert r.guest.pat_index == 1 and r.pat == pat and r.pat_name == "hPAT"
        assert r.guest_type == t and r.mtrr == memtype.WB
        assert r.effective == PM[(t, memtype.WB)]
        # another page, PAT index 0 -> WB
        assert effective_memtype(m, 0x200000, "L1").effective == memtype.WB


@pytest.mark.parametrize("model", ["architectural", "swap"])
@pytest.mark.parametrize("gtype", sorted(memtype.PAT_TYPES))
def test_l2_with_npt_uses_gpat_and_host_type(model, gtype):
    m, gpat = l2_machine(model, npt=True, gtype=gtype)
    r = effective_memtype(m, VA + 0x10)
    assert r.world == "L2" and r.nested
    assert (r.pa, r.spa) == (VA + 0x10, VA + 0x10)
    assert r.pat_name == "gPAT" and r.pat == gpat and r.guest.pat_index == 6
    assert r.guest_type == gtype
    assert r.host.pat_index == 1 and r.host_pat == HPAT and r.host_type == memtype.WT
    assert r.combined == GH[(gtype, memtype.WT)]
    assert r.effective == PM[(GH[(gtype, memtype.WT)], memtype.WB)]
    # L1's view of the same address, asked while L2 runs: hPAT entry 1 alone
    r1 = effective_memtype(m, VA + 0x10, "L1")
    assert (r1.world, r1.nested, r1.pat, r1.guest.pat_index) == ("L1", False, HPAT, 1)
    assert r1.effective == memtype.WT


def test_l2_with_npt_under_shared_model_uses_the_one_pat():
    m, _ = l2_machine("shared", npt=True)
    r = effective_memtype(m, VA)
    assert r.pat == HPAT and r.pat_name.startswith("PAT (shared")
    assert r.guest_type == memtype.UC_MINUS            # HPAT[6]
    assert r.host_type == memtype.WT and r.combined == memtype.CD
    assert r.effective == memtype.CD


@pytest.mark.parametrize("model", ["architectural", "swap", "shared"])
def test_l2_without_npt_shares_l1_pat(model):
    m, _ = l2_machine(model, npt=False)
    r = effective_memtype(m, VA)
    assert not r.nested and r.pat == HPAT and r.guest.pat_index == 6
    assert r.guest_type == memtype.UC_MINUS and r.effective == PM[(memtype.UC_MINUS, memtype.WB)]


@pytest.mark.parametrize("model", ["architectural", "swap"])
def test_l2_asked_from_l1_after_exit_uses_vmcb12(model):
    m, gpat = l2_machine(model, npt=True, gtype=memtype.WP, stop_in_l2=False)
    r = effective_memtype(m, VA, "L2")
    assert r.nested and r.pat == gpat and r.guest_type == memtype.WP
    assert r.effective == PM[(GH[(memtype.WP, memtype.WT)], memtype.WB)]
    assert effective_memtype(m, VA).world == "L1"


def test_mtrr_and_cd_reach_the_result():
    m, _ = l2_machine("architectural", npt=True, gtype=memtype.WB)
    m.msrs.values[memtype.MSR_MTRRDEFTYPE] = (1 << 11) | memtype.UC
    r = effective_memtype(m, VA)
    assert r.mtrr == memtype.UC and r.effective == PM[(memtype.WT, memtype.UC)]


def test_errors():
    m = Machine(64 << 20, stdout=None, extensions=[SvmExtension()])
    m.load_multiboot(with_tables(long_mode_image(EXIT_PASS)), "l1")
    m.run(timeout=20)
    with pytest.raises(OptionError):
        effective_memtype(m, VA, "L2")        # no L2 yet
    with pytest.raises(OptionError):
        effective_memtype(m, VA, "L3")
    with pytest.raises(NotMapped):
        effective_memtype(m, 0x40000000)      # beyond the 1 GiB identity map
    with pytest.raises(NotMapped):
        effective_memtype(m, 0x0000800000000000)   # non-canonical


def test_cli_memtype_on_a_snapshot(tmp_path, capsys):
    m, gpat = l2_machine("architectural", npt=True, gtype=memtype.WC)
    path = str(tmp_path / "l2.snap")
    snapshot.save(m, path)
    assert main(["memtype", path, hex(VA)]) == 0
    out = capsys.readouterr().out
    assert "L2 va 0x600000" in out and f"gPAT[6] of {gpat:#018x} = WC" in out
    assert "hPAT[1]" in out and "= WT" in out and "WC x WT = WC+" in out
    assert out.rstrip().endswith("effective:    WC+")
    assert main(["memtype", path, hex(VA), "--world", "L1"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("effective:    WT")
    # the same snapshot restored under the swap model answers the same
    assert main(["memtype", path, hex(VA), "--pat-model", "swap"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("effective:    WC+")


@pytest.mark.parametrize("argv", [
    ["memtype", "/nonexistent.snap", "0x1000"],
    ["memtype", "SNAP", "zzz"],
    ["memtype", "SNAP", "0x40000000"],
    ["memtype", "SNAP", "0x1000", "--world", "L7"],
    ["memtype", "BAD", "0x1000"],
])
def test_cli_memtype_bad_input_is_one_line_status_2(argv, tmp_path, capsys):
    m = Machine(64 << 20, stdout=None, extensions=[SvmExtension()])
    m.load_multiboot(with_tables(long_mode_image(EXIT_PASS)), "l1")
    m.run(timeout=20)
    snap, bad = str(tmp_path / "s.snap"), str(tmp_path / "bad.snap")
    snapshot.save(m, snap)
    open(bad, "wb").write(b"SVMEMUSN" + bytes(20))
    argv = [snap if a == "SNAP" else bad if a == "BAD" else a for a in argv]
    with pytest.raises(SystemExit) if "zzz" in argv or "L7" in argv else _nothing():
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("svmemu: error:"), err


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
