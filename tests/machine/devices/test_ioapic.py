"""The I/O APIC as QEMU 7.2 shows it: IOREGSEL/IOWIN and their access widths, ID/VER/ARB,
index out of range, redirection entries and their read-only bits, edge and level pins,
masks, remote IRR and EOI (from the local APIC and through the EOI register), the EOI
storm delay, and the messages it sends to a LocalApic.

"probe" in a docstring means the fact was read from qemu-system-i386 7.2 by a multiboot
guest driving lines through pc-testdev's ports 0x2000+n, not only from the source.
"""
from hypothesis import given, strategies as st

from hypervisor.machine.clock import VirtualClock
from hypervisor.machine.devices.ioapic import EOI_STORM_COUNT, EOI_STORM_DELAY_NS, IoApic
from hypervisor.machine.devices.lapic import (
    MSG_LOGICAL, MSG_RESERVED_SHIFT, DeliveryMode, LocalApic)


class Messages(list):
    def __call__(self, vector, level_triggered, dest, mode):
        self.append((vector, level_triggered, dest, mode))


def make(**kw):
    sent = Messages()
    return IoApic(sent, **kw), sent


def reg(io, index):
    io.write(0x00, 4, index)
    return io.read(0x10, 4)


def set_reg(io, index, value):
    io.write(0x00, 4, index)
    io.write(0x10, 4, value)


def program(io, pin, low, high=0):
    set_reg(io, 0x11 + 2 * pin, high)
    set_reg(io, 0x10 + 2 * pin, low)


LEVEL_40 = 0x0000A040       # level, active low (ignored), fixed, physical, vector 0x40
EDGE_41 = 0x00000041
REMOTE_IRR = 0x4000


# -- registers ---------------------------------------------------------------------------

def test_reset_state_is_what_a_kernel_finds():
    """probe (read at the kernel's first instruction): IOREGSEL 0, ID 0, VER 0x00170020,
    ARB 0, every entry masked."""
    io, sent = make()
    assert io.read(0x00, 4) == 0
    assert reg(io, 0) == 0 and reg(io, 1) == 0x00170020 and reg(io, 2) == 0
    for pin in range(24):
        assert reg(io, 0x10 + 2 * pin) == 0x00010000 and reg(io, 0x11 + 2 * pin) == 0


def test_ioregsel_is_one_byte_at_any_width():
    """ioregsel is a uint8_t and the IOREGSEL case ignores size (probe: 0x1FF reads 0xFF,
    byte and word reads give it, a byte write at offset 1 is nothing)."""
    io, sent = make()
    io.write(0x00, 4, 0x1FF)
    assert io.read(0x00, 4) == io.read(0x00, 1) == io.read(0x00, 2) == 0xFF
    assert io.read(0x01, 1) == 0
    io.write(0x00, 1, 0x01)
    io.write(0x01, 1, 0x22)
    assert io.read(0x00, 4) == 0x01
    io.write(0x00, 2, 0x1234)
    assert io.read(0x00, 4) == 0x34


def test_iowin_acts_only_on_dword_accesses():
    """ioapic_mem_read/write: `if (size != 4) break;` (probe: byte and word reads of the
    version give 0, a word write to an entry is lost)."""
    io, sent = make()
    io.write(0x00, 4, 0x01)
    assert io.read(0x10, 4) == 0x00170020
    assert io.read(0x10, 1) == io.read(0x10, 2) == 0
    io.write(0x00, 4, 0x3E)
    io.write(0x10, 2, 0)
    assert io.read(0x10, 4) == 0x00010000


def test_only_the_low_byte_of_the_offset_is_decoded():
    """`addr &= 0xff;` (probe: 0xFEC00100 is IOREGSEL, 0xFEC00110 IOWIN; 0x04, 0x20, 0x40
    read 0)."""
    io, sent = make()
    io.write(0x00, 4, 0x01)
    assert io.read(0x100, 4) == 0x01 and io.read(0x110, 4) == 0x00170020
    assert io.read(0x04, 4) == io.read(0x20, 4) == io.read(0x40, 4) == 0
    io.write(0xF00, 4, 0x02)
    assert io.read(0x00, 4) == 0x02


