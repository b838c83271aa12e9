"""The 8259A programmable interrupt controllers: how sixteen device wires become one INTR pin.

The x86 CPU has a single maskable interrupt input. The PC puts an 8259A in front of
it, which latches requests from eight devices (IRR), lets software mask them (IMR),
picks the most urgent, raises INTR, and when the CPU answers with an interrupt
acknowledge cycle, puts a vector number on the bus and remembers the request as
in service (ISR) until software says End Of Interrupt. The AT doubled this by hanging
a second 8259A (the slave, IRQ 8-15, ports 0xa0/0xa1) off the master's IRQ2 input;
the master answers IRQ2 by letting the slave supply the vector.

Each chip is programmed with an initialisation sequence (ICW1 on the even port,
then ICW2 = vector base, ICW3 = cascade wiring, ICW4 = 8086 mode / auto-EOI on the odd
port) and later with operation words: OCW1 (odd port) is the mask, OCW2 sends EOIs
and rotates priorities, OCW3 chooses whether the even port reads IRR or ISR, or polls.

The model follows QEMU 7.2's hw/intc/i8259.c, which is the reference: inputs are
edge-triggered (IRR latches on a rising edge) unless the ELCR at 0x4d0/0x4d1 makes
them level-triggered; priority rotation (``priority_add``), special mask mode, special
fully nested mode and poll mode are all there because each is a few lines. As in
QEMU, a request that goes away before the CPU acknowledges produces a spurious IRQ7
(or IRQ15 on the slave) with no ISR bit set.

The run loop asks ``has_interrupt()`` before every block of guest instructions, so the
answer is kept up to date on every state change and reading it is an attribute load.
"""
from typing import Callable

MASTER_BASE = 0x20
SLAVE_BASE = 0xA0
ELCR_BASE = 0x4D0
CASCADE_IRQ = 2

# ICW1 / OCW2 / OCW3 are all written to the even port; bits 4 and 3 tell them apart.
ICW1_INIT = 0x10
ICW1_IC4 = 0x01      # an ICW4 follows
ICW1_SNGL = 0x02     # single chip, no ICW3
ICW1_LTIM = 0x08     # level-triggered mode (not supported, as in QEMU)
OCW3_SELECT = 0x08
OCW3_POLL = 0x04
OCW3_RR = 0x02       # the RIS bit below is valid
OCW3_RIS = 0x01      # read ISR (1) or IRR (0)
OCW3_ESMM = 0x40     # the SMM bit below is valid
ICW4_AEOI = 0x02
ICW4_SFNM = 0x10

NO_IRQ = 8           # "priority" meaning nothing is pending


