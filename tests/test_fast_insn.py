"""L1's VMLOAD, VMSAVE, STGI and CLGI answered in C (svm_ext/fast_insn.py, emu/engine/svm_insn.c)
leave exactly what instructions.py leaves: random sequences of them (over VMCBs holding random
segments, non-canonical bases and MSR values, with rAX aligned, misaligned, beyond MAXPHYADDR or
outside RAM), mixed with RDTSC (a C fast exit), a port write (a Python entry) and segment and MSR
writes, run with the C hook and with it off; registers, hidden state, RAM, the TSC, GIF and how
the run ended must be the same, while C really answered most of them."""
from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emu.arch.vmcb import OFFSETS, VMCB_SIZE
from emu.core.machine import Machine
from emu.engine import replay
from emu.engine.hw_switch import OFF_V_TPR
from svm_ext.extension import SvmExtension
from tests.nested_image import ENABLE_SVM
from tests.tinyimage import gate64, handler, long_mode_image

pytestmark = pytest.mark.skipif(not replay.available(), reason="the C engine was not built")

RAM = 128 << 20
_NOISE_FROM = OFF_V_TPR + 1      # context bytes past it hold host addresses (test_fast_switch)
VMCB_A, VMCB_B, VMCB_OUT = 0x600000, 0x601000, 0x602000
GP_COUNT = 0x603000
TARGETS = {"a": VMCB_A, "b": VMCB_B, "misaligned": VMCB_A + 0x10, "beyond": 1 << 52 | VMCB_A,
           "outside": 0x3F000000}
_SYSCALL_MSRS = (0xC0000081, 0xC0000082, 0xC0000083, 0xC0000084, 0xC0000102, 0x174, 0x175, 0x176)
# #GP (a bad rAX): count it and go on after the 3-byte instruction.
GP_HANDLER = f"""
    add rsp, 8
    add qword ptr [rsp], 3
    inc qword ptr [{GP_COUNT}]
    iretq
"""

u64 = st.integers(0, (1 << 64) - 1)
segment = st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF),
                    st.one_of(u64, st.integers(0, (1 << 48) - 1), st.just(0xFFFF8000_00001000)))
vmcb_state = st.tuples(st.lists(segment, min_size=4, max_size=4), st.lists(u64, min_size=8, max_size=8))
op = st.one_of(
    st.tuples(st.sampled_from(["vmload", "vmsave"]),
              st.sampled_from(["a", "a", "b", "b", "misaligned", "beyond", "outside"])),
    st.tuples(st.sampled_from(["stgi", "clgi", "rdtsc", "out", "fs"])),
    st.tuples(st.just("wrmsr"), st.sampled_from(_SYSCALL_MSRS), st.integers(0, 0xFFFFFFFF)))


def vmcb(state: tuple) -> bytes:
    segs, msrs = state
    buf = bytearray(VMCB_SIZE)
    for name, (sel, attrib, limit, base) in zip(("fs", "gs", "tr", "ldtr"), segs):
        struct.pack_into("<HHIQ", buf, OFFSETS[name], sel, attrib, limit, base)
    for name, value in zip(("star", "lstar", "cstar", "sfmask", "kernel_gs_base", "sysenter_cs",
                            "sysenter_esp", "sysenter_eip"), msrs):
        struct.pack_into("<Q", buf, OFFSETS[name], value)
    return bytes(buf)


def body(ops: list[tuple]) -> str:
    lines = [ENABLE_SVM]
    for o in ops:
        if o[0] in ("vmload", "vmsave"):
            lines += [f"mov rax, {TARGETS[o[1]]}", o[0]]
        elif o[0] in ("stgi", "clgi", "rdtsc"):
            lines.append(o[0])
        elif o[0] == "out":
            lines += ["mov al, 1", "out 0x80, al"]
        elif o[0] == "fs":
            lines += ["mov ax, 0x10", "mov fs, ax"]
        else:
            _, msr, value = o
            lines += [f"mov ecx, {msr}", f"mov eax, {value & 0xFFFFFFFF}",
                      f"mov edx, {value >> 32}", "wrmsr"]
    lines += [f"mov rax, {VMCB_OUT}", "vmsave", "mov al, 0", "out 0xf4, al"]
    return "\n".join(lines)


