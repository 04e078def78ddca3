"""The PC devices (emu/core/devices): their registers on the device objects, and the machine
around them: virtual-time clocks, resets, the open bus and --strict, snapshots. The guests
pic_ioapic.S and platform.S check the same devices through a kernel's eyes, on QEMU too."""
from __future__ import annotations

import shutil

import pytest

from emu.core.devices.apic import LocalApic
from emu.core.devices.clock import PIT_HZ, PM_TIMER_HZ, TSC_HZ, cycles, tsc_at
from emu.core.devices.cmos import Cmos, memory_bytes
from emu.core.devices.hpet import HPET_HZ, Hpet
from emu.core.devices.ioapic import IoApic
from emu.core.devices.pc import ram_split
from emu.core.devices.pic import PicPair
from emu.core.devices.pit import Pit8254
from emu.core.devices.pm_timer import PmBlock
from emu.core.machine import STATUS_SHUTDOWN, STATUS_UNSUPPORTED, Machine
from emu.errors import Unsupported
from emu.loader.asm import GUESTS_DIR, assemble, assemble_source
from tests.conftest import QEMU, run_qemu
from tests import harness


class Clock:
    def __init__(self) -> None:
        self.t = 0

    def now(self) -> int:
        return self.t

    def advance(self, n: int) -> None:
        self.t += n


def remapped_pic() -> PicPair:
    pic = PicPair()
    for port, value in ((0x20, 0x11), (0xA0, 0x11), (0x21, 0x20), (0xA1, 0x28), (0x21, 4),
                        (0xA1, 2), (0x21, 1), (0xA1, 1), (0x21, 0), (0xA1, 0)):
        pic.write(port, 1, value)
    return pic


# ---- 8259 -----------------------------------------------------------------------------------------
def test_pic_priority_acknowledge_and_spurious():
    pic = remapped_pic()
    assert not pic.intr()
    assert pic.acknowledge() == 0x27                 # nothing pending: spurious IRQ7
    pic.set_irq(5, 1)
    pic.set_irq(3, 1)
    assert pic.intr() and pic.vector() == 0x23       # lower IRQ number first
    assert pic.acknowledge() == 0x23
    assert not pic.intr()                            # IRQ5 waits behind IRQ3 in service
    pic.write(0x20, 1, 0x20)                         # non-specific EOI
    assert pic.acknowledge() == 0x25


def test_pic_edge_needs_a_new_rising_edge_and_elcr_makes_it_level():
    pic = remapped_pic()
    pic.set_irq(4, 1)
    assert pic.acknowledge() == 0x24
    pic.write(0x20, 1, 0x20)
    pic.set_irq(4, 1)                                # still high: no new edge
    assert not pic.intr()
    pic.write(0x4D0, 1, 0x10)                        # IRQ4 level-triggered
    pic.set_irq(4, 1)
    assert pic.intr()
    pic.set_irq(4, 0)                                # level: IRR follows the line
    assert not pic.intr()


def test_pic_auto_eoi_poll_and_rotation():
    pic = PicPair()
    for port, value in ((0x20, 0x11), (0x21, 0x40), (0x21, 4), (0x21, 3), (0x21, 0)):
        pic.write(port, 1, value)                    # ICW4 with AEOI
    pic.set_irq(1, 1)
    assert pic.acknowledge() == 0x41
    pic.write(0x20, 1, 0x0B)
    assert pic.read(0x20, 1) == 0                    # auto-EOI: nothing stays in service
    pic.set_irq(6, 1)
    pic.write(0x20, 1, 0x0C)                         # OCW3 poll
    assert pic.read(0x20, 1) == 0x86
    pic.write(0x20, 1, 0xC3)                         # set priority: IRQ4 lowest
    pic.set_irq(2, 0)
    pic.set_irq(3, 1)
    pic.set_irq(5, 1)
    assert pic.vector() == 0x45                      # IRQ5 now outranks IRQ3


# ---- 8254 and the clocks -------------------------------------------------------------------------
def test_clock_conversions_are_exact_integers():
    assert cycles(TSC_HZ, PIT_HZ) == PIT_HZ
    assert cycles(tsc_at(65536, PIT_HZ), PIT_HZ) == 65536
    assert cycles(tsc_at(65536, PIT_HZ) - 1, PIT_HZ) == 65535


