"""The I/O port bus: dispatch by port, floating (all-ones) unassigned ports, and
byte splitting of wide accesses to byte-wide chips."""
import pytest

from hypervisor.machine.devices.bus import PortBus


class Recorder:
    """A byte-wide (or wider) device that logs accesses and reads back port & 0xff."""

    def __init__(self):
        self.log = []

    def read(self, port, size):
        self.log.append(("r", port, size))
        return port & 0xFF

    def write(self, port, size, value):
        self.log.append(("w", port, size, value))


@pytest.mark.parametrize("size,ones", [(1, 0xFF), (2, 0xFFFF), (4, 0xFFFFFFFF)])
def test_unassigned_port_reads_all_ones_of_the_access_size(size, ones):
    assert PortBus().read(0x1234, size) == ones


def test_unassigned_port_write_is_ignored():
    PortBus().write(0x1234, 4, 0xDEADBEEF)


def test_byte_access_reaches_the_device_with_absolute_port():
    bus, dev = PortBus(), Recorder()
    bus.register(dev, range(0x3F8, 0x400))
    assert bus.read(0x3FB, 1) == 0xFB
    bus.write(0x3F9, 1, 0x1FF)
    assert dev.log == [("r", 0x3FB, 1), ("w", 0x3F9, 1, 0xFF)]


def test_word_access_to_byte_device_splits_into_consecutive_byte_accesses():
    bus, dev = PortBus(), Recorder()
    bus.register(dev, range(0x3F8, 0x400))
    assert bus.read(0x3F8, 2) == 0xF9F8
    bus.write(0x3FA, 4, 0x44332211)
    assert dev.log == [("r", 0x3F8, 1), ("r", 0x3F9, 1),
                       ("w", 0x3FA, 1, 0x11), ("w", 0x3FB, 1, 0x22),
                       ("w", 0x3FC, 1, 0x33), ("w", 0x3FD, 1, 0x44)]


def test_wide_access_running_off_a_device_floats_for_the_missing_bytes():
    bus, dev = PortBus(), Recorder()
    bus.register(dev, [0x80])
    assert bus.read(0x80, 2) == 0xFF80
    assert bus.read(0x7F, 2) == 0x80FF


def test_wide_device_gets_wide_access_whole():
    bus, dev = PortBus(), Recorder()
    bus.register(dev, range(0xF4, 0xF8), width=4)
    bus.write(0xF4, 4, 0x12345678)
    bus.write(0xF6, 2, 0xABCD)
    assert dev.log == [("w", 0xF4, 4, 0x12345678), ("w", 0xF6, 2, 0xABCD)]


def test_registering_a_port_twice_is_refused():
    bus = PortBus()
    bus.register(Recorder(), [0x60])
    with pytest.raises(ValueError):
        bus.register(Recorder(), [0x60, 0x64])
    assert bus.device_at(0x64) is None
