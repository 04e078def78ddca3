"""swap ≡ architectural: random guest programs give identical guest-visible results under both.

A program is a list of L1 steps (RDMSR/WRMSR(PAT) with valid and reserved values, edits of
vmcb12.g_pat, nested paging on/off, the #GP intercept on/off, VMRUN) where each VMRUN carries the
L2 steps L2 runs before it exits by VMMCALL (RDMSR/WRMSR(PAT)). The steps become two tables in
guest memory that a fixed L1 interpreter and a fixed L2 interpreter execute as real guest code,
so every RDMSR, WRMSR, VMRUN and #VMEXIT goes through the extension exactly as a hand-written
hypervisor's would. Everything either level observes is appended to a log in guest memory: PAT
reads, #GP faults (RIP and error code, from the shared IDT handler), and after each VMRUN the
exit code, EXITINFO1 and vmcb12.g_pat.

A run may also stop at random instruction counts, take a snapshot (in memory or through the file
format) and continue on a machine of the *other* model, including while L2 runs with nested
paging. The guest-visible result (all of RAM except the host-save page, which software must not
read; the log; vmcb12; the general registers; L1's PAT; how the run ended) must be the same as
a straight run under `architectural`.

The last tests show the comparison has teeth: a swap variant that forgets to restore hPAT at
#VMEXIT, and one that forgets to store gPAT into g_pat, are each caught by the same property.
"""
from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from functools import lru_cache

import pytest
from hypothesis import HealthCheck, Phase, given, settings, strategies as st
from unicorn import x86_const as X

from emu.core import snapshot
from emu.core.machine import Machine
from emu.core.msr import MSR_PAT
from svm_ext import pat
from svm_ext.extension import SvmExtension
from tests.nested_image import HSAVE, L2_CODE, VMCB12, nested_image, vmcb12
from tests.tinyimage import gate64, handler

EXAMPLES = int(os.environ.get("SVMEMU_PAT_EXAMPLES", "50"))   # ~10 s; raise for a long soak
RAM = 16 << 20
TABLE1 = 0x600000          # L1 steps: (op, arg) u64 pairs; op 0 ends the program
TABLE2 = 0x610000          # L2 steps; op 0 is VMMCALL (so running off a segment exits)
VARS = 0x620000            # [0] L1 step pointer, [8] L2 step pointer, [16] log pointer
LOG = 0x630000             # (tag, value) u64 pairs
LOG_END = 0x700000
L2_STACK = 0x5F0000

# L1 ops
END, L1_RDPAT, L1_WRPAT, SET_GPAT, SET_NPT, SET_GP_INTERCEPT, VMRUN = range(7)
# L2 ops
L2_EXIT, L2_RDPAT, L2_WRPAT = 0, 1, 2
# log tags
T_L1_PAT, T_L2_PAT, T_FAULT_RIP, T_FAULT_ERR, T_EXITCODE, T_EXITINFO1, T_G_PAT = range(1, 8)

L1 = f"""
l1_loop:
    mov rsi, {VARS}
    mov rbx, [rsi]
    mov rax, [rbx]
    mov r8, [rbx + 8]
    add qword ptr [rsi], 16
    cmp rax, {END}
    je l1_end
    cmp rax, {L1_RDPAT}
    je l1_rdpat
    cmp rax, {L1_WRPAT}
    je l1_wrpat
    cmp rax, {SET_GPAT}
    je l1_set_gpat
    cmp rax, {SET_NPT}
    je l1_set_npt
    cmp rax, {SET_GP_INTERCEPT}
    je l1_set_gp
    cmp rax, {VMRUN}
    je l1_vmrun
    jmp l1_end
l1_rdpat:
    mov ecx, 0x277
    rdmsr
    shl rdx, 32
    or rax, rdx
    mov r9, {T_L1_PAT}
    call log
    jmp l1_loop
l1_wrpat:
    mov eax, r8d
    mov rdx, r8
    shr rdx, 32
    mov ecx, 0x277
    wrmsr
    jmp l1_loop
l1_set_gpat:
    mov [rdi + 0x668], r8
    jmp l1_loop
l1_set_npt:
    mov [rdi + 0x90], r8
    jmp l1_loop
l1_set_gp:
    mov [rdi + 0x8], r8d
    jmp l1_loop
l1_vmrun:
    mov rax, {L2_CODE}
    mov [rdi + 0x578], rax
    mov rax, {L2_STACK}
    mov [rdi + 0x5D8], rax
    mov rax, rdi
    vmrun
    mov rdi, {VMCB12}
    mov rax, [rdi + 0x70]
    mov r9, {T_EXITCODE}
    call log
    mov rax, [rdi + 0x78]
    mov r9, {T_EXITINFO1}
    call log
    mov rax, [rdi + 0x668]
    mov r9, {T_G_PAT}
    call log
    jmp l1_loop
l1_end:
    mov al, 0
    out 0xf4, al
log:
    mov r10, {VARS}
    mov r11, [r10 + 16]
    mov [r11], r9
    mov [r11 + 8], rax
    add qword ptr [r10 + 16], 16
    ret
"""

