"""Protected-mode delivery through a view: frames, stack switches, faults during delivery, escalation.

Every test delivers through ``FakeView``: a CPU with no Unicorn behind it, its GDT, IDT and TSS in
a flat memory in which some pages can be made to page-fault, as a guest's unmapped page would.
"""
from __future__ import annotations

import struct

import pytest

from hypervisor.machine.descriptors import TSS_ESP0, TSS_SS0, decode_gate, encode_segment
from hypervisor.machine.faults import GuestFault
from hypervisor.machine.interrupts import (DF, GP, NP, PF, CpuFrame, DeliveryFault, EventKind, TripleFault,
                                           deliver, deliver_with_escalation, table_descriptor)

MEMORY = 0x100000
GDT, IDT, TSS = 0x1000, 0x2000, 0x3000
KCODE, KDATA, UCODE, UDATA, CONFORMING = 0x08, 0x10, 0x1B, 0x23, 0x28
KSTACK, USTACK = 0x9000, 0x7000
HOLE = 0xA0000                       # a page that is not mapped: any access is a #PF
INT_GATE, TRAP_GATE = 0x8E, 0x8F
EFLAGS = 0x202 | (1 << 8) | (1 << 14)          # IF, TF and NT set: delivery clears TF and NT
RING0_AT = CpuFrame(eip=0x100123, cs=KCODE, eflags=EFLAGS, esp=KSTACK, ss=KDATA)
RING3_AT = CpuFrame(eip=0x400456, cs=UCODE, eflags=EFLAGS, esp=USTACK, ss=UDATA)


class FakeView:
    """A DeliveryView over a flat memory; accesses to ``holes`` page-fault like the MMU."""

    def __init__(self, cpl: int = 0):
        self.cpl = cpl
        self.idt_base, self.idt_limit = IDT, 0x7FF
        self.memory = bytearray(MEMORY)
        self.holes = [(HOLE, HOLE + 0x1000)]
        self.gdt_limit = 6 * 8 - 1
        for selector, raw in ((KCODE, encode_segment(0, 0xFFFFF, 0x9A)), (KDATA, encode_segment(0, 0xFFFFF, 0x92)),
                              (UCODE, encode_segment(0, 0xFFFFF, 0xFA)), (UDATA, encode_segment(0, 0xFFFFF, 0xF2)),
                              (CONFORMING, encode_segment(0, 0xFFFFF, 0x9E))):
            self.memory[GDT + (selector & ~7):GDT + (selector & ~7) + 8] = struct.pack("<Q", raw)
        self.set_stack0(KDATA, KSTACK)

    def set_stack0(self, ss: int, esp: int) -> None:
        struct.pack_into("<I", self.memory, TSS + TSS_ESP0, esp)
        struct.pack_into("<H", self.memory, TSS + TSS_SS0, ss)

    def gate(self, vector: int, selector: int = KCODE, kind: int = INT_GATE, dpl: int = 0) -> int:
        """Install a gate; its handler's address is 0x10000 + vector * 0x10."""
        offset = 0x10000 + vector * 0x10
        raw = (offset & 0xFFFF) | selector << 16 | (kind | dpl << 5) << 40 | (offset >> 16) << 48
        struct.pack_into("<Q", self.memory, IDT + vector * 8, raw)
        return offset

    def _check(self, address: int, length: int, write: bool) -> None:
        for lo, hi in self.holes:
            if address < hi and address + length > lo:
                raise GuestFault(PF, 2 if write else 0, cr2=max(address, lo),
                                 why="not mapped in the fake")

    def read_linear(self, address: int, length: int) -> bytes:
        self._check(address, length, False)
        return bytes(self.memory[address:address + length])

    def write_linear(self, address: int, data: bytes) -> None:
        self._check(address, len(data), True)
        self.memory[address:address + len(data)] = data

    def descriptor(self, selector: int):
        return table_descriptor(self.read_linear, GDT, self.gdt_limit, selector)

    def tss_base(self) -> int:
        return TSS

    def words(self, esp: int, n: int) -> list[int]:
        return list(struct.unpack_from(f"<{n}I", self.memory, esp))


