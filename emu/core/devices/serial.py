"""COM1 as a 16550A UART: enough for polling drivers (Linux-style and hand-written ones).

Transmit is instantaneous, so LSR always reports THR empty and transmitter idle; there is no
receive data and no interrupt line yet. Register state (divisor latch, LCR, MCR, SCR, IER) is kept
so that drivers which read back what they wrote (e.g. the scratch-register probe) see a 16550.
"""
from __future__ import annotations

from typing import BinaryIO, Iterable

from emu.core.devices.base import PortDevice

COM1 = 0x3F8
REG_DATA, REG_IER, REG_IIR_FCR, REG_LCR, REG_MCR, REG_LSR, REG_MSR, REG_SCR = range(8)
LCR_DLAB = 0x80
LSR_THRE = 0x20
LSR_TEMT = 0x40
IIR_NO_INTERRUPT = 0x01
IIR_FIFO_ENABLED = 0xC0
MSR_DCD_DSR_CTS = 0xB0


class Serial16550(PortDevice):
    name = "serial"

    def __init__(self, out: BinaryIO | None, base: int = COM1) -> None:
        self.base = base
        self.out = out
        self.output = bytearray()
        self.reset()

    def reset(self) -> None:
        self.ier = self.lcr = self.mcr = self.scr = self.fcr = 0
        self.dll, self.dlm = 0x0C, 0x00   # 9600 baud

    def ports(self) -> Iterable[int]:
        return range(self.base, self.base + 8)

    def read(self, port: int, size: int) -> int:
        reg = port - self.base
        dlab = self.lcr & LCR_DLAB
        if reg == REG_DATA:
            return self.dll if dlab else 0
        if reg == REG_IER:
            return self.dlm if dlab else self.ier
        if reg == REG_IIR_FCR:
            return IIR_NO_INTERRUPT | (IIR_FIFO_ENABLED if self.fcr & 1 else 0)
        if reg == REG_LCR:
            return self.lcr
        if reg == REG_MCR:
            return self.mcr
        if reg == REG_LSR:
            return LSR_THRE | LSR_TEMT
        if reg == REG_MSR:
            return MSR_DCD_DSR_CTS
        return self.scr

    def write(self, port: int, size: int, value: int) -> None:
        reg = port - self.base
        value &= 0xFF
        dlab = self.lcr & LCR_DLAB
        if reg == REG_DATA:
            if dlab:
                self.dll = value
            else:
                self.transmit(value)
        elif reg == REG_IER:
            if dlab:
                self.dlm = value
            else:
                self.ier = value & 0x0F
        elif reg == REG_IIR_FCR:
            self.fcr = value
        elif reg == REG_LCR:
            self.lcr = value
        elif reg == REG_MCR:
            self.mcr = value & 0x1F
        elif reg == REG_SCR:
            self.scr = value

    def transmit(self, byte: int) -> None:
        self.output.append(byte)
        if self.out is not None:
            self.out.write(bytes((byte,)))
            if byte == 0x0A:
                self.out.flush()

    def state(self) -> dict:
        return dict(ier=self.ier, lcr=self.lcr, mcr=self.mcr, scr=self.scr, fcr=self.fcr,
                    dll=self.dll, dlm=self.dlm, output=bytes(self.output).hex())

    def load_state(self, state: dict) -> None:
        for k in ("ier", "lcr", "mcr", "scr", "fcr", "dll", "dlm"):
            setattr(self, k, int(state[k]))
        self.output = bytearray(bytes.fromhex(state["output"]))