def test_qword_accesses_split_into_two_dwords_and_misaligned_ones_are_refused():
    """QEMU's access_with_adjusted_size (impl max 4) splits low half first (probe: a movq
    read of IOREGSEL gives ioregsel:0, of IOWIN version:0; a movq write of 5:2 to IOREGSEL
    selects 2)."""
    io, sent = make()
    io.write(0x00, 4, 0x01)
    assert io.read(0x00, 8) == 0x01 and io.read(0x10, 8) == 0x00170020
    io.write(0x00, 8, 0x0000000500000002)
    assert io.read(0x00, 4) == 0x02
    assert io.read(0x02, 4) == 0 and io.read(0x11, 2) == 0
    io.write(0x01, 2, 0x03)
    assert io.read(0x00, 4) == 0x02


def test_id_keeps_four_bits_arb_mirrors_it_and_ver_arb_ignore_writes():
    """ioapic_mem_read returns `s->id << IOAPIC_ID_SHIFT` for ID and ARB alike (probe)."""
    io, sent = make()
    set_reg(io, 0, 0xFFFFFFFF)
    assert reg(io, 0) == 0x0F000000 and reg(io, 2) == 0x0F000000
    set_reg(io, 0, 0x0A000000)
    assert reg(io, 0) == 0x0A000000
    set_reg(io, 1, 0)
    set_reg(io, 2, 0xFFFFFFFF)
    assert reg(io, 1) == 0x00170020 and reg(io, 2) == 0x0A000000


def test_register_index_out_of_range_reads_zero_and_ignores_writes():
    """index = (ioregsel - 0x10) >> 1 must be in 0..23 (probe: 3, 0xF, 0x40, 0xFF read 0;
    0x3F is pin 23's high half)."""
    io, sent = make()
    for index in (0x03, 0x0F, 0x40, 0xFF):
        set_reg(io, index, 0xFFFFFFFF)
        assert reg(io, index) == 0
    set_reg(io, 0x3F, 0x12345678)
    assert reg(io, 0x3F) == 0x12345678
    assert all(reg(io, 0x10 + 2 * pin) == 0x00010000 for pin in range(24))


def test_entries_store_every_bit_but_remote_irr_and_delivery_status():
    """IOAPIC_RO_BITS are restored after a write (probe: 0xFFFFFFFF reads 0xFFFFAFFF;
    the high half keeps all 32 bits)."""
    io, sent = make()
    set_reg(io, 0x3F, 0xFFFFFFFF)
    set_reg(io, 0x3E, 0xFFFFFFFF)
    assert reg(io, 0x3E) == 0xFFFFAFFF and reg(io, 0x3F) == 0xFFFFFFFF
    assert sent == []                         # masked: nothing sent


# -- pins, remote IRR and EOI -----------------------------------------------------------------

def test_level_pin_sends_once_then_waits_for_eoi():
    """probe: the message goes out and remote IRR is set (0xE040); an EOI while the line
    is still high sends it again; an EOI after the line dropped clears remote IRR only."""
    io, sent = make()
    program(io, 10, LEVEL_40)
    io.set_irq(10, True)
    assert sent == [(0x40, True, 0, DeliveryMode.FIXED)]
    assert reg(io, 0x24) == LEVEL_40 | REMOTE_IRR
    io.set_irq(10, True)
    assert len(sent) == 1                     # remote IRR holds it back
    io.eoi(0x40)
    assert len(sent) == 2 and reg(io, 0x24) == LEVEL_40 | REMOTE_IRR
    io.set_irq(10, False)
    io.eoi(0x40)
    assert len(sent) == 2 and reg(io, 0x24) == LEVEL_40


def test_eoi_of_another_vector_or_an_edge_entry_changes_nothing():
    io, sent = make()
    program(io, 10, LEVEL_40)
    io.set_irq(10, True)
    io.eoi(0x41)
    io.eoi(0x140)
    assert reg(io, 0x24) & REMOTE_IRR and len(sent) == 1


