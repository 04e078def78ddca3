"""`--max-insns N` (Machine.run(max_insns=N)): where a run with a limit ends.

svmemu's rule: the limit bounds instructions plus event deliveries, one step each, so that a
run with a limit always ends at a deterministic point, even in a delivery loop that retires no
instruction; `Machine.insns` counts the instructions alone.
"""
from __future__ import annotations

from unicorn.x86_const import UC_X86_REG_RAX, UC_X86_REG_RBX, UC_X86_REG_RIP

from emu.core.machine import Machine
from svm_ext.extension import SvmExtension
from tests.tinyimage import gate64, handler, long_mode_image

# rax counts the loop's turns, rbx its instructions (three a turn)
LOOP = "xor eax, eax\n xor ebx, ebx\n spin: inc rax\n add rbx, 3\n jmp spin"


def _machine(body: str, idt: dict | None = None, handlers: list[str] = ()) -> Machine:
    m = Machine(32 << 20, stdout=None, extensions=[SvmExtension()])
    m.load_multiboot(long_mode_image(body, idt or {}, list(handlers)), "test")
    m.count_insns = True
    return m


def _state(m: Machine) -> tuple[int, int, int]:
    return tuple(m.uc.reg_read(r) for r in (UC_X86_REG_RAX, UC_X86_REG_RBX, UC_X86_REG_RIP))


def test_limit_ends_exactly_after_n_instructions():
    """A run to N, then single steps, ends where one run to N + k ends, with N + k counted."""
    whole = _machine(LOOP)
    res = whole.run(max_insns=10_007)
    assert res.reason == "max-insns" and whole.insns == 10_007
    stepped = _machine(LOOP)
    assert stepped.run(max_insns=10_000).reason == "max-insns"
    assert stepped.insns == 10_000
    before = _state(stepped)
    for _ in range(7):
        assert stepped.run(max_insns=1).reason == "max-insns"
    assert stepped.insns == 10_007
    assert _state(stepped) == _state(whole)
    assert _state(stepped) != before


def test_limit_one_more_is_one_instruction_further():
    a, b = _machine(LOOP), _machine(LOOP)
    a.run(max_insns=5_000)
    b.run(max_insns=5_003)         # one loop turn: inc, add, jmp
    ra, rb_, _ = _state(a)
    rb2, rbx2, _ = _state(b)
    assert (rb2 - ra, rbx2 - rb_) == (1, 3)
    assert _state(a)[2] == _state(b)[2]


def test_db_loop_on_its_own_handler_ends_at_the_limit():
    """An instruction breakpoint (DR0, DR7.L0, execute) on the #DB handler's first instruction:
    every delivery raises the next #DB before an instruction retires. The limit counts the
    deliveries, so the run ends; the instructions counted stop growing once the loop starts."""
    body = f"""
        mov rax, {handler(0):#x}
        mov dr0, rax
        mov rax, 0x401
        mov dr7, rax
        jmp rax_target
    rax_target:
        mov rax, {handler(0):#x}
        jmp rax
    """
    m = _machine(body, {1: gate64(handler(0))}, ["nop\n iretq"])
    res = m.run(max_insns=400)
    assert res.reason == "max-insns", res
    assert m.insns < 50                  # the body's few instructions, then deliveries only
    assert m.uc.reg_read(UC_X86_REG_RIP) == handler(0)
    counted = m.insns
    res = m.run(max_insns=400)           # the loop goes on, and ends again at the limit
    assert res.reason == "max-insns" and m.insns == counted