def test_pit_channel0_edges_follow_virtual_time():
    clock, levels = Clock(), []
    pit = Pit8254(clock.now, clock.advance, levels.append, lambda: True)
    for port, value in ((0x43, 0x34), (0x40, 0xA9), (0x40, 0x04)):      # mode 2, 1193
        pit.write(port, 1, value)
    first = pit.deadline()
    assert first == tsc_at(1193, PIT_HZ)              # 999,847 ns: about 1 ms
    clock.t = first - 1
    pit.tick(clock.t)
    assert levels == []
    clock.t = first
    pit.tick(clock.t)
    assert levels == [1, 0]                           # one pulse
    clock.t = first + 10 * first                      # ten periods later: one pulse for all
    pit.tick(clock.t)
    assert levels == [1, 0, 1, 0]
    assert pit.deadline() > clock.t


def test_pit_mode0_holds_irq0_high_and_latch_reads_count():
    clock, levels = Clock(), []
    pit = Pit8254(clock.now, clock.advance, levels.append, lambda: True)
    pit.write(0x43, 1, 0x30)                          # channel 0, lobyte/hibyte, mode 0
    pit.write(0x40, 1, 100)
    pit.write(0x40, 1, 0)
    clock.t = tsc_at(40, PIT_HZ)
    pit.write(0x43, 1, 0x00)                          # latch
    lo, hi = pit.read(0x40, 1), pit.read(0x40, 1)
    assert (hi << 8 | lo) == 60
    clock.t = tsc_at(100, PIT_HZ)
    pit.tick(clock.t)
    assert levels[-1] == 1 and pit.deadline() is None  # terminal count: high, no more edges
    pit.write(0x43, 1, 0x30)
    assert levels[-1] == 0                            # a new control word lowers OUT0


def test_pit_unrouted_timer_does_not_bound_time():
    clock = Clock()
    pit = Pit8254(clock.now, clock.advance, lambda level: None, lambda: False)
    assert pit.deadline() is None


# ---- I/O APIC -------------------------------------------------------------------------------------
def apic_with_pic():
    apic = LocalApic(lambda: 0, lambda n: None, lambda: None)
    apic.firmware_state()
    pic = remapped_pic()
    apic.extint = pic
    return apic, pic, IoApic(apic)


def test_ioapic_extint_fetches_the_vector_from_the_8259():
    apic, pic, io = apic_with_pic()
    pic.write(0x21, 1, 0xFF)                          # the 8259 masks LINT0's path...
    io.write_reg(0x10, 7 << 8)                        # ...pin 0 in ExtINT mode
    pic.write(0x21, 1, 0xFE)
    pic.set_irq(0, 1)
    apic.lvt[0x350] |= 1 << 16                        # LINT0 masked: only the I/O APIC path
    assert apic.pending() is None
    io.set_irq(0, 1)
    assert apic.pending() == 0x20
    apic.acknowledge(0x20)
    assert apic.isr == 0 and pic.master.isr == 1 and not apic.extint_pending


def test_ioapic_destinations_and_delivery_modes():
    apic, _, io = apic_with_pic()
    io.write_reg(0x10 + 2 * 4, 0x0061)                # fixed, physical destination 0
    io.set_irq(4, 1)
    assert apic.irr >> 0x61 & 1
    io.write_reg(0x10 + 2 * 5, 0x0862)                # logical
    io.write_reg(0x11 + 2 * 5, 0x02000000)
    apic.ldr = 0x01000000
    io.set_irq(5, 1)                                  # LDR bit 0 not in 0x02: nobody
    assert not apic.irr >> 0x62 & 1
    io.write_reg(0x11 + 2 * 6, 0x01000000)
    io.write_reg(0x10 + 2 * 6, 0x0963)                # lowest priority, logical 0x01: this CPU
    io.set_irq(6, 1)
    assert apic.irr >> 0x63 & 1
    io.write_reg(0x10 + 2 * 7, 0x0500)                # INIT: arrives as a pending INIT
    io.set_irq(7, 1)
    assert apic.init_pending and not apic.smi_pending
    io.write_reg(0x10 + 2 * 8, 0x0200)                # SMI, likewise
    io.set_irq(8, 1)
    assert apic.smi_pending
    io.write_reg(0x10 + 2 * 9, 0x0600)                # start-up: not an I/O APIC mode
    with pytest.raises(Unsupported):
        io.set_irq(9, 1)


