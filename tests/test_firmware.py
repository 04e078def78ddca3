"""The firmware state a kernel finds at entry (emu/core/firmware/): the tables the firmware
guest (guests/firmware.S) finds and prints on svmemu and on QEMU 7.2 + SeaBIOS, compared byte
for byte where svmemu builds what QEMU builds, and the layout rules for RAM sizes QEMU boots."""
from __future__ import annotations

import struct
import subprocess

from tests import harness
import pytest

from emu.arch import memtype
from emu.core.firmware import acpi, firmware_contents
from emu.core.firmware.layout import (E820_RESERVED, FIRMWARE_RESERVED_TOP, GiB, MiB, e820_map,
                                      ram_layout)
from emu.core.firmware.mptable import PciInterrupt, build_mptable
from emu.core.firmware.mtrr import seabios_mtrrs
from emu.core.machine import Machine
from emu.errors import OptionError
from emu.loader.asm import GUESTS_DIR, assemble_source
from emu.tools.memquery import effective_memtype
from tests.conftest import QEMU, QEMU_MACHINE, parse_tap

# The PCI functions with an interrupt pin on QEMU's default pc machine, as SeaBIOS lists them
# in the MP table: the PIIX4 PM function (00:01.3, INTA -> 9) and the e1000 NIC (00:03.0,
# INTA -> 11).  svmemu has the PM function, not the NIC.
QEMU_PCI_INTERRUPTS = (PciInterrupt(1, 0, 9), PciInterrupt(3, 0, 11))
SIZES = [2 * MiB, 128 * MiB, 2049 * MiB, 3 * GiB, 3200 * MiB, 3584 * MiB, 4 * GiB, 16 * GiB,
         64 * GiB]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("fw") / "firmware.bin"
    path.write_bytes(assemble_source(str(GUESTS_DIR / "firmware.S")))
    return path


def comments(output: str) -> dict[str, str]:
    out = {}
    for line in output.splitlines():
        if line.startswith("# ") and not line.startswith("# pass"):
            key, _, value = line[2:].partition(" ")
            out[key] = value
    return out


def run_svmemu(image, cpus: int = 1) -> tuple[Machine, str]:
    b = harness.boot(str(image), cmdline="firmware.bin ", timeout=60, cpus=cpus)
    m, res, out = b.machine, b.result, b.serial
    assert res.reason == "exit" and res.status == 1, (res, out)
    return m, out


def run_qemu(image, *extra: str) -> str:
    if QEMU is None:
        pytest.skip("qemu-system-x86_64 is not on PATH; QEMU comparisons skipped")
    machine = list(QEMU_MACHINE)
    i = machine.index("-m")
    if "-m" in extra:
        del machine[i:i + 2]
    p = subprocess.run([QEMU, *machine, *extra, "-kernel", str(image)], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=30)
    return p.stdout.decode("utf-8", "replace")


def mp_entries(table: bytes) -> list[bytes]:
    """The configuration table's entries (processor entries are 20 bytes, the others 8)."""
    count = struct.unpack_from("<H", table, 34)[0]
    pos, out = 44, []
    for _ in range(count):
        n = 20 if table[pos] == 0 else 8
        out.append(table[pos:pos + n])
        pos += n
    assert pos == len(table)
    return out


def test_guest_finds_every_table_on_svmemu(image):
    m, out = run_svmemu(image)
    checks = parse_tap(out)
    assert len(checks) == 48 and all(c.ok for c in checks.values()), out


def test_tables_match_qemu(image):
    """MADT byte for byte; the FADT but for where its FACS and DSDT are; the MP table but for
    the processor's CPUID values (another CPU model) and the e1000 NIC's interrupt entry."""
    _, ours = run_svmemu(image)
    theirs = run_qemu(image)
    a, b = comments(ours), comments(theirs)
    assert a["madt"] == b["madt"]
    assert a["rsdp-rev"] == b["rsdp-rev"] == "0"
    fa, fb = bytearray.fromhex(a["fadt"]), bytearray.fromhex(b["fadt"])
    for t in (fa, fb):
        t[9] = 0
        t[36:44] = bytes(8)
    assert fa == fb
    ma, mb = bytes.fromhex(a["mpc"]), bytes.fromhex(b["mpc"])
    assert ma[8:34] == mb[8:34] and ma[36:44] == mb[36:44]       # OEM, product, APIC address
    ea, eb = mp_entries(ma), mp_entries(mb)
    eb = [e for e in eb if not (e[0] == 3 and e[4] == 0 and e[5] >> 2 == 3)]   # QEMU's NIC
    assert [e[:4] + e[12:] if e[0] == 0 else e for e in ea] == \
           [e[:4] + e[12:] if e[0] == 0 else e for e in eb]
    assert a["mtrr-var0"] == b["mtrr-var0"]
    assert a["ivt"] == b["ivt"]
    assert a["ivt"].split()[1] == "0x00000000f000fea5"        # IRQ 0: the BIOS tick handler


