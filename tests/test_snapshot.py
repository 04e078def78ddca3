"""Snapshots: a machine snapshotted at instruction N and resumed must be indistinguishable from
one that ran straight through, and a damaged file must give one SnapshotError, never a traceback.

The guest is built to notice every piece of state a snapshot could drop: it prints to the UART,
takes #UD, #GP and #BP, writes PAT and toggles EFER.NXE and folds what it reads back (and RDTSC,
CPUID) into a checksum, patches its own code (stale translations would show), and remaps a page
it reads through (a stale TLB entry would show).
"""
from __future__ import annotations

import hashlib
import struct

import pytest
import unicorn
from hypothesis import given, settings, strategies as st
from unicorn import x86_const as X

from emu.core import snapshot
from emu.errors import SnapshotError
from emu.core.extension import Extension
from emu.engine.hostvm import VMCB01
from emu.engine.hw_switch import (CS, HF_GUEST, OFF_EFER, OFF_HFLAGS, OFF_INTERCEPT, OFF_VM_HSAVE,
                           OFF_VM_VMCB, SS, TR)
from emu.core.machine import Machine
from svm_ext.extension import SvmExtension
from tests.tinyimage import gate64, handler, long_mode_image, to_elf32

ITER = 64
RAM = 16 << 20
PD3 = 0x22000 + 3 * 8        # the PD entry mapping VA 0x600000
GUEST = f"""
    xor r15, r15
    xor r14, r14
    xor r13, r13
    xor r12, r12
    mov rax, 0x600000
    mov rbx, 0x1111111111111111
    mov [rax], rbx
    mov rax, 0xA00000
    mov rbx, 0x2222222222222222
    mov [rax], rbx
top:
    mov rax, r15
    and eax, 15
    add eax, 0x61
    mov edx, 0x3f8
    out dx, al
    mov rbx, 0x600000
    mov rax, [rbx]
    add r14, rax
    rol r14, 7
    mov rax, 0x600087
    mov rcx, 0xA00087
    test r15, 1
    cmovnz rax, rcx
    mov rcx, {PD3}
    mov [rcx], rax
    invlpg [rbx]
    mov rax, [rbx]
    add r14, rax
    mov ecx, 0x277
    rdmsr
    rol r14, 3
    add r14, rax
    mov eax, 0x00070406
    mov ebx, 0x00070106
    test r15, 2
    cmovnz eax, ebx
    mov edx, 0x00070406
    wrmsr
    rdmsr
    add r14, rax
    mov ecx, 0xC0000080
    rdmsr
    xor eax, 0x800
    wrmsr
    rdmsr
    add r14, rax
    mov ecx, 0x277
    mov eax, 2
    xor edx, edx
    wrmsr
    ud2
    int3
    rdtsc
    add r14, rax
    xor eax, eax
    cpuid
    add r14, rbx
    mov rax, {handler(3)}
    call rax
    add r14, rbx
    mov rax, {handler(3) + 1}
    mov [rax], r15d
    mov rax, 0x300000
    mov [rax + r15*8], r14
    mov edx, 0x3ff
    mov eax, r15d
    out dx, al
    inc r15
    cmp r15, {ITER}
    jb top
    mov edx, 0x3f8
    mov al, 10
    out dx, al
    mov rax, r14
    xor rax, r13
    xor rax, r12
    and eax, 0x3f
    out 0xf4, eax
"""
HANDLERS = [
    "inc r13\n add qword ptr [rsp], 2\n iretq",                     # #UD: skip ud2
    "inc r12\n add rsp, 8\n add qword ptr [rsp], 2\n iretq",        # #GP: skip wrmsr
    "add r13, 0x100\n iretq",                                       # #BP
    "mov ebx, 0x11111111\n ret",                                    # patched by the guest
]
# Points to snapshot at: inside the L0 trampoline before VMRUN (1, 2), the 32-bit entry, early
# long mode, and spread over the loop.
POINTS = [1, 2, 3, 40, 100, 777, 1501, 2222, 3001, 3999]

