"""The real-mode BIOS services (INT 10h-1Ah) a kernel's real-mode code calls, answered as SeaBIOS
1.16 answers them on QEMU's pc machine; every other call stops the run as unsupported rather
than returning with the registers unchanged.

Each service vector of the IVT points at SeaBIOS's fixed (IBM-compatible) entry point in the
BIOS segment, where a stub of UD2; IRET sits. An INT n (or a handler chaining to the old vector
with PUSHF; CALL FAR) reaches the UD2 in real mode; its #UD comes to the machine
(Machine._exit_exception), which calls `service`: the registers and the FLAGS image on the stack
(where SeaBIOS's handlers return CF) are updated here and execution continues at the IRET.

Implemented, as SeaBIOS does them (src/system.c, src/clock.c, src/memmap.c):
  INT 10h          nothing: SeaBIOS's handler when no VGA BIOS replaces it (svmemu has no
                   display adapter, as QEMU with -vga none)
  INT 11h          AX = the BDA's equipment word
  INT 12h          AX = the BDA's base memory size in KiB
  INT 13h          no drive (svmemu has no disks): AH = 01h, CF set, the BDA status byte set
  INT 16h          01h/11h no keystroke (ZF set: nothing ever reaches the 8042), 02h the BDA
                   shift flags, 09h 30h; functions SeaBIOS lacks return unchanged, as there
  INT 15h 2401h-2403h  A20: enable (it is always on), query (AL = 1), support (BX = 3)
  INT 15h E820h    the e820 map (firmware/layout.py, the multiboot memory map), one 20-byte
                   entry per call at ES:DI; EBX continues, 0 after the last; EAX = 'SMAP',
                   ECX = 20, CF clear. EDX not 'SMAP', EBX past the end or ECX < 20: AH = 86h,
                   CF set
  INT 15h E801h    AX = CX = KiB between 1 MiB and 16 MiB (at most 15 MiB), BX = DX = 64 KiB
                   blocks above 16 MiB, of the RAM that ends below 4 GiB (SeaBIOS's
                   LegacyRamSize: the end of the last e820 RAM entry below 4 GiB), CF clear
  INT 15h AH=88h   AX = KiB above 1 MiB of that RAM, at most 63 MiB, CF clear
  INT 1Ah 00h-04h, 06h, 07h   the BDA tick count (read, with the midnight flag, and set), the
                   RTC's time and date (read and set, BCD as the CMOS holds them), its alarm
                   (set, off): through the CMOS ports, as SeaBIOS's rtc_read/rtc_write, so the
                   CMOS index is left as SeaBIOS leaves it (NMI-disable bit set)
A function those two vectors lack in SeaBIOS too gets SeaBIOS's answer (CF set, and for INT 15h
AH = 86h); one
SeaBIOS has and svmemu does not, or any call to the other vectors (14h serial, 17h printer, 18h, 19h boot), stops the run: `unsupported: BIOS INT xxh
AH=yyh`.
INT 1Ah 00h first lets pending hardware interrupts in, as SeaBIOS's yield() does (STI; NOP;
PAUSE; CLI in the BIOS segment, so they run through the guest's IVT), then reads the count: a
real-mode loop polling the tick count with interrupts disabled sees it advance. SeaBIOS's wait
for the RTC's update-in-progress flag to clear is a jump of virtual time past the update.
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Callable

from unicorn.x86_const import (UC_X86_REG_CR0, UC_X86_REG_CS, UC_X86_REG_EAX, UC_X86_REG_EBX,
                               UC_X86_REG_ECX, UC_X86_REG_EDX, UC_X86_REG_EDI, UC_X86_REG_ES,
                               UC_X86_REG_RIP, UC_X86_REG_SP, UC_X86_REG_SS)

from emu.core.devices.clock import TSC_HZ
from emu.core.devices.cmos import (CMOS_DATA, CMOS_INDEX, NMI_MASK, REG_A_UIP, REG_B_24H,
                                   REG_B_AIE, REG_B_PIE, REG_B_SET, RTC_ALARMS, RTC_CENTURY,
                                   RTC_DAY_OF_MONTH, RTC_HOURS, RTC_MINUTES, RTC_MONTH,
                                   RTC_REG_A, RTC_REG_B, RTC_SECONDS, RTC_YEAR)
from emu.core.firmware.bda import BDA_EQUIPMENT, BDA_KBD_HEAD, BDA_MEMORY_KIB
from emu.core.firmware.layout import BIOS_SEGMENT, E820_RAM, FOUR_GIB, MiB, e820_map
from emu.errors import Unsupported

if TYPE_CHECKING:
    from emu.core.board import Board

BIOS_CS = BIOS_SEGMENT >> 4
CR0_PE = 1
FLAGS_CF = 1
UD2 = bytes([0x0F, 0x0B])
IRET = 0xCF
STUB = UD2 + bytes([IRET])

# SeaBIOS's entry points for the service vectors (the IBM PC's fixed addresses where it has one).
SERVICE_ENTRIES = {0x10: 0xF065, 0x11: 0xF84D, 0x12: 0xF841, 0x13: 0xE3FE, 0x14: 0xE739,
                   0x15: 0xF859, 0x16: 0xE82E, 0x17: 0xEFD2, 0x18: 0xFF54, 0x19: 0xE6F2,
                   0x1A: 0xFE6E}
_BY_OFFSET = {off: vector for vector, off in SERVICE_ENTRIES.items()}
# SeaBIOS's yield() before reading the tick count (INT 1Ah 00h): STI; NOP; PAUSE; CLI lets
# pending hardware interrupts in, through the guest's own IVT; then the UD2 answers the call.
YIELD_OFFSET = 0xFE80
YIELD_STUB = bytes([0xFB, 0x90, 0xF3, 0x90, 0xFA]) + STUB
YIELDED = YIELD_OFFSET + len(YIELD_STUB) - len(STUB)     # the UD2 after the yield

# The functions SeaBIOS's INT 15h and INT 1Ah dispatch (src/system.c, src/clock.c): one of these
# that svmemu does not answer stops the run; any other gets SeaBIOS's own answer for a function
# it lacks (CF set; INT 15h also AH = 86h). AX=E8xxh other than E801h and E820h is one SeaBIOS
# lacks.
SEABIOS_INT15 = frozenset({0x24, 0x4F, 0x52, 0x53, 0x5F, 0x7F, 0x83, 0x86, 0x87, 0x88, 0x90,
                           0x91, 0xC0, 0xC1, 0xC2, 0xE8})
_SEABIOS_UNIMPLEMENTED_E8 = frozenset((0xE8, al) for al in range(256) if al not in (0x01, 0x20))
SEABIOS_INT1A = frozenset({0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0xB1})
SEABIOS_INT16 = frozenset({0x00, 0x01, 0x02, 0x05, 0x09, 0x0A, 0x10, 0x11, 0x12, 0x6F, 0x92,
                           0xA2})
FLAGS_ZF = 1 << 6
BDA_KBD_FLAG0 = 0x417
KBD_FUNCTIONALITY = 0x30       # SeaBIOS's INT 16h 09h: 10h-12h supported
A20_SUPPORT_KBC_AND_PORT92 = 3
SMAP = 0x534D4150
FIRST_HARD_DISK = 0x80
DISK_RET_EPARAM = 0x01
BDA_FLOPPY_LAST_STATUS = 0x441
BDA_DISK_LAST_STATUS = 0x474
E820_ENTRY_SIZE = 20
RET_EUNSUPPORTED = 0x86
BDA_TIMER_COUNTER = 0x46C
BDA_TIMER_ROLLOVER = 0x470
RTC_ALARM_SECONDS, RTC_ALARM_MINUTES, RTC_ALARM_HOURS = RTC_ALARMS
REG_B_DSE = 0x01
E801_LOW_LIMIT_KIB = 15 * 1024
SIXTEEN_MIB = 16 * MiB
LEGACY_88_CAP = 64 * MiB
LEGACY_88_CAP_KIB = 63 * 1024


def stub_contents() -> list[tuple[int, bytes]]:
    """(physical address, bytes): the UD2; IRET stub at each service entry point, and the
    yield stub of INT 1Ah 00h."""
    return ([(BIOS_SEGMENT + off, STUB) for off in SERVICE_ENTRIES.values()]
            + [(BIOS_SEGMENT + YIELD_OFFSET, YIELD_STUB)])


class _Call:
    """One service call: the caller's registers and its FLAGS image on the stack."""

    def __init__(self, m: "Board") -> None:
        self.m = m
        self.uc = uc = m.uc
        self.eax = uc.reg_read(UC_X86_REG_EAX) & 0xFFFFFFFF
        self.ebx = uc.reg_read(UC_X86_REG_EBX) & 0xFFFFFFFF
        self.ecx = uc.reg_read(UC_X86_REG_ECX) & 0xFFFFFFFF
        self.edx = uc.reg_read(UC_X86_REG_EDX) & 0xFFFFFFFF
        self.edi = uc.reg_read(UC_X86_REG_EDI) & 0xFFFFFFFF
        self.es = uc.reg_read(UC_X86_REG_ES) & 0xFFFF
        ss, sp = uc.reg_read(UC_X86_REG_SS) & 0xFFFF, uc.reg_read(UC_X86_REG_SP) & 0xFFFF
        self.flags_at = (ss << 4) + ((sp + 4) & 0xFFFF)      # IP, CS, FLAGS pushed by INT
        self.flags = struct.unpack("<H", m.mem.read_phys(self.flags_at, 2))[0]

    @property
    def ah(self) -> int:
        return (self.eax >> 8) & 0xFF

    def set_ax(self, value: int) -> None:
        self.eax = (self.eax & ~0xFFFF) | (value & 0xFFFF)

    def set_ah(self, value: int) -> None:
        self.eax = (self.eax & ~0xFF00) | ((value & 0xFF) << 8)

    def set_al(self, value: int) -> None:
        self.eax = (self.eax & ~0xFF) | (value & 0xFF)

    def success(self) -> None:
        self.flags &= ~FLAGS_CF

    def invalid(self, code: int | None = None) -> None:
        if code is not None:
            self.set_ah(code)
        self.flags |= FLAGS_CF

    def finish(self) -> None:
        uc = self.uc
        for reg, value in ((UC_X86_REG_EAX, self.eax), (UC_X86_REG_EBX, self.ebx),
                           (UC_X86_REG_ECX, self.ecx), (UC_X86_REG_EDX, self.edx)):
            uc.reg_write(reg, value)
        self.m.mem.write_phys(self.flags_at, struct.pack("<H", self.flags))