# == one delivery ==================================================================================
def test_same_ring_interrupt_pushes_eflags_cs_eip_and_clears_if_tf_nt():
    view = FakeView(cpl=0)
    handler = view.gate(0x20)
    d = deliver(view, 0x20, EventKind.EXTERNAL, None, RING0_AT)
    assert d.frame == CpuFrame(handler, KCODE, 0x002, KSTACK - 12, KDATA)
    assert view.words(KSTACK - 12, 3) == [RING0_AT.eip, KCODE, EFLAGS]
    assert (d.handler_cpl, d.stack_switched, d.error_code, d.cr2) == (0, False, None, None)


def test_a_trap_gate_leaves_if_set():
    view = FakeView(cpl=0)
    view.gate(0x80, kind=TRAP_GATE)
    d = deliver(view, 0x80, EventKind.SOFTWARE, None, RING0_AT)
    assert d.frame.eflags & 0x200


@pytest.mark.parametrize("vector", [8, 10, 11, 12, 13, 14, 17])
def test_exceptions_with_an_error_code_push_it_below_the_return_eip(vector):
    view = FakeView(cpl=0)
    view.gate(vector)
    d = deliver(view, vector, EventKind.EXCEPTION, 0x1234, RING0_AT)
    assert d.error_code == 0x1234
    assert d.frame.esp == KSTACK - 16
    assert view.words(KSTACK - 16, 4) == [0x1234, RING0_AT.eip, KCODE, EFLAGS]


@pytest.mark.parametrize("kind", [EventKind.EXTERNAL, EventKind.SOFTWARE])
def test_an_interrupt_on_an_error_code_vector_pushes_no_error_code(kind):
    view = FakeView(cpl=0)
    view.gate(13, dpl=3)
    d = deliver(view, 13, kind, None, RING0_AT)
    assert d.error_code is None and d.frame.esp == KSTACK - 12


def test_ring3_to_ring0_switches_to_the_tss_stack_and_pushes_the_old_ss_esp():
    view = FakeView(cpl=3)
    handler = view.gate(0x20)
    d = deliver(view, 0x20, EventKind.EXTERNAL, None, RING3_AT)
    assert d.stack_switched and d.handler_cpl == 0
    assert d.frame == CpuFrame(handler, KCODE, 0x002, KSTACK - 20, KDATA)
    assert view.words(KSTACK - 20, 5) == [RING3_AT.eip, UCODE, EFLAGS, USTACK, UDATA]


def test_a_conforming_handler_runs_at_the_current_ring_on_the_current_stack():
    view = FakeView(cpl=3)
    view.gate(0x20, selector=CONFORMING)
    d = deliver(view, 0x20, EventKind.EXTERNAL, None, RING3_AT)
    assert not d.stack_switched and d.handler_cpl == 3
    assert (d.frame.cs, d.frame.ss, d.frame.esp) == (CONFORMING | 3, UDATA, USTACK - 12)


def test_int_n_through_a_gate_below_the_cpl_is_gp_naming_the_idt_entry():
    view = FakeView(cpl=3)
    view.gate(0x80, dpl=0)
    with pytest.raises(DeliveryFault) as e:
        deliver(view, 0x80, EventKind.SOFTWARE, None, RING3_AT)
    assert (e.value.vector, e.value.error_code) == (GP, 0x80 * 8 + 2)


def test_an_exception_ignores_the_gate_dpl():
    view = FakeView(cpl=3)
    view.gate(13, dpl=0)
    assert deliver(view, 13, EventKind.EXCEPTION, 0, RING3_AT).handler_cpl == 0


@pytest.mark.parametrize("kind", [EventKind.EXCEPTION, EventKind.SOFTWARE])
def test_a_vector_beyond_the_idt_limit_is_gp_naming_the_idt_entry(kind):
    view = FakeView(cpl=0)
    view.idt_limit = 0x20 * 8 - 1
    with pytest.raises(DeliveryFault) as e:
        deliver(view, 0x20, kind, None, RING0_AT)
    assert (e.value.vector, e.value.error_code) == (GP, 0x20 * 8 + 2)


@pytest.mark.parametrize("kind", [EventKind.EXCEPTION, EventKind.SOFTWARE])
def test_a_not_present_gate_is_np_naming_the_idt_entry(kind):
    view = FakeView(cpl=0)
    view.gate(0x21, dpl=3)
    view.memory[IDT + 0x21 * 8 + 5] &= 0x7F
    assert not decode_gate(struct.unpack_from("<Q", view.memory, IDT + 0x21 * 8)[0]).present
    with pytest.raises(DeliveryFault) as e:
        deliver(view, 0x21, kind, None, RING0_AT)
    assert (e.value.vector, e.value.error_code) == (NP, 0x21 * 8 + 2)


