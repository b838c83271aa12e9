"""The memory-mapped device bus: how a load or store finds a device instead of RAM.

Port I/O has its own instructions; memory-mapped I/O has none. A device claims a range of
*physical* addresses, and any instruction that reads or writes memory there (a ``mov``, an
``add [mem], reg``, a ``rep movsd``, an ``xchg``, an SSE store) talks to the device
instead of to RAM. On the PC the local APIC sits at 0xFEE00000, the I/O APIC at
0xFEC00000, and QEMU's pc-testdev keeps a scratch window at 0xFF000000.

The CPU does the hard part. Each device range is mapped into Unicorn with ``mmio_map``, so
QEMU's own memory core performs the instruction, whatever its form, and calls us once per
bus access with the offset, the size and (for a store) the value: the same accesses, split
the same way, as on qemu-system-i386. What is left here is the bus itself:

* **Decoding.** ``register`` gives a device a page-aligned range; ``read``/``write`` find
  the device and hand it the offset inside its range.
* **Widths.** A device says how wide an access it implements (4 bytes for the APICs). A
  wider access (an x87 ``fild qword``) is split into accesses of that width, low address
  first, as QEMU's memory core splits it for the I/O APIC, or refused (reads 0, writes
  dropped), as QEMU refuses it for the local APIC, whose ops declare 4 bytes *valid*.
* **Where the monitor looks on.** The Unicorn callbacks go through ``handler``, which is
  the bus itself on a bare machine; a monitor puts itself there to count each access as
  an exit and trace it, then passes it on to the bus.

One limit of Unicorn: its MMIO callbacks run without the guest's EIP brought up to date
(it still names the start of the translated block), and the only way to make it restore
EIP, a memory hook over the range, sends every load and store of the guest, anywhere, down
the slow path (2.6x on the sieve). So with block counting an MMIO exit is placed at the
start of the block that made it (deterministic, and the trace says so); with ``count=``
(``HVSIM_COUNTING=count``) it is exact.
"""
from __future__ import annotations

from typing import Protocol

PAGE = 0x1000
_ONES = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF, 8: 0xFFFFFFFFFFFFFFFF}



class MmioDevice(Protocol):
    """What a memory-mapped device implements; ``offset`` is from the start of its range."""

    def read(self, offset: int, size: int) -> int: ...

    def write(self, offset: int, size: int, value: int) -> None: ...


class MmioHandler(Protocol):
    """Who the CPU's MMIO accesses reach first (the bus, or a monitor in front of it)."""

    def mmio_read(self, address: int, size: int) -> int: ...

    def mmio_write(self, address: int, size: int, value: int) -> None: ...


class MmioBus:
    """The physical ranges that devices decode, on one CPU."""

    def __init__(self, cpu) -> None:
        self.cpu = cpu
        self._ranges: list[tuple[int, int, MmioDevice, int, bool]] = []   # (base, size, device, width, refuse)
        self.handler: MmioHandler = self

    def register(self, device: MmioDevice, base: int, size: int, width: int = 4, wider: str = "split") -> None:
        """Let ``device`` decode [base, base + size), page-aligned; ``width`` is the widest
        access it implements (1, 2, 4 or 8). A wider access is ``"split"`` into accesses of
        that width (QEMU's ``impl.max_access_size``), or ``"refuse"``d: reads give 0 and
        writes are dropped (QEMU's ``valid.max_access_size``: the local APIC's is 4)."""
        if base % PAGE or size % PAGE or size <= 0:
            raise ValueError(f"MMIO range {base:#x}+{size:#x} is not whole pages")
        if width not in (1, 2, 4, 8):
            raise ValueError(f"access width must be 1, 2, 4 or 8, not {width}")
        if wider not in ("split", "refuse"):
            raise ValueError(f"wider accesses are split or refused, not {wider!r}")
        for other, other_size, *_ in self._ranges:
            if base < other + other_size and other < base + size:
                raise ValueError(f"MMIO range {base:#x}+{size:#x} overlaps {other:#x}+{other_size:#x}")
        self._ranges.append((base, size, device, width, wider == "refuse"))
        self.cpu.uc.mmio_map(base, size, self._on_read, base, self._on_write, base)

    def ranges(self) -> list[tuple[int, int]]:
        """(base, size) of every range a device decodes."""
        return [(base, size) for base, size, *_ in self._ranges]

    def device_at(self, address: int) -> tuple[MmioDevice, int, int, bool] | None:
        """(device, offset, width, refuses wider) for a physical address, or None where no
        device decodes it."""
        for base, size, device, width, refuse in self._ranges:
            if base <= address < base + size:
                return device, address - base, width, refuse
        return None

    # -- the Unicorn callbacks ------------------------------------------------------------
    def _on_read(self, uc, offset: int, size: int, base: int) -> int:
        return self.handler.mmio_read(base + offset, size)

    def _on_write(self, uc, offset: int, size: int, value: int, base: int) -> None:
        self.handler.mmio_write(base + offset, size, value)

    # -- the bus itself (MmioHandler) -----------------------------------------------------
    def mmio_read(self, address: int, size: int, whole: int = 0) -> int:
        """A load of ``size`` bytes at ``address``: the device's answer, wider loads split.
        ``whole``: the width of the instruction's access, where the CPU already split it (a
        device that refuses wider accesses refuses every part)."""
        found = self.device_at(address)
        if found is None:
            return _ONES.get(size, 0)
        device, offset, width, refuse = found
        if refuse and max(size, whole) > width:
            return 0
        if size <= width:
            return device.read(offset, size)
        value = 0
        for part in range(0, size, width):
            value |= (device.read(offset + part, width) & _ONES[width]) << (8 * part)
        return value

    def mmio_write(self, address: int, size: int, value: int, whole: int = 0) -> None:
        """A store of ``size`` bytes at ``address``; wider stores split, low part first
        (``whole`` as for ``mmio_read``)."""
        found = self.device_at(address)
        if found is None:
            return
        device, offset, width, refuse = found
        if refuse and max(size, whole) > width:
            return
        if size <= width:
            device.write(offset, size, value)
        else:
            for part in range(0, size, width):
                device.write(offset + part, width, (value >> (8 * part)) & _ONES[width])


class WindowDevice:
    """Adapts a device that offers ``read_mem``/``write_mem`` (pc-testdev's iomem) to the bus."""

    def __init__(self, device) -> None:
        self._device = device

    def read(self, offset: int, size: int) -> int:
        return self._device.read_mem(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        self._device.write_mem(offset, size, value)
