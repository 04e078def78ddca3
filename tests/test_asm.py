"""The guest assembler: keystone plus our preprocessor and guards.  Errors name the file and line
the user wrote; keystone's silent mis-encodings are caught or fixed; labels resolve across 32-
and 64-bit code; the guests assemble into images the multiboot loader accepts."""
from __future__ import annotations

import struct
from pathlib import Path

import pytest

from emu.errors import AsmError
from emu.loader.asm import GUESTS_DIR, IMAGE_BASE, assemble, assemble_source, assemble_text
from emu.loader.multiboot import parse_image


def code(src: str) -> bytes:
    return assemble_text(src, include_dirs=[]).image


def err(src: str, tmp_path: Path | None = None) -> AsmError:
    with pytest.raises(AsmError) as e:
        assemble_text(src, path="t.S", include_dirs=[])
    return e.value


# ------------------------------------------------------------------------------ encodings

@pytest.mark.parametrize("insn,hexbytes", [
    ("vmrun", "0f01d8"), ("vmrun rax", "0f01d8"), ("vmmcall", "0f01d9"), ("vmload", "0f01da"),
    ("vmload rax", "0f01da"), ("vmsave", "0f01db"), ("stgi", "0f01dc"), ("clgi", "0f01dd"),
    ("skinit", "0f01de"), ("skinit eax", "0f01de"), ("invlpga", "0f01df"),
    ("invlpga rax, ecx", "0f01df"), ("VMRUN", "0f01d8"),
    ("rdtscp", "0f01f9"), ("xsetbv", "0f01d1"), ("monitor", "0f01c8"), ("mwait", "0f01c9"),
    ("rdmsr", "0f32"), ("wrmsr", "0f30"), ("cpuid", "0fa2"), ("int3", "cc"), ("int 0x80", "cd80"),
    ("iretq", "48cf"), ("iret", "cf"), ("sysret", "0f07"), ("sysretq", "480f07"),
    ("syscall", "0f05"), ("rdtsc", "0f31"), ("hlt", "f4"), ("ud2", "0f0b"), ("swapgs", "0f01f8"),
    ("lretq", "48cb"), ("retfq", "48cb"), ("invlpg [rax]", "0f0138"), ("out 0xf4, eax", "e7f4"),
    ("mov cr3, rax", "0f22d8"), ("lgdt [rax]", "0f0110"),
])
def test_instruction_bytes(insn, hexbytes):
    assert code(insn).hex() == hexbytes


def test_svm_operands_other_than_implicit_are_refused():
    e = err("nop\nvmrun rbx")
    assert e.line == 2 and "vmrun" in str(e)


def test_32bit_descriptor_table_loads_have_no_operand_size_prefix():
    """keystone adds 0x66 (a 24-bit base); the bytes are GNU as's, with the same length."""
    out = code(".code32\nlgdt [gdtp]\nlidt [eax]\nsgdt [eax]\nsidt [ebx+4]\ngdtp: .word 0")
    assert out == (bytes.fromhex("0f0115") + struct.pack("<I", IMAGE_BASE + 17)
                   + bytes.fromhex("0f0118" "0f0100" "0f014b04" "0000"))


def test_32bit_far_jump_is_32_bit():
    out = code(".code32\nljmp 0x08:target\n.code64\ntarget: nop")
    assert out == b"\xea" + struct.pack("<IH", IMAGE_BASE + 7, 8) + b"\x90"
    assert code(".code32\nljmp 0x18, 0x100000") == b"\xea" + struct.pack("<IH", 0x100000, 0x18)


def test_far_jump_in_64bit_code_is_refused():
    assert "64-bit" in str(err("ljmp 0x08:0x1000"))


def test_labels_across_32_and_64_bit_code():
    a = assemble_text("""
.code32
start32:
    mov eax, offset data64  # 32-bit code uses a label defined in 64-bit code
    jmp start64
.code64
start64:
    lea rax, [rip + start32]
    mov rbx, offset start32
    inc eax                 # 64-bit encoding (FF C0), not 32-bit 0x40
data64: .quad start64
""", include_dirs=[])
    s = a.symbols
    img = a.image
    assert img[0] == 0xB8 and struct.unpack_from("<I", img, 1)[0] == s["data64"]
    assert s["start64"] - s["start32"] == 7            # mov (5) + short jmp (2)
    off = s["start64"] - IMAGE_BASE
    assert img[off:off + 3] == bytes.fromhex("488d05")
    assert struct.unpack_from("<i", img, off + 3)[0] == s["start32"] - (s["start64"] + 7)
    assert img[s["data64"] - IMAGE_BASE - 2: s["data64"] - IMAGE_BASE] == b"\xff\xc0"
    assert struct.unpack_from("<Q", img, s["data64"] - IMAGE_BASE)[0] == s["start64"]


