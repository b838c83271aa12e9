"""The ACPI power-management timer: a free-running 24-bit counter at 3.579545 MHz.

ACPI gives every PC one clock that a kernel can trust without calibrating it: the PM
timer, ticking at the NTSC colour-burst frequency (the PIT's input clock times three)
whatever the CPU's speed or power state. It cannot be stopped, set or programmed; the
only thing to do with it is read it, and the FADT says where (``PM_TMR_BLK``). Linux
uses it to calibrate the TSC and the local APIC timer; kvm-unit-tests' vmexit test
times port I/O with it.

On QEMU's ``pc`` machine it lives in the PIIX4 power-management function, whose I/O
block SeaBIOS places at 0x600 (QEMU's ``info mtree``: ``acpi-evt`` 0x600, ``acpi-cnt``
0x604, ``acpi-tmr`` 0x608-0x60b). As QEMU 7.2 does (hw/acpi/core.c,
``acpi_pm_tmr_get``), nothing ticks here: the count is computed from virtual time,

    count = (now_ns * 3579545 // 10**9) mod 2**24

floored as QEMU's ``muldiv64``, so the same instruction reads the same count in every
run.

What an access gets is QEMU's memory core applied to ``acpi_pm_tmr_ops`` (valid sizes 1
to 4, aligned; the device always produces all 32 bits): an aligned read of N bytes
returns the low N bytes of the count, *whatever the offset* — ``inb 0x609`` gives the
count's low byte, not its second byte — and a misaligned read (``inw 0x609``, ``inl
0x60a``) is refused and reads 0. QEMU hands a port access whole to the device of its
first port, so ``inl 0x60a`` reaches this device as one 4-byte read, and ``read`` answers
it so. Writes are ignored. Measured on qemu-system-i386 7.2 by probe guests (guests/acpi.S
reads ``inw 0x609``, guests/portedges.S ``inl 0x60a`` and ``inw 0x60b``).

Not modelled: the timer-overflow status bit (TMR_STS in PM1 status) and the SCI it
raises when TMR_EN is set. The PM1 event and control registers at 0x600-0x605 are not
part of this device, and hvsim does not decode them.
"""
from hypervisor.machine.clock import NS_PER_SECOND, VirtualClock

PM_IO_BASE = 0x600              # the PIIX4 PM I/O block, as SeaBIOS programs it
PM1A_EVT_BLK = PM_IO_BASE       # PM1 status/enable (in the FADT; not decoded by hvsim)
PM1A_CNT_BLK = PM_IO_BASE + 4   # PM1 control (in the FADT; not decoded by hvsim)
PM_TMR_BLK = PM_IO_BASE + 8
PM_TMR_LEN = 4
PM_TIMER_HZ = 3_579_545
PM_TIMER_MASK = 0xFFFFFF        # 24 bits: FADT flag TMR_VAL_EXT is clear

_ONES = (0, 0xFF, 0xFFFF, 0xFFFFFF, 0xFFFFFFFF)


def pm_timer_count(now_ns: int) -> int:
    """The PM timer's 24-bit count at virtual time ``now_ns``."""
    return now_ns * PM_TIMER_HZ // NS_PER_SECOND & PM_TIMER_MASK


class AcpiPmTimer:
    """The read-only counter at ``PM_TMR_BLK`` (0x608-0x60b), driven by ``clock``."""

    def __init__(self, clock: VirtualClock, base: int = PM_TMR_BLK) -> None:
        self.clock = clock
        self.base = base

    @property
    def ports(self) -> range:
        return range(self.base, self.base + PM_TMR_LEN)

    def read(self, port: int, size: int) -> int:
        if (port - self.base) % size:
            return 0                    # QEMU's memory core refuses a misaligned access
        return pm_timer_count(self.clock.now) & _ONES[size]

    def write(self, port: int, size: int, value: int) -> None:
        """The counter cannot be written (QEMU's ``acpi_pm_tmr_write`` does nothing)."""