class Pic8259:
    """One 8259A. ``int_out(level)`` is its INT pin (the CPU's INTR for the master,
    the master's IRQ2 input for the slave)."""

    def __init__(self, base: int, master: bool, elcr_mask: int,
                 int_out: Callable[[bool], None] | None = None) -> None:
        self.base = base
        self.master = master
        self.elcr = 0            # edge/level control, not reset by ICW1 (as QEMU)
        self.elcr_mask = elcr_mask
        self.int_out = int_out
        self.intr = False        # current level of the INT pin
        self.irr = 0
        self.reset()

    def reset(self) -> None:
        """What ICW1 (and power-on) does: QEMU's pic_reset_common."""
        self.last_irr = 0        # input levels, to detect rising edges
        self.irr &= self.elcr    # a level-triggered request is still asserted
        self.imr = 0
        self.isr = 0
        self.priority_add = 0    # rotation: the IRQ that currently has top priority
        self.irq_base = 0
        self.read_isr = False    # OCW3 RIS
        self.poll = False
        self.special_mask = False
        self.init_state = 0      # which ICW the odd port expects next (0 = none)
        self.auto_eoi = False
        self.rotate_on_auto_eoi = False
        self.special_fully_nested = False
        self.init4 = False
        self.single = False

    # -- priority ---------------------------------------------------------------

    def _priority(self, mask: int) -> int:
        """Rank of the most urgent bit of ``mask`` (0 = top), or NO_IRQ."""
        if not mask:
            return NO_IRQ
        rotated = ((mask >> self.priority_add) | (mask << (8 - self.priority_add))) & 0xFF
        return (rotated & -rotated).bit_length() - 1

    def pending_irq(self) -> int:
        """The IRQ (0-7) this chip would signal now, or -1: an unmasked request more
        urgent than everything in service (QEMU's pic_get_irq)."""
        priority = self._priority(self.irr & ~self.imr)
        if priority == NO_IRQ:
            return -1
        in_service = self.isr
        if self.special_mask:
            in_service &= ~self.imr
        if self.special_fully_nested and self.master:
            # The slave may interrupt its own in-service IRQ2 with a more urgent input.
            in_service &= ~(1 << CASCADE_IRQ)
        if priority < self._priority(in_service):
            return (priority + self.priority_add) & 7
        return -1

    def _update(self) -> None:
        level = self.pending_irq() >= 0
        if level != self.intr:
            self.intr = level
            if self.int_out is not None:
                self.int_out(level)

    # -- the device side --------------------------------------------------------

    def set_irq(self, irq: int, level: bool) -> None:
        """Drive input ``irq`` (0-7) to ``level``."""
        mask = 1 << irq
        if self.elcr & mask:
            if level:
                self.irr |= mask
                self.last_irr |= mask
            else:
                self.irr &= ~mask
                self.last_irr &= ~mask
        elif level:
            if not self.last_irr & mask:
                self.irr |= mask     # rising edge: latch the request
            self.last_irr |= mask
        else:
            self.last_irr &= ~mask   # the IRR bit stays latched until acknowledged
        self._update()

    # -- the CPU side -----------------------------------------------------------

    def intack(self, irq: int) -> None:
        """The acknowledge cycle for ``irq``: request becomes in-service."""
        mask = 1 << irq
        if self.auto_eoi:
            if self.rotate_on_auto_eoi:
                self.priority_add = (irq + 1) & 7
        else:
            self.isr |= mask
        if not self.elcr & mask:
            self.irr &= ~mask
        self._update()

    # -- the guest's view -------------------------------------------------------

    def read(self, port: int, size: int) -> int:
        if self.poll:
            # Poll mode: the read *is* the acknowledge; bit 7 says "there was one".
            self.poll = False
            irq = self.pending_irq()
            if irq < 0:
                return 0
            self.intack(irq)
            return irq | 0x80
        if port == self.base:
            return self.isr if self.read_isr else self.irr
        return self.imr

    def write(self, port: int, size: int, value: int) -> None:
        value &= 0xFF
        if port == self.base:
            if value & ICW1_INIT:
                self._icw1(value)
            elif value & OCW3_SELECT:
                self._ocw3(value)
            else:
                self._ocw2(value)
        else:
            self._odd_port(value)

    def _icw1(self, value: int) -> None:
        self.reset()
        self._update()
        self.init_state = 1
        self.init4 = bool(value & ICW1_IC4)
        self.single = bool(value & ICW1_SNGL)
        # LTIM (level-triggered everything) is ignored, as in QEMU: the PC uses the
        # ELCR for per-line level triggering instead.

    def _ocw2(self, value: int) -> None:
        cmd = value >> 5
        if cmd in (0, 4):                        # clear / set rotate-on-AEOI
            self.rotate_on_auto_eoi = cmd == 4
        elif cmd in (1, 5):                      # non-specific EOI (and rotate)
            priority = self._priority(self.isr)
            if priority != NO_IRQ:
                irq = (priority + self.priority_add) & 7
                self.isr &= ~(1 << irq)
                if cmd == 5:
                    self.priority_add = (irq + 1) & 7
                self._update()
        elif cmd == 3:                           # specific EOI
            self.isr &= ~(1 << (value & 7))
            self._update()
        elif cmd == 6:                           # set priority: IRQ n becomes lowest
            self.priority_add = (value + 1) & 7
            self._update()
        elif cmd == 7:                           # specific EOI and rotate
            irq = value & 7
            self.isr &= ~(1 << irq)
            self.priority_add = (irq + 1) & 7
            self._update()
        # cmd 2 is a no-op.

    def _ocw3(self, value: int) -> None:
        if value & OCW3_POLL:
            self.poll = True
        if value & OCW3_RR:
            self.read_isr = bool(value & OCW3_RIS)
        if value & OCW3_ESMM:
            self.special_mask = bool(value & 0x20)

    def _odd_port(self, value: int) -> None:
        state = self.init_state
        if state == 0:                           # OCW1: the mask
            self.imr = value
            self._update()
        elif state == 1:                         # ICW2: vector base
            self.irq_base = value & 0xF8
            self.init_state = (3 if self.init4 else 0) if self.single else 2
        elif state == 2:                         # ICW3: cascade wiring (fixed on a PC)
            self.init_state = 3 if self.init4 else 0
        else:                                    # ICW4
            self.special_fully_nested = bool(value & ICW4_SFNM)
            self.auto_eoi = bool(value & ICW4_AEOI)
            self.init_state = 0


