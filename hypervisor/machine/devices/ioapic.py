"""The I/O APIC: how device lines become messages to the local APICs, as QEMU 7.2 models it.

With local APICs in every CPU, device lines need a router: the I/O APIC (Intel's
82093AA). It has one input pin per line — 24 on a PC, GSIs 0-23 — and a 64-bit
*redirection entry* per pin that says what an assertion becomes: a vector, a delivery
mode (fixed, lowest priority, SMI, NMI, INIT, ExtINT), a destination (physical APIC ID
or logical set) and how to sense the pin (edge or level, active high or low), plus a
mask. Everything sits behind two registers in a 4 KiB page at 0xFEC00000: software
writes a register number to IOREGSEL (offset 0x00) and reads or writes it through
IOWIN (offset 0x10). Register 0 is the ID, 1 the version (0x20, with "23" — the highest
pin — in bits 23:16), 2 the arbitration ID, 0x10+2n and 0x11+2n the low and high halves
of pin n's entry. Version 0x20 adds an EOI register at offset 0x40.

Level-triggered pins need a handshake. When such a pin's message is sent, the entry's
*remote IRR* bit (14) is set and no further message goes out for it, however long the
line stays high, until the local APIC reports that the guest has ended the interrupt
(an EOI on that vector, ``eoi``). Then remote IRR clears, and if the line is still
asserted the message goes out again: the device has not been serviced yet.

What QEMU 7.2 does (hw/intc/ioapic.c, ioapic_common.c), and therefore this file; the
rules marked *probe* were checked against ``qemu-system-i386`` 7.2 with a multiboot
guest driving lines through pc-testdev:

* **Accesses.** The region is 4 KiB but only ``offset & 0xff`` is decoded (*probe*:
  0xFEC00110 reads IOWIN). IOREGSEL is one byte: it keeps the low 8 bits of whatever is
  written, at any width, and reads back at any width. IOWIN and the EOI register act
  only on 32-bit accesses; others read 0 and are dropped. Every other offset reads 0.
  QEMU's memory core splits an 8-byte access into two 32-bit ones (low half first) and
  refuses misaligned ones (*probe*).
* **Registers.** ID keeps bits 27:24; ARB reads the same value as ID; VER and ARB
  ignore writes. IOREGSEL values with no register behind them (3-0x0F, and above 0x3F:
  "index out of range") read 0 and ignore writes.
* **Entries** reset to 0x00010000, masked. Remote IRR and delivery status (bits 14 and
  12) are read-only — QEMU keeps their old values on a write — and every other bit,
  reserved ones included, is stored as written (*probe*: 0xFFFFFFFF reads 0xFFFFAFFF).
  Writing an entry as edge-triggered clears remote IRR (Linux's way to EOI an old I/O
  APIC), and every entry write re-evaluates the pins.
* **Pins.** An edge pin latches a request only on an assertion while unmasked: a pulse
  on a masked pin is lost. A level pin latches while high, whatever the mask, and is
  delivered once unmasked. QEMU's ``ioapic_set_irq`` itself moves input 0 to pin 2,
  because a PC's ISA IRQ 0 (the PIT) is wired to GSI 2 (the MADT's interrupt source
  override says so); the board may pass either.
* **Messages** go to the local APIC as an MSI, a store into its window at 0xFEE00000:
  see ``LocalApic.deliver_message``, which explains the ``mode`` packing. An ExtINT entry
  takes its vector from the 8259A (``extint_vector``, an interrupt acknowledge) at the
  moment the pin is looked at — even when the entry is masked, as QEMU's
  ``ioapic_entry_parse`` runs before the mask test.
* **EOI.** ``eoi(vector)`` (from the local APIC, or a 32-bit write of the vector to
  offset 0x40) clears remote IRR on every level-triggered entry with that vector and
  re-sends a still-asserted, unmasked line. On the 10000th such EOI of one pin in a row,
  QEMU decides the guest is failing to service a level interrupt and holds that re-send
  back by 10 ms of virtual time so the guest can make progress
  (``SUCCESSIVE_IRQ_MAX_COUNT``; *probe*: 9999 immediate re-sends, then none); this model
  does the same on ``clock``.

Where this departs from QEMU: without a ``clock`` that last delay cannot be kept, and the
re-send happens at once.
"""
from typing import Callable