@pytest.mark.parametrize("cpus", [1, 2, 4])
def test_tables_for_n_cpus_match_qemu(image, cpus):
    """What acpi.madt and build_mptable build for N CPUs is what QEMU + SeaBIOS give with
    -smp N (with QEMU's CPUID and PCI functions): N local APICs in the MADT, one MP processor
    entry per package."""
    out = comments(run_qemu(image, "-smp", str(cpus)))
    assert int(out["cpus"]) == cpus
    cpuid_1 = tuple(int(x, 16) for x in out["cpuid1"].split())
    assert bytes.fromhex(out["madt"]) == acpi.madt(cpus)
    _, (_, config) = build_mptable(cpus, cpuid_1, QEMU_PCI_INTERRUPTS)
    assert bytes.fromhex(out["mpc"]) == config


@pytest.mark.parametrize("cpus", [2, 4])
def test_smp_machine_tables_match_qemu_with_one_core_packages(image, cpus):
    """svmemu with -smp N is QEMU's -smp N,sockets=N (each CPU a package of one core): the
    guest finds the same CPU count, the same MADT and the same MP processor entries (but for
    the CPUID signature and features of another CPU model)."""
    _, ours = run_svmemu(image, cpus)
    theirs = run_qemu(image, "-smp", f"{cpus},sockets={cpus}")
    a, b = comments(ours), comments(theirs)
    assert int(a["cpus"]) == int(b["cpus"]) == cpus
    assert a["madt"] == b["madt"]

    def processors(mpc: str) -> list[bytes]:
        return [e[:4] for e in mp_entries(bytes.fromhex(mpc)) if e[0] == 0]
    assert processors(a["mpc"]) == processors(b["mpc"])
    assert len(processors(a["mpc"])) == cpus


@pytest.mark.parametrize("mem", ["128", "2049", "3200", "4G"])
def test_pci_hole_mtrr_matches_qemu(image, mem):
    out = comments(run_qemu(image, "-m", mem))
    size = (int(mem[:-1]) << 30) if mem.endswith("G") else int(mem) << 20
    values = seabios_mtrrs(ram_layout(size).below_4g, 40)
    want = f"{values[memtype.msr_mtrrphysbase(0)]:#018x} {values[memtype.msr_mtrrphysmask(0)]:#018x}"
    assert out["mtrr-var0"] == want


def test_memory_types_under_the_firmware_mtrrs(image):
    """What `svmemu memtype` reports once the firmware's MTRRs are in place (the guest maps the
    first 4 GiB 1:1 with PAT entry 0, WB)."""
    m, _ = run_svmemu(image)
    assert effective_memtype(m, 0x200000, "L1").effective == memtype.WB     # RAM
    assert effective_memtype(m, 0x9F000, "L1").effective == memtype.WB
    assert effective_memtype(m, 0xB8000, "L1").effective == memtype.UC      # VGA window
    assert effective_memtype(m, 0xF5000, "L1").effective == memtype.WP      # BIOS ROM
    assert effective_memtype(m, 0xFEC00000, "L1").effective == memtype.UC  # PCI hole
    m.msrs.wrmsr(memtype.MSR_MTRRDEFTYPE, 0)                                 # MTRRs off
    assert effective_memtype(m, 0x200000, "L1").effective == memtype.UC


@pytest.mark.parametrize("size", SIZES)
def test_tables_checksum_and_lie_in_reserved_ranges(size):
    reserved = [(b, b + n) for b, n, t in e820_map(size) if t == E820_RESERVED]
    for addr, data in firmware_contents(size, 3, (0x60FB1, 0, 0, 0x078BFBFD)):
        if addr < 0x500:
            continue                      # the BDA: below the first usable RAM, as on a PC
        assert any(s <= addr and addr + len(data) <= e for s, e in reserved), hex(addr)
        if data[:4] in (b"FACP", b"APIC", b"DSDT", b"RSDT", b"PCMP"):
            assert sum(data) & 0xFF == 0
            assert struct.unpack_from("<I" if data[:4] != b"PCMP" else "<H", data, 4)[0] \
                == len(data)
        if data[:4] in (b"_MP_", b"RSD "):
            assert sum(data) & 0xFF == 0


def test_tables_that_do_not_fit_are_refused():
    with pytest.raises(ValueError, match="do not fit|need"):
        acpi.build_acpi(200, ram_layout(128 * MiB).firmware_top, 0x100)
    with pytest.raises(OptionError, match="1 to 255 CPUs"):
        firmware_contents(128 * MiB, 256, (0, 0, 0, 0))
    firmware_contents(128 * MiB, 255, (0, 0, 0, 0))


def test_firmware_area_is_not_for_images():
    """A kernel segment over the ACPI area would overwrite the tables: refused, as is any
    segment outside usable RAM."""
    from tests.tinyimage import long_mode_image, to_elf32   # noqa: F401  (image helpers)
    import emu.loader.multiboot as mb
    top = ram_layout(128 * MiB).firmware_top
    with pytest.raises(Exception, match="ACPI"):
        mb._check_placement([(top, b"x", 1)], 0x100000, 128 * MiB, "k")
    assert FIRMWARE_RESERVED_TOP == 0x20000
