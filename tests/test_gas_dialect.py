"""The GNU as dialect: a user's GNU as source (Intel syntax with .globl, sections, numeric local
labels, a recursive macro, .irp) and an AT&T sample assemble to GNU as's bytes and run; each
directive keeps GNU as's meaning; errors name file:line inside includes and macros."""
from __future__ import annotations

import struct
from pathlib import Path

import pytest

from emu.errors import AsmError
from emu.loader.asm import IMAGE_BASE, assemble, assemble_text
from tests.gnu_as import HAVE_BINUTILS, gnu_image
from tests.harness import boot

DATA = Path(__file__).resolve().parent / "data"
needs_binutils = pytest.mark.skipif(not HAVE_BINUTILS, reason="GNU binutils not installed")


def code(src: str) -> bytes:
    return assemble_text(src, "t.S", []).image


def err(src: str) -> AsmError:
    with pytest.raises(AsmError) as e:
        assemble_text(src, "t.S", [])
    return e.value


@needs_binutils
@pytest.mark.parametrize("name", ["gnu_user.S", "att_sample.S"])
def test_samples_equal_gnu_as(name, tmp_path):
    text = (DATA / name).read_text()
    assert assemble_text(text, name, []).image == gnu_image(text, tmp_path, [])


def test_user_gnu_as_source_runs_unchanged():
    b = boot(str(DATA / "gnu_user.S"), nested=False)
    assert b.serial == "hello from GNU as\npass\n"
    assert (b.result.reason, b.result.status) == ("exit", 1)      # isa-debug-exit value 0


def test_globl_symbol_keeps_its_value():
    """keystone makes every absolute use of a .globl symbol 0; it never sees .globl now."""
    out = code(".globl start\nstart: nop\n.long start\n.quad start")
    assert out[1:] == struct.pack("<IQ", IMAGE_BASE, IMAGE_BASE)


def test_bare_label_is_a_load_and_offset_the_address():
    out = code(".intel_syntax noprefix\n.code32\nmov edi, lbl\nmov edi, offset lbl\nlbl: .long 0")
    assert out[:2] == b"\x8b\x3d" and struct.unpack_from("<I", out, 2)[0] == IMAGE_BASE + 11
    assert out[6] == 0xBF and struct.unpack_from("<I", out, 7)[0] == IMAGE_BASE + 11


def test_constant_is_an_immediate_but_a_later_constant_is_memory():
    out = code(".equ K, 5\nmov eax, K\nmov eax, L\n.equ L, 6")
    assert out[:5] == b"\xb8\x05\0\0\0" and out[5:8] == b"\x8b\x04\x25"


def test_numeric_local_labels():
    out = code("1: nop\njmp 1b\njmp 1f\n1: nop\n2: jmp 1b")
    assert out == bytes.fromhex("90" "ebfd" "eb00" "90" "ebfd")


def test_conditionals_irp_and_recursive_macro():
    src = """
.equ N, 3
.macro down n
.if \\n
.byte \\n
down "(\\n-1)"
.endif
.endm
.ifdef N
down N
.else
.byte 0xee
.endif
.ifndef N
.byte 0xee
.elseif N == 3
.byte 0x33
.endif
.irp v, 7, 8
.byte \\v
.endr
.irpc c, 12
.byte \\c
.endr
"""
    assert code(src) == bytes([3, 2, 1, 0x33, 7, 8, 1, 2])


def test_err_and_error_stop_with_file_line():
    e = err("nop\n.if 1\n.error \"bad config\"\n.endif")
    assert (e.path, e.line) == ("t.S", 3) and "bad config" in str(e)
    assert err("nop\n.err").line == 2
    assert code(".if 0\n.err\n.endif\nnop") == b"\x90"


