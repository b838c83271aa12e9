"""QEMU's pc-testdev: the device kvm-unit-tests use to poke at an emulator's corners.

No real PC has it. QEMU added it (``-device pc-testdev``, hw/misc/pc-testdev.c) so that
the x86 unit tests of KVM can check instruction emulation against something simpler
than a real chip: a scratch latch for port I/O, a window of plain storage for MMIO,
and wires to raise interrupt lines at will. It has five parts:

* ports 0xe0-0xe3, a 4-byte **latch**: an access of N bytes at port 0xe0+k reads or
  writes bytes k..k+N-1 of it. The emulator test bounces ``rep outsb``/``rep insb``
  through it.
* port 0xe4, **flush page**: QEMU takes a 32-bit guest-physical address and
  mprotect()s the host page behind it to make the host TLB forget it (eventinj uses it
  before each case). Nothing here caches host mappings, so the write is accepted and
  does nothing.
* ports 0xe8-0xeb, the same latch through a **byte-wide** window.
* ports 0x2000-0x2017, **IRQ lines**: a byte written to 0x2000+n sets ISA IRQ n to
  (value != 0), through ``set_irq(line, level)`` — the taskswitch2, init and ioapic
  tests use them to make an interrupt without a real device.
* 64 KiB of **iomem** at physical 0xff000000: plain storage behind the MMIO bus
  (QEMU's ``iomem_buf``; reads give what was written, zero at first). The emulator
  test runs nearly every instruction form against it. The machine's MMIO bus calls
  ``read_mem``/``write_mem`` with the offset inside the window.

Every part answers as QEMU 7.2's memory core makes it answer (measured with a probe
guest under ``qemu-system-i386 -device pc-testdev``): an access that is misaligned
for its size is refused — reads give 0, writes are dropped (``inw 0xe1`` reads 0, ``inw
0xe2`` reads bytes 2-3); the flush port accepts only 4-byte accesses and always reads
0; the IRQ ports accept only bytes and read 0. The CPU, not the device, splits a
misaligned *memory* access into aligned ones (QEMU's TCG and Unicorn alike: a dword
load at iomem+1 is two dword loads), so iomem sees a misaligned access only from a
caller that skipped that step, and then answers as QEMU's memory core would.

Where this departs from QEMU 7.2: a byte written to 0x2010-0x2017 (lines 16-23, past
the 16 ISA IRQs) trips an assertion in QEMU's ``isa_get_irq`` and kills the emulator;
here it is ignored, since a hostile guest must never take the VMM down.
"""
from typing import Callable

LATCH_PORT = 0xE0
FLUSH_PORT = 0xE4
LATCH_BYTE_PORT = 0xE8
IRQ_PORT = 0x2000
IRQ_PORTS = 24                  # QEMU's region is 24 bytes wide...
ISA_IRQS = 16                   # ...but the ISA bus has only 16 lines
IOMEM_BASE = 0xFF000000
IOMEM_SIZE = 0x10000

_ONES = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF, 8: 0xFFFFFFFFFFFFFFFF}


def _aligned(offset: int, size: int) -> bool:
    """QEMU's memory core lets an access of a power-of-two size through only when aligned."""
    return size in _ONES and offset % size == 0


class PcTestDev:
    """pc-testdev's ports and its iomem window; ``set_irq(line, level)`` drives ISA IRQs."""

    latch_ports = range(LATCH_PORT, LATCH_PORT + 4)
    flush_ports = range(FLUSH_PORT, FLUSH_PORT + 4)
    latch_byte_ports = range(LATCH_BYTE_PORT, LATCH_BYTE_PORT + 4)
    irq_ports = range(IRQ_PORT, IRQ_PORT + IRQ_PORTS)

    def __init__(self, set_irq: Callable[[int, int], None]) -> None:
        self.set_irq = set_irq
        self.latch = 0
        self.iomem = bytearray(IOMEM_SIZE)
        self.flushes = 0

    # -- port I/O --------------------------------------------------------------------------
    def read(self, port: int, size: int) -> int:
        if port in self.latch_ports or port in self.latch_byte_ports:
            return self._latch_read(port & 3, size)
        return 0                        # the flush and IRQ ports read 0 (or refuse: also 0)

    def write(self, port: int, size: int, value: int) -> None:
        if port in self.latch_ports or port in self.latch_byte_ports:
            self._latch_write(port & 3, size, value)
        elif port == FLUSH_PORT and size == 4:
            self.flushes += 1           # QEMU drops the host mapping; we have none to drop
        elif port in self.irq_ports and size == 1:
            line = port - IRQ_PORT
            if line < ISA_IRQS:
                self.set_irq(line, 1 if value else 0)

    def _latch_read(self, offset: int, size: int) -> int:
        if not _aligned(offset, size):
            return 0
        return self.latch >> (8 * offset) & _ONES[size]

    def _latch_write(self, offset: int, size: int, value: int) -> None:
        if not _aligned(offset, size):
            return
        mask = _ONES[size] << (8 * offset)
        self.latch = self.latch & ~mask | (value << (8 * offset)) & mask

    # -- the iomem window (called by the MMIO bus) --------------------------------------------
    def read_mem(self, offset: int, size: int) -> int:
        """A load of ``size`` bytes (1, 2, 4 or 8) at ``offset`` inside the 64 KiB window."""
        if not _aligned(offset, size) or offset + size > IOMEM_SIZE:
            return 0
        return int.from_bytes(self.iomem[offset:offset + size], "little")

    def write_mem(self, offset: int, size: int, value: int) -> None:
        """A store of ``size`` bytes (1, 2, 4 or 8) at ``offset`` inside the window."""
        if not _aligned(offset, size) or offset + size > IOMEM_SIZE:
            return
        self.iomem[offset:offset + size] = (value & _ONES[size]).to_bytes(size, "little")