def service(m: "Board") -> bool:
    """A #UD at one of the stubs, in real mode outside any nested guest: answer the service
    call and continue at the stub's IRET (True). False: an ordinary #UD."""
    uc = m.uc
    if (m.level() != "L1" or uc.reg_read(UC_X86_REG_CR0) & CR0_PE
            or uc.reg_read(UC_X86_REG_CS) != BIOS_CS):
        return False
    ip = uc.reg_read(UC_X86_REG_RIP) & 0xFFFF
    vector = _BY_OFFSET.get(ip)
    if ip == YIELDED:
        call = _Call(m)
        handler: Callable[[_Call], None] | None = _1a00
    elif vector is None:
        return False
    else:
        call = _Call(m)
        if (vector, call.ah) == (0x1A, 0x00):
            m.ctx.set_rip(YIELD_OFFSET)           # SeaBIOS yields first: pending IRQs run
            return True
        handler = _HANDLERS.get((vector, call.ah)) or _HANDLERS.get((vector, None))
    if handler is None:
        raise Unsupported(f"BIOS INT {vector:02X}h AH={call.ah:02X}h (svmemu answers INT 10h, "
                          "11h, 12h, 13h, 16h, 15h E820h/E801h/88h and 1Ah 00h-04h/06h/07h)")
    handler(call)
    call.finish()
    m.ctx.set_rip(ip + len(UD2))
    return True