def test_dot_labels_work_inside_memory_operands():
    a = assemble_text("lea rdi, [rip + .Lmsg]\nmov rax, [.Lmsg]\n.Lmsg: .asciz \"hi\"",
                      include_dirs=[])
    assert a.symbols[".Lmsg"] == IMAGE_BASE + 7 + 8
    assert a.image.endswith(b"hi\0")


# ------------------------------------------------------------------------------ guards

@pytest.mark.parametrize("src,hexbytes", [
    ("mov ecx, [0x10070]", "8b0c2570000100"), ("mov dword ptr [0x2000], 1", "c7042500200000" "01000000"),
    (".equ X, 0x10070\nadd rax, [X]", "4803042570000100"), ("lidt [0x2000]", "0f011c2500200000"),
    ("mov eax, [0x10070]", "8b042570000100"), ("mov eax, fs:0x28", "648b042528000000"),
])
def test_absolute_addresses_in_64bit_code_are_gnu_as_disp32(src, hexbytes):
    """keystone encodes a numeric address RIP-relative and an accumulator load as moffs64;
    GNU as writes ModRM+SIB with a sign-extended disp32, and so do we."""
    assert code(src).hex() == hexbytes


def test_absolute_address_above_2g_guard():
    assert "2 GiB" in str(err("mov ecx, [0xFEE00000]"))


def test_moffs_only_where_gnu_as_uses_it_and_labels_and_rip():
    assert code("mov eax, [0xFEE00000]") == bytes.fromhex("a1") + struct.pack("<Q", 0xFEE00000)
    assert code("mov rax, [rip + 0x10]") == bytes.fromhex("488b0510000000")
    assert code("mov ecx, [rbx + 0x10070]") == bytes.fromhex("8b8b70000100")
    out = code("mov ecx, [lbl]\nlbl: nop")
    assert out[:3] == bytes.fromhex("8b0c25") and struct.unpack_from("<I", out, 3)[0] == IMAGE_BASE + 7


@pytest.mark.parametrize("src,needle", [
    ('.ascii "abc', "unterminated"),            # hangs keystone
    ("x: :", "label without a name"),            # hangs keystone
    ("< nop", "must start with"),                # hangs keystone
    (".asciz \\-tr", "unexpected character"),   # hangs keystone
    (".quad 0x1ffffffffffffffff", "64 bits"),    # hangs keystone
    (".align 0x100000000", "power of two"),     # SIGFPE in keystone
    (".align 3", "power of two"),
    (".fill 100000000, 1, 0", "size"),           # keystone crawls
    (".space SIZE", "constant size"),
    (".align 16, 0", "fill value"),             # padding lands in the wrong place
    (".word 0x10000", "does not fit"),          # keystone emits nothing at all
    (".byte 1, 256", "out of range"),
    (".quad 1,", "empty value"),
    ("mov eax, [rax", "unbalanced"),            # keystone assembles [0]
    ("jmp 1b", "no local label 1: before 1b"),
    (".space 0x200\n.org 0x100", "cannot move backwards"),
    (".section .foo", "other sections need a linker script"),
    (".frobnicate", "unsupported directive"),
    ("bogus eax", "unknown instruction"),
    ("mov eax, undefined_sym", "undefined symbol 'undefined_sym'"),
    ("a: nop\na: nop", "already defined at t.S:2"),
    ("mov eax, (lbl >> 12)\nlbl: nop", "shift"),
    (".bss\nnop", "cannot go in .bss"),
    (".bss\n.byte 1", "cannot go in .bss"),
])
def test_guarded_errors(src, needle):
    e = err("nop\n" + src)
    assert needle in str(e)
    assert e.path == "t.S" and e.line >= 2


def test_error_line_found_in_long_source():
    lines = ["nop"] * 300
    lines[217] = "mov eax, ebx, ecx"
    e = err("\n".join(lines))
    assert e.line == 218 and str(e).startswith("t.S:218: ")


# ------------------------------------------------------------------------------ preprocessor

def test_error_inside_included_file(tmp_path):
    (tmp_path / "lib.inc").write_text("nop\n\n  bogus_insn rax\n")
    (tmp_path / "main.S").write_text('nop\n.include "lib.inc"\n')
    with pytest.raises(AsmError) as e:
        assemble(str(tmp_path / "main.S"), include_dirs=[])
    assert e.value.path == str(tmp_path / "lib.inc") and e.value.line == 3


