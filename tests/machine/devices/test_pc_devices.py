"""The standard PC wiring: every device at its QEMU port, PIT OUT0 on IRQ0, COM1
on IRQ4, and a bus fast enough for a port-I/O exit round trip."""

from hypervisor.machine.clock import VirtualClock
from hypervisor.machine.devices import PortBus, standard_pc_devices
from hypervisor.machine.devices.pit import ns_for_ticks


def make():
    bus, clock, console, exits = PortBus(), VirtualClock(), [], []
    devices = standard_pc_devices(bus, clock, console.append, exits.append)
    return bus, clock, devices, console, exits


def init_pic(bus):
    for port, base, icw3 in ((0x20, 0x20, 4), (0xA0, 0x28, 2)):
        for p, v in ((port, 0x11), (port + 1, base), (port + 1, icw3), (port + 1, 1)):
            bus.write(p, 1, v)


def test_devices_answer_at_their_standard_ports():
    bus, _, devices, console, exits = make()
    bus.write(0x3F8, 1, ord("!"))
    assert console == [ord("!")]
    assert bus.read(0x3FD, 1) == 0x60
    bus.write(0x80, 1, 0x42)
    assert devices.post.last == 0x42
    assert bus.read(0x21, 1) == 0x00 and bus.read(0xA1, 1) == 0x00
    assert bus.read(0x43, 1) == 0x00
    bus.write(0xF4, 4, 7)
    assert exits == [7]


def test_pit_channel0_interrupts_through_pic_irq0():
    bus, clock, devices, _, _ = make()
    init_pic(bus)
    bus.write(0x43, 1, 0x34)              # channel 0, lo/hi, mode 2
    bus.write(0x40, 1, 0x9C)
    bus.write(0x40, 1, 0x2E)              # 11932: 100 Hz
    assert not devices.pic.has_interrupt()
    clock.advance_to(devices.pit.next_event_ns())
    devices.pit.update()
    assert devices.pic.has_interrupt()
    assert devices.pic.acknowledge() == 0x20
    assert devices.pit.next_event_ns() == ns_for_ticks(2 * 11932)


def test_uart_thr_empty_interrupt_reaches_pic_irq4():
    bus, _, devices, _, _ = make()
    init_pic(bus)
    bus.write(0x3F9, 1, 0x02)
    assert devices.pic.acknowledge() == 0x24
