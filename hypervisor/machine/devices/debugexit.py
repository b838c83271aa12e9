"""isa-debug-exit: the port a test guest writes to say "I am done, and here is how it went".

Real PCs have no such device; QEMU added it (``-device isa-debug-exit,iobase=0xf4,
iosize=4``) so that a kernel under test can stop the emulator and hand back a status
without a shutdown sequence. hvsim's guests use it for the same reason and the same
image must behave identically under both, so the device sits at the same ports with
the same access rules.

One deliberate difference: QEMU 7.2's ``debug_exit_write`` calls ``exit((val << 1) | 1)``
— the shift keeps a guest from faking QEMU's own exit statuses 0 and 1, and means the
process status only carries the low 7 bits of V. hvsim reports V itself as the
guest's ``exit_code``; the machine decides what to do with it via ``on_exit``.

Reads return 0, exactly as QEMU's ``debug_exit_read`` does (a guest can use that to
tell the device from floating ports, which read all-ones).
"""
from typing import Callable

DEBUG_EXIT_BASE = 0xF4
DEBUG_EXIT_SIZE = 4


class DebugExit:
    """Any write of V to ``base``..``base+size-1``, of any width, calls ``on_exit(V)``."""

    def __init__(self, on_exit: Callable[[int], None],
                 base: int = DEBUG_EXIT_BASE, size: int = DEBUG_EXIT_SIZE) -> None:
        self.on_exit = on_exit
        self.base = base
        self.size = size
        self.last_value: int | None = None

    @property
    def ports(self) -> range:
        return range(self.base, self.base + self.size)

    def read(self, port: int, size: int) -> int:
        return 0

    def write(self, port: int, size: int, value: int) -> None:
        # QEMU passes the value as written, whatever the port offset or width.
        self.last_value = value
        self.on_exit(value)