# ---- CMOS / RTC ----------------------------------------------------------------------------------
def test_rtc_shows_the_fixed_date_advancing_with_virtual_time():
    clock = Clock()
    rtc = Cmos(clock.now, 128 << 20, 0)

    def reg(i: int) -> int:
        rtc.write(0x70, 1, i)
        return rtc.read(0x71, 1)
    assert [reg(i) for i in (9, 8, 7, 6, 4, 2, 0, 0x32)] == [0x24, 0x01, 0x01, 0x02, 0, 0, 0,
                                                             0x20]
    clock.t = 3723 * TSC_HZ                           # 1 h 2 min 3 s
    assert [reg(i) for i in (4, 2, 0)] == [0x01, 0x02, 0x03]
    rtc.write(0x70, 1, 0x0B)
    rtc.write(0x71, 1, 0x86)                          # SET, binary, 24 h
    rtc.write(0x70, 1, 0x04)
    rtc.write(0x71, 1, 23)
    clock.t += 5 * TSC_HZ                             # frozen while SET
    assert reg(4) == 23 and reg(0) == 3
    rtc.write(0x70, 1, 0x0B)
    rtc.write(0x71, 1, 0x04)                          # run again (binary, 12-hour)
    assert reg(4) == 0x80 | 11                        # 11 pm


def test_cmos_memory_bytes_for_large_guests():
    below, above = ram_split(16 << 30)
    assert (below, above) == (3 << 30, 13 << 30)
    b = memory_bytes(below, above)
    assert (b[0x34] | b[0x35] << 8) == ((3 << 30) - (16 << 20)) >> 16
    assert b[0x5B] | b[0x5C] << 8 | b[0x5D] << 16 == (13 << 30) >> 16
    b = memory_bytes(*ram_split(64 << 20))
    assert (b[0x34] | b[0x35] << 8) == (48 << 20) >> 16


def test_pm_timer_counts_at_3_579545_mhz_of_virtual_time():
    clock = Clock()
    pm = PmBlock(clock.now, clock.advance, lambda msg: None)
    clock.t = TSC_HZ
    value = pm.read(0x608, 4)
    assert value == cycles(TSC_HZ + 1000, PM_TIMER_HZ) & 0xFFFFFF      # the read costs 1 µs
    assert pm.read(0x600, 2) & 1 == 0                  # bit 23 has not flipped in 1 s
    clock.t = 3 * TSC_HZ
    assert pm.read(0x600, 2) & 1 == 1
    pm.write(0x600, 2, 1)                               # write 1 to clear
    assert pm.read(0x600, 2) & 1 == 0


# ---- the machine -----------------------------------------------------------------------------------
def boot_source(tmp_path, body: str, **kw) -> tuple[Machine, object, str]:
    path = harness.source(tmp_path, '.include "prelude.inc"\n' + body)
    b = harness.boot(path, nested=False, strict=kw.get("strict", False), cmdline="guest ",
                     timeout=60)
    return b.machine, b.result, b.serial


RESETS = {
    "kbc": "    mov al, 0xfe\n    out 0x64, al\n",
    "port92": "    mov al, 0x03\n    out 0x92, al\n",
    "cf9": "    mov dx, 0xcf9\n    mov al, 0x06\n    out dx, al\n",
}


@pytest.mark.parametrize("how", sorted(RESETS))
def test_reset_ends_the_run_as_qemu_no_reboot(tmp_path, how):
    body = f"main:\n    print \"before\\n\"\n{RESETS[how]}    print \"after\\n\"\n    ret\n"
    m, res, out = boot_source(tmp_path, body)
    assert res.reason == "reset" and res.status == STATUS_SHUTDOWN, res
    assert out == "before\n"
    if QEMU is not None:
        image = tmp_path / "guest.bin"
        image.write_bytes(assemble_source(str(tmp_path / "guest.S")))
        run = run_qemu(image, timeout=10)
        assert not run.timed_out and run.output == "before\n" and run.status == 0


