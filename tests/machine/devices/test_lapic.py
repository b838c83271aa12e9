"""The local APIC as QEMU 7.2 shows it to a guest: the state SeaBIOS hands over, QEMU's
access rules (sub-dword, misaligned, reserved, MSI window), raw register storage, IRR/ISR/
TMR and priority, EOI, ICR destinations and delivery modes, LINT0/LINT1, and the timer on
virtual time.

"probe" in a docstring means the fact was read from qemu-system-i386 7.2 by a multiboot
guest written for this purpose, not only from the source.
"""
from hypothesis import given, strategies as st

from hypervisor.machine.clock import VirtualClock
from hypervisor.machine.devices.lapic import (
    MSG_LOGICAL, MSG_RESERVED_SHIFT, DeliveryMode, LocalApic, current_count, divide_shift,
    timer_deadline)


class Recorder:
    def __init__(self):
        self.changes = 0
        self.eois = []

    def change(self):
        self.changes += 1


def make(apic_id=0):
    clock, seen = VirtualClock(), Recorder()
    apic = LocalApic(clock, on_change=seen.change, on_eoi=seen.eois.append, apic_id=apic_id)
    return clock, apic, seen


def rd(apic, offset):
    return apic.read(offset, 4)


def wr(apic, offset, value):
    apic.write(offset, 4, value)


def irr_bit(apic, vector):
    return rd(apic, 0x200 + (vector >> 5) * 0x10) >> (vector & 31) & 1


def tmr_bit(apic, vector):
    return rd(apic, 0x180 + (vector >> 5) * 0x10) >> (vector & 31) & 1


def self_ipi(apic, vector, level=False):
    wr(apic, 0x300, 0x40000 | (level << 15) | vector)


# -- the state a kernel finds ---------------------------------------------------------

def test_handoff_state_is_qemu_reset_plus_seabios_smp_setup():
    """probe (read at the kernel's first instruction): SeaBIOS set SVR bit 8,
    LINT0 ExtINT/level, LINT1 NMI/level, and its STARTUP broadcast is still in ICR."""
    clock, apic, seen = make()
    expected = {
        0x020: 0, 0x030: 0x00050014, 0x080: 0, 0x090: 0, 0x0A0: 0, 0x0B0: 0, 0x0D0: 0,
        0x0E0: 0xFFFFFFFF, 0x0F0: 0x1FF, 0x280: 0, 0x300: 0x000C4610, 0x310: 0,
        0x320: 0x10000, 0x330: 0x10000, 0x340: 0x10000, 0x350: 0x8700, 0x360: 0x8400,
        0x370: 0x10000, 0x380: 0, 0x390: 0, 0x3E0: 0,
    }
    for offset, value in expected.items():
        assert rd(apic, offset) == value, hex(offset)
    for n in range(8):
        assert rd(apic, 0x100 + 16 * n) == rd(apic, 0x180 + 16 * n) == rd(apic, 0x200 + 16 * n) == 0
    assert rd(apic, 0x280) == 0              # none of the above was an illegal address
    assert clock.deadline(apic) is None
    assert not apic.has_interrupt() and not apic.take_nmi()


def test_init_reset_is_qemus_apic_init_reset():
    clock, apic, seen = make()
    wr(apic, 0x080, 0x40)
    wr(apic, 0x0D0, 0x01000000)
    wr(apic, 0x320, 0x20030)
    wr(apic, 0x380, 1000)
    apic.init_reset()
    assert rd(apic, 0x0F0) == 0xFF and rd(apic, 0x080) == 0 and rd(apic, 0x0D0) == 0
    assert rd(apic, 0x0E0) == 0xFFFFFFFF and rd(apic, 0x300) == 0
    assert all(rd(apic, 0x320 + 16 * n) == 0x10000 for n in range(6))   # LINT0 too
    assert clock.deadline(apic) is None


# -- QEMU's access rules ----------------------------------------------------------------