def run(image, fast: bool) -> tuple:
    ext = SvmExtension("architectural")
    m = Machine(RAM, stdout=None, extensions=[ext])
    assert m.replay is not None
    m.replay.enabled = fast
    m.load_multiboot(image, "guest ")
    res = m.run(timeout=60)
    outcome = (res.reason, res.status, bytes(m.serial.output), m.tsc, ext.state.gif,
               bytes(m.ctx.save().view)[:_NOISE_FROM])
    return outcome, bytes(m.ram), ext.fast_insn.answered


def same_with_and_without(image) -> tuple[tuple[int, int, int, int], bytes]:
    fast, fast_ram, answered = run(image, True)
    slow, slow_ram, none = run(image, False)
    assert none == (0, 0, 0, 0)
    for name, a, b in zip(("reason", "status", "output", "tsc", "gif", "context"), fast, slow):
        assert a == b, name
    if fast_ram != slow_ram:
        first = next(i for i, (a, b) in enumerate(zip(fast_ram, slow_ram)) if a != b)
        pytest.fail(f"RAM differs first at {first:#x}")
    assert fast[:2] == ("exit", 1) or fast[0] == "unsupported", fast[:3]
    return answered, fast_ram


def image(ops: list[tuple], a: tuple, b: tuple):
    img = long_mode_image(body(ops), {13: gate64(handler(0))}, [GP_HANDLER])
    img.segments += [(VMCB_A, vmcb(a)), (VMCB_B, vmcb(b)), (VMCB_OUT, bytes(VMCB_SIZE)),
                     (GP_COUNT, bytes(8))]
    return img


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op, min_size=1, max_size=40), a=vmcb_state, b=vmcb_state)
def test_random_sequences_same_in_c_and_python(ops, a, b):
    same_with_and_without(image(ops, a, b))


def test_c_answers_a_timing_loop():
    """A loop like kvm-unit-tests' latency_svm_insn: after the first Python entry, C answers
    every VMLOAD, VMSAVE, STGI and CLGI (GIF toggles as in Python: the final VMSAVE and the
    compared GIF see it)."""
    loop = [("vmload", "a"), ("rdtsc",), ("vmsave", "b"), ("rdtsc",), ("stgi",), ("rdtsc",),
            ("clgi",), ("rdtsc",)] * 50 + [("stgi",), ("vmload", "b"), ("clgi",)]
    seg = (0x18, 0xC93, 0xFFFFF, 0x0000_8000_0000_1000)          # a non-canonical base
    answered, ram = same_with_and_without(image(loop, ([seg] * 4, list(range(10, 18))),
                                                ([seg] * 4, [7] * 8)))
    assert all(n >= 45 for n in answered), answered
    out = ram[VMCB_OUT:VMCB_OUT + VMCB_SIZE]
    assert struct.unpack_from("<HHIQ", out, OFFSETS["fs"]) == (0x18, 0xC93, 0xFFFFF,
                                                              0xFFFF_8000_0000_1000)
    assert struct.unpack_from("<Q", out, OFFSETS["star"])[0] == 10    # A's, through B


def test_bad_operands_fault_the_same():
    """#GP for a misaligned rAX and one beyond MAXPHYADDR, from Python in both runs."""
    ops = [("vmload", "misaligned"), ("vmsave", "beyond"), ("vmload", "a")]
    seg = (0, 0, 0, 0)
    _, ram = same_with_and_without(image(ops, ([seg] * 4, [1] * 8), ([seg] * 4, [2] * 8)))
    assert struct.unpack_from("<Q", ram, GP_COUNT)[0] == 2
