"""The local APIC: the interrupt controller inside the CPU, as QEMU 7.2's ``apic`` device models it.

The 8259A (pic.py) was built for one CPU and fifteen devices. When PCs grew several CPUs,
each got its own *local* APIC: a small controller in the processor that accepts
interrupt messages (from the I/O APIC, from other CPUs, from its own timer and pins),
ranks them by vector, and decides which one the core takes next. Software sees it as a
4 KiB page of 32-bit registers at physical 0xFEE00000 (the "xAPIC" interface), one
register every 16 bytes:

* **IRR, ISR, TMR** — three 256-bit maps. A message sets the vector's IRR bit; when the
  CPU acknowledges, the highest IRR bit moves to ISR ("in service") until the handler
  writes EOI; TMR remembers which requests were level-triggered, because only their EOI
  must travel back to the I/O APIC (``on_eoi``) so the line can interrupt again.
* **Priority** — a vector's class is its high nibble. The task priority (TPR) and the
  class in service form the processor priority, PPR; a request is taken only if its
  class is above PPR's. That is what lets vector 62 interrupt a handler for vector 33 and
  makes vector 32 wait (kvm-unit-tests' eventinj checks exactly this).
* **LVT** — one entry per local source: the timer, the thermal and performance monitors,
  the pins LINT0 and LINT1, and internal errors. Each says which vector (or NMI, or
  ExtINT) the source raises and whether it is masked. The BIOS wires LINT0 as ExtINT,
  "virtual wire": the old 8259A's INTR passes straight through to the core, so a
  PIC-only kernel keeps working; LINT1 is NMI.
* **ICR** — writing it sends an inter-processor interrupt: to a destination (physical
  APIC ID or logical LDR/DFR match) or a shorthand (self, all, all but self), in a
  delivery mode (fixed, NMI, INIT, STARTUP...). With one CPU only messages to itself
  arrive anywhere; INIT and STARTUP to the absent APs go nowhere.
* **Timer** — a 32-bit down-counter fed by the bus clock through a divider, one-shot or
  periodic, raising the LVT timer vector when it reaches zero.

What QEMU does, and therefore what this file must (the reference is QEMU 7.2's
hw/intc/apic.c and apic_common.c; every rule below was checked against them, and the
ones marked *probe* against ``qemu-system-i386`` 7.2 with a multiboot guest):

* **Accesses.** Only aligned 32-bit accesses reach a register. QEMU's ``apic_mem_read``
  returns 0 for sizes below 4 and ``apic_mem_write`` ignores them; the memory core
  rejects misaligned and 8-byte accesses (``valid.max_access_size = 4``, no
  ``valid.unaligned``) before the device sees them: reads give 0, writes vanish, and none
  of these touch ESR (*probe*). The register is chosen by ``(offset >> 4) & 0xff``, so
  offset 0x24 reads the ID and the region, 1 MiB long in QEMU, repeats every 4 KiB for
  reads (*probe*: 0xFEE01030 reads the version).
* **Raw storage.** QEMU keeps what the guest writes: every LVT holds all 32 bits, ICR low
  and high keep every bit (including the delivery-status bit 12, which reads back as
  written, *probe*), LDR keeps bits 31:24, DFR bits 31:28 (the rest read as ones), SVR
  bits 8:0, TPR bits 7:0, the ID bits 31:24, the divide register bits 3,1,0; the
  arbitration priority reads 0, as QEMU models no arbitration. Clearing
  SVR bit 8 stops delivery but, unlike the SDM's APIC, neither masks the LVTs nor stops
  them being written (*probe*).
* **ESR.** Any access to a register QEMU does not decode (0x000 and 0x010, 0x040-0x070,
  0x0C0, 0x290-0x2F0, 0x3A0-0x3D0, 0x3F0-0xFF0; a write to 0x000 is an MSI instead, see
  below) sets bit 7, "illegal register address", and reads 0. Writes to ESR are ignored,
  so the bit stays set until INIT (*probe*).
* **MSI.** A 32-bit write to slot 0 (offsets 0x000-0x00F) or anywhere above 0xFFF is
  not a register write but a message-signalled interrupt: QEMU maps the MSI window and
  the APIC page on top of each other, so ``apic_mem_write`` decodes the address as the
  destination (bits 19:12) and mode (bit 2) and the value as vector, delivery mode and
  trigger (*probe*: writing 0x31 to 0xFEE00000 raises vector 0x31). The I/O APIC speaks
  to this APIC through the same path (``deliver_message``).
* **Destinations.** Physical: ID equal, or 0xFF for all. Logical: DFR model 0xF (flat)
  matches if ``dest & LDR``, model 0x0 (cluster) if the high nibbles are equal and the low
  ones overlap; any other model matches nothing. The shorthands use the APIC's *index*
  (its ID at power-on), not the ID register: after a guest rewrites its ID, "self" reaches
  nobody and "all but self" reaches itself (*probe*).
* **Delivery modes.** Fixed, lowest priority and ExtINT set the vector in IRR (ExtINT in
  an ICR or MSI carries its own vector); NMI raises an NMI; INIT (except the "de-assert"
  form, level 0 with trigger 1) resets the CPU; STARTUP wakes only a CPU waiting for it,
  which the boot CPU never is; SMI enters SMM (not modelled: hvsim has no SMM, see below);
  mode 3 is dropped. QEMU checks no vector: a vector below 16 is accepted, and a request
  on vector 0 is never delivered because ``apic_irq_pending`` reads 0 as "none".
* **Priority and acknowledge.** ``apic_irq_pending``: nothing with SVR bit 8 clear; the
  highest IRR vector is blocked if PPR is nonzero and the vector's class is not above
  PPR's (TPR's low nibble counts for PPR, so TPR 0x2F blocks class 2). ``apic_get_interrupt``
  hands the CPU that vector, or None when there is none or the PIC's INTR is passing
  through LINT0 (ExtINT ignores priority; the CPU then asks the 8259A), or SVR's spurious
  vector when the highest request is blocked. EOI clears the highest ISR bit and, if TMR
  has it, tells the I/O APIC. TMR is set and cleared only by the next message on that
  vector; EOI leaves it (*probe*).
* **Timer.** QEMU counts the virtual clock in nanoseconds: the counter ticks once every
  ``2**shift`` ns, where the divide register's value 0b1011 gives shift 0 (divide by 1),
  0b0000 shift 1 (by 2) ... 0b1010 shift 7 (by 128) — so the "bus clock" is 1 GHz.
  ``apic_next_timer`` fires a one-shot at ``count + 1`` ticks after the initial count was
  written, and a periodic timer every ``count + 1`` ticks; a count of 0 never fires. The
  current count is computed from the elapsed time, not stored. Writing the LVT timer or
  the initial count re-arms; writing the divide register does not (it only changes how
  elapsed time is read from then on). Bits 18:17 = 10 (TSC-deadline) count as one-shot:
  QEMU's TCG APIC has no TSC-deadline mode, and qemu32's CPUID does not advertise it.

The state a kernel finds is QEMU's power-on reset (``apic_reset_common``: everything
masked, SVR 0xFF, DFR all ones, LINT0 ExtINT) followed by what SeaBIOS's ``smp_setup``
does before it boots the kernel: SVR |= 0x100, LINT0 = 0x8700, LINT1 = 0x8400, and the
INIT (0xC4500) then STARTUP (0xC4610) broadcast to the APs, which leaves ICR = 0xC4610
(*probe*: read at a multiboot kernel's first instruction).

Where this departs from QEMU, and why:

* The APIC base MSR (0x1B) cannot be seen: Unicorn cannot hook RDMSR/WRMSR. So the APIC
  is always globally enabled at 0xFEE00000, and QEMU 7.2's "once disabled, cannot be
  re-enabled" rule (which kvm-unit-tests trips in ``reset_apic``, leaving QEMU's APIC
  globally disabled yet working) is not modelled. The one visible consequence is
  ``accepts_pic``: QEMU passes the PIC through whenever the APIC is globally disabled.
* x2APIC (MSRs 0x800-0x8FF) is absent: qemu32 does not advertise it, as in QEMU 7.2.
* SMI (ICR, MSI or LVT) is dropped: QEMU would enter SeaBIOS's SMM handler and return.
* ``pic_intr`` is computed from levels, where QEMU latches its CPU_INTERRUPT_HARD flag at
  events. The two differ only when an LVT other than LINT0 is in ExtINT mode (QEMU then
  makes the CPU fetch a vector from the PIC, which here does not happen) or when LINT0
  is masked while the PIC is asserting (QEMU may still take one PIC interrupt).
* A periodic timer whose deadlines virtual time has overtaken fires once, then re-arms
  after ``now``. QEMU runs the expired timer once per missed period, back to back, into
  the same IRR bit with no instruction between, which has the same effect.
* Not this file's doing but worth knowing: Unicorn splits an 8-byte access (``movq``,
  SSE moves) into 32-bit ones before any device sees it, where QEMU 7.2 issues it whole
  and the APIC refuses it. So ``movq mm0, [0xFEE00030]`` reads the version twice here and
  0 under QEMU (*probe*). ``read``/``write`` model QEMU for the accesses they receive.
"""
from enum import IntEnum
from typing import Callable