# ---- INT 11h, 12h ---------------------------------------------------------------------------
def _int11(c: _Call) -> None:
    c.set_ax(struct.unpack("<H", c.m.mem.read_phys(BDA_EQUIPMENT, 2))[0])


def _int12(c: _Call) -> None:
    c.set_ax(struct.unpack("<H", c.m.mem.read_phys(BDA_MEMORY_KIB, 2))[0])


# ---- INT 10h, 13h ---------------------------------------------------------------------------
def _int10(c: _Call) -> None:
    """SeaBIOS's own INT 10h handler, which a VGA BIOS replaces: it does nothing. svmemu has no
    display adapter (QEMU with -vga none or -nodefaults), so nothing is the answer; a kernel
    probing for VGA (INT 10h AH=12h, AH=1Ah) finds none."""


# ---- INT 13h --------------------------------------------------------------------------------
def _int13(c: _Call) -> None:
    """SeaBIOS with no drive behind DL (svmemu has no disks, and lists no floppy in the
    equipment word): every function answers AH = 01h (invalid parameter), CF set, and the BDA's
    last-status byte of that drive class holds the code."""
    status = BDA_FLOPPY_LAST_STATUS if c.edx & 0xFF < FIRST_HARD_DISK else BDA_DISK_LAST_STATUS
    c.m.mem.write_phys(status, bytes([DISK_RET_EPARAM]))
    c.invalid(DISK_RET_EPARAM)


