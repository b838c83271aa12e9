"""COM1: the 16550A UART that is every guest's console.

The first thing a kernel does after it is loaded is usually talk, and on a PC the
cheapest way to talk is to write bytes to the serial port at 0x3f8. The 16550A has
eight byte registers behind eight ports; several ports hold two registers, chosen by
direction (THR on write, RBR on read; FCR on write, IIR on read) or by the Divisor
Latch Access Bit in the LCR (DLAB=1 turns ports 0 and 1 into the baud-rate divisor).

This model follows QEMU 7.2's hw/char/serial.c register for register, because QEMU is
the reference machine: a guest that probes the UART (scratch register, IIR FIFO bits,
loopback through MSR) must read the same values here as there. Two things differ by
design and neither is visible in a register a guest reads back:

* Transmission is instantaneous: a byte written to THR is handed to ``tx`` at once and
  THR/TEMT are empty again before the OUT instruction retires. QEMU does the same when
  its chardev accepts the byte; there is no baud-rate timing, so output is
  deterministic.
* Received bytes wait in a host-side queue (``feed``) and enter the chip as fast as it
  can take them, the way QEMU's chardev layer asks ``serial_can_receive`` before
  delivering: one byte at a time into RBR without FIFOs, up to 16 with them. The FIFO
  character-timeout interrupt, which QEMU raises four character times after the last
  byte arrived, is taken to have elapsed as soon as no more input is queued, because
  this UART has no timer; a guest sees IIR=0xCC where QEMU would, only sooner.
"""
from collections import deque
from typing import Callable

COM1_BASE = 0x3F8
COM1_IRQ = 4
FIFO_SIZE = 16

# Register offsets from the base port.
RBR_THR_DLL = 0
IER_DLM = 1
IIR_FCR = 2
LCR = 3
MCR = 4
LSR = 5
MSR = 6
SCR = 7

# Interrupt Enable Register bits.
IER_RDI = 0x01    # received data available
IER_THRI = 0x02   # transmitter holding register empty
IER_RLSI = 0x04   # receiver line status
IER_MSI = 0x08    # modem status

# Interrupt Identification values, in the chip's priority order.
IIR_NO_INT = 0x01
IIR_ID = 0x06
IIR_MSI = 0x00
IIR_THRI = 0x02
IIR_RDI = 0x04
IIR_RLSI = 0x06
IIR_CTI = 0x0C   # character timeout (FIFO mode only)
IIR_FE = 0xC0    # "FIFOs enabled" bits, mirrored from FCR bit 0

# FIFO Control Register bits.
FCR_FE = 0x01    # FIFO enable
FCR_RFR = 0x02   # receiver FIFO reset
FCR_XFR = 0x04   # transmitter FIFO reset
FCR_KEEP = 0xC9  # the bits that stick: trigger level, DMA mode, enable

LCR_DLAB = 0x80
MCR_OUT2 = 0x08
MCR_LOOP = 0x10

# Line Status Register bits.
LSR_DR = 0x01
LSR_OE = 0x02
LSR_PE = 0x04
LSR_FE = 0x08
LSR_BI = 0x10
LSR_THRE = 0x20
LSR_TEMT = 0x40
LSR_INT_ANY = 0x1E

# Modem Status Register: no cable is modelled, so QEMU's idle lines are carrier
# detect, data set ready and clear to send all asserted, with no deltas.
MSR_DCD = 0x80
MSR_DSR = 0x20
MSR_CTS = 0x10
MSR_ANY_DELTA = 0x0F

# Receive FIFO trigger levels selected by FCR bits 7:6.
_TRIGGER_LEVEL = {0x00: 1, 0x40: 4, 0x80: 8, 0xC0: 14}