def test_sub_dword_reads_are_zero_and_writes_vanish_without_esr():
    """apic_mem_read: `if (size < 4) return 0;`, apic_mem_write: `if (size < 4) return;`
    (probe: byte and word reads of the version give 0, byte/word TPR writes are lost)."""
    clock, apic, seen = make()
    assert apic.read(0x30, 1) == apic.read(0x30, 2) == apic.read(0x32, 1) == 0
    apic.write(0x80, 1, 0x55)
    apic.write(0x80, 2, 0x5555)
    assert rd(apic, 0x80) == 0
    apic.write(0x00, 2, 0x31)                # not an MSI either
    assert not irr_bit(apic, 0x31)
    assert rd(apic, 0x280) == 0


def test_misaligned_and_qword_accesses_are_refused_by_the_memory_core():
    """QEMU's apic_io_ops: valid.max_access_size 4 and no valid.unaligned, so
    memory_region_access_valid refuses these before apic_mem_read runs (probe: movq from
    0xFEE00030 reads 0, movq to TPR is lost)."""
    clock, apic, seen = make()
    assert apic.read(0x30, 8) == 0
    apic.write(0x80, 8, 0x33)
    assert apic.read(0x22, 4) == 0 and apic.read(0x31, 2) == 0
    apic.write(0x84 + 1, 4, 0x66)
    assert rd(apic, 0x80) == 0 and rd(apic, 0x280) == 0


def test_register_is_chosen_by_offset_bits_11_to_4_and_repeats_every_4k():
    """index = (addr >> 4) & 0xff (probe: 0xFEE00034 and 0xFEE0003C read the version,
    a write to 0x84 sets TPR, 0xFEE01030 reads the version)."""
    clock, apic, seen = make()
    assert rd(apic, 0x34) == rd(apic, 0x3C) == rd(apic, 0x1030) == 0x00050014
    wr(apic, 0x84, 0x44)
    assert rd(apic, 0x80) == 0x44


def test_reserved_registers_read_zero_and_set_esr_illegal_address_for_good():
    """apic_mem_read/write `default: s->esr |= APIC_ESR_ILLEGAL_ADDRESS;` and the ESR
    case of apic_mem_write is `break`, so nothing clears it (probe)."""
    clock, apic, seen = make()
    for offset in (0x000, 0x010, 0x040, 0x0C0, 0x290, 0x2F0, 0x3A0, 0x3F0, 0x400, 0xFF0):
        assert rd(apic, offset) == 0
        assert rd(apic, 0x280) == 0x80, hex(offset)
        apic.init_reset()
    wr(apic, 0x050, 1)
    assert rd(apic, 0x280) == 0x80
    wr(apic, 0x280, 0)
    assert rd(apic, 0x280) == 0x80


def test_writes_to_read_only_registers_are_ignored_without_esr():
    clock, apic, seen = make()
    for offset in (0x030, 0x090, 0x0A0, 0x100, 0x170, 0x180, 0x200, 0x270, 0x390):
        wr(apic, offset, 0xFFFFFFFF)
    assert rd(apic, 0x030) == 0x00050014 and rd(apic, 0x090) == 0 and rd(apic, 0x0A0) == 0
    assert rd(apic, 0x100) == rd(apic, 0x180) == rd(apic, 0x200) == 0
    assert rd(apic, 0x280) == 0


def test_registers_keep_what_qemu_keeps():
    """QEMU stores LVTs and both ICR halves whole, and truncates the rest to its field
    widths (probe: every value below)."""
    clock, apic, seen = make()
    writes = {
        0x020: (0xFFFFFFFF, 0xFF000000), 0x080: (0xFFFFFFFF, 0xFF),
        0x0D0: (0x12345678, 0x12000000), 0x0E0: (0x12345678, 0x1FFFFFFF),
        0x0F0: (0xFFFFFFFF, 0x1FF), 0x310: (0xFFFFFFFF, 0xFFFFFFFF),
        0x330: (0xFFFFFFFF, 0xFFFFFFFF), 0x340: (0x12345678, 0x12345678),
        0x370: (0xFFFFFFFF, 0xFFFFFFFF), 0x3E0: (0xFFFFFFFF, 0xB),
    }
    for offset, (value, reads) in writes.items():
        wr(apic, offset, value)
        assert rd(apic, offset) == reads, hex(offset)
    wr(apic, 0x0E0, 0)
    assert rd(apic, 0x0E0) == 0x0FFFFFFF