def test_eoi_register_at_0x40_takes_dword_writes_only():
    """ioapic_mem_write IOAPIC_EOI: `if (size != 4 || s->version != 0x20) break;` (probe:
    a dword write of 0x40 re-sends the still-high line; a word write does nothing)."""
    io, sent = make()
    program(io, 10, LEVEL_40)
    io.set_irq(10, True)
    io.set_irq(10, False)
    io.write(0x40, 2, 0x40)
    assert reg(io, 0x24) & REMOTE_IRR
    io.write(0x40, 4, 0x40)
    assert reg(io, 0x24) == LEVEL_40


def test_rewriting_an_entry_as_edge_clears_remote_irr():
    """ioapic_fix_edge_remote_irr, for Linux's EOI-by-retrigger (probe: 0xE040 rewritten
    as 0x10040 reads 0x10040)."""
    io, sent = make()
    program(io, 10, LEVEL_40)
    io.set_irq(10, True)
    set_reg(io, 0x24, 0x00010040)
    assert reg(io, 0x24) == 0x00010040


def test_a_masked_level_pin_is_sent_when_unmasked():
    """probe: asserted while masked, nothing; unmasking sends it (entry write services)."""
    io, sent = make()
    program(io, 10, LEVEL_40 | 0x10000)
    io.set_irq(10, True)
    assert sent == [] and reg(io, 0x24) == LEVEL_40 | 0x10000
    set_reg(io, 0x24, LEVEL_40)
    assert len(sent) == 1 and reg(io, 0x24) == LEVEL_40 | REMOTE_IRR


def test_an_edge_on_a_masked_pin_is_lost():
    """ioapic_set_irq: "we must ignore edge requests if the input pin is masked" (probe)."""
    io, sent = make()
    program(io, 10, EDGE_41 | 0x10000)
    io.set_irq(10, True)
    io.set_irq(10, False)
    set_reg(io, 0x24, EDGE_41)
    assert sent == []
    io.set_irq(10, True)
    assert sent == [(0x41, False, 0, DeliveryMode.FIXED)]


def test_every_assertion_of_an_edge_pin_sends():
    """QEMU latches on level=1, not on a transition; the local APIC's IRR coalesces."""
    io, sent = make()
    program(io, 10, EDGE_41)
    io.set_irq(10, True)
    io.set_irq(10, True)
    assert len(sent) == 2
    io.set_irq(10, False)
    assert len(sent) == 2 and reg(io, 0x24) == EDGE_41


def test_input_0_is_pin_2_and_inputs_past_23_go_nowhere():
    """ioapic_set_irq: `if (vector == 0) vector = 2;` — ISA IRQ 0 is GSI 2 (probe: the
    PIT's IRQ 0 raised pin 2's vector)."""
    io, sent = make()
    program(io, 2, 0x50)
    program(io, 0, 0x51)
    io.set_irq(0, True)
    assert sent == [(0x50, False, 0, DeliveryMode.FIXED)]
    io.set_irq(24, True)
    io.set_irq(255, True)
    assert len(sent) == 1
    assert not io.masked(0) and not io.masked(2) and io.masked(3) and io.masked(24)


def test_message_carries_destination_mode_and_reserved_byte():
    io, sent = make()
    program(io, 5, 0x00000C33, 0x07AB0000)   # NMI, logical; destination 7, reserved 0xAB
    io.set_irq(5, True)
    vector, level, dest, mode = sent[0]
    assert (vector, level, dest) == (0x33, False, 0x07)
    assert mode == DeliveryMode.NMI | MSG_LOGICAL | 0xAB << MSG_RESERVED_SHIFT


def test_extint_entries_take_the_vector_from_the_pic_even_when_masked():
    """ioapic_entry_parse calls pic_read_irq before ioapic_service tests the mask."""
    acks = []

    def pic_ack():
        acks.append(1)
        return 0x08

    io, sent = make(extint_vector=pic_ack)
    program(io, 3, 0x00008700 | 0x10000)        # ExtINT, level, masked
    io.set_irq(3, True)
    assert acks == [1] and sent == []
    set_reg(io, 0x16, 0x00008700)
    assert sent[-1] == (0x08, True, 0, DeliveryMode.EXTINT)