from hypervisor.machine.clock import VirtualClock


class DeliveryMode(IntEnum):
    """Bits 10:8 of an ICR, LVT entry, I/O APIC redirection entry or MSI data word."""

    FIXED = 0
    LOWEST_PRIORITY = 1
    SMI = 2
    NMI = 4
    INIT = 5
    STARTUP = 6
    EXTINT = 7


# Register slots: the offset divided by 16, which is all QEMU decodes.
ID = 0x02
VERSION = 0x03
TPR = 0x08
APR = 0x09
PPR = 0x0A
EOI = 0x0B
LDR = 0x0D
DFR = 0x0E
SVR = 0x0F
ISR_BASE = 0x10          # 0x10-0x17: eight 32-bit words, vectors 0-31 first
TMR_BASE = 0x18
IRR_BASE = 0x20
ESR = 0x28
ICR_LOW = 0x30
ICR_HIGH = 0x31
LVT_BASE = 0x32          # 0x32-0x37: the six LVT entries, in the order below
TIMER_INITIAL = 0x38
TIMER_CURRENT = 0x39
TIMER_DIVIDE = 0x3E

LVT_TIMER, LVT_THERMAL, LVT_PERF, LVT_LINT0, LVT_LINT1, LVT_ERROR = range(6)
LVT_COUNT = 6