REGS = ["RAX", "RBX", "RCX", "RDX", "RSI", "RDI", "RSP", "RBP"] + [f"R{i}" for i in range(8, 16)] \
    + ["RIP", "RFLAGS", "CR0", "CR2", "CR3", "CR4", "CS", "SS", "DS", "FS_BASE", "GS_BASE"]


def guest_image():
    return long_mode_image(GUEST, {6: gate64(handler(0)), 13: gate64(handler(1)),
                                   3: gate64(handler(2))}, HANDLERS)


def fresh(ram: int = RAM, extensions=None) -> Machine:
    return Machine(ram, stdout=None,
                   extensions=[SvmExtension()] if extensions is None else extensions)


def booted(**kw) -> Machine:
    m = fresh(**kw)
    m.load_multiboot(guest_image(), "snapshot-test")
    return m


def observe(m: Machine, res) -> dict:
    """Everything the guest or its user can see at the end of a run."""
    return dict(reason=res.reason, status=res.status,
                regs={r: m.uc.reg_read(getattr(X, f"UC_X86_REG_{r}")) for r in REGS},
                serial=bytes(m.serial.output), ram=hashlib.sha256(m.ram).hexdigest(),
                msrs=dict(m.msrs.values), tsc=m.tsc,
                devices=[d.state() for d in m.devices])


@pytest.fixture(scope="module")
def straight():
    m = booted()
    res = m.run(timeout=30)
    assert res.reason == "exit"
    assert bytes(m.serial.output) == b"abcdefghijklmnop" * 4 + b"\n"
    return observe(m, res)


@pytest.fixture(scope="module")
def snapshot_file(tmp_path_factory):
    """A real snapshot taken in the middle of the loop (guest mode, paging on)."""
    m = booted()
    assert m.run(max_insns=1501).reason == "max-insns"
    path = tmp_path_factory.mktemp("snap") / "mid.snap"
    snapshot.save(m, str(path))
    return path.read_bytes()


# ---- continuation --------------------------------------------------------------------------------

def test_guest_is_longer_than_every_snapshot_point():
    m = booted()
    assert m.run(max_insns=max(POINTS)).reason == "max-insns"


@pytest.mark.parametrize("n", POINTS)
def test_resumed_from_file_matches_straight_run(n, straight):
    m = booted()
    assert m.run(max_insns=n).reason == "max-insns"
    data = snapshot.encode(snapshot.take(m))
    resumed = fresh()
    snapshot.restore(resumed, snapshot.decode(data))
    assert observe(resumed, resumed.run(timeout=30)) == straight


@pytest.mark.parametrize("n", POINTS[3:])
def test_reset_in_place_after_running_on(n, straight):
    """The fuzzing path: the same machine runs on past the snapshot (patching its code, remapping
    the page), then goes back. Catches stale translated code and stale TLB entries."""
    m = booted()
    m.run(max_insns=n)
    snap = snapshot.take(m)
    assert m.run(timeout=30).reason == "exit"
    for _ in range(2):
        snapshot.restore(m, snap)
        assert observe(m, m.run(timeout=30)) == straight


def test_context_blob_round_trips_with_hidden_state():
    m = booted()
    m.run(max_insns=1501)
    snap = snapshot.take(m)
    c = m.ctx.save()
    assert c.u32(OFF_HFLAGS) & HF_GUEST and c.u64(OFF_VM_VMCB) == VMCB01   # L1 in guest mode
    resumed = fresh()
    snapshot.restore(resumed, snapshot.decode(snapshot.encode(snap)))
    r = resumed.ctx.save()
    assert bytes(r.view) == snap.cpu == bytes(c.view)
    for off in (OFF_HFLAGS, OFF_EFER, OFF_VM_VMCB, OFF_INTERCEPT, OFF_VM_HSAVE):
        assert r.u64(off) == c.u64(off)
    for seg in (CS, SS, TR):
        assert r.seg(seg) == c.seg(seg)
    assert [r.cr(i) for i in (0, 3, 4)] == [c.cr(i) for i in (0, 3, 4)]
    assert snap.rip == resumed.uc.reg_read(X.UC_X86_REG_RIP)


