"""The cascaded 8259As: initialisation, masking, fixed priority, EOI, the slave
behind IRQ2, auto-EOI, spurious IRQ7, and never a masked vector."""
from hypothesis import given, strategies as st

from hypervisor.machine.devices.pic import PicPair


def init(pic, master_base=0x20, slave_base=0x28, icw4=0x01, mask=0x00, slave_mask=0x00):
    """The sequence every PC kernel sends (Linux's init_8259A, xv6's picinit)."""
    for port, base, icw3 in ((0x20, master_base, 0x04), (0xA0, slave_base, 0x02)):
        pic.write(port, 1, 0x11)          # ICW1: edge, cascade, ICW4 follows
        pic.write(port + 1, 1, base)      # ICW2: vector base
        pic.write(port + 1, 1, icw3)      # ICW3: slave on IRQ2 / slave id 2
        pic.write(port + 1, 1, icw4)      # ICW4: 8086 mode (+ AEOI if 0x03)
    pic.write(0x21, 1, mask)
    pic.write(0xA1, 1, slave_mask)
    return pic


def eoi(pic, irq):
    if irq >= 8:
        pic.write(0xA0, 1, 0x20)
    pic.write(0x20, 1, 0x20)


def test_init_sequence_sets_vector_base_and_clears_mask():
    pic = init(PicPair(), mask=0xFB)
    assert pic.read(0x21, 1) == 0xFB
    assert pic.master.irq_base == 0x20 and pic.slave.irq_base == 0x28
    pic.raise_irq(1)
    assert not pic.has_interrupt()        # masked
    pic.write(0x21, 1, 0x00)
    assert pic.has_interrupt()            # still latched in IRR
    assert pic.acknowledge() == 0x21


def test_edge_latches_irr_until_acknowledged_even_if_line_drops():
    pic = init(PicPair())
    pic.raise_irq(3)
    pic.lower_irq(3)
    assert pic.read(0x20, 1) == 0x08      # OCW3 default: read IRR
    assert pic.acknowledge() == 0x23
    pic.write(0x20, 1, 0x0B)              # OCW3: read ISR
    assert pic.read(0x20, 1) == 0x08
    assert pic.read(0x20, 1) == 0x08
    pic.write(0x20, 1, 0x0A)              # back to IRR
    assert pic.read(0x20, 1) == 0x00


def test_holding_a_line_high_gives_one_request_not_many():
    pic = init(PicPair())
    pic.raise_irq(4)
    pic.acknowledge()
    eoi(pic, 4)
    pic.raise_irq(4)                      # no new edge
    assert not pic.has_interrupt()


def test_lower_irq_number_wins_and_blocks_lower_priority_until_eoi():
    pic = init(PicPair())
    pic.raise_irq(5)
    pic.raise_irq(1)
    assert pic.acknowledge() == 0x21
    assert not pic.has_interrupt()        # IRQ5 waits behind in-service IRQ1
    eoi(pic, 1)
    assert pic.has_interrupt()
    assert pic.acknowledge() == 0x25


def test_higher_priority_request_nests_over_in_service_one():
    pic = init(PicPair())
    pic.raise_irq(5)
    assert pic.acknowledge() == 0x25
    pic.raise_irq(0)
    assert pic.has_interrupt()
    assert pic.acknowledge() == 0x20
    eoi(pic, 0)                           # non-specific EOI clears the highest: IRQ0
    assert pic.master.isr == 1 << 5


def test_specific_eoi_clears_the_named_level():
    pic = init(PicPair())
    pic.raise_irq(6)
    pic.acknowledge()
    pic.write(0x20, 1, 0x60 | 6)
    assert pic.master.isr == 0


def test_slave_irq_arrives_through_irq2_with_slave_vector():
    pic = init(PicPair())
    pic.raise_irq(12)
    assert pic.has_interrupt()
    assert pic.acknowledge() == 0x28 + 4
    assert pic.slave.isr == 1 << 4 and pic.master.isr == 1 << 2
    pic.raise_irq(9)                      # blocked: master's IRQ2 still in service
    assert not pic.has_interrupt()
    eoi(pic, 12)
    assert pic.acknowledge() == 0x29


def test_masking_irq2_hides_the_whole_slave():
    pic = init(PicPair(), mask=0x04)
    pic.raise_irq(14)
    assert not pic.has_interrupt()


def test_auto_eoi_leaves_nothing_in_service():
    pic = init(PicPair(), icw4=0x03)
    pic.raise_irq(3)
    assert pic.acknowledge() == 0x23
    assert pic.master.isr == 0
    pic.raise_irq(7)
    assert pic.acknowledge() == 0x27


def test_acknowledge_with_nothing_pending_is_spurious_irq7_without_isr():
    pic = init(PicPair())
    assert pic.acknowledge() == 0x27
    assert pic.master.isr == 0


def test_slave_request_withdrawn_before_ack_is_spurious_irq15():
    pic = init(PicPair(), slave_mask=0x00)
    pic.raise_irq(10)
    pic.write(0xA1, 1, 0xFF)              # masked after master latched IRQ2
    assert pic.acknowledge() == 0x2F
    assert pic.slave.isr == 0