L2 = f"""
l2_loop:
    mov rsi, {VARS}
    mov rbx, [rsi + 8]
    mov rax, [rbx]
    mov r8, [rbx + 8]
    add qword ptr [rsi + 8], 16
    cmp rax, {L2_RDPAT}
    je l2_rdpat
    cmp rax, {L2_WRPAT}
    je l2_wrpat
    vmmcall
    jmp l2_loop
l2_rdpat:
    mov ecx, 0x277
    rdmsr
    shl rdx, 32
    or rax, rdx
    mov r10, {VARS}
    mov r11, [r10 + 16]
    mov qword ptr [r11], {T_L2_PAT}
    mov [r11 + 8], rax
    add qword ptr [r10 + 16], 16
    jmp l2_loop
l2_wrpat:
    mov eax, r8d
    mov rdx, r8
    shr rdx, 32
    mov ecx, 0x277
    wrmsr
    jmp l2_loop
"""

# #GP in L1, or in L2 when L1 does not intercept it (L2 shares L1's IDT): log RIP and error code,
# then skip the two-byte WRMSR.
GP_HANDLER = f"""
    push rax
    push rbx
    mov rax, {VARS}
    mov rbx, [rax + 16]
    mov qword ptr [rbx], {T_FAULT_RIP}
    mov rax, [rsp + 24]
    mov [rbx + 8], rax
    mov qword ptr [rbx + 16], {T_FAULT_ERR}
    mov rax, [rsp + 16]
    mov [rbx + 24], rax
    add rbx, 32
    mov rax, {VARS}
    mov [rax + 16], rbx
    add qword ptr [rsp + 24], 2
    pop rbx
    pop rax
    add rsp, 8
    iretq
"""

GPRS = [X.UC_X86_REG_RAX, X.UC_X86_REG_RBX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX,
        X.UC_X86_REG_RSI, X.UC_X86_REG_RDI, X.UC_X86_REG_RBP, X.UC_X86_REG_RSP,
        X.UC_X86_REG_R8, X.UC_X86_REG_R9, X.UC_X86_REG_R10, X.UC_X86_REG_R11,
        X.UC_X86_REG_R12, X.UC_X86_REG_R13, X.UC_X86_REG_R14, X.UC_X86_REG_R15,
        X.UC_X86_REG_RIP, X.UC_X86_REG_RFLAGS]
VALID_TYPES = (0, 1, 4, 5, 6, 7)


# ---- broken variants: the property must catch them -------------------------------------------------

class SwapForgetsHpat(pat.Swap):
    """The bug patch 4 of the series fixes: #VMEXIT stores g_pat but leaves L2's value in the
    one storage, so L1 continues with L2's PAT."""

    def on_vmexit(self, ext, vm) -> None:
        if self.gpat_valid:
            vm.save.g_pat = self._storage()
            self.gpat_valid = False


class SwapForgetsGpatSave(pat.Swap):
    """#VMEXIT restores L1's value but never writes gPAT back to vmcb12.g_pat."""

    def on_vmexit(self, ext, vm) -> None:
        if self.gpat_valid:
            self._set_storage(self.parked_hpat)
            self.gpat_valid = False


MODELS = {"architectural": pat.Architectural, "swap": pat.Swap,
          "swap-forgets-hpat": SwapForgetsHpat, "swap-forgets-gpat-save": SwapForgetsGpatSave}


# ---- machines ----------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def image():
    idt = {13: gate64(handler(0))}
    vm = vmcb12(nested_ctl=1, n_cr3=0x20000, g_pat=0x0007040600070406)
    return nested_image(L1, L2, vm, idt=idt, handlers=[GP_HANDLER])


@dataclass
class Rig:
    """One machine of one model, and its state right after loading the image."""
    m: Machine
    ext: SvmExtension
    boot: snapshot.Snapshot


