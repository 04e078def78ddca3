"""The Linux bzImage loader (emu/loader/linux.py): the zero page and the 32-bit entry state QEMU's
-kernel and the kernel's real-mode setup leave, checked on small hand-made bzImages whose
protected-mode code reports what it found; bad or truncated images end with one line and
status 2."""
from __future__ import annotations

import struct
import subprocess
import sys

import pytest

from emu.core.firmware.layout import e820_map
from emu.core.machine import Machine
from emu.errors import ImageError
from emu.loader.formats import KernelRequest, format_of, load_kernel
from emu.loader.linux import (CMDLINE_ADDR, PROT_ADDR, ZERO_PAGE_ADDR, initrd_address,
                              parse_linux)
from tests.linux_kernel import REPO

MiB = 1 << 20


def bzimage(code: bytes, *, protocol: int = 0x20F, setup_sects: int = 1, syssize: int | None = None,
            loadflags: int = 1, xloadflags: int = 0x7F, init_size: int = 0x10000,
            boot_flag: int = 0xAA55) -> bytes:
    """A setup part of `setup_sects` + 1 sectors with the header fields the loader reads, then
    `code` as the protected-mode part."""
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    struct.pack_into("<I", setup, 0x1F4, (len(code) + 15) // 16 if syssize is None else syssize)
    struct.pack_into("<H", setup, 0x1FE, boot_flag)
    setup[0x200], setup[0x201] = 0xEB, 0x6A            # jmp: the header ends at 0x26C
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, protocol)
    setup[0x211] = loadflags
    struct.pack_into("<I", setup, 0x214, PROT_ADDR)      # code32_start
    struct.pack_into("<I", setup, 0x22C, 0x7FFFFFFF)     # initrd_addr_max
    struct.pack_into("<H", setup, 0x236, xloadflags)
    struct.pack_into("<I", setup, 0x260, init_size)
    return bytes(setup) + code.ljust((len(code) + 15) & ~15, b"\x90")


# 32-bit code: write to isa-debug-exit the byte at [esi + OFFSET] (and nothing else), so a
# run's exit value is one field the kernel would read.
def report_byte(offset: int) -> bytes:
    return b"\x8A\x86" + struct.pack("<I", offset) + b"\xE6\xF4" + b"\xF4"   # mov al,[esi+o]; out; hlt


def boot(data: bytes, ram: int = 128 * MiB, append: str = "", initrd: str | None = None):
    m = Machine(ram, stdout=None)
    assert load_kernel(m, KernelRequest(data, "vmlinuz", append, initrd)) == "linux"
    return m, m.run(timeout=20)


def test_a_bzimage_is_recognised_by_its_header_and_multiboot_takes_the_rest():
    assert format_of(bzimage(b"\xF4")).name == "linux"
    assert format_of(b"\x7fELF" + bytes(100)).name == "multiboot"


def test_the_entry_state_is_the_32_bit_boot_protocol():
    m, res = boot(bzimage(report_byte(0x210)))
    assert res.reason == "exit" and "0xb0" in res.message          # QEMU's loader type
    regs = m.uc
    from unicorn.x86_const import (UC_X86_REG_CR0, UC_X86_REG_CS, UC_X86_REG_DS, UC_X86_REG_ESI,
                                   UC_X86_REG_TR)
    assert regs.reg_read(UC_X86_REG_ESI) == ZERO_PAGE_ADDR
    assert regs.reg_read(UC_X86_REG_CS) == 0x10 and regs.reg_read(UC_X86_REG_DS) == 0x18
    assert regs.reg_read(UC_X86_REG_TR)[:3] == (0x20, 4096, 103)     # __BOOT_TSS
    gdt = bytes(m.ram[0x11000:0x11028])
    assert struct.unpack("<5Q", gdt)[2:] == (0x00CF9B000000FFFF, 0x00CF93000000FFFF,
                                            0x0000890010000067)
    assert regs.reg_read(UC_X86_REG_CR0) & 0x80000001 == 1            # PE, no paging
    # The setup code masks every 8259 line but the cascade and turns NMIs off at the CMOS.
    assert m.pc.pic.master.imr == 0xFB and m.pc.pic.slave.imr == 0xFF
    assert m.pc.cmos.nmi_masked


