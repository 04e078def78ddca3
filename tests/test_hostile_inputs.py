"""A generated corpus of bad and hostile inputs, each run through the command line in-process:
every one must end with a documented status, and a refusal (status 2) with exactly one line on
stderr. Nothing is stored: the cases are built here from the bundled guests and a seeded
generator, across the classes users and files can supply (images, assembly, options, snapshots,
special files). The gdb packet parser and the snapshot loader have fuzz targets of their own
(tests/test_gdb_hostile.py, tests/test_snapshot_hostile.py).

Documented statuses (README, "Exit status"): 0, odd (the guest's isa-debug-exit value), 2 bad
input, 4 shutdown, 6 unsupported, 8 limit reached. 70 (internal error) and any traceback fail."""
from __future__ import annotations

import os
import random
import resource
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from emu.cli.main import main
from emu.loader.asm import assemble_source

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "guests" / "hello.S"
RAM_128M = 128 << 20
RUN_LIMIT = ["--max-insns", "20000", "-q"]     # a mutated image that boots stops here (status 8)
DOCUMENTED = {0, 2, 4, 6, 8}


@dataclass
class Case:
    name: str
    argv: list[str]                                   # FILE in an argument is the case's file
    data: bytes | str | None = None                   # the file's contents, if it has one
    suffix: str = ".bin"
    refused: bool = False                             # must end in status 2
    files: dict[str, bytes] = field(default_factory=dict)   # extra files (includes, modules)


def _hello_image() -> bytes:
    return assemble_source(str(HELLO))


HELLO_IMAGE = _hello_image()
MB_HDR = HELLO_IMAGE.find(struct.pack("<I", 0x1BADB002))


def image_cases() -> list[Case]:
    rng = random.Random(15)
    cases = []
    for size in (1, 4, 31, 32, 100, 4096, 8192, 70000):
        for k in range(4):
            cases.append(Case(f"random-{size}-{k}", ["run", "FILE", *RUN_LIMIT],
                              bytes(rng.randrange(256) for _ in range(size)), refused=True))
    cases.append(Case("empty", ["run", "FILE"], b"", refused=True))
    for cut in sorted({1, 8, 12, MB_HDR + 4, MB_HDR + 12, MB_HDR + 20, MB_HDR + 28,
                       *(rng.randrange(len(HELLO_IMAGE)) for _ in range(34))}):
        cases.append(Case(f"truncated-{cut}", ["run", "FILE", *RUN_LIMIT], HELLO_IMAGE[:cut]))
    # a.out-kludge header fields (header_addr, load_addr, load_end, bss_end, entry)
    values = [0, 1, 0xFFF, 0x9FC00, 0xA0000, 0xF0000, 0x100000, 0x7FFFFFF, RAM_128M,
              0xC0000000, 0xFFFFF000, 0xFFFFFFFF]
    for i, fieldname in enumerate(("header", "load", "load_end", "bss_end", "entry")):
        for v in values:
            img = bytearray(HELLO_IMAGE)
            struct.pack_into("<I", img, MB_HDR + 12 + 4 * i, v)
            cases.append(Case(f"aout-{fieldname}-{v:#x}", ["run", "FILE", *RUN_LIMIT], bytes(img)))
    for bit in range(32):
        img = bytearray(HELLO_IMAGE)
        flags = struct.unpack_from("<I", img, MB_HDR + 4)[0] ^ (1 << bit)
        struct.pack_into("<II", img, MB_HDR + 4, flags, (-(0x1BADB002 + flags)) & 0xFFFFFFFF)
        cases.append(Case(f"flags-bit{bit}", ["run", "FILE", *RUN_LIMIT], bytes(img)))
    bad_sum = bytearray(HELLO_IMAGE)
    bad_sum[MB_HDR + 8] ^= 1
    cases.append(Case("bad-checksum", ["run", "FILE"], bytes(bad_sum), refused=True))
    cases += elf_cases(rng)
    return cases


