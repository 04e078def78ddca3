"""Multiboot modules (--initrd, QEMU's meaning), --append values beginning with '-', and ELF32
kernels as a default GNU ld links them (a PT_LOAD of the ELF headers below 1 MiB).

guests/mbmods.c is built at test time with gcc -m32 -ffreestanding -nostdlib and a default
``ld -m elf_i386 -Ttext=0x100000`` (skipped without them); it prints what the loader passed,
and svmemu must print what QEMU 7.2 prints, addresses of modules and their strings included.
The one line that differs is the kernel command line's address (svmemu keeps it in its
information block at 0x9500, QEMU after the module strings)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from emu.cli.main import main
from emu.core.firmware.layout import MiB
from emu.errors import ImageError
from emu.loader.asm import GUESTS_DIR
from emu.loader.modules import Module, place_modules, read_modules, split_initrd
from emu.loader.multiboot import BootImage, parse_image
from tests.conftest import QEMU, QEMU_MACHINE

CC, LD = shutil.which("gcc"), shutil.which("ld")


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (CC and LD):
        pytest.skip("gcc and ld are needed to build the C kernel")
    d = tmp_path_factory.mktemp("ck")
    obj, elf = d / "mbmods.o", d / "mbmods.elf"
    try:
        subprocess.run([CC, "-m32", "-ffreestanding", "-nostdlib", "-fno-pic", "-fno-stack-protector",
                        "-O2", "-c", str(GUESTS_DIR / "mbmods.c"), "-o", str(obj)], check=True,
                       capture_output=True)
    except subprocess.CalledProcessError as e:
        pytest.skip(f"gcc cannot build 32-bit code here: {e.stderr.decode()[:200]}")
    subprocess.run([LD, "-m", "elf_i386", "-Ttext=0x100000", "-e", "_start", str(obj), "-o",
                    str(elf)], check=True, capture_output=True)
    (d / "one.bin").write_bytes(b"MODULE-ONE-DATA")
    (d / "two.bin").write_bytes(b"SECOND")
    (d / "big.bin").write_bytes(bytes(range(256)) * 40)      # 10 KiB: three pages
    return elf


def svmemu(kernel: Path, capfd, *args: str) -> tuple[int, str, str]:
    status = main(["run", kernel.name, "-q", *args])
    out, err = capfd.readouterr()
    return status, out, err


def qemu(kernel: Path, append: str | None, initrd: str | None) -> tuple[int, str]:
    if QEMU is None:
        pytest.skip("qemu-system-x86_64 is not on PATH; QEMU comparisons skipped")
    cmd = [QEMU, *QEMU_MACHINE, "-kernel", kernel.name]
    if append is not None:
        cmd += ["-append", append]
    if initrd is not None:
        cmd += ["-initrd", initrd]
    p = subprocess.run(cmd, cwd=kernel.parent, capture_output=True, timeout=30,
                       stdin=subprocess.DEVNULL)
    return p.returncode, p.stdout.decode("utf-8", "replace")


def without_cmdline_address(out: str) -> list[str]:
    return [ln if not ln.startswith("cmdline ") else ln.split(" ", 2)[2] for ln in out.splitlines()]


def test_default_ld_elf32_boots(kernel):
    """The headers segment lies at 0xFF000; it is not stored, the kernel boots from 1 MiB, and
    QEMU's span of the kernel (from which modules are placed) still starts at the headers."""
    image = parse_image(kernel.read_bytes(), kernel.name, 128 * MiB)
    assert image.span()[0] == 0xFF000
    assert all(a >= 0x100000 for a, _ in image.segments)


@pytest.mark.parametrize("append,initrd", [
    (None, None),
    ("-x --y", "one.bin a b,two.bin,one.bin"),
    ("-", "big.bin x,,y,two.bin  spaced  "),
])
def test_modules_match_qemu(kernel, capfd, monkeypatch, append, initrd):
    monkeypatch.chdir(kernel.parent)
    args = (["--append", append] if append is not None else []) + \
           (["--initrd", initrd] if initrd is not None else [])
    status, out, err = svmemu(kernel, capfd, *args)
    qstatus, qout = qemu(kernel, append, initrd)
    assert status == qstatus == 1, (err, out, qout)
    assert without_cmdline_address(out) == without_cmdline_address(qout)
    if initrd:
        assert f"mods_count 0x{len(split_initrd(initrd)):08x}" in out


def test_missing_module_is_one_line_status_2(kernel, capfd, monkeypatch):
    monkeypatch.chdir(kernel.parent)
    status, out, err = svmemu(kernel, capfd, "--initrd", "one.bin,nope.bin x")
    assert status == 2 and out == ""
    assert err == "svmemu: error: cannot read module nope.bin: No such file or directory\n"


def test_split_initrd_follows_qemu():
    assert split_initrd("a x,b") == ["a x", "b"]
    assert split_initrd("a x,,y,b") == ["a x,y", "b"]
    assert split_initrd("a") == ["a"]


def test_modules_that_do_not_fit_are_refused(tmp_path):
    image = BootImage(0x100000, [(0x100000, b"\x90" * 0x1000)])
    mods = [Module("m", "m", bytes(3 * MiB))]
    place_modules(image, "k ", "m", mods, 8 * MiB)
    with pytest.raises(ImageError, match="modules do not fit"):
        place_modules(image, "k ", "m", mods, 4 * MiB)
    low = BootImage(0x10000, [(0x10000, b"\x90" * 0x1000)])
    with pytest.raises(ImageError, match="overlap the EBDA/VGA/BIOS area"):
        place_modules(low, "k ", "m", [Module("m", "m", bytes(0x90000))], 8 * MiB)
    with pytest.raises(ImageError, match="empty module name"):
        read_modules(" x")
