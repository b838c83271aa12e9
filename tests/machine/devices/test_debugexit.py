"""isa-debug-exit: writes end the run with the value written, reads give 0."""
from hypervisor.machine.devices.bus import PortBus
from hypervisor.machine.devices.debugexit import DebugExit


def make():
    exits = []
    bus = PortBus()
    dev = DebugExit(exits.append)
    bus.register(dev, dev.ports, width=4)
    return bus, dev, exits


def test_dword_write_reports_the_value_unshifted():
    bus, dev, exits = make()
    bus.write(0xF4, 4, 0x10)
    assert exits == [0x10]


def test_byte_write_at_any_of_its_ports_exits():
    bus, dev, exits = make()
    bus.write(0xF7, 1, 3)
    assert exits == [3]


def test_reads_return_zero_like_qemu():
    bus, _, exits = make()
    assert bus.read(0xF4, 4) == 0
    assert bus.read(0xF5, 1) == 0
    assert exits == []