@lru_cache(maxsize=None)
def rig(model: str, replay: bool = True) -> Rig:
    """`replay`: whether repeated world switches may run in C (emu/engine/replay.py); the reference
    runs below are all-Python, so the property also holds the C replay to the Python path."""
    ext = SvmExtension()
    ext.pat = MODELS[model]()          # before the machine attaches the extension
    m = Machine(RAM, stdout=None, extensions=[ext])
    if m.replay is not None:
        m.replay.enabled = replay
    m.load_multiboot(image(), "pat-equivalence")
    # A few instructions into the 32-bit entry: L1 runs, and has not read its tables yet.
    assert m.run(max_insns=5).reason == "max-insns" and m.level() == "L1"
    return Rig(m, ext, snapshot.take(m))


def tables(program: list[tuple]) -> tuple[bytes, bytes]:
    t1, t2 = [], []
    for step in program:
        if step[0] == VMRUN:
            for l2 in step[1]:
                t2 += [l2[0], l2[1] if len(l2) > 1 else 0]
            t2 += [L2_EXIT, 0]
            t1 += [VMRUN, 0]
        else:
            t1 += [step[0], step[1] if len(step) > 1 else 0]
    t1 += [END, 0]
    return struct.pack(f"<{len(t1)}Q", *t1), struct.pack(f"<{len(t2)}Q", *t2)


def start(model: str, program: list[tuple], replay: bool = True) -> Rig:
    r = rig(model, replay)
    snapshot.restore(r.m, r.boot)
    t1, t2 = tables(program)
    ram = r.m.ram
    ram[TABLE1:TABLE1 + len(t1)] = t1
    ram[TABLE2:TABLE2 + len(t2)] = t2
    ram[VARS:VARS + 24] = struct.pack("<QQQ", TABLE1, TABLE2, LOG)
    return r


def observe(r: Rig, res) -> dict:
    """Everything the guest can see. The host-save page is left out: its format is the CPU's
    business and software must not read it (APM 15.30.4); the models may differ there."""
    m = r.m
    ram = memoryview(m.ram)
    digest = hashlib.sha256(ram[:HSAVE])
    digest.update(ram[HSAVE + 0x1000:])
    log_end = struct.unpack_from("<Q", ram, VARS + 16)[0]
    assert LOG <= log_end < LOG_END
    log = list(struct.iter_unpack("<QQ", bytes(ram[LOG:log_end])))
    return dict(reason=res.reason, status=res.status, log=log,
                vmcb12=bytes(ram[VMCB12:VMCB12 + 0x1000]),
                ram=digest.hexdigest(), gprs=[m.uc.reg_read(reg) for reg in GPRS],
                level=m.level(), l1_pat=m.msrs.rdmsr(MSR_PAT) if m.level() == "L1" else None,
                pat_section=r.ext.pat.state())   # not guest-visible, but must not differ either


def straight(model: str, program: list[tuple], replay: bool = True) -> dict:
    r = start(model, program, replay)
    return observe(r, r.m.run(timeout=20))


def hopping(first: str, program: list[tuple], cuts: list[tuple[int, str, bool]],
            levels: list[str] | None = None) -> dict:
    """Run `program` starting on `first`; at each cut (instructions to run, model to move to,
    through a file or not) snapshot and continue on a machine of that model."""
    r = start(first, program)
    for n, model, via_file in cuts:
        res = r.m.run(max_insns=n)
        if res.reason != "max-insns":
            return observe(r, res)
        if levels is not None:
            levels.append(r.m.level())
        snap = snapshot.take(r.m)
        if via_file:
            snap = snapshot.decode(snapshot.encode(snap))
        r = rig(model)
        snapshot.restore(r.m, snap)
    return observe(r, r.m.run(timeout=20))


# ---- programs ----------------------------------------------------------------------------------

def _pat_from(types: list[int]) -> int:
    return sum(t << (8 * i) for i, t in enumerate(types))


valid_pats = st.lists(st.sampled_from(VALID_TYPES), min_size=8, max_size=8).map(_pat_from)
reserved_pats = st.tuples(valid_pats, st.integers(0, 7),
                          st.sampled_from([2, 3, 8, 0x0E, 0x10, 0x86, 0xFF])).map(
    lambda t: (t[0] & ~(0xFF << (8 * t[1]))) | (t[2] << (8 * t[1])))
pats = st.one_of(valid_pats, valid_pats, reserved_pats, st.integers(0, (1 << 64) - 1))
l2_steps = st.lists(st.one_of(st.just((L2_RDPAT,)), st.tuples(st.just(L2_WRPAT), pats)),
                    max_size=6)