def test_icr_reads_back_as_written_delivery_status_included():
    """apic_mem_write: `s->icr[0] = val;` — bit 12 is never cleared or set by QEMU
    (probe: 0xC1300 and 0xC1612 read back unchanged). A guest that writes 0 there, as
    every real one does, sees the IPI "already sent"."""
    clock, apic, seen = make()
    wr(apic, 0x300, 0x000C1300)
    assert rd(apic, 0x300) == 0x000C1300
    wr(apic, 0x300, 0x000C4500)
    assert rd(apic, 0x300) & 0x1000 == 0


def test_svr_software_disable_blocks_delivery_but_not_the_lvts():
    """QEMU 7.2 does not mask LVTs when SVR bit 8 is cleared, and accepts LVT writes
    (probe: LINT0 still 0x8700, thermal written as 0x33 reads 0x33; an IPI sent while
    disabled stays in IRR and is taken once SVR is re-enabled)."""
    clock, apic, seen = make()
    wr(apic, 0x0F0, 0xFF)
    assert rd(apic, 0x350) == 0x8700 and rd(apic, 0x320) == 0x10000
    wr(apic, 0x330, 0x33)
    assert rd(apic, 0x330) == 0x33
    self_ipi(apic, 0x31)
    assert irr_bit(apic, 0x31) and not apic.has_interrupt()
    assert apic.acknowledge() is None
    changes = seen.changes
    wr(apic, 0x0F0, 0x1FF)
    assert seen.changes > changes and apic.has_interrupt()
    assert apic.acknowledge() == 0x31


# -- IRR, ISR, priority, EOI -------------------------------------------------------------

def test_self_ipi_goes_irr_to_isr_and_eoi_clears_it():
    """probe: ISR in the handler has bit 0x30; PPR reads 0x30 until the EOI."""
    clock, apic, seen = make()
    self_ipi(apic, 0x30)
    assert irr_bit(apic, 0x30) and apic.has_interrupt() and seen.changes
    assert apic.acknowledge() == 0x30
    assert not irr_bit(apic, 0x30) and rd(apic, 0x110) == 1 << 16
    assert rd(apic, 0x0A0) == 0x30 and not apic.has_interrupt()
    changes = seen.changes
    wr(apic, 0x0B0, 0)
    assert rd(apic, 0x110) == 0 and rd(apic, 0x0A0) == 0 and seen.changes > changes
    assert seen.eois == []                  # edge-triggered: nothing for the I/O APIC


def test_ppr_is_tpr_or_the_class_in_service():
    """apic_get_ppr: TPR whole (low nibble too) if its class is at least the ISR's
    (probe: TPR 0x25 gives PPR 0x25, TPR 0xFF gives 0xFF)."""
    clock, apic, seen = make()
    wr(apic, 0x080, 0x25)
    assert rd(apic, 0x0A0) == 0x25
    wr(apic, 0x080, 0)
    self_ipi(apic, 0x41)
    apic.acknowledge()
    wr(apic, 0x080, 0x35)
    assert rd(apic, 0x0A0) == 0x40
    wr(apic, 0x080, 0x45)
    assert rd(apic, 0x0A0) == 0x45


def test_a_request_must_be_in_a_higher_class_than_ppr():
    """probe: with 0x30 and 0x41 pending, only 0x41 is taken; 0x30 follows its EOI.
    TPR 0x30 blocks 0x31; TPR 0x2F lets it in (classes compare, not vectors)."""
    clock, apic, seen = make()
    self_ipi(apic, 0x30)
    self_ipi(apic, 0x41)
    assert apic.acknowledge() == 0x41
    assert not apic.has_interrupt()          # class 3 waits behind class 4 in service
    wr(apic, 0x0B0, 0)
    assert apic.acknowledge() == 0x30
    wr(apic, 0x0B0, 0)
    wr(apic, 0x080, 0x30)
    self_ipi(apic, 0x31)
    assert not apic.has_interrupt()
    changes = seen.changes
    wr(apic, 0x080, 0x2F)
    assert seen.changes > changes and apic.has_interrupt()


