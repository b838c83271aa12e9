"""The CPU's interrupt pins as the PC wires them: the local APIC first, the PIC through LINT0."""
from __future__ import annotations

from hypervisor.machine.clock import VirtualClock
from hypervisor.machine.devices.ioapic import IoApic
from hypervisor.machine.devices.lapic import LocalApic
from hypervisor.machine.devices.pic import PicPair
from hypervisor.machine.devices.pit import Pit8254
from hypervisor.machine.irqs import InterruptRouter

SVR, TPR, LVT_LINT0, ICR = 0xF0, 0x80, 0x350, 0x300


def machine():
    clock = VirtualClock()
    pic = PicPair()
    lapic = LocalApic(clock)
    ioapic = IoApic(lapic.deliver_message, clock, extint_vector=pic.acknowledge)
    lapic.on_eoi = ioapic.eoi
    pit = Pit8254(clock, irq=lambda level: (pic.set_irq(0, level), ioapic.set_irq(0, level)))
    for port, value in ((0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01), (0x21, 0xFE)):
        pic.write(port, 1, value)
    return pic, lapic, ioapic, InterruptRouter(pic, lapic, ioapic, pit)


def test_the_pic_reaches_the_cpu_through_lint0_in_virtual_wire_mode():
    pic, lapic, _, router = machine()
    assert not router.has_interrupt()
    pic.set_irq(0, True)
    assert router.has_interrupt()
    assert router.acknowledge() == 0x20


def test_a_masked_lint0_keeps_the_pic_out():
    pic, lapic, _, router = machine()
    lapic.write(LVT_LINT0, 4, 0x10700)              # ExtINT, masked
    pic.set_irq(0, True)
    assert not router.has_interrupt()
    assert router.acknowledge() is None


def test_an_extint_from_the_pic_goes_before_the_apics_own_vectors():
    """QEMU's apic_get_interrupt lets the 8259 go first: ExtINT ignores the APIC's priorities."""
    pic, lapic, _, router = machine()
    lapic.write(SVR, 4, 0x1FF)
    pic.set_irq(0, True)
    lapic.write(ICR, 4, 0x40040)                    # fixed, vector 0x40, to self
    assert router.acknowledge() == 0x20
    assert router.acknowledge() == 0x40
    assert router.acknowledge() is None


def test_a_self_nmi_is_pending_until_taken_whatever_the_maskable_state():
    _, lapic, _, router = machine()
    lapic.write(SVR, 4, 0x1FF)
    lapic.write(ICR, 4, 0x44400)                    # NMI, to self
    assert router.nmi_pending() and not router.has_interrupt()
    assert router.take_nmi() and not router.nmi_pending()


def test_a_halted_cpu_can_be_woken_only_by_a_timer_whose_interrupt_can_arrive():
    pic, lapic, ioapic, router = machine()
    router.pit.write(0x43, 1, 0x34)
    router.pit.write(0x40, 1, 0x00)
    router.pit.write(0x40, 1, 0x10)
    assert router.timers_could_wake()               # PIT -> PIC IRQ0 unmasked -> LINT0
    pic.write(0x21, 1, 0xFF)
    assert not router.timers_could_wake()           # masked at the PIC, the I/O APIC entry masked too
    ioapic.write(0x00, 4, 0x14)
    ioapic.write(0x10, 4, 0x31)                     # I/O APIC input 2 (ISA IRQ 0) unmasked
    assert router.timers_could_wake()


def test_a_pc_without_an_apic_is_the_pic_alone():
    pic = PicPair()
    for port, value in ((0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01), (0x21, 0xFE)):
        pic.write(port, 1, value)
    router = InterruptRouter(pic)
    pic.set_irq(0, True)
    assert router.has_interrupt() and router.acknowledge() == 0x20
    assert not router.nmi_pending()