def test_snapshot_is_not_changed_by_later_runs():
    m = booted()
    m.run(max_insns=777)
    snap = snapshot.take(m)
    before = snapshot.encode(snap)
    m.run(timeout=30)
    snapshot.restore(m, snap)
    m.run(timeout=30)
    assert snapshot.encode(snap) == before


def test_save_and_load_file(tmp_path, straight):
    m = booted()
    m.run(max_insns=2222)
    path = str(tmp_path / "s.snap")
    snapshot.save(m, path)
    assert snapshot.read(path).ram_size == RAM
    resumed = fresh()
    snap = snapshot.load(resumed, path)
    assert snap.format_version == snapshot.FORMAT_VERSION
    assert observe(resumed, resumed.run(timeout=30)) == straight


def test_same_state_gives_same_file():
    a, b = booted(), booted()
    a.run(max_insns=999)
    b.run(max_insns=999)
    assert snapshot.encode(snapshot.take(a)) == snapshot.encode(snapshot.take(b))


# ---- extensions and versions ---------------------------------------------------------------------

class Recorder(Extension):
    """An extension with a section, recording what it is handed back."""
    name = "recorder"

    def __init__(self) -> None:
        self.value = {"counter": 7, "blob": b"\x00\x01\xfe", "nested": {"list": [1, "two", None]}}
        self.loaded: dict | None = None

    def snapshot_state(self) -> dict:
        return self.value

    def load_snapshot_state(self, state: dict) -> None:
        self.loaded = state


def test_extension_section_round_trips_with_format_version():
    m = booted(extensions=[SvmExtension(), Recorder()])
    m.run(max_insns=100)
    data = snapshot.encode(snapshot.take(m))
    rec = Recorder()
    snapshot.restore(fresh(extensions=[SvmExtension(), rec]), snapshot.decode(data))
    assert rec.loaded == dict(Recorder().value, format_version=2)


def test_version_1_is_read_and_announced_to_extensions():
    m = booted(extensions=[SvmExtension(), Recorder()])
    m.run(max_insns=100)
    data = snapshot.encode(snapshot.take(m), format_version=1)
    snap = snapshot.decode(data)
    assert snap.format_version == 1
    assert snapshot.encode(snap) == data               # re-saving keeps the version it follows
    rec = Recorder()
    snapshot.restore(fresh(extensions=[SvmExtension(), rec]), snap)
    assert rec.loaded["format_version"] == 1


def test_in_memory_restore_hands_extension_a_private_copy():
    m = booted(extensions=[SvmExtension(), Recorder()])
    m.run(max_insns=100)
    snap = snapshot.take(m)
    m.extensions[1].value["counter"] = 99               # live state changes after the snapshot
    snapshot.restore(m, snap)
    m.extensions[1].loaded["nested"]["list"].append(4)  # the extension mutates what it got
    snapshot.restore(m, snap)
    assert m.extensions[1].loaded == dict(Recorder().value, format_version=2)


# ---- errors --------------------------------------------------------------------------------------

def _reseal(body: bytes) -> bytes:
    return body + hashlib.sha256(body).digest()


def _error(data: bytes) -> str:
    with pytest.raises(SnapshotError) as e:
        snapshot.decode(data, "x.snap")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("x.snap")
    return msg


def test_wrong_magic(snapshot_file):
    assert "not an svmemu snapshot" in _error(b"ELF\x7f" + snapshot_file[4:])
    assert "not an svmemu snapshot" in _error(b"")