# ---- INT 16h --------------------------------------------------------------------------------
def _int16(c: _Call) -> None:
    """The keyboard services that need no keystroke: nothing ever reaches svmemu's 8042, so the
    BIOS keyboard buffer stays empty (01h/11h report none, ZF set), 02h gives the shift flags,
    09h the functionality byte; a function SeaBIOS lacks returns with the registers unchanged,
    as SeaBIOS's does. Reading a key (00h/10h) would wait forever: it stops the run."""
    ah = c.ah
    if ah in (0x01, 0x11):
        head, tail = struct.unpack("<HH", c.m.mem.read_phys(BDA_KBD_HEAD, 4))
        if head != tail:
            raise Unsupported(f"BIOS INT 16h AH={ah:02X}h with keystrokes in the BDA buffer")
        c.flags |= FLAGS_ZF
    elif ah == 0x02:
        c.set_al(c.m.mem.read_phys(BDA_KBD_FLAG0, 1)[0])
    elif ah == 0x09:
        c.set_al(KBD_FUNCTIONALITY)
    elif ah in SEABIOS_INT16:
        raise Unsupported(f"BIOS INT 16h AH={ah:02X}h (svmemu answers 01h, 02h, 09h, 11h; no "
                          "keystroke ever arrives)")


# ---- INT 15h --------------------------------------------------------------------------------
def _legacy_ram_size(m: "Board") -> int:
    """SeaBIOS's LegacyRamSize: where the last e820 RAM entry below 4 GiB ends (>= 1 MiB)."""
    ends = [base + size for base, size, typ in e820_map(m.ram_size)
            if typ == E820_RAM and base + size <= FOUR_GIB]
    return max(max(ends), MiB)


