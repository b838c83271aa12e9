"""Port 0x80: the POST-code port, and the PC's traditional "wait a moment" port.

Firmware writes progress codes here for a diagnostic card to show on two
seven-segment digits; kernels write junk here (Linux's ``outb_p``/``io_delay``)
because an ISA cycle to this port takes about a microsecond and nothing on the
motherboard cares. So the device only needs to swallow writes. It remembers the
last one, which makes it a cheap debugging aid ("how far did the guest get?").

QEMU 7.2 (hw/i386/pc.c, ``ioport80_io_ops``) decodes the single port 0x80 with
byte-wide access, ignores writes and reads 0xff. A wider access covers 0x81..0x83,
which QEMU gives to the DMA page registers; hvsim has no DMA controller, so there the
bus floats and reads 0xff too (a guest that reads back DMA page registers would see
the difference).
"""

POST_PORT = 0x80


class PostCodePort:
    """A write-only sink at port 0x80 that keeps the last byte written in ``last``."""

    def __init__(self, port: int = POST_PORT) -> None:
        self.port = port
        self.last: int | None = None
        self.writes = 0

    @property
    def ports(self) -> range:
        return range(self.port, self.port + 1)

    def read(self, port: int, size: int) -> int:
        return 0xFF

    def write(self, port: int, size: int, value: int) -> None:
        self.last = value & 0xFF
        self.writes += 1