def _elf32(segments: list[tuple[int, int, int, bytes]], entry: int = 0x100000,
           machine: int = 3, klass: int = 1, phnum: int | None = None,
           phoff: int | None = None) -> bytes:
    """A multiboot ELF32: (paddr, filesz, memsz, bytes) per PT_LOAD."""
    mb = struct.pack("<III", 0x1BADB002, 0, (-0x1BADB002) & 0xFFFFFFFF)
    n = len(segments)
    data_off = 52 + 32 * n
    body, phdrs = b"", b""
    for paddr, filesz, memsz, blob in segments:
        off = data_off + len(mb) + len(body)
        phdrs += struct.pack("<IIIIIIII", 1, off, paddr, paddr, filesz, memsz, 5, 0x1000)
        body += blob
    ehdr = (b"\x7fELF" + bytes([klass, 1, 1]) + bytes(9)
            + struct.pack("<HHIIIIIHHHHHH", 2, machine, 1, entry, 52 if phoff is None else phoff,
                          0, 0, 52, 32, n if phnum is None else phnum, 40, 0, 0))
    return ehdr + phdrs + mb + body


def elf_cases(rng: random.Random) -> list[Case]:
    code = bytes.fromhex("f4") * 16
    cases = []
    for memsz in (0xC0000000, 0xF0000000, 0xFFFFFFFF, 0xFFF00000, RAM_128M):
        cases.append(Case(f"elf-memsz-{memsz:#x}", ["run", "FILE", *RUN_LIMIT],
                          _elf32([(0x100000, 16, memsz, code)]), refused=True))
    for paddr in (0, 0x1000, 0x9FC00, 0xA0000, 0xFFFFF000, RAM_128M, 0xFEE00000):
        cases.append(Case(f"elf-paddr-{paddr:#x}", ["run", "FILE", *RUN_LIMIT],
                          _elf32([(paddr, 16, 16, code)], entry=paddr)))
    for name, kw in (("phnum-huge", dict(phnum=65535)), ("phoff-past", dict(phoff=1 << 30)),
                     ("machine-arm", dict(machine=40)), ("class-3", dict(klass=3)),
                     ("entry-top", dict(entry=0xFFFFFFFF)), ("phnum-0", dict(phnum=0))):
        cases.append(Case(f"elf-{name}", ["run", "FILE", *RUN_LIMIT],
                          _elf32([(0x100000, 16, 16, code)], **kw)))
    for k in range(20):
        blob = bytearray(_elf32([(0x100000, 16, 16, code)]))
        for _ in range(rng.choice((1, 2, 4))):
            blob[rng.randrange(52 + 32)] = rng.randrange(256)
        cases.append(Case(f"elf-mutated-{k}", ["run", "FILE", *RUN_LIMIT], bytes(blob)))
    cases.append(Case("filesz-past-end", ["run", "FILE"],
                      _elf32([(0x100000, 4096, 4096, code)]), refused=True))
    return cases


ASM_BAD = [
    "foo eax", "movx eax, 1", "mov eax", "mov eax, ebx, ecx", "mov eax, [rax+rbx*3]",
    "add [rax], [rbx]", "mov eax, rbx", "jmp", "push 0x80000000", "push 0x123456789",
    "push -0x80000001", "mov rax, [rip+rax]", "mov rax, [rip+rip]", "lea rax, [rbx+rip]",
    ".equ X, 9**9**9", ".equ X, 1 << 1000", ".equ X, 1 << 100000000000", ".equ X, 2**64",
    ".rept -1\nnop\n.endr", ".rept 65537\nnop\n.endr", ".rept 2**40\nnop\n.endr",
    ".rept X\nnop\n.endr", ".rept 65536\n.rept 65536\nnop\n.endr\n.endr",
    ".rept 65536\n.rept 65536\n.endr\n.endr", ".macro m\nm\n.endm\nm",
    ".macro m\nm\nm\n.endm\nm", ".macro m a\n m \\a\n m \\a\n.endm\nm 1",
    ".endm", ".endr", ".rept 3\nnop", ".macro x\nnop", '.ascii "abc', ".ascii 'x",
    ": nop", "< nop", "| nop", "\\ nop", "$ nop", "nop \\", ".byte 256", ".word 0x10000",
    ".long 0x100000000", ".quad 0x10000000000000000", ".byte 1,,2",
    ".align 3", ".align 0", ".align 0x400000", ".align 4, 0x90", ".p2align 99", ".space -1",
    ".space 0x2000000", ".fill 1, 3", '.include "nonexistent.inc"', ".include nofile",
    '.include "SELF"', ".code16", ".unknown_directive", "mov eax, 99999999999999999999999",
    "mov eax, 0x1ffffffffffffffffff", "jmp 1b", "label without colon and spaces here",
    "jmp undefined_symbol", "call undefined_symbol", ".equ", ".equ X", "X =",
    ".bss\nnop", "db 1", "int 256",
    "mov cr9, rax", "mov dr8, rax", "mov al, 256", "mov ax, 0x10000", "add al, 300",
    "mov eax, 0x100000000", "out 256, al", "in al, 0x100", "\x00", "nop\x7f",
]


