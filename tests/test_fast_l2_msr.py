"""L2's MSR accesses that L1 lets through and L0 answers with #GP(0), decided and delivered in C
(emu/engine/l2_msr.c, svm_ext/fast_l2_msr.py), leave exactly what the Python path leaves: each
guest runs with the C path on, with only it off, and with every C path off (the reference), and
what it printed, its exit, the log of exits L1 saw, RAM, the CPU state, the nested state and the
virtual TSC must be the same, while C really answered most of the accesses."""
from __future__ import annotations

import struct
from dataclasses import dataclass

import pytest

from emu.arch.vmcb import INTERCEPT_MSR_PROT, MSRPM_SIZE, VMEXIT_MSR, msrpm_bit_offset
from emu.core.interrupts import GP
from emu.core.machine import Machine
from emu.engine import replay
from emu.engine.hw_switch import OFF_V_TPR
from emu.loader.asm import assemble_source
from emu.loader.multiboot import parse_image
from svm_ext.extension import SvmExtension
from tests.nested_image import EXIT_PASS, nested_image, vmcb12
from tests.test_fast_deliver import L2_GUEST
from tests.tinyimage import gate64, handler

pytestmark = pytest.mark.skipif(not replay.available(), reason="the C engine was not built")

RAM = 128 << 20
_NOISE_FROM = OFF_V_TPR + 1      # context bytes past it hold host addresses (test_fast_switch)
LOG = 0x700000
TABLE = 0x6F0000


def _sweep() -> list[int]:
    """MSR indices in all three MSRPM ranges, most of which the MSR file does not implement
    (those L0 answers with #GP), some it does, and three outside every range (always exit)."""
    return (list(range(0, 0x120)) + list(range(0xC0000080, 0xC00000C0))
            + list(range(0xC0010000, 0xC0010080)) + [0x2000, 0x40000000, 0xC0002000])


def _msrpm() -> bytes:
    """L1 intercepts the reads of every third MSR and the writes of every fifth, and every
    write of an MSR the machine implements (L0 would really write it)."""
    known = Machine(RAM, stdout=None, extensions=[SvmExtension()]).msrs.owners
    pm = bytearray(MSRPM_SIZE)
    for msr in _sweep():
        where = msrpm_bit_offset(msr)
        if where is not None:
            byte, bit = where
            pm[byte] |= ((msr % 3 == 0) << bit) | ((msr % 5 == 0 or msr in known) << (bit + 1))
    return bytes(pm)


# L1 logs every exit (code, L2's RCX, EXITINFO1) and steps L2 past the 2-byte instruction, until
# L2's VMMCALL. With #GP intercepted, L2's #GPs come here as exits instead.
L1_LOGGING = f"""
    mov r14, {LOG}
again:
    mov rax, rdi
    vmrun
    mov rax, [rdi + 0x70]
    cmp rax, 0x81
    je out
    mov [r14], rax
    mov [r14 + 8], rcx
    mov rax, [rdi + 0x78]
    mov [r14 + 16], rax
    add r14, 24
    add qword ptr [rdi + 0x578], 2
    jmp again
out:
""" + EXIT_PASS
# L2 reads then writes each MSR of the table, twice over; its #GP handler counts and skips.
L2_SWEEP = f"""
l2: mov r13, 2
pass:
    mov r12, {TABLE}
next:
    mov ecx, [r12]
    cmp ecx, 0xFFFFFFFF
    je done
    rdmsr
    mov ecx, [r12]
    mov eax, ecx
    mov edx, 0x1234
    wrmsr
    add r12, 4
    jmp next
done:
    dec r13
    jnz pass
    vmmcall
"""
GP_COUNT = 0x6E0000
GP_SKIP = f"add rsp, 8\n add qword ptr [rsp], 2\n inc qword ptr [{GP_COUNT}]\n iretq\n"


@dataclass
class Outcome:
    reason: str
    status: int
    output: bytes
    ram: bytes
    context: bytes
    nested: dict
    tsc: int
    answered: int


