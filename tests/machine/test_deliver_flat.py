"""The exit fast path's delivery (``deliver_flat``) does exactly what ``deliver`` does, or declines.

For random IDT gates, GDT descriptors, TSS stacks, CPLs and events, ``deliver_flat`` must either
return None having written nothing (the caller then runs ``deliver``) or give the same new
CS:EIP, SS:ESP, EFLAGS and handler ring as ``deliver``, with the same frame bytes in memory.
It must never accept a delivery that ``deliver`` faults on.
"""
from __future__ import annotations

import struct

from hypothesis import given, settings, strategies as st

from hypervisor.machine.descriptors import encode_segment
from hypervisor.machine.interrupts import CpuFrame, DeliveryFault, EventKind, deliver, deliver_flat
from hypervisor.machine.taskswitch import UnmodelledTaskSwitch
from tests.machine.test_interrupts import GDT, IDT, KCODE, KDATA, RING0_AT, RING3_AT, TSS, FakeView


class FlatMemory:
    """GuestMemory's fast readers over the fake view's bytes (IndexError past the end)."""

    def __init__(self, memory: bytearray):
        self.memory = memory

    def _span(self, address: int, length: int) -> slice:
        if address < 0 or address + length > len(self.memory):
            raise IndexError(address)
        return slice(address, address + length)

    def read(self, address: int, length: int) -> bytes:
        return bytes(self.memory[self._span(address, length)])

    def read_u64(self, address: int) -> int:
        return struct.unpack("<Q", self.read(address, 8))[0]

    def write(self, address: int, data: bytes) -> None:
        self.memory[self._span(address, len(data))] = data


# A GDT that works (ring 0, 3 and 1 code and data, a conforming segment), which a test may corrupt.
GOOD_GDT = (0x9A, 0x92, 0xFA, 0xF2, 0x9E, 0xBA, 0xB2)         # selectors 0x08 .. 0x38
BAD_ACCESS = st.sampled_from([0x1A, 0x12, 0x89, 0x8E, 0xDA, 0xD2, 0x90, 0x98, 0xF8, 0x00])
CODE_SELECTOR = st.sampled_from([0x08, 0x08, 0x08, 0x08, 0x08, 0x1B, 0x28, 0x30, 0x30, 0x00, 0x10, 0x0C, 0x40, 0xFFF8])
STACK_SELECTOR = st.sampled_from([0x10, 0x10, 0x10, 0x10, 0x10, 0x38, 0x39, 0x23, 0x08, 0x00, 0x13, 0x14, 0x40])
GATE_ACCESS = st.sampled_from([0xEE, 0xEE, 0xEE, 0xEF, 0xEF, 0x8E, 0x8F, 0xEE, 0xEF, 0xAE, 0xCE, 0x0E, 0x86, 0x85, 0x8C])


@settings(max_examples=600, deadline=None)
@given(corrupt=st.one_of(st.none(), st.none(), st.none(), st.tuples(st.integers(1, 7), BAD_ACCESS)),
       base=st.sampled_from([0, 0, 0, 0, 0x1000, 0xFFFF0000]),
       gdt_limit=st.sampled_from([0x3F, 0x3F, 0x27, 0x07]),
       gate_access=GATE_ACCESS, gate_selector=CODE_SELECTOR,
       vector=st.sampled_from([0, 3, 8, 13, 14, 0x80, 0xFF]),
       idt_limit=st.sampled_from([0x7FF, 0x7FF, 0x7FF, 0x3FF, 0x67]),
       cpl=st.sampled_from([0, 3, 3, 1, 2]), software=st.booleans(),
       stack0=st.tuples(STACK_SELECTOR, st.sampled_from([0x9000, 0x9000, 0x10, 0xFFFFFFF0])),
       stack1=st.tuples(STACK_SELECTOR, st.sampled_from([0x8000, 0x0])),
       error=st.sampled_from([0, 0x1B, 0xFFFF]))
def test_the_fast_delivery_matches_deliver_or_declines(corrupt, base, gdt_limit, gate_access, gate_selector,
                                                       vector, idt_limit, cpl, software, stack0, stack1, error):
    slow = FakeView(cpl)
    slow.holes = []
    slow.idt_limit, slow.gdt_limit = idt_limit, gdt_limit
    for i, access in enumerate(GOOD_GDT, start=1):
        if corrupt and corrupt[0] == i:
            access = corrupt[1]
        segment_base = base if access & 0x08 == 0 else 0          # data segments may have a base
        struct.pack_into("<Q", slow.memory, GDT + 8 * i, encode_segment(segment_base, 0xFFFFF, access))
    offset = 0x12345678
    struct.pack_into("<Q", slow.memory, IDT + vector * 8,
                     (offset & 0xFFFF) | gate_selector << 16 | gate_access << 40 | (offset >> 16) << 48)
    slow.set_stack0(*stack0)
    struct.pack_into("<IH", slow.memory, TSS + 4 + 8, stack1[1], stack1[0])
    if cpl == 3:
        at = RING3_AT
    else:
        at = CpuFrame(RING0_AT.eip, (0x30 if cpl else KCODE) | cpl, RING0_AT.eflags, RING0_AT.esp,
                      (0x38 if cpl else KDATA) | cpl)
    fast = FakeView(cpl)
    fast.memory[:] = slow.memory
    before = bytes(slow.memory)
    kind = EventKind.SOFTWARE if software else EventKind.EXCEPTION
    code = None if software else error

    flat = FlatMemory(fast.memory)
    got = deliver_flat(flat, flat.write, vector, software, code, cpl, IDT, idt_limit, GDT, gdt_limit,
                       lambda: TSS, at.eip, at.cs, at.eflags, at.esp, at.ss)
    try:
        want = deliver(slow, vector, kind, code, at)
    except (DeliveryFault, UnmodelledTaskSwitch):     # a task gate: the fake view cannot switch tasks
        want = None
    ACCEPTED.append(got is not None)
    if got is None:
        assert fast.memory == before            # declined: nothing written
        return
    assert want is not None, "the fast path accepted a delivery that faults"
    frame = want.frame
    assert got == (frame.eip, frame.cs, frame.eflags, frame.esp, frame.ss, want.handler_cpl)
    assert fast.memory == slow.memory


ACCEPTED: list[bool] = []


def test_enough_of_the_random_deliveries_above_were_taken_by_the_fast_path():
    """Otherwise the comparison above would prove little (most random tables fault)."""
    if not ACCEPTED:
        test_the_fast_delivery_matches_deliver_or_declines()
    assert sum(ACCEPTED) >= 20, f"only {sum(ACCEPTED)} of {len(ACCEPTED)} taken"


def test_the_fast_delivery_declines_when_a_table_is_outside_memory():
    view = FakeView(0)
    flat = FlatMemory(view.memory)
    before = bytes(view.memory)
    at = RING0_AT
    assert deliver_flat(flat, flat.write, 0x80, True, None, 0, len(view.memory) - 4, 0x7FF, GDT, 0x2F,
                        lambda: TSS, at.eip, at.cs, at.eflags, at.esp, at.ss) is None
    assert bytes(view.memory) == before