class Uart16550:
    """A 16550A at eight consecutive ports starting at ``base``.

    ``tx(byte)`` receives every byte the guest transmits; ``irq(level)`` is the
    chip's interrupt line (IRQ4 for COM1), called only when the level changes.
    """

    def __init__(self, tx: Callable[[int], None],
                 irq: Callable[[bool], None] | None = None,
                 base: int = COM1_BASE) -> None:
        self.tx = tx
        self.irq = irq
        self.base = base
        self._input: deque[int] = deque()   # bytes the outside world has sent us
        self.reset()

    def reset(self) -> None:
        """Power-on values, as QEMU's serial_reset leaves them."""
        self.rbr = 0
        self.thr = 0
        self.ier = 0
        self.iir = IIR_NO_INT
        self.fcr = 0
        self.lcr = 0
        self.mcr = MCR_OUT2
        self.lsr = LSR_TEMT | LSR_THRE
        self.msr = MSR_DCD | MSR_DSR | MSR_CTS
        self.scr = 0
        self.divider = 0x0C            # 9600 baud from the 1.8432 MHz crystal
        self.rx_fifo: deque[int] = deque()
        self.trigger_level = 1
        self.thr_ipending = False      # THR-empty interrupt latched, until IIR read
        self.timeout_ipending = False  # FIFO character timeout
        self._irq_level = False
        self._input.clear()
        if self.irq is not None:
            self.irq(False)

    # -- the outside world -------------------------------------------------------

    @property
    def ports(self) -> range:
        return range(self.base, self.base + 8)

    def feed(self, data: bytes) -> None:
        """Bytes arriving on the wire from the host side, in order."""
        self._input.extend(data)
        self._pump_input()

    @property
    def pending_input(self) -> int:
        """Bytes fed but not yet taken in by the chip."""
        return len(self._input)

    # -- the guest's view --------------------------------------------------------

    def read(self, port: int, size: int) -> int:
        reg = port - self.base
        if reg == RBR_THR_DLL:
            if self.lcr & LCR_DLAB:
                return self.divider & 0xFF
            return self._read_rbr()
        if reg == IER_DLM:
            if self.lcr & LCR_DLAB:
                return (self.divider >> 8) & 0xFF
            return self.ier
        if reg == IIR_FCR:
            value = self.iir
            # Reading IIR is how a driver acknowledges "transmitter empty": the
            # latch clears once it has been seen as the interrupt cause.
            if value & IIR_ID == IIR_THRI:
                self.thr_ipending = False
                self._update_irq()
            return value
        if reg == LCR:
            return self.lcr
        if reg == MCR:
            return self.mcr
        if reg == LSR:
            value = self.lsr
            # Break and overrun are reported once: reading LSR clears them.
            if self.lsr & (LSR_BI | LSR_OE):
                self.lsr &= ~(LSR_BI | LSR_OE)
                self._update_irq()
            return value
        if reg == MSR:
            if self.mcr & MCR_LOOP:
                # Loopback wires the modem outputs back to the inputs:
                # OUT2->DCD, OUT1->RI, RTS->CTS, DTR->DSR.
                return (((self.mcr & 0x0C) << 4) | ((self.mcr & 0x02) << 3)
                        | ((self.mcr & 0x01) << 5))
            value = self.msr
            if self.msr & MSR_ANY_DELTA:
                self.msr &= 0xF0
                self._update_irq()
            return value
        return self.scr

    def write(self, port: int, size: int, value: int) -> None:
        reg = port - self.base
        value &= 0xFF
        if reg == RBR_THR_DLL:
            if self.lcr & LCR_DLAB:
                self.divider = (self.divider & 0xFF00) | value
            else:
                self._write_thr(value)
        elif reg == IER_DLM:
            if self.lcr & LCR_DLAB:
                self.divider = (self.divider & 0x00FF) | (value << 8)
            else:
                self._write_ier(value)
        elif reg == IIR_FCR:
            self._write_fcr(value)
        elif reg == LCR:
            self.lcr = value
        elif reg == MCR:
            was_loop = self.mcr & MCR_LOOP
            self.mcr = value & 0x1F
            if was_loop and not self.mcr & MCR_LOOP:
                self._pump_input()
        elif reg == SCR:
            self.scr = value
        # LSR and MSR are read-only; writes to them are dropped.

    # -- transmit ---------------------------------------------------------------

    def _write_thr(self, value: int) -> None:
        if not self.ier and not self.mcr & MCR_LOOP:
            # The console's common case: interrupts off, so IIR cannot change and
            # THRE/TEMT are back before anyone can look. Same end state, less work.
            self.thr = value
            self.thr_ipending = True
            self.tx(value)
            return
        self.thr = value
        self.thr_ipending = False
        self.lsr &= ~(LSR_THRE | LSR_TEMT)
        self._update_irq()
        # The shift register takes the byte at once (QEMU's serial_xmit with a
        # chardev that never pushes back), so the FIFO never holds more than one
        # byte for longer than this call and is not modelled separately.
        self.lsr |= LSR_THRE
        if not self.thr_ipending:
            self.thr_ipending = True
            self._update_irq()
        if self.mcr & MCR_LOOP:
            self._receive(value)
        else:
            self.tx(value)
        self.lsr |= LSR_TEMT

    def _write_ier(self, value: int) -> None:
        changed = (self.ier ^ value) & 0x0F
        self.ier = value & 0x0F
        # Enabling THRI while THR is already empty raises the interrupt at once.
        # The datasheet does not say so, but Windows relies on it and QEMU (like
        # Bochs) samples THRE on the enable edge.
        if changed & IER_THRI:
            self.thr_ipending = bool(self.ier & IER_THRI and self.lsr & LSR_THRE)
        if changed:
            self._update_irq()

    def _write_fcr(self, value: int) -> None:
        # Turning the FIFOs on or off flushes both of them.
        if (value ^ self.fcr) & FCR_FE:
            value |= FCR_XFR | FCR_RFR
        if value & FCR_RFR:
            self.lsr &= ~(LSR_DR | LSR_BI)
            self.timeout_ipending = False
            self.rx_fifo.clear()
        if value & FCR_XFR:
            self.lsr |= LSR_THRE
            self.thr_ipending = True
        self.fcr = value & FCR_KEEP
        if self.fcr & FCR_FE:
            self.iir |= IIR_FE
            self.trigger_level = _TRIGGER_LEVEL[self.fcr & 0xC0]
        else:
            self.iir &= ~IIR_FE
        self._pump_input()
        self._update_irq()

    # -- receive ----------------------------------------------------------------

    def _read_rbr(self) -> int:
        if self.fcr & FCR_FE:
            value = self.rx_fifo.popleft() if self.rx_fifo else 0
            if not self.rx_fifo:
                self.lsr &= ~(LSR_DR | LSR_BI)
            self.timeout_ipending = False
        else:
            value = self.rbr
            self.lsr &= ~(LSR_DR | LSR_BI)
        if not self.mcr & MCR_LOOP:
            self._pump_input()
        self._update_irq()
        return value

    def _can_receive(self) -> int:
        """How many bytes the chip can take now (QEMU's serial_can_receive, except
        that a FIFO is offered all of its free space at once)."""
        if self.fcr & FCR_FE:
            return FIFO_SIZE - len(self.rx_fifo)
        return 0 if self.lsr & LSR_DR else 1

    def _pump_input(self) -> None:
        if self.mcr & MCR_LOOP:
            return      # in loopback the receiver listens only to our own THR
        room = self._can_receive()
        if room and self._input:
            while room and self._input:
                self._receive(self._input.popleft())
                room -= 1
        if self.fcr & FCR_FE and self.rx_fifo and not self._input:
            # No more characters are coming: the character timeout has run out.
            self.timeout_ipending = True
        self._update_irq()

    def _receive(self, byte: int) -> None:
        if self.fcr & FCR_FE:
            if len(self.rx_fifo) < FIFO_SIZE:
                self.rx_fifo.append(byte)
            else:
                self.lsr |= LSR_OE      # a full FIFO drops the new byte
        else:
            if self.lsr & LSR_DR:
                self.lsr |= LSR_OE      # the unread byte in RBR is overwritten
            self.rbr = byte
        self.lsr |= LSR_DR
        self._update_irq()

    # -- interrupt --------------------------------------------------------------

    def _update_irq(self) -> None:
        """Recompute IIR from the pending causes, highest priority first, and drive
        the interrupt line (QEMU's serial_update_irq)."""
        ier, lsr = self.ier, self.lsr
        if ier & IER_RLSI and lsr & LSR_INT_ANY:
            cause = IIR_RLSI
        elif ier & IER_RDI and self.timeout_ipending:
            cause = IIR_CTI
        elif (ier & IER_RDI and lsr & LSR_DR
              and (not self.fcr & FCR_FE or len(self.rx_fifo) >= self.trigger_level)):
            cause = IIR_RDI
        elif ier & IER_THRI and self.thr_ipending:
            cause = IIR_THRI
        elif ier & IER_MSI and self.msr & MSR_ANY_DELTA:
            cause = IIR_MSI
        else:
            cause = IIR_NO_INT
        self.iir = cause | (self.iir & 0xF0)
        level = cause != IIR_NO_INT
        if level != self._irq_level:
            self._irq_level = level
            if self.irq is not None:
                self.irq(level)
