"""World switches replayed in C (emu/engine/replay.c, svm_ext/fast_switch.py) leave exactly what the
Python path leaves: every guest below runs twice, with the engine and without it, and everything
guest-visible and every piece of nested state must be the same, while the engine really did take
the repeated switches."""
from __future__ import annotations

import struct
from dataclasses import dataclass

import pytest

from bench import workloads
from emu.engine import replay
from emu.engine.hw_switch import OFF_V_TPR
from emu.loader.asm import GUESTS_DIR, assemble_source
from emu.loader.multiboot import BootImage, parse_image
from emu.core.machine import Machine
from svm_ext.extension import SvmExtension
from emu.arch.vmcb import INTERCEPT_CPUID, INTERCEPT_VMMCALL, INTERCEPT_VMRUN
from tests.nested_image import EXIT_PASS, L2_CODE, VMCB12, nested_image, vmcb12

pytestmark = pytest.mark.skipif(not replay.available(), reason="the C engine was not built")

RAM = 128 << 20
# Context bytes after V_TPR differ between two machines even with the engine off: QEMU's
# `retaddr`, a host return address Unicorn sets in its TLB-fill path before every use.
_NOISE_FROM = OFF_V_TPR + 1


@dataclass
class Outcome:
    reason: str
    status: int
    output: bytes
    ram: bytes
    context: bytes
    nested: dict
    pat: dict
    stats: dict
    tsc_offset: int
    replays: int


def run(image: BootImage | bytes, fast: bool, pat_model: str = "architectural") -> Outcome:
    ext = SvmExtension(pat_model)
    m = Machine(RAM, stdout=None, extensions=[ext])
    assert m.replay is not None
    m.replay.enabled = fast
    if isinstance(image, bytes):
        image = parse_image(image, "guest", RAM)
    m.load_multiboot(image, "guest ")
    res = m.run(timeout=60)
    snap = ext.snapshot_state()
    nested = dict(snap["nested"])
    nested["l1_host"] = nested["l1_host"][:2 * _NOISE_FROM]
    return Outcome(res.reason, res.status, bytes(m.serial.output), bytes(m.ram),
                   bytes(m.ctx.save().view)[:_NOISE_FROM], nested, snap["pat"],
                   dict(ext.state.stats), m.tsc_offset, m.replay.replays)


def same_with_and_without(image: BootImage | bytes, pat_model: str = "architectural") -> Outcome:
    fast, slow = run(image, True, pat_model), run(image, False, pat_model)
    assert slow.replays == 0
    for name in ("reason", "status", "output", "context", "nested", "pat", "stats", "tsc_offset"):
        assert getattr(fast, name) == getattr(slow, name), name
    if fast.ram != slow.ram:
        first = next(i for i, (a, b) in enumerate(zip(fast.ram, slow.ram)) if a != b)
        pytest.fail(f"RAM differs first at {first:#x}")
    return fast


# ---- the benchmark hypervisors: a VMMCALL loop, and an RDMSR(PAT) loop under nested paging --------
@pytest.mark.parametrize("key,model", [("switch", "architectural"), ("msr", "architectural"),
                                       ("msr", "swap"), ("msr", "shared")])
def test_benchmark_loops(key, model):
    w = workloads.by_key(key)
    trips = 300
    out = same_with_and_without(workloads.build(w, trips), model)
    assert out.status == workloads.EXIT_PASS_STATUS, out.output
    # Both halves of nearly every round trip ran in C (the first ones record the programs).
    assert out.replays >= 2 * trips - 10, out.replays


# ---- a hypervisor whose L2 changes under the recorded programs ----------------------------------
TRIPS = 48
LOG = 0x600000
# L2 runs CPUID (intercepted) at a fixed RIP. After 20 trips L1 rewrites it into CS-prefixed CPUID
# (one byte longer, same RIP): NRIP must follow. Every 5th trip L1 reads its PAT (an L0 MSR
# exit: Python runs between replays and must see the state the C path left); after trip 30 it
# writes a new PAT (the Python-side state the programs were recorded from changes).
L1_PATCHING = f"""
    mov r12, 0
    mov r14, {LOG}
again:
    mov rax, rdi
    vmrun
    mov rax, [rdi + 0xC8]
    mov rbx, rax
    sub rbx, [rdi + 0x578]
    mov [r14 + r12 * 8], rbx
    mov [rdi + 0x578], rax
    inc r12
    cmp r12, 20
    jne no_patch
    mov rbx, {L2_CODE + 3}
    mov byte ptr [rbx], 0x2E
    mov byte ptr [rbx + 1], 0x0F
    mov byte ptr [rbx + 2], 0xA2
    mov rbx, {L2_CODE}
    mov [rdi + 0x578], rbx
no_patch:
    mov rax, r12
    xor edx, edx
    mov rbx, 5
    div rbx
    test rdx, rdx
    jnz no_read
    mov ecx, 0x277
    rdmsr
    mov [r14 + 0x800 + r12 * 8], eax
no_read:
    cmp r12, 30
    jne no_write
    mov ecx, 0x277
    mov eax, 0x00070106
    mov edx, 0x00070406
    wrmsr
no_write:
    cmp r12, {TRIPS}
    jb again
""" + EXIT_PASS
L2_CPUID = """
l2: inc r13
    cpuid
    nop
    jmp l2
"""


