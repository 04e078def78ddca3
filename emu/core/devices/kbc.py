"""The 8042 keyboard controller at 0x60 (data) / 0x64 (status, command), as QEMU's i8042 with a
PS/2 keyboard that has no keys pressed.

What kernels use it for: the A20 gate (command 0xD1 then an output-port byte with bit 1; 0xDD
and 0xDF disable and enable A20 directly), resetting the machine (command 0xFE, or an
output-port write with bit 0 clear), and reading the controller's command byte (0x20/0x60),
self tests (0xAA -> 0x55, 0xAB -> 0x00) and the keyboard's replies to its commands (0xFA for
each, 0xFF reset -> 0xFA 0xAA, 0xF2 identify -> 0xFA 0xAB 0x83, 0xEE echo). Replies wait in the
output buffer (status bit 0) and raise IRQ1 while the command byte enables it.

A20 is always enabled in svmemu (Unicorn cannot mask address bit 20), so a write that disables
it stops the run as unsupported rather than let addresses alias silently. A reset request goes
to `on_reset`, which ends the run as QEMU's `-no-reboot` does.
"""
from __future__ import annotations

from collections import deque
from typing import Callable, Iterable

from emu.core.devices.base import PortDevice

KBC_DATA = 0x60
KBC_STATUS = 0x64
KBC_IRQ = 1

STAT_OBF = 0x01
STAT_SYSFLAG = 0x04
STAT_CMD = 0x08
STAT_UNLOCKED = 0x10

CMD_READ_MODE = 0x20
CMD_WRITE_MODE = 0x60
CMD_DISABLE_AUX = 0xA7
CMD_ENABLE_AUX = 0xA8
CMD_SELF_TEST = 0xAA
CMD_KBD_TEST = 0xAB
CMD_DISABLE_KBD = 0xAD
CMD_ENABLE_KBD = 0xAE
CMD_READ_OUTPORT = 0xD0
CMD_WRITE_OUTPORT = 0xD1
CMD_DISABLE_A20 = 0xDD
CMD_ENABLE_A20 = 0xDF
CMD_RESET = 0xFE

MODE_KBD_INT = 0x01
MODE_SYS = 0x04
MODE_DISABLE_KBD = 0x10

OUT_RESET = 0x01               # 0 asserts the CPU's reset line
OUT_A20 = 0x02
OUT_ONES = 0xCC
OUT_OBF = 0x10

SELF_TEST_OK = 0x55
KBD_ACK = 0xFA
KBD_RESET_OK = 0xAA
KBD_ID = (0xAB, 0x83)

# What SeaBIOS leaves (measured under QEMU 7.2): status 0x1C, keyboard interrupt and
# translation enabled in the command byte.
FIRMWARE_MODE = 0x61


class KeyboardController(PortDevice):
    name = "kbc"

    def __init__(self, on_reset: Callable[[str], None], on_a20: Callable[[bool], None],
                 set_irq: Callable[[int], None]) -> None:
        self.on_reset = on_reset
        self.on_a20 = on_a20
        self.set_irq = set_irq
        self.status = STAT_CMD | STAT_UNLOCKED | STAT_SYSFLAG
        self.mode = FIRMWARE_MODE
        self.outport = OUT_RESET | OUT_A20 | OUT_ONES
        self.pending_cmd = 0          # a controller command waiting for its data byte
        self.queue: deque[int] = deque()

    def ports(self) -> Iterable[int]:
        return (KBC_DATA, KBC_STATUS)

    def _update(self) -> None:
        if self.queue:
            self.status |= STAT_OBF
        else:
            self.status &= ~STAT_OBF
        self.set_irq(1 if self.queue and self.mode & MODE_KBD_INT else 0)

    def _reply(self, *data: int) -> None:
        self.queue.extend(data)
        self._update()

    def _write_outport(self, value: int) -> None:
        self.outport = value
        self.on_a20(bool(value & OUT_A20))
        if not value & OUT_RESET:
            self.on_reset("reset through the keyboard controller's output port")

    def read(self, port: int, size: int) -> int:
        if port == KBC_STATUS:
            return self.status
        value = self.queue.popleft() if self.queue else 0x00
        self._update()
        return value

    def write(self, port: int, size: int, value: int) -> None:
        value &= 0xFF
        if port == KBC_STATUS:
            self.status |= STAT_CMD
            self._command(value)
            return
        self.status &= ~STAT_CMD
        cmd, self.pending_cmd = self.pending_cmd, 0
        if cmd == CMD_WRITE_MODE:
            self.mode = value
            self.status = (self.status & ~STAT_SYSFLAG) | (STAT_SYSFLAG if value & MODE_SYS else 0)
            self._update()
        elif cmd == CMD_WRITE_OUTPORT:
            self._write_outport(value)
        else:
            self._keyboard(value)

    def _command(self, cmd: int) -> None:
        if cmd == CMD_READ_MODE:
            self._reply(self.mode)
        elif cmd in (CMD_WRITE_MODE, CMD_WRITE_OUTPORT):
            self.pending_cmd = cmd
        elif cmd == CMD_SELF_TEST:
            self._reply(SELF_TEST_OK)
        elif cmd == CMD_KBD_TEST:
            self._reply(0x00)
        elif cmd == CMD_DISABLE_KBD:
            self.mode |= MODE_DISABLE_KBD
        elif cmd == CMD_ENABLE_KBD:
            self.mode &= ~MODE_DISABLE_KBD
        elif cmd == CMD_READ_OUTPORT:
            self._reply((self.outport & ~OUT_OBF) | (OUT_OBF if self.queue else 0))
        elif cmd == CMD_DISABLE_A20:
            self._write_outport(self.outport & ~OUT_A20)
        elif cmd == CMD_ENABLE_A20:
            self._write_outport(self.outport | OUT_A20)
        elif 0xF0 <= cmd <= 0xFF:
            if not cmd & 1:           # pulse output bit 0: the reset line (0xFE)
                self.on_reset("reset through the keyboard controller (command 0xFE)")

    def _keyboard(self, value: int) -> None:
        """A byte for the keyboard: it answers every command with an acknowledge."""
        if value == 0xFF:
            self._reply(KBD_ACK, KBD_RESET_OK)
        elif value == 0xF2:
            self._reply(KBD_ACK, *KBD_ID)
        elif value == 0xEE:
            self._reply(0xEE)
        else:
            self._reply(KBD_ACK)

    def state(self) -> dict:
        return {"status": self.status, "mode": self.mode, "outport": self.outport,
                "pending_cmd": self.pending_cmd, "queue": list(self.queue)}

    def load_state(self, state: dict) -> None:
        self.status = int(state["status"])
        self.mode = int(state["mode"])
        self.outport = int(state["outport"])
        self.pending_cmd = int(state["pending_cmd"])
        self.queue = deque(int(v) for v in state["queue"])