LVT_LEVEL = 1 << 15      # trigger mode, honoured for LINT0/LINT1 only
LVT_MASKED = 1 << 16
LVT_PERIODIC = 1 << 17
SVR_ENABLED = 1 << 8
ESR_ILLEGAL_ADDRESS = 1 << 7
APIC_VERSION = 0x14      # QEMU's "version" property; 0x1X is an integrated APIC, 0x0X the 82489DX
ICR_BROADCAST = 0xFF     # physical destination "every APIC"

# An interrupt message as this APIC receives it from the I/O APIC (deliver_message):
# ``mode`` packs bits 2:0 delivery mode, bit 3 logical destination, and bits 15:8 the
# redirection entry's reserved byte (bits 55:48), which QEMU folds into the MSI address.
MSG_LOGICAL = 1 << 3
MSG_RESERVED_SHIFT = 8
MSI_ADDR_LOGICAL = 1 << 2     # the MSI address bit that says "logical destination"

# Where SeaBIOS's smp_setup leaves the ICR: STARTUP to all but self, trampoline page
# 0x10 (BUILD_AP_BOOT_ADDR 0x10000 >> 12).
SEABIOS_ICR = 0x000C4610


def highest_bit(bits: int) -> int:
    """The highest set bit's number, or -1: QEMU's get_highest_priority_int on a 256-bit map."""
    return bits.bit_length() - 1


def divide_shift(divide_conf: int) -> int:
    """log2 of the timer's divisor: bits 3,1,0 of the divide register, 0b111 meaning 1."""
    value = (divide_conf & 3) | ((divide_conf >> 1) & 4)
    return (value + 1) & 7


