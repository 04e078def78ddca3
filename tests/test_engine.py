"""svmemu's own Unicorn engine (emu/engine/unicorn_build): what each patch must keep exact, and
that svmemu still runs, and says so, on the stock wheel's library.

0001 (code-page tracking) lets stores skip the slow path on pages without translated code: code
rewritten by the guest through the same or another mapping, by another world, by Python, or by
a snapshot restore must still be the code that runs. 0002 and 0004 (exit-request tests inline at
block start, and after an access only in its slow path) must keep every way of stopping a run
working: a block, memory or MMIO hook's emu_stop, the timeout's watchdog thread.
0003 is tested in tests/test_npf.py (NX nested leaves over guest page tables).

These run on whichever engine the suite runs on (CI: the patched one, SVMEMU_ENGINE=patched);
the stock-engine tests run a child process with SVMEMU_ENGINE=stock."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from unicorn import UC_ARCH_X86, UC_HOOK_BLOCK, UC_MODE_64, Uc
from unicorn.x86_const import UC_X86_REG_R12, UC_X86_REG_R13, UC_X86_REG_RAX, UC_X86_REG_RIP

from emu.core import snapshot
from emu.engine import replay
from emu.engine.unicorn_build import build, loader
from emu.core.machine import Machine
from svm_ext.extension import SvmExtension
from tests.nested_image import EXIT_PASS, L2_CODE, nested_image, vmcb12
from tests.tinyimage import BODY, asm64, long_mode_image, to_elf32

ROOT = Path(__file__).resolve().parents[1]
FUNC = BODY + 0x3000             # a function alone on its 4 KiB page: `mov eax, imm32; ret`
ALIAS = 0x3FE00000               # a second virtual mapping of BODY's 2 MiB page (PD entry 511)
ROUNDS = 40


def _machine(body: str, extra: list[tuple[int, bytes]] = ()) -> Machine:
    img = long_mode_image(body)
    img.segments += [(FUNC, asm64("mov eax, 0x1234\n ret\n", FUNC))] + list(extra)
    m = Machine(64 << 20, stdout=None, extensions=[SvmExtension()])
    m.load_multiboot(img, "engine-test")
    return m


# ---- 0001: stores to pages that hold code -----------------------------------------------------

def test_self_modifying_code_through_the_same_and_another_mapping():
    """Each round rewrites FUNC's immediate, then calls it: first through ALIAS (a second
    virtual mapping of the same page, whose TLB entry was made writable-and-clean by an earlier
    store before FUNC was ever translated), then through FUNC's own address. Every call must
    return the value just stored: the page's translated code is invalidated by stores through
    either mapping, in whatever order the TLB entries and translations were made."""
    body = f"""
        mov rax, {0x200000 | 0x83}
        mov rbx, {0x22000 + 511 * 8}
        mov [rbx], rax
        mov rbx, {ALIAS}
        invlpg [rbx]
        mov rbx, {ALIAS + FUNC - 0x200000 + 0x800}
        mov qword ptr [rbx], 7              # a store to the page before any code on it
        xor r12, r12
        xor r13, r13
    again:
        mov rbx, {ALIAS + FUNC - 0x200000 + 1}
        mov dword ptr [rbx], r13d
        mov rax, {FUNC}
        call rax
        add r12, rax
        lea ecx, [r13 + r13]
        mov rbx, {FUNC + 1}
        mov dword ptr [rbx], ecx
        mov rax, {FUNC}
        call rax
        add r12, rax
        inc r13
        cmp r13, {ROUNDS}
        jne again
        {EXIT_PASS}
    """
    m = _machine(body)
    res = m.run(timeout=30)
    assert res.reason == "exit", res
    assert m.uc.reg_read(UC_X86_REG_R12) == 3 * sum(range(ROUNDS))


def test_code_rewritten_within_its_own_block():
    """A store that rewrites the next instruction of the block it runs in (precise SMC)."""
    body = f"""
        xor r12, r12
        mov r13, {ROUNDS}
    again:
        mov rbx, patch + 1
        mov dword ptr [rbx], r13d
    patch:
        mov eax, 0
        add r12, rax
        dec r13
        jnz again
        {EXIT_PASS}
    """
    m = _machine(body)
    res = m.run(timeout=30)
    assert res.reason == "exit", res
    assert m.uc.reg_read(UC_X86_REG_R12) == sum(range(1, ROUNDS + 1))


def test_cross_modifying_code_l1_rewrites_l2():
    """L1 rewrites the immediate of L2's code between VMRUNs (another world, another mapping
    of the page: L2 runs under its own CR3); every L2 run must see the value L1 just wrote."""
    l2 = "mov eax, 0\n vmmcall\n"
    l1 = f"""
        xor r12, r12
        xor r13, r13
    again:
        mov rbx, {L2_CODE + 1}
        mov dword ptr [rbx], r13d
        mov qword ptr [rdi + 0x578], {L2_CODE}
        mov rax, rdi
        vmrun
        add r12, qword ptr [rdi + 0x5F8]
        inc r13
        cmp r13, {ROUNDS}
        jne again
    """ + EXIT_PASS
    m = Machine(64 << 20, stdout=None, extensions=[SvmExtension()])
    m.load_multiboot(nested_image(l1, l2, vmcb12()), "engine-test")
    res = m.run(timeout=30)
    assert res.reason == "exit", res
    assert m.uc.reg_read(UC_X86_REG_R12) == sum(range(ROUNDS))


HALT_BODY = f"""
    mov rax, {FUNC}
    call rax
    mov r12, rax
    mov rbx, {FUNC + 1}
    mov dword ptr [rbx + 0x800], 1          # a store to the code page: its entry turns clean?
    hlt
    mov rax, {FUNC}
    call rax
    mov r13, rax
    {EXIT_PASS}