def test_code_rewritten_under_a_program_changes_nrip():
    image = nested_image(L1_PATCHING, L2_CPUID,
                         vmcb12(misc1=INTERCEPT_CPUID, misc2=INTERCEPT_VMRUN | INTERCEPT_VMMCALL))
    out = same_with_and_without(image)
    assert out.reason == "exit" and out.status == 1, out
    lengths = struct.unpack_from(f"<{TRIPS}Q", out.ram, LOG)
    assert lengths == (2,) * 20 + (3,) * (TRIPS - 20)
    pats = struct.unpack_from(f"<{TRIPS + 1}Q", out.ram, LOG + 0x800)
    assert [pats[n] & 0xFFFFFFFF for n in range(5, TRIPS + 1, 5)] == \
        [0x00070406] * 6 + [0x00070106] * 3
    assert out.replays > TRIPS, out.replays


# ---- the bundled hypervisors: few repeats, but every one must come out the same -----------------
@pytest.mark.parametrize("name", sorted(p.stem for p in GUESTS_DIR.glob("svm_*.S")))
def test_bundled_guests(name):
    path = str(GUESTS_DIR / f"{name}.S")
    same_with_and_without(parse_image(assemble_source(path), path, RAM))


# ---- the VMRUN guard against Unicorn's NX crash holds for replayed VMRUNs too ----------------------
@pytest.mark.parametrize("engine", ["stock", "patched"])
def test_nx_guard_holds_for_replayed_vmruns(engine):
    """hw_quirks.guard_nested_nx reads nested entries that no vmcb12 byte covers: a program
    replaying VMRUN must require them unchanged. L1 loops (the VMRUN is replayed), then sets NX on
    the nested leaf over L2's page-table root: on the stock engine the next VMRUN must stop with
    "unsupported:", not crash; on svmemu's engine (no guard: its walk survives NX) the loop runs
    to its end, replayed. In a child process: a crash would take pytest down."""
    import os
    import subprocess
    import sys
    from emu.engine.unicorn_build import build
    if engine == "patched" and build.built_library() is None:
        pytest.skip("svmemu's engine is not built (python -m emu.engine.unicorn_build)")
    prog = (
        "from tests.test_npf import *\n"
        "where = {}\n"
        "root, segs, _ = nested_table(lambda t: where.update(addr=t.entry_addr(0, 2)))\n"
        "l1 = L1_NXE + f'''\n"
        "    mov r12, 0\n"
        "again:\n"
        "    mov rax, rdi\n"
        "    vmrun\n"
        "    add qword ptr [rdi + 0x578], 3\n"
        "    inc r12\n"
        "    cmp r12, 8\n"
        "    jne skip\n"
        "    mov rbx, {where['addr']}\n"
        "    bts qword ptr [rbx], 63\n"
        "skip:\n"
        "    cmp r12, 12\n"
        "    jb again\n"
        "''' + EXIT_PASS\n"
        "img = nested_image(l1, 'l2: vmmcall\\n jmp l2\\n', vmcb12(cr3=0x30000, nested_ctl=1,\n"
        "                   n_cr3=root, efer=0x1D00))\n"
        "img.segments += guest_tables() + segs\n"
        "m = Machine(64 << 20, stdout=None, extensions=[SvmExtension()])\n"
        "m.load_multiboot(img, 'npf')\n"
        "res = m.run(timeout=20)\n"
        "print(m.replay.replays, res.reason, res.message)\n")
    r = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, SVMEMU_ENGINE=engine))
    assert r.returncode == 0, (r.returncode, r.stderr)
    replays, reason, message = r.stdout.split(" ", 2)
    if engine == "stock":
        assert reason == "unsupported" and "page-table root" in message, r.stdout
        assert int(replays) >= 10, r.stdout
    else:
        assert reason == "exit", r.stdout
        assert int(replays) >= 10, r.stdout


# ---- two L2s in turn: a program each, both kept ------------------------------------------------
SECOND_VMCB = 0x410000
L1_TWO = f"""
    mov rsi, rdi
    mov r15, {SECOND_VMCB}
    mov rdi, r15
    mov rcx, 4096
    rep movsb
    mov rdi, {VMCB12}
    mov dword ptr [r15 + 0x58], 2
    mov r12, 0
again:
    mov rbx, rdi
    test r12, 1
    cmovnz rbx, r15
    mov rax, rbx
    vmrun
    add qword ptr [rbx + 0x578], 3
    inc r12
    cmp r12, {TRIPS}
    jb again
""" + EXIT_PASS
L2_VMMCALL = """
l2: inc r13
    vmmcall
    jmp l2
"""