def test_sections_are_laid_out_text_rodata_data_bss():
    a = assemble_text(".data\nd: .byte 1\n.section .rodata\nr: .byte 2\n.text\nt: nop\n"
                      ".bss\nb: .space 4\n.section .text.more\nret", "t.S", [])
    assert a.image == b"\x90\xc3\x02\x01"
    assert (a.symbols["t"], a.symbols["r"], a.symbols["d"], a.symbols["b"]) == (
        IMAGE_BASE, IMAGE_BASE + 2, IMAGE_BASE + 3, IMAGE_BASE + 4)


def test_incbin(tmp_path):
    (tmp_path / "blob.bin").write_bytes(bytes(range(10)))
    (tmp_path / "m.S").write_text('.incbin "blob.bin", 2, 3\n.incbin "blob.bin", 8\n')
    assert assemble(str(tmp_path / "m.S"), []).image == bytes([2, 3, 4, 8, 9])


def test_metadata_directives_are_accepted():
    assert code('.file "x.c"\n.globl f\n.type f, @function\nf:\n.cfi_startproc\n.loc 1 2 3\n'
                'ret\n.cfi_endproc\n.size f, .-f\n.ident "x"\n'
                '.section .note.GNU-stack,"",@progbits') == b"\xc3"


def test_att_without_directive_is_read_as_gnu_as_reads_it():
    assert code("movl $1, %eax\nmovq %rax, 8(%rsp)") == bytes.fromhex("b801000000" "4889442408")


@pytest.mark.parametrize("src,line,needle", [
    (".macro m a\n  mov eax, \\a\n  bogus\n.endm\nnop\nm 1", 6, "macro m at t.S:3"),
    ("nop\njmp 3f", 2, "no local label 3"),
    ("nop\n.if undefined_thing\n.endif", 2, "not a constant"),
    ("nop\nmovl $1, %bogus", 2, "unknown register"),
    ("nop\n.macro m a\n.endm\nm 1 - 2", 4, "without spaces or in quotes"),
    ("nop\n/* never closed", 2, "unterminated /* comment"),
    ("nop\n.section .weird", 2, "linker script"),
])
def test_errors_name_file_and_line(src, line, needle):
    e = err(src)
    assert e.line == line and needle in str(e)


needs_cpp = pytest.mark.skipif(not __import__("shutil").which("cpp"), reason="cpp not installed")


@needs_cpp
def test_dot_S_goes_through_cpp_with_lines_kept(tmp_path):
    (tmp_path / "defs.h").write_text("#define PORT 0xf4\n#define EXIT(v) mov eax, v; out PORT, eax\n"
                                     "bad_in_header eax\n")
    (tmp_path / "k.S").write_text('#include "defs.h"\n.intel_syntax noprefix\n# a comment\n'
                                  "#ifdef NOT_DEFINED\n  bogus\n#endif\n  nop\n  EXIT(0)\n")
    with pytest.raises(AsmError) as e:
        assemble(str(tmp_path / "k.S"), [])
    assert e.value.path.endswith("defs.h") and e.value.line == 3
    (tmp_path / "defs.h").write_text("#define PORT 0xf4\n#define EXIT(v) mov eax, v; out PORT, eax\n")
    assert assemble(str(tmp_path / "k.S"), []).image == bytes.fromhex("90" "b800000000" "e7f4")
    (tmp_path / "e.S").write_text("nop\n#error no way\n")
    with pytest.raises(AsmError, match="e.S:2: #error no way"):
        assemble(str(tmp_path / "e.S"), [])


def test_cpp_missing_is_one_clear_error(tmp_path, monkeypatch):
    import emu.loader.gas.cpp as cpp
    monkeypatch.setattr(cpp.shutil, "which", lambda name: None)
    (tmp_path / "k.S").write_text("nop\n#define X 1\nmov eax, X\n")
    with pytest.raises(AsmError, match=r"k.S:2: .*C preprocessor.*no cpp is installed"):
        assemble(str(tmp_path / "k.S"), [])
    (tmp_path / "plain.S").write_text("# only comments here\nnop\n")
    assert assemble(str(tmp_path / "plain.S"), []).image == b"\x90"