"""


def test_code_written_from_python_then_executed():
    """Python writes new code into RAM (the mmap Unicorn runs from) and removes the page's
    translations with ctl_remove_cache, as svmemu's debugger and snapshot code do: the guest's
    next call runs the new code."""
    m = _machine(HALT_BODY)
    assert m.run(timeout=30).reason == "halt"
    assert m.uc.reg_read(UC_X86_REG_R12) == 0x1234
    new = asm64("mov eax, 0x5678\n ret\n", FUNC)
    m.ram[FUNC:FUNC + len(new)] = new
    m.uc.ctl_remove_cache(FUNC, FUNC + len(new))
    assert m.run(timeout=30).reason == "exit"
    assert m.uc.reg_read(UC_X86_REG_R13) == 0x5678


def test_snapshot_restore_brings_back_rewritten_code():
    """The guest rewrites FUNC after the snapshot; restoring the snapshot must run the original
    code again (the restore rewrites RAM from Python and drops translations)."""
    body = f"""
        mov rax, {FUNC}
        call rax
        mov r12, rax
        hlt
        mov rbx, {FUNC + 1}
        mov dword ptr [rbx], 0x9999
        mov rax, {FUNC}
        call rax
        mov r13, rax
        {EXIT_PASS}
    """
    m = _machine(body)
    assert m.run(timeout=30).reason == "halt"
    snap = snapshot.take(m)
    for _ in range(2):
        assert m.run(timeout=30).reason == "exit"
        assert m.uc.reg_read(UC_X86_REG_R13) == 0x9999
        snapshot.restore(m, snap)
        assert m.ram[FUNC + 1:FUNC + 5] == (0x1234).to_bytes(4, "little")
        m.uc.reg_write(UC_X86_REG_R13, 0)


# ---- 0002: stopping a run ---------------------------------------------------------------------

def test_block_hook_calling_emu_stop_stops_a_self_chained_loop():
    """A block hook that calls emu_stop: the loop's block is chained to itself and never returns
    to the dispatcher, so only the exit-request test at block start can end the run. It must end
    at the block's start, with the PC there."""
    code = asm64("top:\n inc rax\n jmp top\n", 0x1000)
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 0x10000)
    uc.mem_write(0x1000, code)
    seen = []

    def on_block(uc: Uc, addr: int, size: int, _data: object) -> None:
        seen.append(addr)
        if len(seen) == 1000:
            uc.emu_stop()

    uc.hook_add(UC_HOOK_BLOCK, on_block)
    uc.emu_start(0x1000, 0xFFFF)
    assert len(seen) == 1000
    assert uc.reg_read(UC_X86_REG_RIP) == 0x1000
    assert uc.reg_read(UC_X86_REG_RAX) in (999, 1000)


def test_stop_from_another_thread_puts_the_pc_at_the_loop_with_a_code_hook_elsewhere():
    """emu_stop from another thread while a self-chained block spins, with a UC_HOOK_CODE that
    covers some other address (a gdb breakpoint does this): a chained block never stores its
    PC, and code hooks only sync it for the instructions they cover, so the exit at block start
    must put the PC at the block itself (the loop), not leave the one from before the loop."""
    import threading
    from unicorn import UC_HOOK_CODE
    code = asm64("mov rcx, 5\n jmp spin\n nop\n spin:\n inc rax\n jmp spin\n", 0x1000)
    spin = 0x1000 + len(code) - 5          # inc rax (3 bytes) + jmp spin (2 bytes)
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 0x10000)
    uc.mem_write(0x1000, code)
    uc.hook_add(UC_HOOK_CODE, lambda *_: None, None, 0x9000, 0x9000)
    timer = threading.Timer(0.3, uc.emu_stop)
    timer.start()
    uc.emu_start(0x1000, 0xFFFF, timeout=20_000_000)
    timer.join()
    assert uc.reg_read(UC_X86_REG_RIP) == spin
    assert uc.reg_read(UC_X86_REG_RAX) > 1000


