"""fw_cfg: the legacy port interface as QEMU's behaves, on the device and through a guest."""
from __future__ import annotations

import struct

from emu.core.devices.fw_cfg import (FW_CFG_ID, FW_CFG_NB_CPUS, FW_CFG_PORT_DATA, FW_CFG_PORT_SEL,
                                FW_CFG_RAM_SIZE, FW_CFG_SIGNATURE, FwCfg)
from emu.loader.asm import GUESTS_DIR, assemble_source
from emu.loader.multiboot import parse_image
from emu.core.machine import Machine
from tests.conftest import parse_tap


def read_item(dev: FwCfg, item: int, n: int) -> bytes:
    dev.write(FW_CFG_PORT_SEL, 2, item)
    return bytes(dev.read(FW_CFG_PORT_DATA, 1) for _ in range(n))


def test_items_as_qemu_lays_them_out():
    dev = FwCfg(64 << 20)
    assert read_item(dev, FW_CFG_SIGNATURE, 6) == b"QEMU\0\0"
    assert struct.unpack("<I", read_item(dev, FW_CFG_ID, 4))[0] & 1
    assert struct.unpack("<H", read_item(dev, FW_CFG_NB_CPUS, 2))[0] == 1
    assert struct.unpack("<Q", read_item(dev, FW_CFG_RAM_SIZE, 8))[0] == 64 << 20


def test_unknown_item_reads_zero_and_data_writes_are_ignored():
    dev = FwCfg(64 << 20)
    assert read_item(dev, 0x1234, 4) == bytes(4)
    dev.write(FW_CFG_PORT_SEL, 2, FW_CFG_SIGNATURE)
    dev.write(FW_CFG_PORT_DATA, 1, 0x41)
    assert dev.read(FW_CFG_PORT_DATA, 1) == ord("Q")


def test_reselecting_rewinds_and_state_round_trips():
    dev = FwCfg(64 << 20)
    read_item(dev, FW_CFG_SIGNATURE, 2)
    other = FwCfg(64 << 20)
    other.load_state(dev.state())
    assert other.read(FW_CFG_PORT_DATA, 1) == ord("M")      # continues mid-item
    assert read_item(other, FW_CFG_SIGNATURE, 1) == b"Q"


def test_guest_reads_the_machine_ram_size():
    """The guest expects 128 MiB; a machine with 64 MiB must make exactly that check fail."""
    path = str(GUESTS_DIR / "fw_cfg.S")
    image = assemble_source(path)
    results = {}
    for ram in (128 << 20, 64 << 20):
        m = Machine(ram, stdout=None)
        m.load_multiboot(parse_image(image, path, m.ram_size), path)
        res = m.run(timeout=30)
        results[ram] = (res, parse_tap(bytes(m.serial.output).decode()))
    res, checks = results[128 << 20]
    assert res.reason == "exit" and res.status == 1
    assert all(c.ok for c in checks.values()) and len(checks) == 6
    res, checks = results[64 << 20]
    assert res.status == 3
    assert [n for n, c in checks.items() if not c.ok] == ["FW_CFG_RAM_SIZE is 128 MiB"]
    assert "got 0x0000000004000000" in checks["FW_CFG_RAM_SIZE is 128 MiB"].detail