l1_steps = st.one_of(
    st.just((L1_RDPAT,)),
    st.tuples(st.just(L1_WRPAT), pats),
    st.tuples(st.just(SET_GPAT), pats),
    st.tuples(st.just(SET_NPT), st.sampled_from([0, 1])),
    st.tuples(st.just(SET_GP_INTERCEPT), st.sampled_from([0, 1 << 13])),
    st.tuples(st.just(VMRUN), l2_steps),
    st.tuples(st.just(VMRUN), l2_steps),
    st.tuples(st.just(VMRUN), l2_steps),
)
programs = st.lists(l1_steps, min_size=1, max_size=14).map(lambda p: p + [(L1_RDPAT,)])
cuts = st.lists(st.tuples(st.integers(1, 120), st.sampled_from(["architectural", "swap"]),
                          st.booleans()), max_size=4)


def check_equivalent(model: str, program: list[tuple], cut_list: list) -> None:
    """`model` must give what architectural gives (all in Python), straight (with repeated
    switches replayed in C) and hopping between machines."""
    want = straight("architectural", program, replay=False)
    assert want["reason"] == "exit", want["reason"]
    assert straight(model, program) == want
    assert straight("architectural", program) == want
    other = "architectural" if model != "architectural" else "swap"
    hops = [(n, other if i % 2 == 0 else model, via) for i, (n, _, via) in enumerate(cut_list)]
    assert hopping(model, program, hops) == want
    assert hopping(other, program, [(n, m, via) for n, m, via in cut_list]) == want


@pytest.mark.slow       # the long one (~2 minutes); CI runs it: nothing deselects slow
@settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(programs, cuts)
def test_swap_is_architectural(program, cut_list):
    check_equivalent("swap", program, cut_list)


# ---- hand-picked programs: the interesting cases are reached ------------------------------------

G = 0x0606060606060606
H = 0x0007010600070406
N = 0x0005040100070406
BAD = 0x0007040600070402
ROUND_TRIP = [(L1_WRPAT, H), (SET_GPAT, G), (VMRUN, [(L2_RDPAT,), (L2_WRPAT, N), (L2_RDPAT,)]),
              (L1_RDPAT,), (VMRUN, [(L2_RDPAT,), (L2_WRPAT, BAD), (L2_RDPAT,)]),
              (SET_GP_INTERCEPT, 1 << 13), (VMRUN, [(L2_WRPAT, BAD), (L2_RDPAT,)]),
              (SET_GPAT, BAD), (VMRUN, [(L2_RDPAT,)]), (L1_WRPAT, BAD), (L1_RDPAT,)]


def test_round_trip_log_is_the_architectural_one():
    log = straight("architectural", ROUND_TRIP)["log"]
    assert log == [
        (T_L2_PAT, G), (T_L2_PAT, N), (T_EXITCODE, 0x81), (T_EXITINFO1, 0), (T_G_PAT, N),
        (T_L1_PAT, H),
        (T_L2_PAT, N), (T_FAULT_RIP, log[7][1]), (T_FAULT_ERR, 0), (T_L2_PAT, N),
        (T_EXITCODE, 0x81), (T_EXITINFO1, 0), (T_G_PAT, N),
        (T_EXITCODE, 0x4D), (T_EXITINFO1, 0), (T_G_PAT, N),      # #GP intercepted by L1
        (T_EXITCODE, (1 << 64) - 1), (T_EXITINFO1, 0), (T_G_PAT, BAD),   # reserved g_pat
        (T_FAULT_RIP, log[19][1]), (T_FAULT_ERR, 0),             # L1's own reserved WRMSR
        (T_L1_PAT, H),
    ]
    assert L2_CODE <= log[7][1] < L2_CODE + 0x100          # the fault was L2's WRMSR
    assert not L2_CODE <= log[19][1] < L2_CODE + 0x100     # this one L1's


def test_snapshots_land_in_l2_with_nested_paging_and_cross_models():
    levels: list[str] = []
    want = straight("architectural", ROUND_TRIP)
    for n in range(5, 200, 9):
        for first, then in (("swap", "architectural"), ("architectural", "swap")):
            got = hopping(first, ROUND_TRIP, [(n, then, n % 2 == 0)], levels)
            assert got == want, (n, first)
    assert {"L1", "L2"} <= set(levels)


@pytest.mark.parametrize("broken", ["swap-forgets-hpat", "swap-forgets-gpat-save"])
def test_round_trip_catches_broken_variant(broken):
    assert straight(broken, ROUND_TRIP) != straight("architectural", ROUND_TRIP)


@pytest.mark.parametrize("broken", ["swap-forgets-hpat", "swap-forgets-gpat-save"])
def test_property_finds_a_counterexample_for_broken_variant(broken):
    """The same property and strategies, pointed at a broken model, must fail."""
    @settings(max_examples=200, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(programs, cuts)
    def prop(program, cut_list):
        check_equivalent(broken, program, cut_list)

    with pytest.raises(AssertionError):
        prop()