def test_eventinj_tpr_sequence():
    """kvm-unit-tests eventinj: TPR 0xF0, IPIs 32 and 62; TPR 0x20 lets only 62 in; TPR 0
    then lets 32 in."""
    clock, apic, seen = make()
    wr(apic, 0x080, 0xF0)
    self_ipi(apic, 32)
    self_ipi(apic, 62)
    assert not apic.has_interrupt()
    wr(apic, 0x080, 0x20)
    assert apic.acknowledge() == 62
    wr(apic, 0x0B0, 0)
    assert not apic.has_interrupt()
    wr(apic, 0x080, 0)
    assert apic.acknowledge() == 32


def test_acknowledge_of_a_blocked_request_gives_the_spurious_vector():
    """apic_get_interrupt: `else if (intno < 0) return s->spurious_vec & 0xff;`"""
    clock, apic, seen = make()
    assert apic.acknowledge() is None
    self_ipi(apic, 0x31)
    wr(apic, 0x080, 0x40)
    assert apic.acknowledge() == 0xFF
    assert irr_bit(apic, 0x31)               # still pending
    wr(apic, 0x0F0, 0x1F0)
    assert apic.acknowledge() == 0xF0


def test_low_vectors_are_accepted_and_vector_0_is_never_delivered():
    """QEMU checks no vector (probe: self-IPI vector 2 is in IRR, ESR stays 0, and it is
    delivered through IDT entry 2); apic_irq_pending returns irrv, and 0 means none."""
    clock, apic, seen = make()
    self_ipi(apic, 2)
    assert irr_bit(apic, 2) and rd(apic, 0x280) == 0
    assert apic.acknowledge() == 2
    wr(apic, 0x0B0, 0)
    self_ipi(apic, 0)
    assert irr_bit(apic, 0) and not apic.has_interrupt() and apic.acknowledge() is None


def test_level_triggered_eoi_reaches_the_io_apic_and_tmr_follows_the_last_message():
    """apic_eoi broadcasts when the TMR bit is set; apic_set_irq sets or clears TMR per
    message (probe: TMR still set after EOI, cleared by the next edge IPI)."""
    clock, apic, seen = make()
    self_ipi(apic, 0x30, level=True)
    assert tmr_bit(apic, 0x30)
    assert apic.acknowledge() == 0x30
    wr(apic, 0x0B0, 0)
    assert seen.eois == [0x30] and tmr_bit(apic, 0x30)
    self_ipi(apic, 0x30)
    assert not tmr_bit(apic, 0x30)


def test_eoi_ends_the_highest_vector_in_service_and_nothing_when_idle():
    clock, apic, seen = make()
    wr(apic, 0x0B0, 0)                        # nothing in service: no effect
    self_ipi(apic, 0x30)
    apic.acknowledge()
    self_ipi(apic, 0x50, level=True)
    apic.acknowledge()
    wr(apic, 0x0B0, 0)
    assert seen.eois == [0x50] and rd(apic, 0x110) == 1 << 16 and rd(apic, 0x120) == 0


# -- destinations ------------------------------------------------------------------------

def test_shorthands_find_this_apic_by_its_power_on_slot_not_the_id_register():
    """apic_deliver: shorthand self sets bit s->id of local_apics[] (probe: with ID 5,
    self reaches nobody, all-but-self reaches us, physical destination 5 reaches us)."""
    clock, apic, seen = make()
    wr(apic, 0x020, 0x05000000)
    wr(apic, 0x300, 0x40031)
    assert not irr_bit(apic, 0x31)
    wr(apic, 0x300, 0xC0031)
    assert irr_bit(apic, 0x31)
    wr(apic, 0x310, 0x05000000)
    wr(apic, 0x300, 0x00030)
    assert irr_bit(apic, 0x30)


def test_all_including_self_and_all_but_self():
    clock, apic, seen = make()
    wr(apic, 0x300, 0xC0031)
    assert not irr_bit(apic, 0x31)
    wr(apic, 0x300, 0x80031)
    assert irr_bit(apic, 0x31)