_HOOKED_LOOP = """
    mov rsi, 0x8000
    xor rcx, rcx
top:
    inc rcx
    mov [rsi], rcx
    mov [rsi + 8], rcx
    mov rax, [rsi + 16]
    add rax, 1
    mov [rsi + 16], rax
    jmp top
"""


@pytest.mark.parametrize("kind, want", [
    # (RIP, RCX, the three qwords at 0x8000): what stock unicorn 2.1.4 leaves (measured there)
    ("write", (0x100D, 3, [3, 2, 2])),      # 7th write = 3rd round's first store, done; PC on it
    ("read", (0x1014, 7, [7, 7, 6])),       # 7th read = 7th round's load; PC on it
])
def test_memory_hook_calling_emu_stop_stops_at_the_access(kind, want):
    """A UC_HOOK_MEM_* callback calling emu_stop ends the run at the accessing instruction, with
    the state stock unicorn leaves: the exit-request test after an access now runs only in the
    access's slow path (0004), where every hooked access goes."""
    from unicorn import UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE
    from unicorn.x86_const import UC_X86_REG_RCX
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 1 << 20)
    uc.mem_write(0x1000, asm64(_HOOKED_LOOP, 0x1000))
    calls = []

    def hook(uc: Uc, _access: int, _addr: int, _size: int, _value: int, _data: object) -> None:
        calls.append(1)
        if len(calls) == 7:
            uc.emu_stop()

    uc.hook_add(UC_HOOK_MEM_WRITE if kind == "write" else UC_HOOK_MEM_READ, hook,
                begin=0x8000, end=0x8FFF)
    uc.emu_start(0x1000, 0xFFFF)
    mem = uc.mem_read(0x8000, 24)
    got = (uc.reg_read(UC_X86_REG_RIP), uc.reg_read(UC_X86_REG_RCX),
           [int.from_bytes(mem[i:i + 8], "little") for i in (0, 8, 16)])
    assert got == want
    assert len(calls) == 7


def test_mmio_callback_calling_emu_stop_stops_at_the_access():
    """The same through an MMIO region (svmemu's APIC page is one; unicorn splits 8-byte MMIO
    accesses in two callbacks): the 4th callback, in the first 8-byte MMIO load, stops the run on
    that load, before its value reaches RAX; stock unicorn leaves the same state (measured
    there)."""
    from unicorn.x86_const import UC_X86_REG_RCX
    code = asm64("""
        mov rsi, 0x20000
        xor rcx, rcx
    top:
        inc rcx
        mov [rsi], rcx
        mov qword ptr [0x8000], rcx
        mov rax, [rsi + 8]
        jmp top
    """, 0x1000)
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 0x10000)
    uc.mem_write(0x1000, code)
    calls = []

    def read(uc: Uc, _off: int, _size: int, _data: object) -> int:
        calls.append("r")
        if len(calls) == 4:
            uc.emu_stop()
        return 0x77

    def write(uc: Uc, _off: int, _size: int, _value: int, _data: object) -> None:
        calls.append("w")
        if len(calls) == 4:
            uc.emu_stop()

    uc.mmio_map(0x20000, 0x1000, read, None, write, None)
    uc.emu_start(0x1000, 0xFFFF)
    assert (uc.reg_read(UC_X86_REG_RIP), uc.reg_read(UC_X86_REG_RCX),
            uc.reg_read(UC_X86_REG_RAX)) == (0x1017, 1, 0)
    assert int.from_bytes(uc.mem_read(0x8000, 8), "little") == 1
    assert len(calls) == 4


def test_timeout_stops_an_endless_guest_loop():
    """The run loop's watchdog thread stops a guest spinning in one self-chained block."""
    m = _machine("spin:\n inc rax\n jmp spin\n")
    res = m.run(timeout=0.5)
    assert res.reason == "timeout", res
    assert BODY <= m.uc.reg_read(UC_X86_REG_RIP) < BODY + 0x10