from hypervisor.machine.clock import NS_PER_SECOND, VirtualClock
from hypervisor.machine.devices.lapic import MSG_LOGICAL, MSG_RESERVED_SHIFT, DeliveryMode

IOREGSEL = 0x00
IOWIN = 0x10
IOEOI = 0x40

REG_ID = 0x00
REG_VER = 0x01
REG_ARB = 0x02
REG_REDTBL = 0x10

PINS = 24
IOAPIC_VERSION = 0x20

RTE_DELIVERY_STATUS = 1 << 12
RTE_LOGICAL = 1 << 11
RTE_REMOTE_IRR = 1 << 14
RTE_LEVEL = 1 << 15
RTE_MASKED = 1 << 16
RTE_READ_ONLY = RTE_REMOTE_IRR | RTE_DELIVERY_STATUS
RTE_RESET = RTE_MASKED

ISA_TIMER_IRQ = 0
TIMER_GSI = 2

# QEMU's SUCCESSIVE_IRQ_MAX_COUNT, and the delay it then imposes.
EOI_STORM_COUNT = 10000
EOI_STORM_DELAY_NS = NS_PER_SECOND // 100

_SIZE_MASK = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF}


class IoApic:
    """24 pins at 0xFEC00000. ``deliver(vector, level_triggered, dest, mode)`` sends a
    message to the local APIC (``mode`` as ``LocalApic.deliver_message`` takes it)."""

    BASE = 0xFEC00000
    SIZE = 0x1000

    def __init__(self, deliver: Callable[[int, bool, int, int], None],
                 clock: VirtualClock | None = None,
                 extint_vector: Callable[[], int] | None = None) -> None:
        self.deliver = deliver
        self.clock = clock
        self.extint_vector = extint_vector
        self.reset()

    def reset(self) -> None:
        """QEMU's ioapic_reset_common (SeaBIOS leaves the I/O APIC as reset, *probe*)."""
        self.id = 0
        self.ioregsel = 0
        self.irr = 0                       # latched requests, one bit per pin
        self.redirection = [RTE_RESET] * PINS
        self._eoi_resends = [0] * PINS     # immediate re-sends in a row, per pin
        self._delayed_service: int | None = None
        if self.clock is not None:
            self.clock.arm(self, None)

    # -- the guest's view: MMIO ----------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        if offset % size:
            return 0                       # refused by QEMU's memory core
        if size == 8:
            return self._read(offset, 4) | self._read(offset + 4, 4) << 32
        return self._read(offset, size) & _SIZE_MASK[size]

    def _read(self, offset: int, size: int) -> int:
        addr = offset & 0xFF
        if addr == IOREGSEL:
            return self.ioregsel
        if addr == IOWIN and size == 4:
            return self._read_register(self.ioregsel)
        return 0

    def _read_register(self, reg: int) -> int:
        if reg in (REG_ID, REG_ARB):
            return self.id << 24
        if reg == REG_VER:
            return IOAPIC_VERSION | (PINS - 1) << 16
        pin = (reg - REG_REDTBL) >> 1
        if 0 <= pin < PINS:
            return (self.redirection[pin] >> (32 if reg & 1 else 0)) & 0xFFFFFFFF
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if offset % size:
            return
        if size == 8:
            self._write(offset, 4, value & 0xFFFFFFFF)
            self._write(offset + 4, 4, value >> 32 & 0xFFFFFFFF)
            return
        self._write(offset, size, value & _SIZE_MASK[size])

    def _write(self, offset: int, size: int, value: int) -> None:
        addr = offset & 0xFF
        if addr == IOREGSEL:
            self.ioregsel = value & 0xFF
        elif addr == IOWIN and size == 4:
            self._write_register(self.ioregsel, value)
        elif addr == IOEOI and size == 4:
            self.eoi(value)

    def _write_register(self, reg: int, value: int) -> None:
        if reg == REG_ID:
            self.id = (value >> 24) & 0xF
            return
        pin = (reg - REG_REDTBL) >> 1
        if reg in (REG_VER, REG_ARB) or not 0 <= pin < PINS:
            return
        entry = self.redirection[pin]
        read_only = entry & RTE_READ_ONLY
        if reg & 1:
            entry = (entry & 0xFFFFFFFF) | value << 32
        else:
            entry = (entry & ~0xFFFFFFFF) | value
        entry = (entry & ~RTE_READ_ONLY) | read_only
        if not entry & RTE_LEVEL:
            entry &= ~RTE_REMOTE_IRR     # QEMU's ioapic_fix_edge_remote_irr
        self.redirection[pin] = entry
        self._eoi_resends[pin] = 0
        self._service()

    # -- the devices' view ---------------------------------------------------------

    @staticmethod
    def _pin(gsi: int) -> int | None:
        """The pin input ``gsi`` drives: 0 counts as 2 (see the header), 24 and up none."""
        pin = TIMER_GSI if gsi == ISA_TIMER_IRQ else gsi
        return pin if 0 <= pin < PINS else None

    def masked(self, gsi: int) -> bool:
        """Input ``gsi`` cannot send anything now (its entry is masked, or there is no pin)."""
        pin = self._pin(gsi)
        return pin is None or bool(self.redirection[pin] & RTE_MASKED)

    def set_irq(self, gsi: int, level: bool) -> None:
        """Drive input ``gsi`` (QEMU's ioapic_set_irq)."""
        pin = self._pin(gsi)
        if pin is None:
            return
        entry = self.redirection[pin]
        mask = 1 << pin
        if entry & RTE_LEVEL:
            if not level:
                self.irr &= ~mask
                return
            self.irr |= mask
            if not entry & RTE_REMOTE_IRR:
                self._service()
        elif level and not entry & RTE_MASKED:
            self.irr |= mask
            self._service()

    def _service(self) -> None:
        """QEMU's ioapic_service: send a message for every latched, unmasked pin whose
        level handshake (remote IRR) allows it."""
        for pin in range(PINS):
            mask = 1 << pin
            if not self.irr & mask:
                continue
            entry = self.redirection[pin]
            mode = (entry >> 8) & 7
            vector = entry & 0xFF
            if mode == DeliveryMode.EXTINT and self.extint_vector is not None:
                vector = self.extint_vector()
            if entry & RTE_MASKED:
                continue
            level = bool(entry & RTE_LEVEL)
            if not level:
                self.irr &= ~mask
            else:
                self.redirection[pin] = entry | RTE_REMOTE_IRR
                if entry & RTE_REMOTE_IRR:
                    continue               # the guest is still handling the last one
            self._send(entry, vector, level)

    def _send(self, entry: int, vector: int, level: bool) -> None:
        mode = (entry >> 8) & 7
        if entry & RTE_LOGICAL:
            mode |= MSG_LOGICAL
        mode |= ((entry >> 48) & 0xFF) << MSG_RESERVED_SHIFT
        self.deliver(vector, level, (entry >> 56) & 0xFF, mode)

    # -- end of interrupt ----------------------------------------------------------

    def eoi(self, vector: int) -> None:
        """QEMU's ioapic_eoi_broadcast: the guest ended ``vector``; every level entry
        with it may interrupt again."""
        for pin in range(PINS):
            entry = self.redirection[pin]
            if ((entry & 0xFF) != vector or not entry & RTE_LEVEL
                    or not entry & RTE_REMOTE_IRR):
                continue
            self.redirection[pin] = entry & ~RTE_REMOTE_IRR
            if entry & RTE_MASKED or not self.irr & (1 << pin):
                self._eoi_resends[pin] = 0
                continue
            self._eoi_resends[pin] += 1
            if self._eoi_resends[pin] >= EOI_STORM_COUNT and self.clock is not None:
                self._eoi_resends[pin] = 0
                self._delay_service(self.clock.now + EOI_STORM_DELAY_NS)
            else:
                self._service()

    def _delay_service(self, deadline: int) -> None:
        """QEMU's timer_mod_anticipate: an earlier pending deadline wins."""
        if self._delayed_service is None or deadline < self._delayed_service:
            self._delayed_service = deadline
            self.clock.arm(self, deadline)

    def update(self) -> None:
        """The clock reached the delayed re-send (after an EOI storm)."""
        if self._delayed_service is None or self.clock.now < self._delayed_service:
            return
        self._delayed_service = None
        self.clock.arm(self, None)
        self._service()