def run(image, replay_on: bool, l2_c: bool) -> Outcome:
    ext = SvmExtension("architectural")
    m = Machine(RAM, stdout=None, extensions=[ext])
    m.replay.enabled = replay_on
    ext.fast_l2_msr.allowed = l2_c
    if isinstance(image, bytes):
        image = parse_image(image, "guest", RAM)
    m.load_multiboot(image, "guest ")
    res = m.run(timeout=60)
    nested = dict(ext.snapshot_state()["nested"])
    nested["l1_host"] = nested["l1_host"][:2 * _NOISE_FROM]
    return Outcome(res.reason, res.status, bytes(m.serial.output), bytes(m.ram),
                   bytes(m.ctx.save().view)[:_NOISE_FROM], nested, m.tsc,
                   ext.fast_l2_msr.answered)


def same_three_ways(image) -> Outcome:
    fast = run(image, True, True)
    for other in (run(image, True, False), run(image, False, True)):
        assert other.answered == 0
        for name in ("reason", "status", "output", "context", "nested", "tsc"):
            assert getattr(fast, name) == getattr(other, name), name
        if fast.ram != other.ram:
            first = next(i for i, (a, b) in enumerate(zip(fast.ram, other.ram)) if a != b)
            pytest.fail(f"RAM differs first at {first:#x}")
    return fast


def _sweep_image(exceptions: int = 0):
    table = struct.pack(f"<{len(_sweep()) + 1}I", *_sweep(), 0xFFFFFFFF)
    image = nested_image(L1_LOGGING, L2_SWEEP,
                         vmcb12(misc1=INTERCEPT_MSR_PROT, exceptions=exceptions),
                         idt={GP: gate64(handler(0))}, handlers=[GP_SKIP], msrpm=_msrpm())
    image.segments.append((TABLE, table))
    return image


def _exits(out: Outcome) -> list[tuple[int, int, int]]:
    words = []
    for i in range(0, 0x100000, 24):
        code, rcx, info1 = struct.unpack_from("<3Q", out.ram, LOG + i)
        if code == 0:
            break
        words.append((code, rcx & 0xFFFFFFFF, info1))
    return words


def test_unknown_msrs_l1_lets_through_fault_in_l2():
    out = same_three_ways(_sweep_image())
    assert out.reason == "exit" and out.status == 1, out.output
    known = Machine(RAM, stdout=None, extensions=[SvmExtension()]).msrs.owners
    pm = _msrpm()
    want, faults = [], 0
    for msr in _sweep() * 2:
        for write in (0, 1):
            where = msrpm_bit_offset(msr)
            if where is None or pm[where[0]] >> (where[1] + write) & 1:
                want.append((VMEXIT_MSR, msr, write))
            elif msr not in known:
                faults += 1
    assert _exits(out) == want
    assert struct.unpack_from("<Q", out.ram, GP_COUNT)[0] >= faults
    assert out.answered >= faults - 20, (out.answered, faults)


def test_gp_intercepted_by_l1_is_reflected():
    """L1 intercepts #GP: every fault L0 raises for L2 becomes L1's exit, none is C's."""
    out = same_three_ways(_sweep_image(exceptions=1 << GP))
    assert out.reason == "exit" and out.status == 1, out.output
    assert out.answered == 0
    exits = _exits(out)
    assert sum(code == 0x40 + GP for code, _, _ in exits) > 500
    assert struct.unpack_from("<Q", out.ram, GP_COUNT)[0] == 0


def test_under_nested_paging(tmp_path):
    """L2 under nested paging, L1 intercepting no MSR (tests/test_fast_deliver.py's guest)."""
    src = tmp_path / "l2.S"
    src.write_text(L2_GUEST)
    out = same_three_ways(assemble_source(str(src)))
    assert out.reason == "exit" and b"not ok" not in out.output, out.output
    # 200 unknown-MSR accesses in L2; the #PF after each pair is Python's, and the first
    # access after it too (it puts the replay state back)
    assert out.answered >= 80, out.answered