def test_error_inside_macro_names_call_and_definition(tmp_path):
    src = tmp_path / "m.S"
    src.write_text(".macro twice x\n  mov eax, \\x\n  bogus \\x\n.endm\nnop\ntwice 5\n")
    with pytest.raises(AsmError) as e:
        assemble(str(src), include_dirs=[])
    assert e.value.line == 6 and f"macro twice at {src}:3" in str(e.value)


def test_include_search_path_once_and_cycle(tmp_path):
    inc = tmp_path / "inc"
    inc.mkdir()
    (inc / "a.inc").write_text(".equ A, 7\n")
    (tmp_path / "x.S").write_text('.include "a.inc"\n.include "a.inc"\nmov eax, A\n')
    assert assemble(str(tmp_path / "x.S"), include_dirs=[str(inc)]).image == b"\xb8\x07\0\0\0"
    (tmp_path / "c1.inc").write_text('.include "c2.inc"\n')
    (tmp_path / "c2.inc").write_text('.include "c1.inc"\n')
    (tmp_path / "y.S").write_text('.include "c1.inc"\n')
    with pytest.raises(AsmError, match="includes itself"):
        assemble(str(tmp_path / "y.S"), include_dirs=[])
    (tmp_path / "z.S").write_text('nop\n.include "missing.inc"\n')
    with pytest.raises(AsmError, match="z.S:2: include file not found"):
        assemble(str(tmp_path / "z.S"), include_dirs=[])


def test_macros_defaults_unique_labels_and_rept():
    out = code(".macro m a, b=2\n  mov eax, \\a + \\b\n  jmp .Lx\\@\n.Lx\\@:\n.endm\n"
               "m 1\nm 1, 5\n.rept 3\n  nop\n.endr")
    assert out == bytes.fromhex("b803000000eb00" "b806000000eb00" "909090")
    assert "missing argument" in str(err(".macro m a\n.endm\nm"))
    assert "takes 1 arguments" in str(err(".macro m a\n.endm\nm 1, 2"))
    assert ".macro without .endm" in str(err(".macro m a\nnop"))


def test_comments_separators_and_strings():
    """GNU as: '#' and /* */ are comments, ';' separates statements."""
    assert code('nop # c\nnop ; int3\n.ascii "a#b;c/*"\n/* ret\n ret */ hlt') == b"\x90\x90\xcca#b;c/*\xf4"


def test_bss_is_not_stored():
    a = assemble_text("nop\n.bss\n.align 4096\nbuf: .space 8192\n.text\nend: nop", include_dirs=[])
    assert a.image == b"\x90\x90"
    assert a.symbols["end"] == IMAGE_BASE + 1
    assert a.symbols["buf"] == IMAGE_BASE + 0x1000
    assert a.symbols["__bss_start"] == IMAGE_BASE + 2 and a.bss_end == IMAGE_BASE + 0x3000


def test_missing_source_file():
    with pytest.raises(AsmError, match="cannot read"):
        assemble_source("/nonexistent/x.S")


def test_non_utf8_source(tmp_path):
    p = tmp_path / "b.S"
    p.write_bytes(b"nop\n\xff\xfe\n")
    with pytest.raises(AsmError, match="b.S:2: not UTF-8"):
        assemble_source(str(p))


# ------------------------------------------------------------------------------ guests

@pytest.mark.parametrize("guest", sorted(p.stem for p in GUESTS_DIR.glob("*.S")))
def test_guests_assemble_into_bootable_images(guest):
    a = assemble(str(GUESTS_DIR / f"{guest}.S"))
    boot = parse_image(a.image, guest, 128 << 20)
    assert boot.entry == a.symbols["_start32"]
    (addr, data), = boot.segments
    assert addr == IMAGE_BASE and data == a.image
    (bss, size), = boot.bss
    assert bss == addr + len(data) and bss + size == a.bss_end
    assert "main" in a.symbols


def test_error_after_the_prelude_names_the_guest_line(tmp_path):
    """An unencodable operand in a guest body must be reported there, not in the prelude's
    multiboot header (whose layout symbols the error search has to stub)."""
    src = tmp_path / "bad.S"
    src.write_text('.include "prelude.inc"\nmain:\n    mov rdi, 0x800000\n'
                   '    mov qword ptr [rdi + 0x568], 0xFFFF0FF0\n    ret\n')
    with pytest.raises(AsmError) as e:
        assemble(str(src), [str(GUESTS_DIR)])
    assert e.value.path.endswith("bad.S") and e.value.line == 4