class Elcr:
    """The PIIX's Edge/Level Control Registers at 0x4d0 (master) and 0x4d1 (slave):
    a 1 bit makes that IRQ level-triggered. IRQ 0, 1, 2, 8 and 13 are wired edge-only."""

    def __init__(self, master: Pic8259, slave: Pic8259, base: int = ELCR_BASE) -> None:
        self.chips = (master, slave)
        self.base = base

    @property
    def ports(self) -> range:
        return range(self.base, self.base + 2)

    def read(self, port: int, size: int) -> int:
        return self.chips[port - self.base].elcr

    def write(self, port: int, size: int, value: int) -> None:
        chip = self.chips[port - self.base]
        chip.elcr = value & chip.elcr_mask


class PicPair:
    """The AT's cascaded 8259As: IRQ 0-7 on the master, 8-15 on the slave, whose INT
    pin is the master's IRQ2. This is what the CPU sees as its interrupt controller."""

    def __init__(self) -> None:
        self.master = Pic8259(MASTER_BASE, master=True, elcr_mask=0xF8)
        self.slave = Pic8259(SLAVE_BASE, master=False, elcr_mask=0xDE,
                             int_out=self._cascade)
        self.elcr = Elcr(self.master, self.slave)

    def _cascade(self, level: bool) -> None:
        self.master.set_irq(CASCADE_IRQ, level)

    def set_irq(self, irq: int, level: bool) -> None:
        """Drive ISA interrupt line ``irq`` (0-15)."""
        if irq < 8:
            self.master.set_irq(irq, level)
        else:
            self.slave.set_irq(irq - 8, level)

    def raise_irq(self, irq: int) -> None:
        self.set_irq(irq, True)

    def lower_irq(self, irq: int) -> None:
        self.set_irq(irq, False)

    def pulse_irq(self, irq: int) -> None:
        """A rising edge followed by the line going idle again."""
        self.set_irq(irq, True)
        self.set_irq(irq, False)

    def has_interrupt(self) -> bool:
        """The CPU's INTR pin."""
        return self.master.intr

    def could_interrupt(self, irq: int) -> bool:
        """Would a new request on line ``irq`` raise INTR, with masks and in-service
        priorities as they stand? The run loop asks before it sleeps a halted CPU on a
        timer: if not, nothing that timer does can ever wake it."""
        chip, line = (self.master, irq) if irq < 8 else (self.slave, irq - 8)
        saved = chip.irr
        chip.irr |= 1 << line
        try:
            raised = chip.pending_irq() >= 0
        finally:
            chip.irr = saved
        if not raised or chip is self.master:
            return raised
        return self.could_interrupt(CASCADE_IRQ)

    def acknowledge(self) -> int:
        """The CPU's interrupt acknowledge cycle: returns the vector and moves the
        request into service (QEMU's pic_read_irq).

        Called with nothing pending (the request went away between INTR and INTA),
        the chip still has to answer, and answers IRQ7 of the chip concerned without
        setting its ISR bit: the spurious interrupt handlers must look at ISR."""
        master, slave = self.master, self.slave
        irq = master.pending_irq()
        if irq < 0:
            return master.irq_base + 7
        if irq == CASCADE_IRQ:
            irq2 = slave.pending_irq()
            if irq2 >= 0:
                slave.intack(irq2)
            else:
                irq2 = 7
            vector = slave.irq_base + irq2
        else:
            vector = master.irq_base + irq
        master.intack(irq)
        return vector

    @property
    def ports(self) -> tuple[int, ...]:
        return (MASTER_BASE, MASTER_BASE + 1, SLAVE_BASE, SLAVE_BASE + 1)

    def read(self, port: int, size: int) -> int:
        return (self.master if port < SLAVE_BASE else self.slave).read(port, size)

    def write(self, port: int, size: int, value: int) -> None:
        (self.master if port < SLAVE_BASE else self.slave).write(port, size, value)