def test_cli_timeout_exit_status(tmp_path):
    """`svmemu run --timeout` on the same endless loop ends with status 8."""
    image = tmp_path / "spin.bin"
    image.write_bytes(to_elf32(long_mode_image("spin:\n inc rax\n jmp spin\n")))
    r = subprocess.run([sys.executable, "-m", "emu.cli", "run", str(image), "--timeout", "1"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 8, (r.returncode, r.stderr)


# ---- which engine runs, and the stock one still works -----------------------------------------

def _svmemu(args: list[str], engine: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, SVMEMU_ENGINE=engine)
    env.pop("LIBUNICORN_PATH", None)
    return subprocess.run([sys.executable, "-m", "emu.cli", *args], capture_output=True,
                          text=True, timeout=300, cwd=ROOT, env=env)


def test_stock_engine_runs_a_bundled_guest_and_says_so_once():
    r = _svmemu(["run", "guests/svm_world_switch.S"], "stock")
    assert r.returncode == 1, (r.returncode, r.stderr)        # isa-debug-exit 0: pass
    assert "# pass" in r.stdout and "fail 0" in r.stdout, r.stdout
    assert r.stderr.count("running on the stock unicorn 2.1.4 wheel") == 1, r.stderr


def test_version_names_the_stock_engine():
    r = _svmemu(["--version"], "stock")
    assert r.returncode == 0, r.stderr
    assert "engine: stock unicorn 2.1.4 wheel" in r.stdout, r.stdout


def test_version_names_our_engine_and_its_patch_set():
    if build.built_library() is None:
        pytest.skip("svmemu's engine is not built (python -m emu.engine.unicorn_build)")
    r = _svmemu(["--version"], "patched")
    assert r.returncode == 0, r.stderr
    assert f"svmemu patch set {build.patchset_id()}" in r.stdout, r.stdout
    assert r.stderr == "", r.stderr


def test_this_process_runs_on_the_engine_it_chose():
    """The binding loaded the library the loader chose (not the wheel's behind its back)."""
    eng = loader.current()
    assert eng.kind == loader.select().kind
    if os.environ.get(loader.ENV) == "patched":
        assert eng.kind == "patched"


def test_the_c_helpers_are_built_where_the_patched_engine_is_required():
    """CI asks for the patched engine; the C exit paths (emu/engine/*.c) are built by the same
    install. Their tests skip without them, so a compile error must fail here instead of
    turning a whole class of tests into skips."""
    if os.environ.get(loader.ENV) != "patched":
        pytest.skip("only where the patched engine is required (SVMEMU_ENGINE=patched)")
    assert replay.available(), "emu.engine.creplay did not build: see the pip install output"


def test_without_a_built_engine_svmemu_falls_back_to_stock_and_says_so_once(tmp_path):
    """What a machine without cmake or a compiler gets: no library in the cache, SVMEMU_ENGINE
    unset (auto): the stock wheel runs the guest, with one line on stderr."""
    env = dict(os.environ, SVMEMU_CACHE_DIR=str(tmp_path))
    env.pop("SVMEMU_ENGINE", None)
    env.pop("LIBUNICORN_PATH", None)
    r = subprocess.run([sys.executable, "-m", "emu.cli", "run", "guests/hello.S"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert r.stderr.count("running on the stock unicorn 2.1.4 wheel (the patched engine is "
                          "not built)") == 1, r.stderr


def test_engine_build_without_tools_fails_in_one_line_and_install_goes_on(monkeypatch, tmp_path,
                                                                        capsys):
    monkeypatch.setenv("SVMEMU_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(build.shutil, "which", lambda name: None)
    with pytest.raises(build.BuildError, match="missing cmake, make, a C compiler"):
        build.build()
    assert build.build_engine(optional=True) is None
    assert "will run on the stock unicorn engine" in capsys.readouterr().err


def test_patches_apply_exactly_or_not_at_all(tmp_path):
    """The applier used by the build (no patch/git needed): a hunk whose context does not match
    stops the build instead of landing somewhere else."""
    from emu.engine.unicorn_build.patching import PatchError, apply_patch
    (tmp_path / "a").mkdir()
    f = tmp_path / "a" / "x.c"
    f.write_text("one\ntwo\nthree\n")
    diff = ("header text\n\ndiff --git a/a/x.c b/a/x.c\n--- a/a/x.c\n+++ b/a/x.c\n"
            "@@ -1,3 +1,3 @@\n one\n-two\n+TWO\n three\n")
    apply_patch(diff, tmp_path)
    assert f.read_text() == "one\nTWO\nthree\n"
    with pytest.raises(PatchError, match="hunk 1 does not apply"):
        apply_patch(diff, tmp_path)
    assert f.read_text() == "one\nTWO\nthree\n"