def test_truncated(snapshot_file):
    assert "truncated" in _error(snapshot_file[:20])
    assert "checksum" in _error(snapshot_file[:-1])
    assert "checksum" in _error(snapshot_file[:len(snapshot_file) // 2])


def test_checksum_mismatch(snapshot_file):
    data = bytearray(snapshot_file)
    data[len(data) // 2] ^= 0x10
    assert "checksum mismatch" in _error(bytes(data))


def test_unknown_version(snapshot_file):
    body = bytearray(snapshot_file[:-32])
    struct.pack_into("<I", body, 8, 4)
    assert "format version 4" in _error(_reseal(bytes(body)))
    struct.pack_into("<I", body, 8, 0)
    assert "format version 0" in _error(bytes(body) + b"\0" * 32)


def test_valid_checksum_but_malformed_sections(snapshot_file):
    body = snapshot_file[:-32]
    assert "stray bytes" in _error(_reseal(body + b"junk"))
    fewer = bytearray(body)
    struct.pack_into("<I", fewer, 12, 5)
    _error(_reseal(bytes(fewer)))
    assert "ends inside the table" in _error(_reseal(body[:16]))
    none = bytearray(body[:16])
    struct.pack_into("<I", none, 12, 0)
    assert "section HEAD is missing" in _error(_reseal(bytes(none)))


def test_ram_size_mismatch(snapshot_file):
    snap = snapshot.decode(snapshot_file)
    with pytest.raises(SnapshotError, match="16 MiB of RAM but this machine has 32 MiB"):
        snapshot.restore(fresh(32 << 20), snap)


def test_other_unicorn_version(snapshot_file):
    snap = snapshot.decode(snapshot_file)
    snap.unicorn_version = "2.0.1"
    other = snapshot.decode(snapshot.encode(snap))
    with pytest.raises(SnapshotError, match="unicorn 2.0.1"):
        snapshot.restore(fresh(), other)
    assert unicorn.__version__ != "2.0.1"


def test_extension_mismatch(snapshot_file):
    with pytest.raises(SnapshotError, match="extensions svm but this machine has none"):
        snapshot.restore(fresh(extensions=[]), snapshot.decode(snapshot_file))


def test_missing_file(tmp_path):
    with pytest.raises(SnapshotError, match="cannot read snapshot"):
        snapshot.read(str(tmp_path / "nope.snap"))


_REAL_FILE: list[bytes] = []


def _real_file() -> bytes:
    """The mid-loop snapshot, made once (a hypothesis test cannot take the module fixture)."""
    if not _REAL_FILE:
        m = booted()
        m.run(max_insns=1501)
        _REAL_FILE.append(snapshot.encode(snapshot.take(m)))
    return _REAL_FILE[0]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_damaged_files_only_raise_snapshot_error(data):
    raw = bytearray(_real_file())
    kind = data.draw(st.sampled_from(["truncate", "flip", "flip-resealed", "splice-resealed"]))
    if kind == "truncate":
        raw = raw[:data.draw(st.integers(0, len(raw) - 1))]
    elif kind == "flip":
        bits = data.draw(st.sets(st.integers(0, 8 * len(raw) - 1), min_size=1, max_size=4))
        for bit in bits:
            raw[bit // 8] ^= 1 << (bit % 8)
    else:
        # A damaged body with a valid checksum exercises the parser itself.
        body = raw[:-32]
        if kind == "flip-resealed":
            pos = data.draw(st.integers(0, len(body) - 1))
            body[pos] ^= 1 << data.draw(st.integers(0, 7))
        else:
            cut = data.draw(st.integers(0, len(body)))
            body = body[:cut] + data.draw(st.binary(max_size=64)) + body[cut:]
        raw = bytearray(_reseal(bytes(body)))
    try:
        snap = snapshot.decode(bytes(raw))
    except SnapshotError as e:
        assert "\n" not in str(e)
        return
    assert kind in ("flip-resealed", "splice-resealed")   # a harmless change: still restorable
    try:
        snapshot.restore(fresh(), snap)
    except SnapshotError:
        pass


# ---- CLI ------------------------------------------------------------------------------------------

def _multiboot_file(path) -> None:
    """The test guest as a multiboot ELF file, as a user would hand it to svmemu or QEMU."""
    path.write_bytes(to_elf32(guest_image()))


def _have_loader() -> bool:
    try:
        from emu.loader.multiboot import parse_image  # noqa: F401
    except ImportError:
        return False
    return True


needs_loader = pytest.mark.skipif(not _have_loader(), reason="emu.loader.multiboot.parse_image "
                                  "has not landed yet")


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    from emu.cli.main import main
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


@needs_loader
def test_cli_run_snapshot_then_resume(tmp_path, capsys):
    image = tmp_path / "guest.bin"
    _multiboot_file(image)
    snap = str(tmp_path / "g.snap")
    full_status, full_out, _ = _cli(capsys, "run", str(image), "-m", "16")
    assert full_out == "abcdefghijklmnop" * 4 + "\n"
    status, first, err = _cli(capsys, "run", str(image), "-m", "16", "--snapshot-at", "2222",
                              "--snapshot", snap, "-q")
    assert status == 0 and err.count("\n") == 1 and "snapshot after 2222 instructions" in err
    status, rest, _ = _cli(capsys, "resume", snap)
    assert status == full_status and first + rest == full_out
    assert first and rest


def test_cli_resume(tmp_path, capsys, straight):
    m = booted()
    m.run(max_insns=1501)
    before = bytes(m.serial.output).decode()
    path = str(tmp_path / "a.snap")
    snapshot.save(m, path)
    status, out, err = _cli(capsys, "resume", path, "-q")
    assert status == straight["status"] and err == ""
    assert before + out == straight["serial"].decode()


def test_cli_resume_chain(tmp_path, capsys, straight):
    """resume can itself stop and snapshot again; the pieces add up to the straight run."""
    m = booted()
    m.run(max_insns=1000)
    before = bytes(m.serial.output).decode()
    a, b = str(tmp_path / "a.snap"), str(tmp_path / "b.snap")
    snapshot.save(m, a)
    status, mid, err = _cli(capsys, "resume", a, "--snapshot-at", "1000", "--snapshot", b)
    assert status == 0 and "written to" in err
    status, rest, _ = _cli(capsys, "resume", b)
    assert status == straight["status"]
    assert before + mid + rest == straight["serial"].decode()


def test_cli_resume_bad_file(tmp_path, capsys):
    bad = tmp_path / "bad.snap"
    bad.write_bytes(b"SVMEMUSN" + b"\0" * 100)
    status, out, err = _cli(capsys, "resume", str(bad))
    assert status == 2 and err.startswith("svmemu: error: ") and err.count("\n") == 1
    status, out, err = _cli(capsys, "resume", str(tmp_path / "missing.snap"))
    assert status == 2 and "cannot read snapshot" in err


def test_cli_snapshot_options_go_together(tmp_path, capsys):
    status, _, err = _cli(capsys, "resume", "x.snap", "--snapshot-at", "5")
    assert status == 2 and "--snapshot-at and --snapshot must be given together" in err
    status, _, err = _cli(capsys, "resume", "x.snap", "--snapshot-at", "5", "--snapshot", "y",
                          "--max-insns", "9")
    assert status == 2 and "cannot be combined" in err


def test_cli_no_snapshot_when_guest_ends_first(tmp_path, capsys, straight):
    m = booted()
    m.run(max_insns=3999)
    a = str(tmp_path / "a.snap")
    snapshot.save(m, a)
    out_file = tmp_path / "never.snap"
    status, _, err = _cli(capsys, "resume", a, "--snapshot-at", "1000000", "--snapshot",
                          str(out_file))
    assert status == straight["status"] and "no snapshot written" in err
    assert not out_file.exists()



# ---- a nested guest ------------------------------------------------------------------------------

def _nested_image(nested_paging: bool):
    """L1 runs L2 twelve times; both print, both write PAT, L2 exits by VMMCALL. Snapshot points
    land in L1, in L2 and inside the world switches. The end is HLT, not isa-debug-exit: HLT stops
    with a precise RIP, while a debug-exit write arrives through the OUT hook, whose RIP depends
    on where the translation block began (and so on the run's history)."""
    from tests.nested_image import nested_image, vmcb12
    l1 = """
    again:
        mov rax, rdi
        vmrun
        inc r12
        mov rax, [rdi + 0xC8]
        mov [rdi + 0x578], rax
        mov ecx, 0x277
        rdmsr
        add r14, rax
        mov eax, 0x00070106
        mov edx, 0x00070406
        test r12, 1
        jz keep
        mov eax, 0x00070406
    keep:
        wrmsr
        mov edx, 0x3f8
        mov al, 0x4c
        out dx, al
        cmp r12, 12
        jb again
        cli
        hlt
    """
    l2 = """
    l2:
        inc r13
        mov ecx, 0x277
        rdmsr
        add r15, rax
        mov eax, 0x00070406
        mov edx, 0x00010406
        test r13, 2
        jz same
        mov edx, 0x00070406
    same:
        wrmsr
        mov edx, 0x3f8
        mov al, 0x32
        out dx, al
        vmmcall
        jmp l2
    """
    extra = dict(nested_ctl=1, n_cr3=0x20000) if nested_paging else {}
    return nested_image(l1, l2, vmcb12(**extra))


@pytest.mark.parametrize("nested_paging", [False, True], ids=["shadow", "npt"])
def test_nested_guest_resumes_like_straight_run(nested_paging):
    img = _nested_image(nested_paging)

    def boot_nested() -> Machine:
        m = fresh()
        m.load_multiboot(img, "nested")
        return m

    m = boot_nested()
    full = observe(m, m.run(timeout=30))
    assert full["reason"] == "halt" and full["serial"] == b"2L" * 12
    levels = set()
    for n in range(60, 700, 29):
        m = boot_nested()
        if m.run(max_insns=n).reason != "max-insns":
            break
        levels.add(m.level())
        snap = snapshot.take(m)
        resumed = fresh()
        snapshot.restore(resumed, snapshot.decode(snapshot.encode(snap)))
        assert observe(resumed, resumed.run(timeout=30)) == full, n
        m.run(timeout=30)
        snapshot.restore(m, snap)
        assert observe(m, m.run(timeout=30)) == full, n
    assert levels == {"L1", "L2"}


def test_snapshot_taken_before_the_first_run_boots_the_guest():
    """Taken right after loading, before any instruction ran: the restored machine boots."""
    from emu.core import snapshot
    from emu.loader.asm import GUESTS_DIR, assemble_source
    from emu.loader.multiboot import parse_image as parse
    path = str(GUESTS_DIR / "hello.S")
    m = Machine(128 << 20, stdout=None)
    m.load_multiboot(parse(assemble_source(path), path, m.ram_size), path)
    snap = snapshot.take(m)
    m2 = Machine(128 << 20, stdout=None)
    snapshot.restore(m2, snap)
    res = m2.run(timeout=20)
    assert res.reason == "exit" and res.status == 1, res
    assert b"ok 1" in bytes(m2.serial.output)


def test_snapshot_in_l2_keeps_the_tsc_offset():
    """L2's RDTSC adds vmcb12.TSC_OFFSET; a snapshot taken in L2 restores with it."""
    from emu.core import snapshot
    from svm_ext.extension import SvmExtension
    from tests.nested_image import nested_image, vmcb12
    img = nested_image("mov rax, rdi\n vmrun\n hlt", "spin: jmp spin", vmcb12(tsc_offset=1 << 40))
    m = Machine(128 << 20, stdout=None, extensions=[SvmExtension()])
    m.load_multiboot(img, "t")
    assert m.run(max_insns=300).reason == "max-insns" and m.level() == "L2"
    assert m.tsc_offset == 1 << 40
    snap = snapshot.take(m)
    m2 = Machine(128 << 20, stdout=None, extensions=[SvmExtension()])
    snapshot.restore(m2, snap)
    assert m2.level() == "L2" and m2.tsc_offset == 1 << 40