def test_physical_destination_is_the_id_or_broadcast():
    """probe: destinations 0 and 0xFF reach APIC 0, destination 1 does not."""
    for dest, hit in ((0x00, 1), (0xFF, 1), (0x01, 0)):
        clock, apic, seen = make()
        wr(apic, 0x310, dest << 24)
        wr(apic, 0x300, 0x31)
        assert irr_bit(apic, 0x31) == hit, dest


def test_logical_destination_flat_cluster_and_unknown_models():
    """apic_get_delivery_bitmask (probe: every row)."""
    cases = [
        (0xFFFFFFFF, 0x01, 0x01, 1), (0xFFFFFFFF, 0x01, 0x02, 0), (0xFFFFFFFF, 0x01, 0xFF, 1),
        (0x0FFFFFFF, 0x11, 0x11, 1), (0x0FFFFFFF, 0x11, 0x13, 1), (0x0FFFFFFF, 0x11, 0x12, 0),
        (0x0FFFFFFF, 0x11, 0x21, 0),
        (0x0FFFFFFF, 0x11, 0xFF, 0), (0x5FFFFFFF, 0x11, 0x11, 0),
    ]
    for dfr, ldr, dest, hit in cases:
        clock, apic, seen = make()
        wr(apic, 0x0E0, dfr)
        wr(apic, 0x0D0, ldr << 24)
        wr(apic, 0x310, dest << 24)
        wr(apic, 0x300, 0x831)
        assert irr_bit(apic, 0x31) == hit, (hex(dfr), ldr, dest)


# -- delivery modes -------------------------------------------------------------------

def test_icr_nmi_to_self_or_destination_0():
    """eventinj's NMI: ICR 0x4400, physical destination 0 (probe: taken with IF=0)."""
    clock, apic, seen = make()
    wr(apic, 0x300, 0x4400)
    assert apic.nmi_pending() and apic.nmi_pending()
    assert apic.take_nmi() and not apic.take_nmi() and not apic.nmi_pending()
    wr(apic, 0x300, 0x44400)
    assert apic.take_nmi()


def test_extint_and_lowest_priority_ipis_set_irr_reserved_smi_and_startup_do_not():
    """apic_bus_deliver: EXTINT breaks to the fixed path with the ICR's vector (probe:
    0x41 arrives); mode 3 and SMI set nothing (QEMU runs SMM, not modelled); STARTUP only
    wakes a CPU waiting for it."""
    for mode, hit in ((DeliveryMode.EXTINT, 1), (DeliveryMode.LOWEST_PRIORITY, 1), (3, 0),
                      (DeliveryMode.SMI, 0), (DeliveryMode.STARTUP, 0)):
        clock, apic, seen = make()
        wr(apic, 0x300, 0x40041 | mode << 8)
        assert irr_bit(apic, 0x41) == hit, mode
        assert not apic.take_nmi() and not apic.take_init()


def test_init_and_startup_to_the_absent_aps_are_ignored():
    """kvm-unit-tests' bringup_aps: ICR 0xC4500 then 0xC0600, spinning on bit 12."""
    clock, apic, seen = make()
    wr(apic, 0x310, 0)
    for icr in (0xC4500, 0xC0600):
        wr(apic, 0x300, icr)
        assert rd(apic, 0x300) == icr and not rd(apic, 0x300) & 0x1000
    assert not apic.take_init() and not apic.has_interrupt()


def test_init_to_self_is_reported_but_its_deassert_form_is_not():
    """apic_deliver: INIT with level 0 and trigger 1 only syncs arbitration IDs (probe:
    0x48500 to self leaves the CPU running); any other INIT resets the CPU in QEMU."""
    clock, apic, seen = make()
    wr(apic, 0x300, 0x48500)
    assert not apic.take_init()
    wr(apic, 0x300, 0x44500)
    assert apic.take_init() and not apic.take_init()


# -- the MSI window and the I/O APIC's messages ---------------------------------------