def timer_deadline(now: int, load: int, count: int, shift: int,
                   periodic: bool) -> int | None:
    """QEMU's apic_next_timer: the virtual time of the next expiry after ``now``, or None."""
    ticks = (now - load) >> shift
    if periodic:
        if not count:
            return None
        ticks = (ticks // (count + 1) + 1) * (count + 1)
    else:
        if ticks >= count:
            return None
        ticks = count + 1
    return load + (ticks << shift)


def current_count(now: int, load: int, count: int, shift: int, periodic: bool) -> int:
    """QEMU's apic_get_current_count: what the counter shows at ``now``."""
    ticks = (now - load) >> shift
    if periodic:
        return count - ticks % (count + 1)
    return count - ticks if ticks < count else 0


class LocalApic:
    """One CPU's local APIC. ``on_change()`` is called whenever the answer of
    ``has_interrupt``, ``pic_intr`` or ``take_nmi`` may have changed; ``on_eoi(vector)``
    when the guest ends a level-triggered interrupt (for the I/O APIC's remote IRR)."""

    BASE = 0xFEE00000
    SIZE = 0x100000      # QEMU decodes a whole MiB: the page, its aliases, the MSI window

    def __init__(self, clock: VirtualClock, on_change: Callable[[], None] = lambda: None,
                 on_eoi: Callable[[int], None] = lambda vector: None,
                 apic_id: int = 0) -> None:
        self.clock = clock
        self.on_change = on_change
        self.on_eoi = on_eoi
        self.index = apic_id          # the slot QEMU files this APIC under (shorthands use it)
        self.id = apic_id
        self._lint_level = [False, False]
        self.init_reset()
        # QEMU's apic_reset_common: the boot CPU's LINT0 starts as ExtINT.
        self.lvt[LVT_LINT0] = DeliveryMode.EXTINT << 8
        self._seabios_handoff()

    def init_reset(self) -> None:
        """What INIT (and power-on) does to the registers: QEMU's apic_init_reset."""
        self.tpr = 0
        self.svr = 0xFF
        self.ldr = 0
        self.dfr_model = 0xF
        self.isr = 0
        self.tmr = 0
        self.irr = 0
        self.lvt = [LVT_MASKED] * LVT_COUNT
        self.esr = 0
        self.icr_low = 0
        self.icr_high = 0
        self.divide_conf = 0
        self.shift = 0
        self.initial_count = 0
        self.load_time = 0
        self._next_time: int | None = None
        self.clock.arm(self, None)
        self._nmi = False
        self._init = False

    def _seabios_handoff(self) -> None:
        """The registers SeaBIOS's smp_setup writes before it starts the kernel. Its INIT
        and STARTUP went to all-but-self, that is to nobody; only the ICR remembers them."""
        self.svr |= SVR_ENABLED
        self.lvt[LVT_LINT0] = LVT_LEVEL | DeliveryMode.EXTINT << 8     # 0x8700
        self.lvt[LVT_LINT1] = LVT_LEVEL | DeliveryMode.NMI << 8        # 0x8400
        self.icr_low = SEABIOS_ICR

    # -- the guest's view: MMIO ----------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        # Sub-dword reads return 0 in apic_mem_read; misaligned and 8-byte ones are
        # refused by QEMU's memory core (valid.max_access_size 4, not unaligned) and
        # read 0 too. None of them reaches the ESR logic.
        if size != 4 or offset % 4:
            return 0
        return self._read_register((offset >> 4) & 0xFF)

    def _read_register(self, index: int) -> int:
        if index == ID:
            return self.id << 24
        if index == VERSION:
            return APIC_VERSION | (LVT_COUNT - 1) << 16
        if index == TPR:
            return self.tpr
        if index in (APR, EOI):
            return 0
        if index == PPR:
            return self.ppr()
        if index == LDR:
            return self.ldr << 24
        if index == DFR:
            return self.dfr_model << 28 | 0x0FFFFFFF
        if index == SVR:
            return self.svr
        if ISR_BASE <= index < ISR_BASE + 8:
            return self._word(self.isr, index - ISR_BASE)
        if TMR_BASE <= index < TMR_BASE + 8:
            return self._word(self.tmr, index - TMR_BASE)
        if IRR_BASE <= index < IRR_BASE + 8:
            return self._word(self.irr, index - IRR_BASE)
        if index == ESR:
            return self.esr
        if index == ICR_LOW:
            return self.icr_low
        if index == ICR_HIGH:
            return self.icr_high
        if LVT_BASE <= index < LVT_BASE + LVT_COUNT:
            return self.lvt[index - LVT_BASE]
        if index == TIMER_INITIAL:
            return self.initial_count
        if index == TIMER_CURRENT:
            return current_count(self.clock.now, self.load_time, self.initial_count,
                                 self.shift, self._periodic())
        if index == TIMER_DIVIDE:
            return self.divide_conf
        self.esr |= ESR_ILLEGAL_ADDRESS
        return 0

    @staticmethod
    def _word(bits: int, n: int) -> int:
        return (bits >> (32 * n)) & 0xFFFFFFFF

    def write(self, offset: int, size: int, value: int) -> None:
        if size != 4 or offset % 4:
            return                  # as read(): dropped before any register logic
        value &= 0xFFFFFFFF
        index = (offset >> 4) & 0xFF
        if offset > 0xFFF or index == 0:
            self._msi(offset, value)
            return
        self._write_register(index, value)

    def _write_register(self, index: int, value: int) -> None:
        if index == ID:
            self.id = value >> 24
        elif index == TPR:
            self.tpr = value & 0xFF
            self._update_irq()
        elif index == EOI:
            self._eoi()
        elif index == LDR:
            self.ldr = value >> 24
        elif index == DFR:
            self.dfr_model = value >> 28
        elif index == SVR:
            self.svr = value & 0x1FF
            self._update_irq()
        elif index == ICR_LOW:
            self.icr_low = value
            self._send_ipi()
        elif index == ICR_HIGH:
            self.icr_high = value
        elif LVT_BASE <= index < LVT_BASE + LVT_COUNT:
            self._write_lvt(index - LVT_BASE, value)
        elif index == TIMER_INITIAL:
            self.initial_count = value
            self.load_time = self.clock.now
            self._rearm(self.load_time)
        elif index == TIMER_DIVIDE:
            self.divide_conf = value & 0xB
            self.shift = divide_shift(self.divide_conf)
        elif index in (VERSION, APR, PPR, ESR, TIMER_CURRENT) or ISR_BASE <= index < ESR:
            pass                    # read-only: QEMU ignores the write, ESR untouched
        else:
            self.esr |= ESR_ILLEGAL_ADDRESS

    def _write_lvt(self, n: int, value: int) -> None:
        self.lvt[n] = value
        if n == LVT_TIMER:
            self._rearm(self.clock.now)
        elif n == LVT_LINT0 and self._check_pic():
            self._update_irq()

    # -- priority ----------------------------------------------------------------

    def ppr(self) -> int:
        """Processor priority: TPR, or the class in service if that is higher."""
        in_service = max(highest_bit(self.isr), 0) >> 4
        if self.tpr >> 4 >= in_service:
            return self.tpr
        return in_service << 4

    def _pending(self) -> int:
        """QEMU's apic_irq_pending: the vector to take (> 0), 0 for none, -1 when the
        highest request is blocked by PPR."""
        if not self.svr & SVR_ENABLED:
            return 0
        vector = highest_bit(self.irr)
        if vector < 0:
            return 0
        ppr = self.ppr()
        if ppr and (vector & 0xF0) <= (ppr & 0xF0):
            return -1
        return vector

    def _update_irq(self) -> None:
        """Where QEMU calls apic_update_irq: the CPU must look again."""
        self.on_change()

    # -- the CPU's view ----------------------------------------------------------

    def has_interrupt(self) -> bool:
        """A fixed interrupt is deliverable now (IRR above PPR, APIC software-enabled)."""
        return self._pending() > 0

    def pic_intr(self) -> bool:
        """The 8259A's INTR reaches the core through LINT0 in ExtINT mode: the CPU should
        acknowledge, and take the PIC's vector when ``acknowledge`` returns None."""
        lint0 = self.lvt[LVT_LINT0]
        return (self._lint_level[0] and self.accepts_pic()
                and (lint0 >> 8) & 7 == DeliveryMode.EXTINT)

    def acknowledge(self) -> int | None:
        """The CPU's interrupt acknowledge (QEMU's apic_get_interrupt): the vector to
        deliver, moved from IRR to ISR; SVR's spurious vector if the request was blocked
        meanwhile; None if the APIC has nothing or the PIC goes first (then, if
        ``accepts_pic()``, the vector comes from the 8259A)."""
        if not self.svr & SVR_ENABLED:
            return None
        vector = self._pending()
        if vector == 0 or self._check_pic():
            return None
        if vector < 0:
            return self.svr & 0xFF
        self.irr &= ~(1 << vector)
        self.isr |= 1 << vector
        self._update_irq()
        return vector

    def accepts_pic(self) -> bool:
        """QEMU's apic_accept_pic_intr: the PIC's INTR is let in while LINT0 is unmasked
        (the APIC is never globally disabled here, see the header)."""
        return not self.lvt[LVT_LINT0] & LVT_MASKED

    def nmi_pending(self) -> bool:
        """An NMI waits to be taken (``take_nmi`` claims it)."""
        return self._nmi

    def take_nmi(self) -> bool:
        """An NMI is pending (ICR, MSI, or an LVT in NMI mode): clear it, return True."""
        pending, self._nmi = self._nmi, False
        return pending

    def take_init(self) -> bool:
        """An INIT reached this CPU (ICR to self, MSI, I/O APIC): clear it, return True.
        QEMU then resets the CPU (do_cpu_init) and calls ``init_reset``; the boot CPU
        restarts at the reset vector."""
        pending, self._init = self._init, False
        return pending

    def _eoi(self) -> None:
        vector = highest_bit(self.isr)
        if vector < 0:
            return
        self.isr &= ~(1 << vector)
        if self.tmr >> vector & 1:
            self.on_eoi(vector)
        self._update_irq()

    # -- messages in -------------------------------------------------------------

    def set_irq(self, vector: int, level_triggered: bool) -> None:
        """A fixed interrupt arrives (QEMU's apic_set_irq): IRR set, TMR follows the
        trigger mode of this latest message."""
        bit = 1 << vector
        self.irr |= bit
        if level_triggered:
            self.tmr |= bit
        else:
            self.tmr &= ~bit
        self._update_irq()

    def deliver_message(self, vector: int, level_triggered: bool, dest: int,
                        mode: int) -> None:
        """A message from the I/O APIC, ``mode`` packed as MSG_* says. QEMU's I/O APIC
        sends it as an MSI, a 32-bit store into this device's window; so does this one,
        which is why a redirection entry with reserved bits 55:48 set and destination 0
        lands on a register instead (QEMU does the same)."""
        reserved = (mode >> MSG_RESERVED_SHIFT) & 0xFF
        address = dest << 12 | reserved << 4 | (MSI_ADDR_LOGICAL if mode & MSG_LOGICAL else 0)
        data = vector | (mode & 7) << 8 | int(level_triggered) << 15
        self.write(address, 4, data)

    def _msi(self, address: int, data: int) -> None:
        """QEMU's apic_send_msi: destination and mode from the address, the rest from data."""
        dest = (address >> 12) & 0xFF
        logical = bool(address & MSI_ADDR_LOGICAL)
        self._bus_deliver(self._matches(dest, logical), (data >> 8) & 7, data & 0xFF,
                          bool(data >> 15 & 1))

    def _matches(self, dest: int, logical: bool) -> bool:
        """QEMU's apic_get_delivery_bitmask, for this one APIC."""
        if not logical:
            return dest == ICR_BROADCAST or dest == self.id
        if self.dfr_model == 0xF:                       # flat: one bit per APIC
            return bool(dest & self.ldr)
        if self.dfr_model == 0x0:                       # cluster: 4-bit cluster, 4 members
            return (dest & 0xF0) == (self.ldr & 0xF0) and bool(dest & self.ldr & 0x0F)
        return False

    def _send_ipi(self) -> None:
        """An ICR write (QEMU's apic_deliver)."""
        icr = self.icr_low
        shorthand = (icr >> 18) & 3
        if shorthand == 0:
            targeted = self._matches(self.icr_high >> 24, bool(icr >> 11 & 1))
        elif shorthand == 1:            # self: QEMU looks the slot up by the ID register
            targeted = self.id == self.index
        elif shorthand == 2:            # all including self
            targeted = True
        else:                           # all excluding self, by the same lookup
            targeted = self.id != self.index
        mode = (icr >> 8) & 7
        level_triggered = bool(icr >> 15 & 1)
        if mode == DeliveryMode.INIT and level_triggered and not icr >> 14 & 1:
            return                      # INIT level de-assert: only re-syncs arbitration IDs
        self._bus_deliver(targeted, mode, icr & 0xFF, level_triggered)

    def _bus_deliver(self, targeted: bool, mode: int, vector: int,
                     level_triggered: bool) -> None:
        """QEMU's apic_bus_deliver, for this one APIC."""
        if not targeted:
            return
        if mode in (DeliveryMode.FIXED, DeliveryMode.LOWEST_PRIORITY, DeliveryMode.EXTINT):
            self.set_irq(vector, level_triggered)
        elif mode == DeliveryMode.NMI:
            self._raise_nmi()
        elif mode == DeliveryMode.INIT:
            self._init = True
            self.on_change()
        # SMI: not modelled (see the header). STARTUP wakes only a CPU waiting for it,
        # which the boot CPU never is; mode 3 is dropped, as in QEMU.

    def _raise_nmi(self) -> None:
        self._nmi = True
        self.on_change()

    # -- the local sources: LINT pins and LVT entries ---------------------------

    def set_lint(self, pin: int, level: bool) -> None:
        """Drive LINT0 (the 8259A's INTR, QEMU's pic_irq_request) or LINT1 (NMI as the
        BIOS programs it; it acts on a rising edge, like QEMU's apic_deliver_nmi)."""
        rising = level and not self._lint_level[pin]
        self._lint_level[pin] = level
        if pin == 0:
            if self.accepts_pic():
                self._pic_level(level)
            self.on_change()
        elif rising:
            self._local_deliver(LVT_LINT1)

    def _pic_level(self, level: bool) -> None:
        """QEMU's apic_deliver_pic_intr."""
        if level:
            self._local_deliver(LVT_LINT0)
            return
        lvt = self.lvt[LVT_LINT0]
        mode = (lvt >> 8) & 7
        if mode == DeliveryMode.FIXED and lvt & LVT_LEVEL:
            self.irr &= ~(1 << (lvt & 0xFF))
            self._update_irq()
        elif mode == DeliveryMode.EXTINT:
            self._update_irq()

    def _check_pic(self) -> bool:
        """QEMU's apic_check_pic: if the PIC is asserting and let in, pass it through LINT0."""
        if not (self.accepts_pic() and self._lint_level[0]):
            return False
        self._pic_level(True)
        return True

    def _local_deliver(self, n: int) -> None:
        """QEMU's apic_local_deliver: raise what LVT entry ``n`` says."""
        lvt = self.lvt[n]
        if lvt & LVT_MASKED:
            return
        mode = (lvt >> 8) & 7
        if mode == DeliveryMode.NMI:
            self._raise_nmi()
        elif mode == DeliveryMode.EXTINT:
            self.on_change()        # the CPU is told to ask; the vector is the PIC's
        elif mode == DeliveryMode.FIXED:
            level = n in (LVT_LINT0, LVT_LINT1) and bool(lvt & LVT_LEVEL)
            self.set_irq(lvt & 0xFF, level)
        # SMI: not modelled; other modes raise nothing in QEMU either.

    # -- the timer ---------------------------------------------------------------

    def _periodic(self) -> bool:
        return bool(self.lvt[LVT_TIMER] & LVT_PERIODIC)

    def _rearm(self, now: int) -> None:
        """QEMU's apic_timer_update: a masked timer has no deadline."""
        if self.lvt[LVT_TIMER] & LVT_MASKED:
            self._next_time = None
        else:
            self._next_time = timer_deadline(now, self.load_time, self.initial_count,
                                             self.shift, self._periodic())
        self.clock.arm(self, self._next_time)

    def update(self) -> None:
        """The clock reached this APIC's deadline: QEMU's apic_timer — raise the LVT
        timer entry, then re-arm from the deadline just passed."""
        now = self.clock.now
        if self._next_time is None or now < self._next_time:
            return
        self._local_deliver(LVT_TIMER)
        self._rearm(self._next_time)
        if self._next_time is not None and self._next_time <= now:
            self._rearm(now)        # periods already overtaken coalesce (see header)
