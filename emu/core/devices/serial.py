"""COM1 as a 16550A UART, as QEMU's pc machine presents it: polling and interrupt-driven drivers.

Transmit is instantaneous (the byte goes to the output at once), so LSR always reports the
transmitter empty. Interrupts follow the 16550's priorities through IIR: receiver line status,
received data, transmitter holding register empty (raised when ETBEI is enabled with THR empty
and after every byte sent; cleared by reading IIR while it is reported, or by the next write to
THR), modem status. The line is ISA IRQ 4 (wired by pc.py); as in QEMU, MCR.OUT2 does not gate it.
Loopback (MCR bit 4) sends transmitted bytes to the receiver and mirrors the modem-control
outputs into MSR, so the loopback self-test drivers run at start-up passes. Nothing else ever
arrives on the receiver.
"""
from __future__ import annotations

from typing import BinaryIO, Callable, Iterable

from emu.core.devices.base import PortDevice

COM1 = 0x3F8
COM1_IRQ = 4
REG_DATA, REG_IER, REG_IIR_FCR, REG_LCR, REG_MCR, REG_LSR, REG_MSR, REG_SCR = range(8)
LCR_DLAB = 0x80
IER_RDA, IER_THRE, IER_RLS, IER_MS = 0x01, 0x02, 0x04, 0x08
IER_VALID = 0x0F
LSR_DR = 0x01
LSR_OE = 0x02
LSR_THRE = 0x20
LSR_TEMT = 0x40
LSR_ERRORS = 0x1E                        # OE, PE, FE, BI: what a line-status interrupt reports
IIR_NO_INTERRUPT = 0x01
IIR_MSI, IIR_THRI, IIR_RDI, IIR_RLSI = 0x00, 0x02, 0x04, 0x06
IIR_FIFO_ENABLED = 0xC0
FCR_ENABLE, FCR_CLEAR_RX, FCR_CLEAR_TX = 0x01, 0x02, 0x04
MCR_LOOP = 0x10
MCR_VALID = 0x1F
MSR_DCD_DSR_CTS = 0xB0                   # carrier, data set ready, clear to send: a cable is there
FIFO_SIZE = 16


class Serial16550(PortDevice):
    name = "serial"

    def __init__(self, out: BinaryIO | None, base: int = COM1) -> None:
        self.base = base
        self.out = out
        self.output = bytearray()
        self.irq: Callable[[int], None] = lambda level: None    # set by the platform
        self.reset()

    def reset(self) -> None:
        self.ier = self.lcr = self.mcr = self.scr = self.fcr = 0
        self.dll, self.dlm = 0x0C, 0x00   # 9600 baud
        self.rx = bytearray()
        self.lsr_errors = 0
        self.thr_pending = False
        self.level = 0

    def ports(self) -> Iterable[int]:
        return range(self.base, self.base + 8)

    # ---- registers --------------------------------------------------------------------------
    def read(self, port: int, size: int) -> int:
        reg = port - self.base
        dlab = self.lcr & LCR_DLAB
        if reg == REG_DATA:
            if dlab:
                return self.dll
            byte = self.rx.pop(0) if self.rx else 0
            self._update()
            return byte
        if reg == REG_IER:
            return self.dlm if dlab else self.ier
        if reg == REG_IIR_FCR:
            iir = self._iir()
            if iir == IIR_THRI:          # reading IIR acknowledges a THR-empty interrupt
                self.thr_pending = False
                self._update()
            return iir | (IIR_FIFO_ENABLED if self.fcr & FCR_ENABLE else 0)
        if reg == REG_LCR:
            return self.lcr
        if reg == REG_MCR:
            return self.mcr
        if reg == REG_LSR:
            lsr = LSR_THRE | LSR_TEMT | self.lsr_errors | (LSR_DR if self.rx else 0)
            self.lsr_errors = 0          # error bits clear when LSR is read
            self._update()
            return lsr
        if reg == REG_MSR:
            return self._msr()
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
                enabling_thre = value & IER_THRE and not self.ier & IER_THRE
                self.ier = value & IER_VALID
                if enabling_thre:        # THR is always empty: the interrupt is due at once
                    self.thr_pending = True
                self._update()
        elif reg == REG_IIR_FCR:
            if value & FCR_CLEAR_RX:
                self.rx.clear()
            self.fcr = value & ~(FCR_CLEAR_RX | FCR_CLEAR_TX)
            self._update()
        elif reg == REG_LCR:
            self.lcr = value
        elif reg == REG_MCR:
            self.mcr = value & MCR_VALID
        elif reg == REG_SCR:
            self.scr = value

    def transmit(self, byte: int) -> None:
        if self.mcr & MCR_LOOP:
            self._receive(byte)
        else:
            self.output.append(byte)
            if self.out is not None:
                self.out.write(bytes((byte,)))
                if byte == 0x0A:
                    self.out.flush()
        self.thr_pending = True          # sent at once: THR is empty again
        self._update()

    # ---- interrupts -------------------------------------------------------------------------
    def _receive(self, byte: int) -> None:
        limit = FIFO_SIZE if self.fcr & FCR_ENABLE else 1
        if len(self.rx) >= limit:
            self.lsr_errors |= LSR_OE    # overrun: the byte is lost
        else:
            self.rx.append(byte)

    def _msr(self) -> int:
        if self.mcr & MCR_LOOP:          # DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD
            m = self.mcr
            return ((m & 0x0C) << 4) | ((m & 0x02) << 3) | ((m & 0x01) << 5)
        return MSR_DCD_DSR_CTS

    def _iir(self) -> int:
        if self.ier & IER_RLS and self.lsr_errors:
            return IIR_RLSI
        if self.ier & IER_RDA and self.rx:
            return IIR_RDI
        if self.ier & IER_THRE and self.thr_pending:
            return IIR_THRI
        return IIR_NO_INTERRUPT

    def _update(self) -> None:
        level = int(self._iir() != IIR_NO_INTERRUPT)
        if level != self.level:
            self.level = level
            self.irq(level)

    # ---- snapshots --------------------------------------------------------------------------
    def state(self) -> dict:
        return dict(ier=self.ier, lcr=self.lcr, mcr=self.mcr, scr=self.scr, fcr=self.fcr,
                    dll=self.dll, dlm=self.dlm, output=bytes(self.output).hex(),
                    rx=bytes(self.rx).hex(), lsr_errors=self.lsr_errors,
                    thr_pending=int(self.thr_pending), level=self.level)

    def load_state(self, state: dict) -> None:
        for k in ("ier", "lcr", "mcr", "scr", "fcr", "dll", "dlm"):
            setattr(self, k, int(state[k]))
        self.output = bytearray(bytes.fromhex(state["output"]))
        # Snapshots from before interrupts existed hold none of these: an idle UART.
        self.rx = bytearray(bytes.fromhex(state.get("rx", "")))
        self.lsr_errors = int(state.get("lsr_errors", 0))
        self.thr_pending = bool(int(state.get("thr_pending", 0)))
        self.level = int(state.get("level", 0))
