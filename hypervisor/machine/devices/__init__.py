"""The PC's port-I/O devices, and the one place that wires them together.

A guest sees the same little PC under every technique: a 16550 UART on COM1 as its
console, QEMU's isa-debug-exit at 0xf4 to end the run, the POST port at 0x80, the
cascaded 8259A PICs and the 8254 PIT (with port 0x61 for channel 2's gate) on the
virtual clock. Each device module describes one chip and knows nothing of
virtualization; ``bus`` routes IN/OUT to them; ``standard_pc_devices`` builds the
set and connects the interrupt wires the way the motherboard does (PIT OUT0 to IRQ0,
COM1 to IRQ4, the slave PIC to the master's IRQ2).
"""
from dataclasses import dataclass
from typing import Callable

from hypervisor.machine.clock import VirtualClock
from hypervisor.machine.devices.bus import PortBus
from hypervisor.machine.devices.debugexit import DebugExit
from hypervisor.machine.devices.pic import PicPair
from hypervisor.machine.devices.pit import PIT_IRQ, Pit8254, Port61
from hypervisor.machine.devices.postcode import PostCodePort
from hypervisor.machine.devices.uart import COM1_IRQ, Uart16550

__all__ = [
    "PcDevices", "standard_pc_devices", "PortBus", "Uart16550", "DebugExit",
    "PostCodePort", "PicPair", "Pit8254", "Port61",
]


@dataclass
class PcDevices:
    """The chips of the standard PC, once wired to a bus."""

    uart: Uart16550
    pic: PicPair
    pit: Pit8254
    debug_exit: DebugExit
    post: PostCodePort
    port61: Port61


def standard_pc_devices(bus: PortBus, clock: VirtualClock,
                        tx: Callable[[int], None],
                        on_exit: Callable[[int], None]) -> PcDevices:
    """Build COM1, debug-exit, the POST port, the PIC pair, the PIT and port 0x61,
    connect their interrupt lines, and register their ports on ``bus``.

    ``tx(byte)`` gets every byte the guest writes to COM1; ``on_exit(value)`` is
    called when the guest writes to isa-debug-exit.
    """
    pic = PicPair()
    uart = Uart16550(tx, irq=lambda level: pic.set_irq(COM1_IRQ, level))
    pit = Pit8254(clock, irq=lambda level: pic.set_irq(PIT_IRQ, level))
    debug_exit = DebugExit(on_exit)
    post = PostCodePort()
    port61 = Port61(pit)

    bus.register(uart, uart.ports)
    bus.register(pic, pic.ports)
    bus.register(pic.elcr, pic.elcr.ports)
    bus.register(pit, pit.ports)
    bus.register(port61, port61.ports)
    bus.register(post, post.ports)
    # isa-debug-exit implements 1-, 2- and 4-byte accesses itself (QEMU's
    # debug_exit_ops has no byte-only .impl), so an outl reaches it whole.
    bus.register(debug_exit, debug_exit.ports, width=4)
    return PcDevices(uart=uart, pic=pic, pit=pit, debug_exit=debug_exit,
                     post=post, port61=port61)