def beyond_the_idt(view: FakeView) -> None:
    view.idt_limit = 0x21 * 8 - 1


def not_present(view: FakeView) -> None:
    view.gate(0x21)
    view.memory[IDT + 0x21 * 8 + 5] &= 0x7F


def to_ring3_code(view: FakeView) -> None:
    view.gate(0x21, selector=UCODE)


@pytest.mark.parametrize("bad_gate, vector, error_code", [(beyond_the_idt, GP, 0x21 * 8 + 2),
                                                          (not_present, NP, 0x21 * 8 + 2),
                                                          (to_ring3_code, GP, UCODE & 0xFFFC)],
                         ids=["beyond-the-idt", "not-present", "ring-3-code"])
def test_an_external_interrupt_through_a_bad_gate_gets_the_error_code_qemu_pushes(bad_gate, vector, error_code):
    view = FakeView(cpl=0)
    bad_gate(view)
    with pytest.raises(DeliveryFault) as e:
        deliver(view, 0x21, EventKind.EXTERNAL, None, RING0_AT)
    assert (e.value.vector, e.value.error_code) == (vector, error_code)


def test_a_page_fault_pushing_the_frame_is_a_delivery_fault_with_its_address():
    view = FakeView(cpl=0)
    view.gate(0x20)
    at = CpuFrame(RING0_AT.eip, KCODE, EFLAGS, HOLE + 8, KDATA)
    with pytest.raises(DeliveryFault) as e:
        deliver(view, 0x20, EventKind.EXTERNAL, None, at)
    assert (e.value.vector, e.value.error_code, e.value.cr2) == (PF, 2, HOLE)


def test_a_page_fault_reading_the_idt_is_a_delivery_fault_with_its_address():
    view = FakeView(cpl=0)
    view.idt_base = HOLE
    with pytest.raises(DeliveryFault) as e:
        deliver(view, 0x20, EventKind.EXTERNAL, None, RING0_AT)
    assert (e.value.vector, e.value.cr2) == (PF, HOLE + 0x20 * 8)


# == faults during delivery ===========================================================================
# Rings make two stacks: a ring-3 event whose gate leads to ring 0 pushes on the TSS stack (put in
# the hole to make it fault), and one whose gate leads to conforming code pushes on the user stack.
def user_view_with_ring0_stack_in_the_hole() -> FakeView:
    view = FakeView(cpl=3)
    view.set_stack0(KDATA, HOLE + 0x800)
    return view


def test_a_page_fault_while_pushing_the_frame_is_delivered_as_a_page_fault_with_cr2():
    view = user_view_with_ring0_stack_in_the_hole()
    view.gate(0x20)                                            # ring 0: its stack faults
    pf_handler = view.gate(PF, selector=CONFORMING)            # runs on the user stack
    d, notes = deliver_with_escalation(view, 0x20, EventKind.EXTERNAL, None, RING3_AT)
    assert d.frame.eip == pf_handler
    assert d.cr2 == HOLE + 0x800 - 20                          # where the 5-word frame was pushed
    assert d.error_code == 2                                   # a write
    assert view.words(USTACK - 16, 4) == [2, RING3_AT.eip, UCODE, EFLAGS]   # the interrupted state
    assert notes


def test_a_page_fault_during_delivery_of_a_contributory_fault_is_a_page_fault_not_a_double_fault():
    view = user_view_with_ring0_stack_in_the_hole()
    view.gate(GP)
    pf_handler = view.gate(PF, selector=CONFORMING)
    view.gate(DF, selector=CONFORMING)
    d, _ = deliver_with_escalation(view, GP, EventKind.EXCEPTION, 0, RING3_AT)
    assert d.frame.eip == pf_handler and d.cr2 == HOLE + 0x800 - 24


def test_a_page_fault_during_page_fault_delivery_escalates_to_a_double_fault():
    view = user_view_with_ring0_stack_in_the_hole()
    view.gate(PF)
    df_handler = view.gate(DF, selector=CONFORMING)
    d, notes = deliver_with_escalation(view, PF, EventKind.EXCEPTION, 4, RING3_AT)
    assert d.frame.eip == df_handler
    assert d.error_code == 0
    assert view.words(USTACK - 16, 4) == [0, RING3_AT.eip, UCODE, EFLAGS]
    assert notes