def test_two_guests_in_turn_both_replayed():
    out = same_with_and_without(nested_image(L1_TWO, L2_VMMCALL, vmcb12()))
    assert out.reason == "exit" and out.status == 1, out
    assert out.stats == {"vmrun": TRIPS, "vmexit": TRIPS}
    assert out.replays >= 2 * TRIPS - 12, out.replays     # each recorded when met the second time


# A hypervisor that first alternates its vmcb12 between Y and a Z_k with a TSC offset of its own
# (every Z_k VMRUN is entered in the state "vmcb12 Y cached", with other bytes each time), then
# runs Y over and over: that loop's VMRUN is entered in the same state as the Z_k ones were, and
# must still be recorded and replayed.
PHASE_ONE = 12
L1_PHASES = f"""
    xor r12, r12
again:
    mov rax, rdi
    vmrun
    add qword ptr [rdi + 0x578], 3
    inc r12
    mov qword ptr [rdi + 0x50], 0
    cmp r12, {PHASE_ONE}
    jae next
    test r12, 1
    jz next
    mov [rdi + 0x50], r12
next:
    cmp r12, {PHASE_ONE + TRIPS}
    jb again
""" + EXIT_PASS


def test_vmrun_met_in_a_worn_state_is_still_replayed():
    out = same_with_and_without(nested_image(L1_PHASES, L2_VMMCALL, vmcb12()))
    assert out.reason == "exit" and out.status == 1, out
    assert out.stats == {"vmrun": PHASE_ONE + TRIPS, "vmexit": PHASE_ONE + TRIPS}
    assert out.replays >= 2 * TRIPS - 12, out.replays


# ---- MSR intercepts that differ from exit to exit: every MSR index another one ----------------------
MSR_LOG = 0x700000
MSR_TABLE = 0x6F0000
MSR_SWEEP = (list(range(0, 0x30)) + list(range(0xC0000080, 0xC00000A0))
             + list(range(0xC0010000, 0xC0010020)) + [0x2000, 0x40000000, 0xC0002000])
L1_MSR_SWEEP = f"""
    mov r14, {MSR_LOG}
again:
    mov rax, rdi
    vmrun
    mov rax, [rdi + 0x70]
    cmp rax, 0x7c
    jne out
    mov [r14], rcx
    mov rax, [rdi + 0x78]
    mov [r14 + 8], rax
    add r14, 16
    add qword ptr [rdi + 0x578], 2
    jmp again
out:
""" + EXIT_PASS
L2_MSR_SWEEP = f"""
l2: mov r12, {MSR_TABLE}
next:
    mov ecx, [r12]
    cmp ecx, 0xFFFFFFFF
    je done
    rdmsr
    mov ecx, [r12]
    mov eax, ecx
    xor edx, edx
    wrmsr
    add r12, 4
    jmp next
done:
    vmmcall
"""
# #GP (an RDMSR L0 answers for an MSR the model lacks): go on after the 2-byte instruction.
GP_SKIP = "add rsp, 8\n add qword ptr [rsp], 2\n iretq\n"


def _msrpm_reads_every_third_writes_all() -> bytes:
    from emu.arch.vmcb import MSRPM_SIZE, msrpm_bit_offset
    pm = bytearray(MSRPM_SIZE)
    for msr in MSR_SWEEP:
        where = msrpm_bit_offset(msr)
        if where is not None:
            byte, bit = where
            pm[byte] |= (int(msr % 3 == 0) << bit) | (1 << (bit + 1))
    return bytes(pm)


def test_msr_intercepts_of_changing_msrs_replayed():
    """L2 reads and writes MSR after MSR (twice over the list); L1's map intercepts every write
    and every third read, MSRs outside its ranges always exit. One program answers an exit for
    any MSR the map intercepts (ECX and the map are read in C), the rest go to L0: the log of
    exits L1 saw and everything else is the Python path's."""
    from emu.arch.vmcb import INTERCEPT_MSR_PROT, msrpm_bit_offset
    from tests.tinyimage import gate64, handler
    table = struct.pack(f"<{2 * len(MSR_SWEEP) + 1}I", *(MSR_SWEEP * 2), 0xFFFFFFFF)
    image = nested_image(L1_MSR_SWEEP, L2_MSR_SWEEP, vmcb12(misc1=INTERCEPT_MSR_PROT),
                         idt={13: gate64(handler(0))}, handlers=[GP_SKIP],
                         msrpm=_msrpm_reads_every_third_writes_all())
    image.segments.append((MSR_TABLE, table))
    out = same_with_and_without(image)
    assert out.reason == "exit" and out.status == 1, out
    want = []
    for msr in MSR_SWEEP * 2:
        if msrpm_bit_offset(msr) is None or msr % 3 == 0:
            want.append((msr, 0))
        want.append((msr, 1))
    got = struct.unpack_from(f"<{2 * len(want)}Q", out.ram, MSR_LOG)
    assert list(zip(got[::2], got[1::2])) == want
    assert out.replays > len(want), (out.replays, len(want))