def _pit_spin_guest(imr: int, after_sti: str, name: str) -> str:
    """A kernel that remaps the 8259 to 0x20 with mask `imr`, runs the PIT at ~1 kHz, enables
    interrupts, runs `after_sti` and spins (no HLT, no RDTSC) until three ticks came."""
    return f"""
main:
    set_idt_handler 0x20, tick
    mov al, 0x11
    out 0x20, al
    mov al, 0x20
    out 0x21, al
    mov al, 4
    out 0x21, al
    mov al, 1
    out 0x21, al
    mov al, {imr:#x}
    out 0x21, al
    mov al, 0x34
    out 0x43, al
    mov al, 0xa9
    out 0x40, al
    mov al, 0x04
    out 0x40, al
    sti
{after_sti}
.Lspin:
    cmp qword ptr [ticks], 3
    jb .Lspin
    cli
    check_eq [ticks], 3, "{name}"
    ret
tick:
    push rax
    inc qword ptr [ticks]
    mov al, 0x20
    out 0x20, al
    mov rax, 0xfee000b0
    mov dword ptr [rax], 0
    pop rax
    iretq
.bss
ticks: .space 8
.text
"""


def test_sti_and_spin_takes_pit_interrupts_in_reproducible_virtual_time(tmp_path):
    """A kernel that unmasks the PIT and spins (no HLT) gets its ticks: time slices start at
    the STI. Two runs end at the same virtual time."""
    body = _pit_spin_guest(0xFE, "", "three PIT ticks while spinning")
    runs = [boot_source(tmp_path, body) for _ in range(2)]
    for m, res, out in runs:
        assert "ok 1 - three PIT ticks while spinning" in out, out
        assert res.reason == "exit" and res.status == 1
    assert runs[0][0].tsc == runs[1][0].tsc
    assert runs[0][0].tsc >= tsc_at(3 * 1193, PIT_HZ)     # the third edge has passed


@pytest.mark.parametrize("route", ["pic", "ioapic"])
def test_unmasking_the_pits_line_while_interruptible_bounds_time_from_there(tmp_path, route):
    """IF is already 1 when the PIT's line is unmasked (8259 IMR, or I/O APIC pin 2 as Xen's
    check_timer does), and the kernel then spins without RDTSC: the run must start counting
    time at the unmask, or the spin never sees a tick."""
    unmask = {"pic": """
    mov al, 0xfe
    out 0x21, al
""", "ioapic": """
    mov r14, 0xfec00000
    mov dword ptr [r14], 0x15
    mov dword ptr [r14 + 0x10], 0
    mov dword ptr [r14], 0x14
    mov dword ptr [r14 + 0x10], 0x20
"""}[route]
    idle = "    mov ecx, 1000\n.Lidle:\n    loop .Lidle\n"
    body = _pit_spin_guest(0xFF, idle + unmask, "three PIT ticks after the unmask")
    m, res, out = boot_source(tmp_path, body)
    assert "ok 1 - three PIT ticks after the unmask" in out, (res, out)
    assert res.reason == "exit" and res.status == 1


def test_a_timer_falls_due_during_an_rdtsc_delay_loop(tmp_path):
    """A kernel waits 5 ms by polling RDTSC (as Xen's udelay does) with the PIT at ~1 kHz:
    each RDTSC moves time by more than its instruction, so the ticks must come when the TSC
    passes their deadlines, not after as many instructions (Xen's check_timer saw none and
    panicked). The C fast exits and the Python path see the same ticks at the same TSC."""
    wait = """
    rdtsc
    shl rdx, 32
    or rax, rdx
    mov rsi, rax
.Ldelay:
    pause
    rdtsc
    shl rdx, 32
    or rax, rdx
    sub rax, rsi
    cmp rax, 5000000
    jb .Ldelay
    cli
    mov rax, [ticks]
    mov [seen], rax
    mov qword ptr [ticks], 3
"""
    body = _pit_spin_guest(0xFE, wait, "done").replace(".bss\n", ".bss\nseen: .space 8\n")
    path = harness.source(tmp_path, '.include "prelude.inc"\n' + body)
    image, addr = harness.image_of(path), assemble(path).symbols["seen"]
    seen = []
    for fast in (True, False):
        m = Machine(harness.RAM, stdout=None)
        m.replay.enabled = fast
        m.load_multiboot(image, "guest ")
        res = m.run(timeout=60)
        assert res.reason == "exit", bytes(m.serial.output)
        seen.append((int.from_bytes(m.mem.read_phys(addr, 8), "little"), m.tsc))
    # 5 ms at ~1.0 ms a tick: four or five ticks, the same on both paths.
    assert 4 <= seen[0][0] <= 6, seen
    assert seen[0] == seen[1]