def test_poll_command_reads_and_acknowledges_highest_request():
    pic = init(PicPair())
    pic.raise_irq(6)
    pic.write(0x20, 1, 0x0C)              # OCW3 poll
    assert pic.read(0x20, 1) == 0x86
    assert pic.master.isr == 1 << 6
    pic.write(0x20, 1, 0x0C)
    eoi(pic, 6)
    assert pic.read(0x20, 1) == 0x00


def test_elcr_makes_a_line_level_triggered():
    pic = init(PicPair())
    pic.elcr.write(0x4D1, 1, 0xFF)
    assert pic.elcr.read(0x4D1, 1) == 0xDE   # IRQ 8 and 13 are wired edge-only
    pic.raise_irq(9)
    pic.lower_irq(9)
    assert pic.slave.irr == 0             # level gone: request gone


@given(mask=st.integers(0, 0xFF), slave_mask=st.integers(0, 0xFF),
       events=st.lists(st.tuples(st.integers(0, 15), st.booleans()), max_size=40))
def test_pic_never_delivers_a_masked_irq(mask, slave_mask, events):
    pic = init(PicPair(), mask=mask, slave_mask=slave_mask)
    for irq, level in events:
        pic.set_irq(irq, level)
        while pic.has_interrupt():
            vector = pic.acknowledge()
            if 0x20 <= vector < 0x28:
                irq_seen = vector - 0x20
                assert irq_seen != 2 and not mask & (1 << irq_seen)
            else:
                irq_seen = vector - 0x28 + 8
                assert not mask & 0x04
                assert not slave_mask & (1 << (irq_seen - 8)) or irq_seen == 15
            eoi(pic, irq_seen)


# -- could_interrupt: may a halted CPU sleep on this line? -----------------------------------
def pic_state(pic):
    return [(c.irr, c.isr, c.imr, c.intr, c.last_irr) for c in (pic.master, pic.slave)]


def test_could_interrupt_is_false_for_a_masked_line_and_true_for_an_unmasked_one():
    pic = init(PicPair(), mask=0xFE)
    assert pic.could_interrupt(0)
    assert not pic.could_interrupt(1)
    pic.write(0x21, 1, 0xFF)
    assert not pic.could_interrupt(0)


def test_could_interrupt_for_a_slave_line_goes_through_the_cascade():
    pic = init(PicPair(), mask=0xFB, slave_mask=0xFD)    # master: only IRQ2; slave: only IRQ9
    assert pic.could_interrupt(9)
    assert not pic.could_interrupt(10)                   # masked on the slave
    pic.write(0x21, 1, 0xFF)
    assert not pic.could_interrupt(9)                    # the cascade itself masked
    pic.write(0x21, 1, 0x00)
    pic.write(0xA1, 1, 0xFF)
    assert not pic.could_interrupt(9)                    # every slave line masked, IRQ2 open


def test_could_interrupt_is_blocked_by_an_in_service_irq_of_higher_or_equal_priority():
    pic = init(PicPair())
    pic.pulse_irq(1)
    assert pic.acknowledge() == 0x21                     # IRQ1 in service, no EOI yet
    assert pic.could_interrupt(0)                        # more urgent: nests
    assert not pic.could_interrupt(1)
    assert not pic.could_interrupt(3)
    assert not pic.could_interrupt(9)                    # behind IRQ2, less urgent than IRQ1
    eoi(pic, 1)
    assert pic.could_interrupt(3) and pic.could_interrupt(9)


def test_could_interrupt_for_a_slave_line_is_blocked_while_the_cascade_is_in_service():
    pic = init(PicPair())
    pic.pulse_irq(12)
    assert pic.acknowledge() == 0x2C                     # IRQ12: master IRQ2 and slave IRQ4 in service
    assert not pic.could_interrupt(10)
    assert pic.could_interrupt(0)
    eoi(pic, 12)
    assert pic.could_interrupt(10)


def test_could_interrupt_changes_nothing():
    pic = init(PicPair(), mask=0xFA, slave_mask=0xF0)
    pic.pulse_irq(1)
    pic.acknowledge()
    before = pic_state(pic)
    for irq in range(16):
        pic.could_interrupt(irq)
    assert pic_state(pic) == before


@given(mask=st.integers(0, 0xFF), slave_mask=st.integers(0, 0xFF),
       in_service=st.lists(st.integers(0, 15), max_size=4), irq=st.integers(0, 15))
def test_could_interrupt_says_whether_a_request_on_the_line_would_raise_intr(mask, slave_mask, in_service, irq):
    import copy
    pic = init(PicPair())
    for line in in_service:               # put some requests in service, no EOI
        pic.pulse_irq(line)
        if pic.has_interrupt():
            pic.acknowledge()
    while pic.has_interrupt():            # nothing left pending: only the new request counts
        pic.acknowledge()
    pic.write(0x21, 1, mask)
    pic.write(0xA1, 1, slave_mask)
    if pic.has_interrupt() or pic.master.irr or pic.slave.irr:
        return
    trial = copy.deepcopy(pic)
    trial.pulse_irq(irq)
    assert pic.could_interrupt(irq) == trial.has_interrupt()
