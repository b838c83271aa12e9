"""What reaches the CPU's interrupt pins: the local APIC, and the PIC through it.

A PC of the 1990s wired the 8259A's INTR output straight to the CPU. Since the Pentium the
CPU has a local APIC in front of its pins, and the PIC reaches the core through the APIC's
LINT0 input: the BIOS leaves LINT0 in ExtINT ("virtual wire") mode, so a kernel that never
touches the APIC sees the PIC exactly as before. Everything else the APIC delivers itself:
its timer, self-IPIs, and messages from the I/O APIC. NMIs come on their own pin.

``InterruptRouter`` is that wiring, as QEMU's ``cpu_get_pic_interrupt`` and
``apic_accept_pic_intr`` do it:

* an interrupt is pending when the APIC has a deliverable vector, or the PIC asserts INTR
  and LINT0 passes it on (unmasked, in ExtINT mode);
* the interrupt-acknowledge cycle lets the PIC go first while it asserts through LINT0
  (ExtINT ignores the APIC's priorities, QEMU's ``apic_get_interrupt``), then the APIC's own
  highest vector, then the PIC again if the APIC still accepts it;
* an NMI is taken separately: it ignores IF.

Monitors only ever ask the router, never a chip: the same code serves a PC without an
APIC (``lapic=None``: the PIC alone, as the first hvsim guests saw it).
"""
from __future__ import annotations

from .devices.pit import PIT_IRQ

LVT_TIMER, LVT_MASKED = 0x320, 1 << 16
SVR, SVR_ENABLED = 0x0F0, 1 << 8
PIT_GSI = 2                     # QEMU's MADT: ISA IRQ 0 arrives at I/O APIC pin 2


class InterruptRouter:
    """The CPU's view of its interrupt sources."""

    def __init__(self, pic, lapic=None, ioapic=None, pit=None) -> None:
        self.pic, self.lapic, self.ioapic, self.pit = pic, lapic, ioapic, pit
        self._lint0 = False          # the PIC's INTR as LINT0 last saw it

    def _sync_lint0(self) -> bool:
        """Bring LINT0 to the PIC's INTR level (QEMU's pic_irq_request does it on every change;
        a change only matters when the CPU looks, which is when this runs); the level."""
        level = self.pic.has_interrupt()
        if level != self._lint0:
            self._lint0 = level
            self.lapic.set_lint(0, level)
        return level

    def has_interrupt(self) -> bool:
        """A maskable interrupt is waiting for IF (QEMU's CPU_INTERRUPT_HARD)."""
        lapic = self.lapic
        if lapic is None:
            return self.pic.has_interrupt()
        if not self._sync_lint0() and not lapic.irr:
            return False                 # the common case, asked at every exit: nothing anywhere
        return lapic.has_interrupt() or lapic.pic_intr()

    def acknowledge(self) -> int | None:
        """The interrupt-acknowledge cycle: the vector to deliver, or None when what was
        pending has gone (QEMU's cpu_get_pic_interrupt returning -1)."""
        lapic = self.lapic
        if lapic is None:
            return self.pic.acknowledge() if self.pic.has_interrupt() else None
        self._sync_lint0()
        vector = lapic.acknowledge()
        if vector is not None:
            return vector
        if not lapic.accepts_pic() or not self.pic.has_interrupt():
            return None
        vector = self.pic.acknowledge()
        self._sync_lint0()
        return vector

    def nmi_pending(self) -> bool:
        return self.lapic is not None and self.lapic.nmi_pending()

    def take_nmi(self) -> bool:
        """An NMI is pending: claim it (it is delivered whatever IF says)."""
        return self.lapic is not None and self.lapic.take_nmi()

    def timers_could_wake(self) -> bool:
        """Could an armed timer ever interrupt a halted CPU? A guest that halts with every
        timer masked sleeps for ever on the bare machine; the monitor ends that run."""
        if self.pit is not None and self.pit.clock.deadline(self.pit) is not None and self._pit_reaches_cpu():
            return True
        lapic = self.lapic
        return (lapic is not None and lapic.clock.deadline(lapic) is not None
                and lapic.read(SVR, 4) & SVR_ENABLED and not lapic.read(LVT_TIMER, 4) & LVT_MASKED)

    def _pit_reaches_cpu(self) -> bool:
        via_pic = self.pic.could_interrupt(PIT_IRQ) and (self.lapic is None or self.lapic.accepts_pic())
        return via_pic or (self.ioapic is not None and not self.ioapic.masked(PIT_GSI))
