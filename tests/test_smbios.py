"""SMBIOS (emu/core/firmware/smbios.py): the entry point and structure table QEMU 7.2 and
SeaBIOS leave, compared byte for byte with QEMU's memory (dumped through its monitor) when QEMU
is installed, and with the bytes measured there for -m 256M otherwise."""
from __future__ import annotations

import shutil
import struct
import subprocess
import time

import pytest

from emu.core.firmware.smbios import SMBIOS_ENTRY_ADDR, entry_point, smbios_tables
from emu.core.machine import Machine
from emu.loader.asm import GUESTS_DIR, assemble

MiB = 1 << 20
# QEMU 7.2, -m 256M -cpu EPYC: the table at 0xF5A10 (nine structures).
MEASURED_256M = bytes.fromhex(
    "00180000010200e80300080000000000000000040000ffff53656142494f5300312e31362e322d6465626961"
    "6e2d312e31362e322d310030342f30312f323031340000011b00010102030000000000000000000000000000"
    "00000006000051454d55005374616e646172642050432028693434304658202b20504949582c203139393629"
    "0070632d6934343066782d372e3200000316000301010200000303030200000000000000000051454d550070"
    "632d6934343066782d372e320000042a000401030102120f8000fdfb8b0703000000d007d0074101ffffffff"
    "ffff0000000101010200010043505520300051454d550070632d6934343066782d372e320000101700100103"
    "0600000400feff010000000000000000000000112800110010feffffffffff00010900010007020000000200"
    "00000000000000000000000000000044494d4d20300051454d550000131f001300000000ffff030000100100"
    "0000000000000000000000000000000000200b00200000000000000000007f04007f0000")


def machine(ram: int, cpus: int = 1) -> Machine:
    return Machine(ram, stdout=None, cpus=cpus)


def test_the_256m_table_is_the_one_measured_on_qemu():
    m = machine(256 * MiB)
    table = smbios_tables(256 * MiB, 1, tuple(m.cpuid.query(1, 0)))
    assert table == MEASURED_256M
    ep = entry_point(table, 0xF5A10)
    assert ep[:4] == b"_SM_" and sum(ep) & 0xFF == 0 and sum(ep[0x10:]) & 0xFF == 0
    assert struct.unpack_from("<HIH", ep, 0x16) == (len(table), 0xF5A10, 9)


def test_the_firmware_installs_it_in_the_bios_segment():
    from emu.core import firmware
    m = machine(256 * MiB)
    firmware.install(m)
    assert bytes(m.ram[SMBIOS_ENTRY_ADDR:SMBIOS_ENTRY_ADDR + 4]) == b"_SM_"
    assert bytes(m.ram[0xF5A10:0xF5A10 + len(MEASURED_256M)]) == MEASURED_256M


def _qemu_fseg(tmp_path, *args: str) -> bytes:
    image = tmp_path / "hello.bin"
    image.write_bytes(assemble(str(GUESTS_DIR / "hello.S")).image)
    dump = tmp_path / "fseg.bin"
    p = subprocess.Popen(["qemu-system-x86_64", "-kernel", str(image), "-cpu", "EPYC",
                          "-accel", "tcg", "-display", "none", "-serial", "null",
                          "-monitor", "stdio", *args], stdin=subprocess.PIPE,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    time.sleep(3)
    p.communicate(f'pmemsave 0xf0000 0x10000 "{dump}"\nquit\n', timeout=60)
    return dump.read_bytes()


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="no QEMU to compare")
@pytest.mark.parametrize("mem, cpus", [("5G", 2), ("256M", 1)])
def test_tables_match_qemu(tmp_path, mem, cpus):
    """RAM above 4 GiB adds a mapped range; each CPU package a processor structure."""
    fseg = _qemu_fseg(tmp_path, "-m", mem, "-smp", f"{cpus},sockets={cpus}")
    at = fseg.find(b"_SM_")
    ep = fseg[at:at + 0x1F]
    length, addr = struct.unpack_from("<HI", ep, 0x16)
    ram = {"5G": 5 << 30, "256M": 256 * MiB}[mem]
    m = machine(ram, cpus)
    table = smbios_tables(ram, cpus, tuple(m.cpuid.query(1, 0)))
    assert table == fseg[addr - 0xF0000:addr - 0xF0000 + length]
    assert entry_point(table, addr) == ep
