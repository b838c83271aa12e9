"""Segmentation turns an offset into a linear address with the SDM's limit and type checks."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hypervisor.machine.descriptors import decode_descriptor, encode_segment
from hypervisor.machine.faults import GuestFault
from hypervisor.machine.segments import Segment, linear_address

DATA_RW, DATA_RO, DATA_RW_DOWN = 0x2, 0x0, 0x6
CODE_X, CODE_RX = 0x8, 0xA


def seg(type_: int, base: int = 0, limit: int = 0xFFFFFFFF, big: bool = True,
        present: bool = True) -> Segment:
    return Segment(selector=0x10, base=base, limit=limit, type=type_, dpl=0, present=present, big=big)


def fault(segment, offset, size, **kw) -> GuestFault:
    with pytest.raises(GuestFault) as info:
        linear_address(segment, offset, size, **kw)
    return info.value


def test_from_descriptor_keeps_the_cached_fields_with_granularity_applied():
    raw = encode_segment(base=0x12345678, limit=0xF, access=0xF2, flags=0xC)   # DPL 3 data, 4 KiB units
    s = Segment.from_descriptor(0x23, decode_descriptor(raw))
    assert s == Segment(selector=0x23, base=0x12345678, limit=0xFFFF, type=DATA_RW, dpl=3,
                        present=True, big=True)


def test_from_descriptor_refuses_a_system_descriptor():
    tss = decode_descriptor(encode_segment(base=0x1000, limit=103, access=0x89, flags=0))
    with pytest.raises(ValueError):
        Segment.from_descriptor(0x28, tss)


@given(base=st.integers(0, 2**32 - 1), offset=st.integers(0, 2**32 - 4))
def test_the_base_is_added_and_the_sum_wraps_at_4_gib(base, offset):
    assert linear_address(seg(DATA_RW, base=base), offset, 4) == (base + offset) % 2**32


@given(limit=st.integers(0, 0xFFFFF), offset=st.integers(0, 0x100010), size=st.sampled_from([1, 2, 4, 8]))
def test_an_expand_up_access_must_end_at_or_below_the_limit(limit, offset, size):
    s = seg(DATA_RW, base=0x1000, limit=limit)
    if offset + size - 1 <= limit:
        assert linear_address(s, offset, size, write=True) == 0x1000 + offset
    else:
        assert (fault(s, offset, size).vector, fault(s, offset, size).error_code) == (13, 0)


def test_a_dword_at_the_top_of_a_flat_segment_crosses_the_limit():
    assert linear_address(seg(DATA_RW), 0xFFFFFFFC, 4) == 0xFFFFFFFC
    assert fault(seg(DATA_RW), 0xFFFFFFFE, 4).vector == 13


@given(limit=st.integers(0, 0xFFFF), offset=st.integers(0, 0xFFFF), size=st.sampled_from([1, 2, 4]),
       big=st.booleans())
def test_an_expand_down_segment_allows_only_offsets_above_its_limit(limit, offset, size, big):
    s = seg(DATA_RW_DOWN, limit=limit, big=big)
    upper = 0xFFFFFFFF if big else 0xFFFF
    if offset > limit and offset + size - 1 <= upper:
        assert linear_address(s, offset, size) == offset
    else:
        assert fault(s, offset, size).vector == 13


def test_a_16_bit_expand_down_segment_ends_at_64_kib():
    s = seg(DATA_RW_DOWN, limit=0xFFF, big=False)
    assert linear_address(s, 0xFFFC, 4) == 0xFFFC
    assert fault(s, 0xFFFE, 4).vector == 13
    assert linear_address(seg(DATA_RW_DOWN, limit=0xFFF, big=True), 0xFFFE, 4) == 0xFFFE


def test_execute_only_code_cannot_be_read_and_no_code_can_be_written():
    assert fault(seg(CODE_X), 0, 4).vector == 13
    assert linear_address(seg(CODE_RX), 0, 4) == 0
    assert fault(seg(CODE_RX), 0, 4, write=True).vector == 13


def test_read_only_data_cannot_be_written():
    assert linear_address(seg(DATA_RO), 8, 4) == 8
    assert fault(seg(DATA_RO), 8, 4, write=True).error_code == 0


def test_a_not_present_or_null_segment_allows_nothing():
    assert fault(seg(DATA_RW, present=False), 0, 1).vector == 13


def test_the_stack_segment_raises_ss_instead_of_gp():
    s = seg(DATA_RW_DOWN, limit=0x7FFF, big=True)
    f = fault(s, 0x7FFE, 4, write=True, stack=True)
    assert (f.vector, f.error_code) == (12, 0)
    assert fault(seg(DATA_RO), 0, 4, write=True, stack=True).vector == 12


def test_a_flat_segment_is_what_multiboot_leaves_in_cs_and_ds():
    assert Segment.flat(0x10) == seg(DATA_RW)
    assert Segment.flat(0x08, code=True).is_code
    assert linear_address(Segment.flat(0x08, code=True), 0x100000, 4) == 0x100000
