"""The PC's port-I/O devices, and the one place that wires them together.

A guest sees the same little PC under every technique: a 16550 UART on COM1 as its
console, QEMU's isa-debug-exit at 0xf4 to end the run, the POST port at 0x80, the
cascaded 8259A PICs and the 8254 PIT (with port 0x61 for channel 2's gate) on the
virtual clock; and, as QEMU's ``pc`` machine has them, the ACPI PM timer at 0x608,
the fw_cfg device at 0x510/0x514, and QEMU's pc-testdev (ports 0xe0-0xeb and
0x2000-0x2017; its iomem window is for the MMIO bus). Each device module describes
one chip and knows nothing of virtualization; ``bus`` routes IN/OUT to them;
``standard_pc_devices`` builds the set and connects the interrupt wires the way the
motherboard does (PIT OUT0 to IRQ0, COM1 to IRQ4, the slave PIC to the master's IRQ2,
pc-testdev's lines to the ISA IRQs).
"""
from dataclasses import dataclass
from typing import Callable

from hypervisor.machine.clock import VirtualClock
from hypervisor.machine.devices.bus import PortBus
from hypervisor.machine.devices.debugexit import DebugExit
from hypervisor.machine.devices.fwcfg import DmaMemory, FwCfg, pc_items
from hypervisor.machine.devices.pic import PicPair
from hypervisor.machine.devices.pit import PIT_IRQ, Pit8254, Port61
from hypervisor.machine.devices.pmtimer import AcpiPmTimer
from hypervisor.machine.devices.postcode import PostCodePort
from hypervisor.machine.devices.testdev import PcTestDev
from hypervisor.machine.devices.uart import COM1_IRQ, Uart16550

__all__ = [
    "PcDevices", "standard_pc_devices", "PortBus", "Uart16550", "DebugExit",
    "PostCodePort", "PicPair", "Pit8254", "Port61", "AcpiPmTimer", "FwCfg", "PcTestDev",
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
    pm_timer: AcpiPmTimer
    testdev: PcTestDev
    fwcfg: FwCfg | None         # None for a chip set built without RAM behind it


def standard_pc_devices(bus: PortBus, clock: VirtualClock,
                        tx: Callable[[int], None],
                        on_exit: Callable[[int], None],
                        memory: DmaMemory | None = None,
                        isa_irq: Callable[[int, int], None] | None = None,
                        pic: PicPair | None = None) -> PcDevices:
    """Build COM1, debug-exit, the POST port, the PIC pair, the PIT and port 0x61, the
    PM timer, pc-testdev and fw_cfg, connect their interrupt lines, and register their
    ports on ``bus``.

    ``tx(byte)`` gets every byte the guest writes to COM1; ``on_exit(value)`` is
    called when the guest writes to isa-debug-exit. ``memory`` is the guest's RAM
    (its ``size`` is what fw_cfg reports, and fw_cfg DMA reads and writes it); without
    it there is no fw_cfg. ``isa_irq(line, level)`` is where the ISA interrupt lines (COM1,
    the PIT, pc-testdev's) go: the PIC's inputs unless the machine routes them further (to
    an I/O APIC too), in which case it passes the ``pic`` it routes to.
    """
    pic = pic or PicPair()
    isa_irq = isa_irq or pic.set_irq
    uart = Uart16550(tx, irq=lambda level: isa_irq(COM1_IRQ, level))
    pit = Pit8254(clock, irq=lambda level: isa_irq(PIT_IRQ, level))
    debug_exit = DebugExit(on_exit)
    post = PostCodePort()
    port61 = Port61(pit)
    pm_timer = AcpiPmTimer(clock)
    testdev = PcTestDev(isa_irq)
    fwcfg = FwCfg(pc_items(memory.size), memory) if memory is not None else None

    bus.register(uart, uart.ports)
    bus.register(pic, pic.ports)
    bus.register(pic.elcr, pic.elcr.ports)
    bus.register(pit, pit.ports)
    bus.register(port61, port61.ports)
    bus.register(post, post.ports)
    # isa-debug-exit implements 1-, 2- and 4-byte accesses itself (QEMU's
    # debug_exit_ops has no byte-only .impl), so an outl reaches it whole.
    bus.register(debug_exit, debug_exit.ports, width=4)
    # These apply QEMU's rules for each size and alignment themselves (a misaligned access,
    # or one running past their last port, is refused), so the bus hands them every access
    # whole, as QEMU hands a port access to the device of its first port.
    bus.register(pm_timer, pm_timer.ports, width=4, whole=True)
    for ports in (testdev.latch_ports, testdev.flush_ports, testdev.latch_byte_ports, testdev.irq_ports):
        bus.register(testdev, ports, width=4, whole=True)
    if fwcfg is not None:
        bus.register(fwcfg, fwcfg.ports, width=4, whole=True)
        bus.register(fwcfg, fwcfg.dma_ports, width=4, whole=True)
    return PcDevices(uart=uart, pic=pic, pit=pit, debug_exit=debug_exit,
                     post=post, port61=port61, pm_timer=pm_timer, testdev=testdev,
                     fwcfg=fwcfg)