def test_a_double_fault_from_a_page_fault_during_page_fault_delivery_carries_the_second_cr2():
    view = user_view_with_ring0_stack_in_the_hole()
    view.gate(PF)
    view.gate(DF, selector=CONFORMING)
    d, _ = deliver_with_escalation(view, PF, EventKind.EXCEPTION, 4, RING3_AT)
    assert d.cr2 == HOLE + 0x800 - 24


def test_a_contributory_fault_delivering_a_contributory_fault_is_a_double_fault():
    view = FakeView(cpl=0)
    view.gate(GP, selector=0x30)                               # beyond the GDT limit: #GP(0x30)
    df_handler = view.gate(DF)
    d, _ = deliver_with_escalation(view, GP, EventKind.EXCEPTION, 0, RING0_AT)
    assert d.frame.eip == df_handler and d.error_code == 0


def test_a_benign_exception_whose_delivery_faults_gets_that_fault_delivered():
    view = FakeView(cpl=0)
    view.gate(6, selector=UCODE)                               # a DPL-3 handler: #GP(selector)
    gp_handler = view.gate(GP)
    d, notes = deliver_with_escalation(view, 6, EventKind.EXCEPTION, None, RING0_AT)
    assert d.frame.eip == gp_handler
    assert d.error_code == UCODE & 0xFFFC
    assert view.words(d.frame.esp, 2) == [UCODE & 0xFFFC, RING0_AT.eip]
    assert len(notes) == 1


def test_a_page_fault_delivering_the_np_of_an_interrupts_missing_gate_is_a_page_fault():
    view = user_view_with_ring0_stack_in_the_hole()
    view.gate(0x21)
    view.memory[IDT + 0x21 * 8 + 5] &= 0x7F                    # IRQ gate not present: #NP
    view.gate(NP)                                              # ring 0: its stack faults
    pf_handler = view.gate(PF, selector=CONFORMING)
    view.gate(DF, selector=CONFORMING)
    d, _ = deliver_with_escalation(view, 0x21, EventKind.EXTERNAL, None, RING3_AT)
    assert d.frame.eip == pf_handler


def test_a_fault_delivering_int_n_saves_the_eip_of_the_int_instruction():
    view = FakeView(cpl=3)
    view.gate(0x80, dpl=0)                                     # int 0x80 from ring 3: #GP(0x402)
    view.gate(GP)
    at = CpuFrame(RING3_AT.eip + 2, UCODE, EFLAGS, USTACK, UDATA)
    d, _ = deliver_with_escalation(view, 0x80, EventKind.SOFTWARE, None, at, fault_eip=RING3_AT.eip)
    assert d.error_code == 0x402
    assert view.words(d.frame.esp, 2) == [0x402, RING3_AT.eip]


# == triple faults ======================================================================================
def test_a_double_fault_that_cannot_be_delivered_is_a_triple_fault():
    view = FakeView(cpl=0)
    view.gate(GP, selector=0x30)
    view.gate(DF, selector=0x30)
    with pytest.raises(TripleFault, match="triple fault"):
        deliver_with_escalation(view, GP, EventKind.EXCEPTION, 0, RING0_AT)


def test_delivering_a_double_fault_directly_through_a_bad_gate_is_a_triple_fault():
    view = FakeView(cpl=0)
    view.idt_limit = 7                                         # only vector 0
    with pytest.raises(TripleFault):
        deliver_with_escalation(view, DF, EventKind.EXCEPTION, 0, RING0_AT)


def test_an_empty_idt_turns_any_exception_into_a_triple_fault():
    view = FakeView(cpl=0)
    view.idt_limit = 0
    with pytest.raises(TripleFault):
        deliver_with_escalation(view, 0, EventKind.EXCEPTION, None, RING0_AT)


def test_a_page_fault_whose_double_fault_also_page_faults_is_a_triple_fault():
    view = user_view_with_ring0_stack_in_the_hole()
    view.gate(PF)
    view.gate(DF)
    with pytest.raises(TripleFault):
        deliver_with_escalation(view, PF, EventKind.EXCEPTION, 0, RING3_AT)