def asm_cases() -> list[Case]:
    cases = []
    for i, text in enumerate(ASM_BAD):
        cases.append(Case(f"asm-{i}-{text[:16]}", ["build", "FILE", "-o", "OUT"],
                          text.replace("SELF", "case.S") + "\n", suffix=".S", refused=True))
        # the same statement after a valid prelude: the line number must move with it
        cases.append(Case(f"asm-late-{i}", ["build", "FILE", "-o", "OUT"],
                          "nop\nnop\n" + text.replace("SELF", "case.S") + "\n", suffix=".S",
                          refused=True))
    return cases


OPTION_BAD = [
    ["-m", "0"], ["-m", "1"], ["-m", "abc"], ["-m", "-5"], ["-m", "99999999G"], ["-m", "1.5G"],
    ["-m", ""], ["-m", "4095K"], ["-m", "1T"], ["--timeout", "0"], ["--timeout", "-1"],
    ["--timeout", "inf"], ["--timeout", "nan"], ["--timeout", "1e308"], ["--timeout", "x"],
    ["--max-insns", "0"], ["--max-insns", "-1"], ["--max-insns", "1e3"], ["--max-insns", ""],
    ["--trace", "bogus"], ["--trace", "insn,bogus"],
    ["--trace-file", "/nonexistent/dir/t"], ["--trace-file", "/tmp"],
    ["--trace-file", "/dev/full", "--trace", "all"], ["--trace-file", "/proc/version", "--trace", "all"],
    ["--trace-file", "x.txt"], ["--coverage", "bogus:x"], ["--coverage", "drcov"],
    ["--coverage", "drcov:/nonexistent/dir/c"], ["--coverage", "drcov:/dev/full"],
    ["--tenet", "/nonexistent/dir/t"], ["--snapshot-at", "100"], ["--snapshot-at", "0", "--snapshot", "s"],
    ["--snapshot", "/tmp/x.snap"], ["--snapshot-at", "x", "--snapshot", "s"],
    ["--gdb", "udp::1"], ["--gdb", "tcp::99999"], ["--gdb", "tcp::-1"], ["--gdb", "junk"],
    ["--gdb", "tcp:"], ["--gdb", "tcp::1234", "--max-insns", "5"], ["--cpu", "pentium"],
    ["--cpu", "EPYC,+avx512f"], ["--cpu", "EPYC,+nonsense"], ["--cpu", ""],
    ["--pat-model", "other"], ["--initrd", "/nonexistent/module"],
    ["--initrd", "/tmp"], ["--append"], ["--bogus-option"], ["-x"],
]


def option_cases() -> list[Case]:
    cases = [Case(f"opt-{i}-{' '.join(a)[:24]}", ["run", str(HELLO), *a], refused=True)
             for i, a in enumerate(OPTION_BAD)]
    cases += [Case("no-command", [], refused=True), Case("bad-command", ["frobnicate"], refused=True),
              Case("run-no-image", ["run"], refused=True),
              Case("run-missing", ["run", "/nonexistent/image"], refused=True),
              Case("run-dir", ["run", "/tmp"], refused=True),
              Case("run-devzero", ["run", "/dev/zero"], refused=True),
              Case("run-urandom", ["run", "/dev/urandom"], refused=True),
              Case("build-no-output", ["build", str(HELLO)], refused=True),
              Case("build-bad-output", ["build", str(HELLO), "-o", "/nonexistent/dir/x"], refused=True),
              Case("build-missing", ["build", "/nonexistent.S", "-o", "OUT"], refused=True),
              Case("memtype-missing", ["memtype", "/nonexistent.snap", "0"], refused=True),
              Case("resume-missing", ["resume", "/nonexistent.snap"], refused=True),
              Case("fuzz-no-input", ["fuzz", str(HELLO), "--run-input", "/dev/null"], refused=True),
              Case("fuzz-input-vmcb-empty", ["fuzz", str(HELLO), "--input-vmcb", "",
                                             "--run-input", "/dev/null"], refused=True),
              Case("fuzz-input-at-junk", ["fuzz", str(HELLO), "--input-at", "nowhere:zz",
                                          "--run-input", "/dev/null"], refused=True),
              Case("fuzz-crash-on-junk", ["fuzz", str(HELLO), "--input-at", "0x200000",
                                          "--crash-on", "bogus", "--run-input", "/dev/null"],
                   refused=True)]
    return cases


