"""The ISA I/O port bus: how an IN or OUT instruction finds the device behind a port.

x86 has a second, 64 KiB address space next to memory, reached only by IN/OUT (and
their string forms). On a PC each chip decodes a handful of those addresses: the
PIC at 0x20/0xa0, the PIT at 0x40, COM1 at 0x3f8. Nothing answers at the rest; the
data lines float high, so a read of an unassigned port returns all-ones (QEMU's
``unassigned_io_ops`` does the same) and a write simply goes nowhere.

Most of those chips sit on the 8-bit half of the ISA bus. When the CPU does a 16- or
32-bit access to a byte-wide chip, the bus cycle is split into byte cycles at
consecutive ports, low byte first. QEMU models this with ``impl.max_access_size =
1`` (the 16550, 8259, 8254 and port 0x80 all declare it): an ``inw 0x3f8`` becomes a
read of 0x3f8 and one of 0x3f9 glued together little-endian. The bus does the same
splitting here, so devices only ever see accesses no wider than they implement.

Every IN/OUT of the guest passes through ``read``/``write``, so the lookup is a list
index by port number, and the common case (the access fits the device) does no
allocation and no loop.
"""
from typing import Iterable, Protocol

PORT_SPACE = 0x10000

_ONES = (0, 0xFF, 0xFFFF, 0xFFFFFF, 0xFFFFFFFF)


class PortDevice(Protocol):
    """What a chip on the bus implements; ``port`` is the absolute port number."""

    def read(self, port: int, size: int) -> int: ...

    def write(self, port: int, size: int, value: int) -> None: ...


class PortBus:
    """The 64 KiB I/O port space, decoded port by port."""

    def __init__(self) -> None:
        self._device: list[PortDevice | None] = [None] * PORT_SPACE
        # How many bytes starting at this port one access may hand the device in a
        # single call: its data-bus width, cut short where its port range ends.
        # 0 for an unassigned port.
        self._span: list[int] = [0] * PORT_SPACE

    def register(self, device: PortDevice, ports: Iterable[int], width: int = 1, whole: bool = False) -> None:
        """Let ``device`` decode ``ports``; ``width`` is the widest access it implements
        (1 for the ISA byte-wide chips, 4 for isa-debug-exit). ``whole``: every access that
        starts at one of its ports goes to it as the CPU made it, even one running past its
        last port; the device applies QEMU's size and alignment rules itself (fw_cfg and
        pc-testdev refuse what their ``.valid`` does not accept, rather than being split)."""
        if width not in (1, 2, 4):
            raise ValueError(f"access width must be 1, 2 or 4, not {width}")
        ports = sorted(set(ports))
        for port in ports:
            if not 0 <= port < PORT_SPACE:
                raise ValueError(f"port {port:#x} outside the I/O space")
            if self._device[port] is not None:
                raise ValueError(f"port {port:#x} already decoded by {self._device[port]!r}")
        owned = set(ports)
        for port in ports:
            self._device[port] = device
            run = 1
            while run < width and (whole or (port + run) in owned):
                run += 1
            self._span[port] = run

    def device_at(self, port: int) -> PortDevice | None:
        """The device decoding ``port``, or None where the bus floats."""
        return self._device[port & 0xFFFF]

    def read(self, port: int, size: int) -> int:
        """An IN of ``size`` bytes (1, 2 or 4) from ``port``."""
        port &= 0xFFFF
        if size <= self._span[port]:
            return self._device[port].read(port, size)
        if size == 1:
            return 0xFF
        return self._read_split(port, size)

    def write(self, port: int, size: int, value: int) -> None:
        """An OUT of ``size`` bytes (1, 2 or 4) to ``port``; unassigned ports ignore it."""
        port &= 0xFFFF
        if size <= self._span[port]:
            self._device[port].write(port, size, value & _ONES[size])
        elif size != 1:
            self._write_split(port, size, value)

    # A wide access to a byte-wide chip (or one that runs off the end of a device):
    # byte cycles at consecutive ports, low byte first, as QEMU's memory core does.
    def _read_split(self, port: int, size: int) -> int:
        value = 0
        for i in range(size):
            p = (port + i) & 0xFFFF
            byte = self._device[p].read(p, 1) & 0xFF if self._span[p] else 0xFF
            value |= byte << (8 * i)
        return value

    def _write_split(self, port: int, size: int, value: int) -> None:
        for i in range(size):
            p = (port + i) & 0xFFFF
            if self._span[p]:
                self._device[p].write(p, 1, (value >> (8 * i)) & 0xFF)