def test_open_bus_reads_all_ones_and_strict_stops(tmp_path):
    body = """
main:
    mov rbx, 0xfebf0000
    mov eax, [rbx]
    check_eq rax, 0xffffffff, "hole reads all-ones"
    ret
"""
    m, res, out = boot_source(tmp_path, body)
    assert "ok 1 - hole reads all-ones" in out and res.status == 1
    m, res, out = boot_source(tmp_path, body, strict=True)
    assert res.status == STATUS_UNSUPPORTED and "0xfebf0000" in res.message


def test_strict_option_on_the_command_line(tmp_path, capsys):
    from emu.cli.main import main
    shutil.copy(GUESTS_DIR / "platform.S", tmp_path / "platform.S")
    shutil.copy(GUESTS_DIR / "prelude.inc", tmp_path / "prelude.inc")
    assert main(["run", "-q", str(tmp_path / "platform.S")]) == 1
    assert main(["run", "--strict", str(tmp_path / "platform.S")]) == STATUS_UNSUPPORTED
    assert "physical address 0xe0000000" in capsys.readouterr().err


def test_device_state_survives_a_snapshot_round_trip():
    from emu.core import snapshot
    m = Machine(128 << 20, stdout=None)
    m.pc.pic.write(0x21, 1, 0x5A)
    m.pc.ioapic.write_reg(0x12, 0x1234)
    m.pc.hpet.mmio_write(0x010, 8, 3)                # enabled, legacy replacement
    m.pc.hpet.mmio_write(0x108, 8, 12345)
    m.pc.pci.write(0xCF8, 4, 0x80000B40)
    m.pc.pci.write(0xCFC, 4, 0x701)                  # move the PM block to 0x700
    m.uc.mem_write(0xFF000010, b"iomem")             # pc-testdev's window: its bytes too
    states = snapshot.decode(snapshot.encode(snapshot.take(m))).devices
    fresh = Machine(128 << 20, stdout=None)
    for dev, (name, state) in zip(fresh.devices, states):
        assert dev.name == name
        dev.load_state(state)
    assert [d.state() for d in fresh.devices] == [d.state() for d in m.devices]
    assert fresh.ports[0x708] is fresh.pc.pm and 0x608 not in fresh.ports


def test_testdev_iomem_is_shared_ram_in_snapshots_and_fast_reset():
    """pc-testdev's window: what one CPU's engine stores every CPU reads; snapshots (in memory,
    in a file) and the fast reset bring its bytes back; a never-touched window adds nothing."""
    from emu.core import snapshot
    from emu.core.devices.testdev import TESTDEV_IOMEM_BASE as BASE, TESTDEV_IOMEM_LEN as LEN
    from emu.core.fastreset import ResetPoint
    m = Machine(128 << 20, stdout=None, cpus=2)
    assert m.pc.testdev.state()["iomem"] == b""
    m.uc.mem_write(BASE + LEN - 4, b"\x11\x22\x33\x44")
    assert bytes(m.cpu_list[1].uc.mem_read(BASE + LEN - 4, 4)) == b"\x11\x22\x33\x44"
    assert m.mem.read_phys(BASE + LEN - 2, 2) == b"\x33\x44"
    snap = snapshot.take(m)
    m.uc.mem_write(BASE + LEN - 4, b"\0\0\0\0")
    snapshot.restore(m, snap)
    assert bytes(m.uc.mem_read(BASE + LEN - 4, 4)) == b"\x11\x22\x33\x44"
    fresh = Machine(128 << 20, stdout=None, cpus=2)
    snapshot.restore(fresh, snapshot.decode(snapshot.encode(snap)))
    assert bytes(fresh.cpu_list[1].uc.mem_read(BASE + LEN - 4, 4)) == b"\x11\x22\x33\x44"
    point = ResetPoint(m)
    try:
        m.uc.mem_write(BASE, b"\x99")
        point.reset()
        assert bytes(m.uc.mem_read(BASE, 1)) == b"\0"
    finally:
        point.close()


