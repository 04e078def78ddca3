"""`svmemu build SOURCE.S -o image.elf`: an ELF with the symbol table and a DWARF line table
that boots on svmemu and QEMU as the flat image does, that pyelftools reads, and with which
real gdb against `svmemu run -S` breaks at a function by name and shows its source line."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from emu.loader.asm import GUESTS_DIR, assemble

ROOT = Path(__file__).resolve().parent.parent
GUEST = GUESTS_DIR / "hello.S"
GDB = shutil.which("gdb")


def build(tmp_path: Path, source: Path = GUEST) -> Path:
    out = tmp_path / "image.elf"
    r = subprocess.run([sys.executable, "-m", "emu.cli", "build", str(source), "-o", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return out


def test_elf_holds_image_symbols_and_lines(tmp_path):
    elf_path = build(tmp_path)
    asm = assemble(str(GUEST))
    with open(elf_path, "rb") as f:
        elf = ELFFile(f)
        assert elf.elfclass == 64 and elf["e_machine"] == "EM_X86_64"
        (seg,) = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
        assert seg["p_paddr"] == asm.base and seg.data() == asm.image
        assert seg["p_memsz"] == asm.bss_end - asm.base
        syms = {s.name: s for s in elf.get_section_by_name(".symtab").iter_symbols()}
        for name in ("main", "puts", "_start32", "report"):
            assert syms[name]["st_value"] == asm.symbols[name]
            assert syms[name]["st_info"]["type"] == "STT_FUNC"
        assert syms["puts"]["st_size"] > 0
        assert not any(n.startswith(".L") for n in syms)
        dwarf = elf.get_dwarf_info()
        (cu,) = dwarf.iter_CUs()
        lp = dwarf.line_program_for_CU(cu)
        files = [e.name.decode() for e in lp["file_entry"]]
        rows = {(s.state.address, files[s.state.file - 1], s.state.line)
                for s in lp.get_entries() if s.state and not s.state.end_sequence}
    want = {(a, str(Path(o.path).resolve()), o.line) for a, _, o in asm.lines}
    assert rows == want
    assert (asm.symbols["main"], str(GUEST.resolve()), 6) in rows


def test_elf_boots_on_svmemu_and_qemu(tmp_path, qemu):
    elf_path = build(tmp_path)
    r = subprocess.run([sys.executable, "-m", "emu.cli", "run", str(elf_path), "-q"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "# pass 1 fail 0" in r.stdout, r.stderr
    run = qemu(elf_path)
    assert run.status == 1 and "# pass 1 fail 0" in run.output


@pytest.mark.skipif(GDB is None, reason="gdb is not installed (Debian: apt-get install gdb)")
def test_gdb_breaks_at_a_function_by_name_and_shows_its_source(tmp_path):
    elf_path = build(tmp_path)
    p = subprocess.Popen([sys.executable, "-m", "emu.cli", "run", str(GUEST), "--gdb", "tcp::0",
                          "-S"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        m = re.search(r"listening on [\d.]+:(\d+)", p.stderr.readline())
        assert m
        cmds = [f"target remote 127.0.0.1:{m.group(1)}", "break puts", "continue", "bt",
                "list main", "info symbol $pc", "kill"]
        args = [GDB, "-batch", "-nx", "-ex", "set confirm off", "-ex", "set pagination off",
                str(elf_path)]
        for c in cmds:
            args += ["-ex", c]
        out = subprocess.run(args, capture_output=True, text=True, timeout=120)
        text = out.stdout + out.stderr
    finally:
        p.kill()
        p.communicate(timeout=60)
    prelude = re.escape(str((GUESTS_DIR / "prelude.inc").resolve()))
    assert re.search(rf"Breakpoint 1, puts \(\) at {prelude}:\d+", text), text
    assert re.search(r"#1  0x[0-9a-f]+ in main \(\) at .*hello\.S:6", text), text
    assert 'print "Hello from an svmemu guest!\\n"' in text
    assert "puts in section .text" in text


@pytest.mark.parametrize("kind", ["source", "elf"])
def test_exit_trace_names_symbol_and_offset(kind, tmp_path):
    source = GUESTS_DIR / "svm_world_switch.S"
    image = str(source) if kind == "source" else str(build(tmp_path, source))
    r = subprocess.run([sys.executable, "-m", "emu.cli", "run", image, "-q", "--trace", "exits"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    asm = assemble(str(source))
    site = asm.symbols["l2_vmmcall"]
    assert re.search(rf"^exits \[L2 64 cpl0\] {site:#x} <l2_vmmcall> #VMEXIT VMMCALL", r.stderr, re.M), r.stderr
    assert re.search(r"^exits \[L1 64 cpl0\] 0x[0-9a-f]+ <main\+0x[0-9a-f]+> vmrun", r.stderr, re.M)


def test_flat_image_with_a_symbols_file(tmp_path):
    flat, syms = tmp_path / "x.bin", tmp_path / "x.sym.elf"
    r = subprocess.run([sys.executable, "-m", "emu.cli", "build", str(GUEST), "-o", str(flat),
                        "--symbols", str(syms)], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    asm = assemble(str(GUEST))
    assert flat.read_bytes() == asm.image
    with open(syms, "rb") as f:
        names = {s.name for s in ELFFile(f).get_section_by_name(".symtab").iter_symbols()}
    assert {"main", "puts"} <= names