def test_a_dword_write_to_slot_0_is_an_msi():
    """apic_mem_write: `if (addr > 0xfff || !index)` → apic_send_msi (probe: 0x31 written
    at 0xFEE00000 and 0xFEE00008 arrives, at 0xFEE00004 — logical, destination 0 — it
    does not, 0x8031 arrives level-triggered, ESR stays 0)."""
    for offset, hit in ((0x0, 1), (0x4, 0), (0x8, 1)):
        clock, apic, seen = make()
        wr(apic, offset, 0x31)
        assert irr_bit(apic, 0x31) == hit, offset
    clock, apic, seen = make()
    wr(apic, 0x0, 0x8031)
    assert irr_bit(apic, 0x31) and tmr_bit(apic, 0x31) and rd(apic, 0x280) == 0
    wr(apic, 0x0, 0x0400)
    assert apic.take_nmi()


def test_writes_above_the_page_are_msis_to_the_destination_in_bits_19_to_12():
    """probe: a write at 0xFEE01080 (destination 1) neither sets TPR nor reaches APIC 0."""
    clock, apic, seen = make()
    wr(apic, 0x1080, 0x20)
    assert rd(apic, 0x80) == 0 and not irr_bit(apic, 0x20)
    wr(apic, 0x020, 0x01000000)
    wr(apic, 0x1000, 0x31)
    assert irr_bit(apic, 0x31)


def test_deliver_message_packs_destination_mode_and_trigger():
    clock, apic, seen = make()
    apic.deliver_message(0x40, True, 0, DeliveryMode.FIXED)
    assert irr_bit(apic, 0x40) and tmr_bit(apic, 0x40)
    apic.deliver_message(0x41, False, 1, DeliveryMode.FIXED)
    assert not irr_bit(apic, 0x41)
    wr(apic, 0x0D0, 0x01000000)
    apic.deliver_message(0x41, False, 1, DeliveryMode.FIXED | MSG_LOGICAL)
    assert irr_bit(apic, 0x41)
    apic.deliver_message(0x42, False, 0, DeliveryMode.NMI)
    assert apic.take_nmi() and not irr_bit(apic, 0x42)


def test_a_message_with_reserved_address_bits_and_destination_0_writes_a_register():
    """QEMU's I/O APIC folds redirection bits 55:48 into the MSI address (bits 11:4);
    with destination 0 the store lands on a register (probe: entry bits 55:48 = 0x08,
    vector 0x25, set TPR to 0x25)."""
    clock, apic, seen = make()
    apic.deliver_message(0x25, False, 0, 0x08 << MSG_RESERVED_SHIFT)
    assert rd(apic, 0x080) == 0x25 and not irr_bit(apic, 0x25)
    apic.deliver_message(0x26, False, 1, 0x08 << MSG_RESERVED_SHIFT)
    assert rd(apic, 0x080) == 0x25            # destination 1: an MSI to nobody


# -- LINT0 (the 8259A) and LINT1 (NMI) -----------------------------------------------------

def test_pic_passes_through_lint0_in_extint_mode_and_goes_first():
    """apic_get_interrupt: `if (intno == 0 || apic_check_pic(s)) return -1;` — with the
    PIC asserting, even a pending APIC vector waits; the CPU asks the 8259A."""
    clock, apic, seen = make()
    assert apic.accepts_pic() and not apic.pic_intr()
    changes = seen.changes
    apic.set_lint(0, True)
    assert apic.pic_intr() and seen.changes > changes
    self_ipi(apic, 0x31)
    assert apic.has_interrupt() and apic.acknowledge() is None and irr_bit(apic, 0x31)
    apic.set_lint(0, False)
    assert not apic.pic_intr() and apic.acknowledge() == 0x31


def test_masked_lint0_shuts_the_pic_out():
    clock, apic, seen = make()
    apic.set_lint(0, True)
    wr(apic, 0x350, 0x18700)
    assert not apic.accepts_pic() and not apic.pic_intr()
    wr(apic, 0x350, 0x8700)
    assert apic.pic_intr()


def test_lint0_in_fixed_mode_turns_the_pic_line_into_a_vector():
    """apic_local_deliver for LINT0 fixed/level; apic_deliver_pic_intr(0) clears the IRR
    bit again; an LVT write while the PIC asserts re-checks (apic_check_pic)."""
    clock, apic, seen = make()
    apic.set_lint(0, True)
    wr(apic, 0x350, 0x8033)
    assert irr_bit(apic, 0x33) and tmr_bit(apic, 0x33) and not apic.pic_intr()
    apic.set_lint(0, False)
    assert not irr_bit(apic, 0x33)