def snapshot_cases() -> list[Case]:
    rng = random.Random(7)
    snap = _snapshot_bytes()
    cases = [Case("snap-empty", ["resume", "FILE"], b"", suffix=".snap", refused=True),
             Case("snap-magic", ["resume", "FILE"], b"SVMEMUSN", suffix=".snap", refused=True),
             Case("snap-random", ["resume", "FILE"], bytes(rng.randrange(256) for _ in range(5000)),
                  suffix=".snap", refused=True)]
    for cut in sorted(rng.sample(range(1, len(snap)), 25)):
        cases.append(Case(f"snap-cut-{cut}", ["resume", "FILE"], snap[:cut], suffix=".snap",
                          refused=True))
        cases.append(Case(f"memtype-cut-{cut}", ["memtype", "FILE", "0x100000"], snap[:cut],
                          suffix=".snap", refused=True))
    for k in range(25):
        raw = bytearray(snap)
        raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        cases.append(Case(f"snap-flip-{k}", ["resume", "FILE"], bytes(raw), suffix=".snap",
                          refused=True))
    for va in ("zz", "-1", "0x1" + "0" * 20, ""):
        cases.append(Case(f"memtype-va-{va[:8]}", ["memtype", "FILE", va], snap, suffix=".snap",
                          refused=True))
    return cases


_SNAP: list[bytes] = []


def _snapshot_bytes() -> bytes:
    if not _SNAP:
        import tempfile
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "h.snap")
            with open(os.devnull, "w") as null:
                subprocess.run([sys.executable, "-m", "emu.cli", "run", str(HELLO), "-q",
                                "--snapshot-at", "200", "--snapshot", path], check=True,
                               stdout=null, stderr=null, cwd=ROOT)
            _SNAP.append(Path(path).read_bytes())
    return _SNAP[0]


CASES = image_cases() + asm_cases() + option_cases() + snapshot_cases()


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 500, len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_ends_cleanly(case: Case, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / f"case{case.suffix}"
    if case.data is not None:
        path.write_bytes(case.data.encode("latin-1") if isinstance(case.data, str) else case.data)
    argv = [str(path) if a == "FILE" else str(tmp_path / "out.bin") if a == "OUT" else a
            for a in case.argv]
    try:
        status = main(argv)
    except SystemExit as e:                     # argparse's refusal
        status = e.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "internal error" not in err, err
    assert status in DOCUMENTED or status % 2 == 1 and status < 256, (status, err)
    if case.refused:
        assert status == 2, (status, out, err)
    if status == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("svmemu: error: "), err
        if case.suffix == ".S" and "FILE" in case.argv:
            assert "case.S:" in lines[0] or "case.S" in lines[0], lines[0]


@pytest.mark.parametrize("name, argv", [
    ("devzero", ["run", "/dev/zero"]),
    ("urandom", ["run", "/dev/urandom"]),
    ("elf-4g-bss", ["run", "ELF"]),
    ("aout-bss-end", ["run", "AOUT"]),
])
def test_memory_stays_bounded_under_ulimit(name, argv, tmp_path) -> None:
    """With the address space limited to the guest's RAM plus 3 GiB (Unicorn reserves 1 GiB for
    translated code; a normal run of this guest fits in RAM plus 2 GiB), hostile images are
    refused, not met with MemoryError."""
    elf = tmp_path / "big.elf"
    elf.write_bytes(_elf32([(0x100000, 16, 0xFFF00000, b"\xf4" * 16)]))
    aout = bytearray(HELLO_IMAGE)
    struct.pack_into("<I", aout, MB_HDR + 24, 0xFFFFF000)            # bss_end
    (tmp_path / "big.bin").write_bytes(bytes(aout))
    argv = [str(elf) if a == "ELF" else str(tmp_path / "big.bin") if a == "AOUT" else a
            for a in argv]
    limit = RAM_128M + (3 << 30)

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    p = subprocess.run([sys.executable, "-m", "emu.cli", *argv, "-q"], cwd=ROOT,
                       preexec_fn=cap, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert p.stderr.count("\n") == 1 and "MemoryError" not in p.stderr, p.stderr