def _int15(c: _Call) -> None:
    if c.eax & 0xFFFF == 0xE820:
        _e820(c)
    elif c.eax & 0xFFFF == 0xE801:
        _e801(c)
    elif c.ah == 0x24 and c.eax & 0xFF in (0x01, 0x02, 0x03):
        _a20(c)
    elif c.ah == 0x88:
        rs = _legacy_ram_size(c.m)
        c.set_ax(LEGACY_88_CAP_KIB if rs > LEGACY_88_CAP else (rs - MiB) // 1024)
        c.success()
    elif c.ah in SEABIOS_INT15 and (c.ah, c.eax & 0xFF) not in _SEABIOS_UNIMPLEMENTED_E8:
        raise Unsupported(f"BIOS INT 15h AH={c.ah:02X}h (AX={c.eax & 0xFFFF:04X}h; svmemu "
                          "answers AX=2401h-2403h, E820h, E801h and AH=88h)")
    else:
        c.invalid(RET_EUNSUPPORTED)      # a function SeaBIOS does not have either


def _a20(c: _Call) -> None:
    """AX=2401h enable, 2402h query, 2403h support: A20 is always on here (2400h, disabling it,
    stops the run as the 8042 and port 0x92 paths do)."""
    al = c.eax & 0xFF
    if al == 0x02:
        c.set_al(1)
    elif al == 0x03:
        c.ebx = (c.ebx & ~0xFFFF) | A20_SUPPORT_KBC_AND_PORT92
    c.set_ah(0)
    c.success()


def _e820(c: _Call) -> None:
    entries = e820_map(c.m.ram_size)
    index = c.ebx & 0xFFFF
    if c.edx != SMAP or index >= len(entries) or c.ecx & 0xFFFF < E820_ENTRY_SIZE:
        c.invalid(RET_EUNSUPPORTED)
        return
    base, size, typ = entries[index]
    c.m.mem.write_phys((c.es << 4) + (c.edi & 0xFFFF), struct.pack("<QQI", base, size, typ))
    c.ebx = 0 if index == len(entries) - 1 else c.ebx + 1
    c.eax = SMAP
    c.ecx = E820_ENTRY_SIZE
    c.success()


def _e801(c: _Call) -> None:
    rs = _legacy_ram_size(c.m)
    if rs > SIXTEEN_MIB:
        low, high = E801_LOW_LIMIT_KIB, (rs - SIXTEEN_MIB) // 65536
    else:
        low, high = (rs - MiB) // 1024, 0
    c.ecx = (c.ecx & ~0xFFFF) | low
    c.edx = (c.edx & ~0xFFFF) | high
    c.set_ax(low)
    c.ebx = (c.ebx & ~0xFFFF) | high
    c.success()


# ---- INT 1Ah --------------------------------------------------------------------------------
def _rtc_read(c: _Call, index: int) -> int:
    cmos = c.m.pc.cmos
    cmos.write(CMOS_INDEX, 1, index | NMI_MASK)
    return cmos.read(CMOS_DATA, 1) & 0xFF


def _rtc_write(c: _Call, index: int, value: int) -> None:
    cmos = c.m.pc.cmos
    cmos.write(CMOS_INDEX, 1, index | NMI_MASK)
    cmos.write(CMOS_DATA, 1, value & 0xFF)


def _past_update(c: _Call) -> None:
    """SeaBIOS's rtc_updating(): wait while the update-in-progress flag is set."""
    if _rtc_read(c, RTC_REG_A) & REG_A_UIP:
        now = c.m.irq.now()
        c.m.irq.advance(TSC_HZ - now % TSC_HZ)


def _bda_u32(c: _Call, addr: int) -> int:
    return struct.unpack("<I", c.m.mem.read_phys(addr, 4))[0]


def _1a00(c: _Call) -> None:
    ticks = _bda_u32(c, BDA_TIMER_COUNTER)
    c.ecx = (c.ecx & ~0xFFFF) | (ticks >> 16)
    c.edx = (c.edx & ~0xFFFF) | (ticks & 0xFFFF)
    c.set_al(c.m.mem.read_phys(BDA_TIMER_ROLLOVER, 1)[0])
    c.m.mem.write_phys(BDA_TIMER_ROLLOVER, b"\0")
    c.success()


def _1a01(c: _Call) -> None:
    ticks = ((c.ecx & 0xFFFF) << 16) | (c.edx & 0xFFFF)
    c.m.mem.write_phys(BDA_TIMER_COUNTER, struct.pack("<I", ticks))
    c.m.mem.write_phys(BDA_TIMER_ROLLOVER, b"\0")
    c.set_ah(0)
    c.success()


def _1a02(c: _Call) -> None:
    _past_update(c)
    c.edx = (c.edx & ~0xFF00) | (_rtc_read(c, RTC_SECONDS) << 8)
    c.ecx = (c.ecx & ~0xFFFF) | (_rtc_read(c, RTC_HOURS) << 8) | _rtc_read(c, RTC_MINUTES)
    c.edx = (c.edx & ~0xFF) | (_rtc_read(c, RTC_REG_B) & REG_B_DSE)
    c.set_ah(0)
    c.set_al(c.ecx >> 8)
    c.success()


def _1a03(c: _Call) -> None:
    _past_update(c)
    _rtc_write(c, RTC_SECONDS, c.edx >> 8)
    _rtc_write(c, RTC_MINUTES, c.ecx)
    _rtc_write(c, RTC_HOURS, c.ecx >> 8)
    b = (_rtc_read(c, RTC_REG_B) & (REG_B_PIE | REG_B_AIE)) | REG_B_24H | (c.edx & REG_B_DSE)
    _rtc_write(c, RTC_REG_B, b)
    c.set_ah(0)
    c.set_al(b)
    c.success()


def _1a04(c: _Call) -> None:
    c.set_ah(0)
    _past_update(c)
    c.ecx = (c.ecx & ~0xFFFF) | (_rtc_read(c, RTC_CENTURY) << 8) | _rtc_read(c, RTC_YEAR)
    c.edx = ((c.edx & ~0xFFFF) | (_rtc_read(c, RTC_MONTH) << 8)
             | _rtc_read(c, RTC_DAY_OF_MONTH))
    c.set_al(c.ecx >> 8)
    c.success()


def _1a06(c: _Call) -> None:
    b = _rtc_read(c, RTC_REG_B)
    c.set_ax(0)
    if b & REG_B_AIE:
        c.invalid()
        return
    _past_update(c)
    _rtc_write(c, RTC_ALARM_SECONDS, c.edx >> 8)
    _rtc_write(c, RTC_ALARM_MINUTES, c.ecx)
    _rtc_write(c, RTC_ALARM_HOURS, c.ecx >> 8)
    _rtc_write(c, RTC_REG_B, (b & ~REG_B_SET) | REG_B_AIE)
    c.success()


def _1a07(c: _Call) -> None:
    b = _rtc_read(c, RTC_REG_B)
    _rtc_write(c, RTC_REG_B, b & ~(REG_B_SET | REG_B_AIE))
    c.set_ah(0)
    c.set_al(b)
    c.success()


def _1a_unimplemented(c: _Call) -> None:
    """A function SeaBIOS's INT 1Ah does not have: CF set, AH kept, as it answers."""
    if c.ah in SEABIOS_INT1A:
        raise Unsupported(f"BIOS INT 1Ah AH={c.ah:02X}h (svmemu answers 00h-04h, 06h, 07h)")
    c.invalid()


_HANDLERS: dict[tuple[int, int | None], Callable[[_Call], None]] = {
    (0x10, None): _int10, (0x11, None): _int11, (0x12, None): _int12, (0x13, None): _int13, (0x15, None): _int15,
    (0x16, None): _int16,
    (0x1A, 0x00): _1a00, (0x1A, 0x01): _1a01, (0x1A, 0x02): _1a02, (0x1A, 0x03): _1a03,
    (0x1A, 0x04): _1a04, (0x1A, 0x06): _1a06, (0x1A, 0x07): _1a07, (0x1A, None): _1a_unimplemented,
}