def test_lint1_raises_an_nmi_on_a_rising_edge_unless_masked():
    clock, apic, seen = make()
    apic.set_lint(1, True)
    assert apic.take_nmi()
    apic.set_lint(1, True)
    assert not apic.take_nmi()
    apic.set_lint(1, False)
    wr(apic, 0x360, 0x18400)
    apic.set_lint(1, True)
    assert not apic.take_nmi()


# -- the timer -------------------------------------------------------------------------

def test_divide_register_to_shift():
    """apic_mem_write 0x3e: v = (dc & 3) | ((dc >> 1) & 4); count_shift = (v + 1) & 7."""
    table = {0b0000: 1, 0b0001: 2, 0b0010: 3, 0b0011: 4, 0b1000: 5, 0b1001: 6,
             0b1010: 7, 0b1011: 0}
    for conf, shift in table.items():
        assert divide_shift(conf) == shift


def test_one_shot_fires_count_plus_one_ticks_after_the_write_and_once():
    """apic_next_timer one-shot: `d = (uint64_t)s->initial_count + 1;`"""
    clock, apic, seen = make()
    clock.advance_to(500)
    wr(apic, 0x3E0, 0x0)                      # divide by 2
    wr(apic, 0x320, 0x50)
    wr(apic, 0x380, 1000)
    assert clock.deadline(apic) == 500 + 1001 * 2
    clock.advance_to(500 + 2 * 400 + 1)
    assert rd(apic, 0x390) == 600
    clock.advance_to(500 + 2000)
    assert rd(apic, 0x390) == 0               # counted out, not yet fired
    apic.update()
    assert not irr_bit(apic, 0x50)
    clock.advance_to(500 + 2002)
    apic.update()
    assert irr_bit(apic, 0x50) and clock.deadline(apic) is None


def test_periodic_fires_every_count_plus_one_ticks_and_counts_down_from_count():
    clock, apic, seen = make()
    wr(apic, 0x3E0, 0xB)                      # divide by 1: one tick per ns
    wr(apic, 0x320, 0x20050)
    wr(apic, 0x380, 99)
    assert clock.deadline(apic) == 100
    assert rd(apic, 0x390) == 99
    clock.advance_to(50)
    assert rd(apic, 0x390) == 49
    clock.advance_to(100)
    apic.update()
    assert apic.acknowledge() == 0x50
    assert clock.deadline(apic) == 200
    wr(apic, 0x0B0, 0)


def test_missed_periods_coalesce_and_the_next_deadline_is_after_now():
    clock, apic, seen = make()
    wr(apic, 0x3E0, 0xB)
    wr(apic, 0x320, 0x20050)
    wr(apic, 0x380, 9)
    clock.advance_to(1234)
    apic.update()
    assert irr_bit(apic, 0x50) and clock.deadline(apic) == 1240


def test_count_zero_never_fires_and_reads_zero():
    clock, apic, seen = make()
    for lvt in (0x50, 0x20050):
        wr(apic, 0x320, lvt)
        wr(apic, 0x380, 0)
        assert clock.deadline(apic) is None and rd(apic, 0x390) == 0


def test_masking_disarms_and_the_count_keeps_running():
    """probe: the current count of a masked periodic timer still changes."""
    clock, apic, seen = make()
    wr(apic, 0x3E0, 0xB)
    wr(apic, 0x320, 0x20050)
    wr(apic, 0x380, 99)
    wr(apic, 0x320, 0x30050)
    assert clock.deadline(apic) is None
    clock.advance_to(30)
    assert rd(apic, 0x390) == 69
    wr(apic, 0x320, 0x20050)                  # unmasking re-arms from now
    assert clock.deadline(apic) == 100