def test_the_zero_page_holds_qemus_header_edits_and_the_e820_map(tmp_path):
    rd = tmp_path / "initrd"
    rd.write_bytes(b"R" * 1027789)
    m, res = boot(bzimage(report_byte(0x211)), ram=256 * MiB, append="console=ttyS0 x",
                  initrd=str(rd))
    assert "0x81" in res.message                   # LOADED_HIGH | CAN_USE_HEAP
    zp = bytes(m.ram[ZERO_PAGE_ADDR:ZERO_PAGE_ADDR + 0x1000])
    assert struct.unpack_from("<H", zp, 0x224)[0] == 0xFE00                 # heap_end_ptr
    assert struct.unpack_from("<I", zp, 0x228)[0] == CMDLINE_ADDR
    assert bytes(m.ram[CMDLINE_ADDR:CMDLINE_ADDR + 16]) == b"console=ttyS0 x\0"
    # Where QEMU 7.2 put this initramfs's 1027789 bytes with -m 256M ("RAMDISK:" line of
    # Linux on QEMU: [mem 0x0fee5000-0x0ffdffff]).
    assert struct.unpack_from("<II", zp, 0x218) == (0x0FEE5000, 1027789)
    assert bytes(m.ram[0x0FEE5000:0x0FEE5004]) == b"RRRR"
    entries = [struct.unpack_from("<QQI", zp, 0x2D0 + 20 * i) for i in range(zp[0x1E8])]
    assert entries == e820_map(256 * MiB)
    assert struct.unpack_from("<I", zp, 0x1E0)[0] == 15 * 1024 + ((0x0FFE0000 - 16 * MiB) >> 10)


def test_initrd_placement_follows_initrd_addr_max_without_xloadflags():
    old = bzimage(b"\xF4", xloadflags=0)
    old = old[:0x22C] + struct.pack("<I", 0x37FFFFFF) + old[0x230:]
    # Below 1 GiB for a 2 GiB guest: the header's limit wins over the top of low RAM.
    assert initrd_address(old, 0x1000, 2048 * MiB, "rd") == 0x37FFE000
    new = bzimage(b"\xF4")
    assert initrd_address(new, 0x1000, 2048 * MiB, "rd") == 2048 * MiB - 0x20000 - 0x2000


@pytest.mark.parametrize("data, why", [
    (bzimage(b"\xF4" * 64, syssize=0x100), "truncated"),
    (bzimage(b"\xF4", protocol=0x201), "boot protocol 2.01"),
    (bzimage(b"\xF4", loadflags=0), "loaded low"),
    (bzimage(b"\xF4", boot_flag=0), "boot_flag"),
    (bzimage(b"\xF4", init_size=200 * MiB), "init_size"),
    (bzimage(b"\xF4")[:0x300], "invalid Linux kernel header"),
])
def test_bad_bzimages_are_refused_with_one_line(data, why):
    with pytest.raises(ImageError, match=why):
        parse_linux(data, "vmlinuz", 128 * MiB, "")


def test_a_truncated_bzimage_ends_with_status_2(tmp_path):
    image = tmp_path / "vmlinuz"
    image.write_bytes(bzimage(b"\xF4" * 64, syssize=0x100))
    p = subprocess.run([sys.executable, "-m", "emu.cli", "run", str(image)], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "svmemu: error:" in p.stderr and "truncated" in p.stderr


def test_an_initrd_that_cannot_be_read_ends_with_status_2(tmp_path):
    image = tmp_path / "vmlinuz"
    image.write_bytes(bzimage(report_byte(0)))
    p = subprocess.run([sys.executable, "-m", "emu.cli", "run", str(image), "--initrd",
                        str(tmp_path / "missing")], cwd=REPO, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 2 and "cannot read initrd" in p.stderr