def _hpet(clock: "Clock") -> tuple[Hpet, list[tuple[int, int]]]:
    edges: list[tuple[int, int]] = []
    h = Hpet(clock.now, clock.advance, lambda line, level: edges.append((line, level)),
             lambda line: True)
    return h, edges


def test_hpet_comparators_follow_virtual_time():
    """Counts at 100 MHz of virtual time while enabled; a one-shot fires once at its comparator;
    a comparator already behind fires at the next count (QEMU's rule); a periodic comparator
    moves on by whole periods, one interrupt for several periods missed."""
    clock = Clock()
    h, edges = _hpet(clock)
    h.mmio_write(0x0F0, 8, 500)                       # halted: the counter takes the write
    h.mmio_write(0x010, 8, 1)
    clock.t = tsc_at(100, HPET_HZ)
    assert h.counter() == 600
    h.mmio_write(0x100, 8, 0x4)                       # timer 0: edge, enabled, one-shot, GSI 0
    h.mmio_write(0x108, 8, 1000)
    assert h.deadline() == tsc_at(1000 - 500, HPET_HZ)
    clock.t = h.deadline()
    h.tick(clock.t)
    assert edges == [(0, 1), (0, 0)] and h.deadline() is None
    edges.clear()
    h.mmio_write(0x108, 8, 10)                        # behind the counter: next count
    assert h.deadline() == tsc_at(1000 - 500 + 1, HPET_HZ)
    h.tick(h.deadline())
    assert edges == [(0, 1), (0, 0)]
    edges.clear()
    h.mmio_write(0x100, 8, 0x4 | 0x8 | 0x40)          # periodic, VAL_SET
    now = h.counter()
    h.mmio_write(0x108, 8, now + 100)
    h.mmio_write(0x108, 8, 100)                       # the period
    clock.t = tsc_at(now + 350 - 500, HPET_HZ)        # three and a half periods later
    h.tick(clock.t)
    assert edges == [(0, 1), (0, 0)]                  # one edge for the periods missed
    assert h.timers[0].cmp == now + 400               # the next whole period ahead


def test_hpet_32_bit_one_shot_fires_at_the_wrap_first():
    clock = Clock()
    h, edges = _hpet(clock)
    h.mmio_write(0x0F0, 8, 0xFFFFFF00)
    h.mmio_write(0x010, 8, 1)
    h.mmio_write(0x100, 8, 0x4 | 0x100)               # 32-bit mode
    h.mmio_write(0x108, 8, 0x80)                      # after the low 32 bits wrap
    assert h.deadline() == tsc_at(0xFF, HPET_HZ)     # QEMU: the wrap comes first
    h.tick(h.deadline())
    assert edges == [(0, 1), (0, 0)]
    assert h.deadline() == tsc_at(0x100 + 0x80, HPET_HZ)


def test_hpet_legacy_replacement_takes_the_pits_line():
    m = Machine(128 << 20, stdout=None)
    assert m.pc.pit.routed() == m.pc.lines.routed(0)
    m.pc.ioapic.write_reg(0x14, 0x30)                 # pin 2 unmasked
    assert m.pc.pit.routed()
    m.pc.hpet.mmio_write(0x010, 8, 3)
    assert not m.pc.pit.routed() and not m.pc.cmos.routed()


def test_ioapic_id_version_and_arbitration_registers_as_qemu():
    """QEMU's I/O APIC (kvm-unit-tests ioapic): only ID[27:24] is writable, the version register
    is read-only, and the arbitration register reads as the ID and ignores writes."""
    _, _, io = apic_with_pic()

    def reg(index: int, value: int | None = None) -> int:
        io.mmio_write(0x00, 4, index)
        if value is not None:
            io.mmio_write(0x10, 4, value)
        return io.mmio_read(0x10, 4)

    assert reg(0x01) == 0x00170020
    assert reg(0x01, 0xFFFFFFFF ^ 0x00170020) == 0x00170020
    assert reg(0x02) == reg(0x00) == 0
    assert reg(0x00, 0xFFFFFFFF) == 0x0F000000
    assert reg(0x02) == 0x0F000000
    assert reg(0x02, 0) == 0x0F000000
    assert reg(0x00, 0x05000000) == 0x05000000 == reg(0x02)