def test_divide_register_write_does_not_rearm():
    """apic_mem_write case 0x3e only recomputes count_shift; the old deadline stands and
    the next one is computed with the new shift from it."""
    clock, apic, seen = make()
    wr(apic, 0x3E0, 0xB)
    wr(apic, 0x320, 0x20050)
    wr(apic, 0x380, 99)
    wr(apic, 0x3E0, 0x0)                      # now divide by 2
    assert clock.deadline(apic) == 100
    assert rd(apic, 0x390) == 99              # 0 ticks of 2 ns so far
    clock.advance_to(100)
    apic.update()
    assert clock.deadline(apic) == 200        # next multiple of 100 ticks << 1


def test_switching_an_expired_one_shot_to_periodic_restarts_it():
    """QEMU 7.2 re-arms on any LVT timer write from the old load time (the 2023 patch
    that keeps TMCCT at zero is not in 7.2; kvm-unit-tests' apic test fails on it under
    TCG). probe: after the switch TMCCT is nonzero and the vector fires again."""
    clock, apic, seen = make()
    wr(apic, 0x3E0, 0xB)
    wr(apic, 0x320, 0x50)
    wr(apic, 0x380, 99)
    clock.advance_to(150)
    apic.update()
    assert rd(apic, 0x390) == 0 and clock.deadline(apic) is None
    wr(apic, 0x320, 0x20050)
    assert rd(apic, 0x390) == 49 and clock.deadline(apic) == 200


def test_tsc_deadline_mode_bits_count_as_one_shot():
    """QEMU 7.2's TCG APIC reads only bit 17 (probe: LVT 0x40050 fires once on TMICT)."""
    clock, apic, seen = make()
    wr(apic, 0x3E0, 0xB)
    wr(apic, 0x320, 0x40050)
    assert rd(apic, 0x320) == 0x40050
    wr(apic, 0x380, 10)
    clock.advance_to(11)
    apic.update()
    assert irr_bit(apic, 0x50) and clock.deadline(apic) is None


def test_timer_interrupts_are_edge_triggered_whatever_the_lvt_says():
    """apic_local_deliver honours LVT bit 15 for LINT0 and LINT1 only."""
    clock, apic, seen = make()
    wr(apic, 0x3E0, 0xB)
    wr(apic, 0x320, 0x8050)
    wr(apic, 0x380, 10)
    clock.advance_to(11)
    apic.update()
    assert irr_bit(apic, 0x50) and not tmr_bit(apic, 0x50)


def test_timer_in_nmi_mode_raises_an_nmi():
    clock, apic, seen = make()
    wr(apic, 0x3E0, 0xB)
    wr(apic, 0x320, 0x450)
    wr(apic, 0x380, 10)
    clock.advance_to(11)
    apic.update()
    assert apic.take_nmi() and not irr_bit(apic, 0x50)


def test_update_before_the_deadline_does_nothing():
    clock, apic, seen = make()
    wr(apic, 0x3E0, 0xB)
    wr(apic, 0x320, 0x50)
    wr(apic, 0x380, 10)
    clock.advance_to(10)
    apic.update()
    assert not irr_bit(apic, 0x50) and clock.deadline(apic) == 11


@given(load=st.integers(0, 10**6), count=st.integers(0, 2**32 - 1),
       shift=st.integers(0, 7), periodic=st.booleans(), elapsed=st.integers(0, 10**12))
def test_deadline_is_in_the_future_and_current_count_in_range(load, count, shift,
                                                              periodic, elapsed):
    now = load + elapsed
    deadline = timer_deadline(now, load, count, shift, periodic)
    assert deadline is None or deadline > now
    assert 0 <= current_count(now, load, count, shift, periodic) <= count


# -- hostile guests ------------------------------------------------------------------------

@given(st.lists(st.tuples(st.booleans(), st.integers(0, 0xFFFFF), st.sampled_from([1, 2, 4, 8]),
                          st.integers(0, 2**64 - 1)), max_size=40))
def test_any_access_sequence_gives_an_answer_and_never_an_exception(accesses):
    clock, apic, seen = make()
    for is_write, offset, size, value in accesses:
        if is_write:
            apic.write(offset, size, value & ((1 << (8 * size)) - 1))
        else:
            assert 0 <= apic.read(offset, size) <= 0xFFFFFFFF
        clock.advance(7)
        apic.update()
        while apic.acknowledge() is not None:
            wr(apic, 0x0B0, 0)
            if not apic.has_interrupt():
                break
