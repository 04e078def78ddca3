"""Real-mode BIOS services (emu/core/firmware/bios_services.py): guests/bios.S checks the calls
svmemu answers (on QEMU too, tests/test_guests_qemu.py); here the calls it does not answer stop
the run with `unsupported:`, and E820 follows the memory map at other RAM sizes."""
from __future__ import annotations

import pytest

from emu.core.firmware.bios_services import SERVICE_ENTRIES
from emu.core.firmware.ivt import ivt_contents
from emu.errors import STATUS_UNSUPPORTED
from emu.loader.asm import GUESTS_DIR
from tests.conftest import parse_tap
from tests.harness import boot, source

BIOS_GUEST = str(GUESTS_DIR / "bios.S")
E820_CHECKS = ("INT 15h E820 returns the multiboot memory map, entry by entry",
               "and ends (EBX = 0) after its last entry", "E820 returned entries")


def test_a_call_svmemu_does_not_answer_stops_the_run():
    b = boot(BIOS_GUEST, nested=False, cmdline="unsupported")
    assert (b.result.reason, b.result.status) == ("unsupported", STATUS_UNSUPPORTED)
    assert "BIOS INT 14h AH=00h" in b.result.message
    assert "# INT 14h returned" not in b.serial
    assert "# pass 34 fail 0" not in b.serial and "ok 34 -" in b.serial


@pytest.mark.parametrize("ram", [64 << 20, 5 << 30])
def test_e820_follows_the_memory_map(ram):
    """At 5 GiB the map has RAM above 4 GiB; the E801/88h checks are for 128 MiB and differ."""
    checks = parse_tap(boot(BIOS_GUEST, nested=False, ram=ram).serial)
    for name in E820_CHECKS:
        assert checks[name].ok, checks[name].detail


def test_service_vectors_point_at_their_entry_points():
    ivt = dict(ivt_contents())[0]
    for vector, offset in SERVICE_ENTRIES.items():
        assert ivt[vector * 4:vector * 4 + 4] == offset.to_bytes(2, "little") + b"\x00\xf0"


def _real_mode_int(tmp_path, vector: int, ax: int) -> str:
    """A guest that calls INT vector with AX from real mode, through bios.S's trampoline."""
    body = open(BIOS_GUEST).read()
    start = body.index("main:\n")
    end = body.index("# bios_call:")
    main = f"""main:
    lea rsi, [rip + trip_gdt_ptr]
    mov edi, R_GDTR
    mov ecx, 6
    rep movsb
    lea rsi, [rip + rm_block]
    mov edi, RM_BASE
    lea rcx, [rip + rm_end]
    sub rcx, rsi
    rep movsb
    mov dword ptr [R_EAX], {ax:#x}
    bios {vector:#x}
    print "# returned\\n"
    ret

"""
    return source(tmp_path, body[:start] + main + body[end:])


@pytest.mark.parametrize("vector, ax, says", [
    (0x14, 0x0000, "BIOS INT 14h AH=00h"),       # serial port setup
    (0x15, 0xC000, "BIOS INT 15h AH=C0h"),       # configuration table
    (0x15, 0x2400, "BIOS INT 15h AH=24h"),       # disable A20
    (0x16, 0x0000, "BIOS INT 16h AH=00h"),       # read a key: would wait forever
    (0x17, 0x0100, "BIOS INT 17h AH=01h"),       # printer
    (0x19, 0x0000, "BIOS INT 19h AH=00h"),       # bootstrap
    (0x1A, 0x0500, "BIOS INT 1Ah AH=05h"),       # set the date
    (0x1A, 0xB101, "BIOS INT 1Ah AH=B1h"),       # PCI BIOS
])
def test_unanswered_calls_stop(tmp_path, vector, ax, says):
    b = boot(_real_mode_int(tmp_path, vector, ax), nested=False)
    assert b.result.reason == "unsupported", b.serial
    assert says in b.result.message
    assert "# returned" not in b.serial


def test_int_12h_through_the_nested_svm_extension(tmp_path):
    b = boot(_real_mode_int(tmp_path, 0x12, 0xFFFF))
    assert b.result.reason == "exit" and "# returned" in b.serial, b.result.message


def test_int_10h_is_seabios_without_a_vga_bios(tmp_path):
    """svmemu has no display adapter: SeaBIOS's own INT 10h handler does nothing."""
    b = boot(_real_mode_int(tmp_path, 0x10, 0x1200), nested=False)
    assert b.result.reason == "exit" and "# returned" in b.serial, b.result.message
    assert b.machine.mem.read_u32(0x6000) == 0x1200          # R_EAX as the call left it