def test_an_eoi_storm_delays_the_resend_by_10_ms():
    """ioapic_eoi_broadcast: after SUCCESSIVE_IRQ_MAX_COUNT immediate re-sends the next
    one waits NANOSECONDS_PER_SECOND / 100 on the virtual clock (probe: a guest EOIing a
    line held high saw 9999 immediate re-sends, and none after the 10000th EOI)."""
    clock = VirtualClock()
    io, sent = make(clock=clock)
    program(io, 10, LEVEL_40)
    io.set_irq(10, True)
    for _ in range(EOI_STORM_COUNT - 1):
        io.eoi(0x40)
    assert len(sent) == EOI_STORM_COUNT and clock.deadline(io) is None
    io.eoi(0x40)
    assert len(sent) == EOI_STORM_COUNT and clock.deadline(io) == EOI_STORM_DELAY_NS
    io.update()
    assert len(sent) == EOI_STORM_COUNT     # not yet
    clock.advance_to(EOI_STORM_DELAY_NS)
    io.update()
    assert len(sent) == EOI_STORM_COUNT + 1 and clock.deadline(io) is None


def test_reprogramming_an_entry_resets_the_storm_count():
    clock = VirtualClock()
    io, sent = make(clock=clock)
    program(io, 10, LEVEL_40)
    io.set_irq(10, True)
    for _ in range(EOI_STORM_COUNT - 1):
        io.eoi(0x40)
    set_reg(io, 0x24, LEVEL_40)
    io.eoi(0x40)
    assert clock.deadline(io) is None


# -- with the local APIC ----------------------------------------------------------------------

def wired():
    clock = VirtualClock()
    apic = LocalApic(clock)
    io = IoApic(apic.deliver_message, clock=clock)
    apic.on_eoi = io.eoi
    return clock, apic, io


def test_level_interrupt_round_trip_through_the_local_apic():
    """probe: vector 0x40 in IRR and TMR; taken; EOI with the line high brings it back."""
    clock, apic, io = wired()
    program(io, 10, LEVEL_40)
    io.set_irq(10, True)
    assert apic.acknowledge() == 0x40
    apic.write(0xB0, 4, 0)
    assert apic.acknowledge() == 0x40
    io.set_irq(10, False)
    apic.write(0xB0, 4, 0)
    assert reg(io, 0x24) == LEVEL_40 and not apic.has_interrupt()


def test_logical_and_physical_destinations_and_nmi_through_the_local_apic():
    """probe: physical destination 1 reaches nobody; logical 1 with LDR 1 arrives; an NMI
    entry raises an NMI."""
    clock, apic, io = wired()
    program(io, 10, EDGE_41, 0x01000000)
    io.set_irq(10, True)
    assert not apic.has_interrupt()
    apic.write(0xD0, 4, 0x01000000)
    set_reg(io, 0x24, EDGE_41 | 0x800)
    io.set_irq(10, True)
    assert apic.acknowledge() == 0x41
    program(io, 10, 0x441)
    io.set_irq(10, True)
    assert apic.take_nmi()


def test_reserved_entry_bits_with_destination_0_write_a_local_apic_register():
    """probe: entry 0x00080000:00000025 asserted set TPR to 0x25."""
    clock, apic, io = wired()
    program(io, 10, 0x25, 0x00080000)
    io.set_irq(10, True)
    assert apic.read(0x80, 4) == 0x25


@given(st.lists(st.tuples(st.sampled_from(["read", "write", "irq", "eoi"]),
                          st.integers(0, 0xFFF), st.sampled_from([1, 2, 4, 8]),
                          st.integers(0, 2**64 - 1)), max_size=60))
def test_any_sequence_gives_an_answer_and_never_an_exception(ops):
    clock, apic, io = wired()
    for op, offset, size, value in ops:
        if op == "read":
            assert 0 <= io.read(offset, size) < 1 << (8 * size)
        elif op == "write":
            io.write(offset, size, value & ((1 << (8 * size)) - 1))
        elif op == "irq":
            io.set_irq(offset % 32, bool(value & 1))
        else:
            io.eoi(value & 0xFF)
